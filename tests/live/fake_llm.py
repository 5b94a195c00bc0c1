#!/usr/bin/env python3
"""Fake OpenAI-compatible Chat Completions server that replays scripted turns.

Copied from the project's OpenCode harness and trimmed to the scenarios the live test uses.
Stdlib only.  Meant to drive the REAL OpenCode binary (provider configured with
npm "@ai-sdk/openai-compatible" and options.baseURL = http://127.0.0.1:PORT/v1).

Endpoints
  POST /v1/chat/completions   streaming (SSE "data: {...}" + "data: [DONE]") or not
  GET  /v1/models             model list
  GET  /health                "ok"
  GET  /log                   JSON list of every request seen (summary)

How a reply is chosen (stateless, so concurrent sessions are fine):
  * The scenario comes from the LAST user message that contains "SCENARIO=<name>".
  * The step index is the number of assistant messages that follow that user
    message (each agent loop iteration adds one assistant message).
  * Requests whose user text contains "Generate a title for this conversation"
    (OpenCode's title agent) get a short title derived from the scenario.
  * "RUN=<token>" in the prompt is used to make file names unique.

Scenarios (see SCRIPTS below): text, complete, incomplete_todos, error (HTTP 401),
subagent (parent calls the `task` tool; the child prompt carries SCENARIO=subchild),
subchild, slow (one long bash, for abort tests).  Anything else falls back to a
short text reply.

Usage: python3 fake_llm.py [--port 0] [--port-file FILE] [--log FILE] [--delay S]
The chosen port is printed as "PORT <n>" on stdout (and written to --port-file).
"""
import argparse
import json
import os
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_IDS = ["fake-model", "fake-small"]

# ---------------------------------------------------------------------------
# scenario scripts.  Each step: {"tools": [(name, args), ...]} | {"text": str}
#   | {"http_error": status} ; optional "delay" (seconds before first byte) and
#   "chunk_delay" (seconds between streamed chunks).
# args may be callables taking ctx (dict with run, cwd) -> dict
# ---------------------------------------------------------------------------

TODOS_OPEN = [
    {"content": "Inspect the repository", "status": "in_progress", "priority": "high"},
    {"content": "Create the notes file", "status": "pending", "priority": "medium"},
    {"content": "Summarise the work", "status": "pending", "priority": "low"},
]
TODOS_DONE = [dict(t, status="completed") for t in TODOS_OPEN]
TODOS_PARTIAL = [
    {"content": "Inspect the repository", "status": "completed", "priority": "high"},
    {"content": "Create the notes file", "status": "in_progress", "priority": "medium"},
    {"content": "Summarise the work", "status": "pending", "priority": "low"},
]


def _path(ctx, name):
    rel = "notes/%s-%s.md" % (name, ctx["run"])
    if ctx.get("cwd"):
        return os.path.join(ctx["cwd"], rel)
    return rel


SCRIPTS = {
    "text": [
        {"text": "Hello! This is a plain text answer from the fake model."},
    ],
    "complete": [
        {"text": "I'll plan first.", "tools": [("todowrite", {"todos": TODOS_OPEN})]},
        {"tools": [("bash", {"command": "echo hi", "description": "Say hi"})]},
        {"tools": [("write", lambda c: {"filePath": _path(c, "complete"),
                                        "content": "# Notes\n\nstatus: draft\n"})]},
        {"tools": [("read", lambda c: {"filePath": _path(c, "complete")})]},
        {"tools": [("edit", lambda c: {"filePath": _path(c, "complete"),
                                       "oldString": "status: draft",
                                       "newString": "status: final"})]},
        {"tools": [("todowrite", {"todos": TODOS_DONE})]},
        {"text": "All done: said hi, wrote and edited the notes file, and completed every todo."},
    ],
    "incomplete_todos": [
        {"tools": [("todowrite", {"todos": TODOS_OPEN})]},
        {"tools": [("bash", {"command": "echo partial", "description": "Partial work"})]},
        {"tools": [("todowrite", {"todos": TODOS_PARTIAL})]},
        {"text": "I stopped early; two todos are still open."},
    ],
    "error": [
        {"http_error": 401},
    ],
    "subagent": [
        {"tools": [("task", lambda c: {"description": "Child check",
                                       "prompt": "SCENARIO=subchild RUN=%s-child Please run a quick check."
                                                 % c["run"],
                                       "subagent_type": "general"})]},
        {"text": "The subagent finished its check."},
    ],
    "subchild": [
        {"tools": [("bash", {"command": "echo from-child", "description": "Child echo"})]},
        {"text": "Child check complete."},
    ],
    "slow": [
        {"tools": [("bash", {"command": "sleep 30; echo slow-done",
                             "description": "Very slow command"})]},
        {"text": "Slow command finished."},
    ],
}

FALLBACK = [{"text": "I am the fake model. Put SCENARIO=<name> in the prompt."}]

_lock = threading.Lock()
_REQUEST_LOG = []
_LOG_FILE = None
_EXTRA_DELAY = 0.0   # --delay: seconds added before every non-title reply


def log_event(rec):
    rec["ts"] = time.time()
    with _lock:
        _REQUEST_LOG.append(rec)
        if _LOG_FILE:
            with open(_LOG_FILE, "a") as f:
                f.write(json.dumps(rec) + "\n")


def content_text(content):
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for p in content:
            if isinstance(p, dict):
                out.append(p.get("text") or "")
            else:
                out.append(str(p))
        return "\n".join(out)
    return str(content)


def analyse(body):
    msgs = body.get("messages") or []
    system = "\n".join(content_text(m.get("content")) for m in msgs if m.get("role") == "system")
    all_user = [content_text(m.get("content")) for m in msgs if m.get("role") == "user"]
    is_title = any("Generate a title for this conversation" in u for u in all_user)
    scen_idx = None
    scenario = None
    for i, m in enumerate(msgs):
        if m.get("role") == "user":
            mm = re.search(r"SCENARIO=([A-Za-z0-9_]+)", content_text(m.get("content")))
            if mm:
                scen_idx, scenario = i, mm.group(1)
    step = 0
    if scen_idx is not None:
        step = sum(1 for m in msgs[scen_idx + 1:] if m.get("role") == "assistant")
    text_all = "\n".join(all_user)
    run = re.search(r"RUN=([A-Za-z0-9_.-]+)", text_all)
    cwd = None
    mm = re.search(r"Working directory:\s*(\S+)", system)
    if mm:
        cwd = mm.group(1)
    return {
        "is_title": is_title,
        "scenario": scenario,
        "step": step,
        "run": run.group(1) if run else uuid.uuid4().hex[:8],
        "cwd": cwd,
        "n_messages": len(msgs),
        "tools": sorted((t.get("function") or {}).get("name", "?") for t in (body.get("tools") or [])),
    }


def title_for(info):
    s = info.get("scenario") or "chat"
    return "Fake %s session" % s.replace("_", " ")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-llm/1.0"

    def log_message(self, fmt, *args):  # quiet
        pass

    # -- utilities ---------------------------------------------------------
    def _json(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse_start(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _sse(self, obj):
        payload = obj if isinstance(obj, str) else json.dumps(obj)
        self.wfile.write(("data: %s\n\n" % payload).encode())
        self.wfile.flush()

    # -- routes ------------------------------------------------------------
    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            return self._json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODEL_IDS]})
        if self.path.startswith("/health"):
            return self._json(200, {"ok": True})
        if self.path.startswith("/log"):
            with _lock:
                return self._json(200, list(_REQUEST_LOG))
        return self._json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except Exception:
            return self._json(400, {"error": {"message": "bad json"}})
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._json(404, {"error": {"message": "only /v1/chat/completions"}})

        info = analyse(body)
        stream = bool(body.get("stream"))
        model = body.get("model") or "fake-model"
        rec = {"path": self.path, "model": model, "stream": stream, **info}

        if info["is_title"]:
            rec["reply"] = "title"
            log_event(rec)
            return self._reply_text(stream, model, title_for(info), usage=(50, 5))

        script = SCRIPTS.get(info["scenario"] or "", FALLBACK)
        step_no = info["step"]
        if step_no >= len(script):
            step = {"text": "(script exhausted) done."}
        else:
            step = script[step_no]
        rec["reply"] = {k: v for k, v in step.items() if k != "tools"}
        if "tools" in step:
            rec["reply"]["tools"] = [n for n, _ in step["tools"]]
        log_event(rec)

        if step.get("delay") or _EXTRA_DELAY:
            time.sleep(step.get("delay", 0) + _EXTRA_DELAY)
        if "http_error" in step:
            st = step["http_error"]
            msg = {401: "Invalid API key (fake 401)"}.get(
                st, "fake error %d" % st)
            return self._json(st, {"error": {"message": msg, "type": "fake_error",
                                             "code": str(st)}}, headers=step.get("headers"))
        ctx = {"run": info["run"], "cwd": info["cwd"]}
        calls = []
        for name, args in step.get("tools", []):
            if callable(args):
                args = args(ctx)
            calls.append((name, args))
        return self._reply(stream, model, step.get("text"), calls,
                           chunk_delay=step.get("chunk_delay", 0.0))

    # -- reply builders ----------------------------------------------------
    def _reply_text(self, stream, model, text, usage=(100, 20)):
        return self._reply(stream, model, text, [], usage=usage)

    def _reply(self, stream, model, text, calls, usage=(1200, 40), chunk_delay=0.0):
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        finish = "tool_calls" if calls else "stop"
        tool_calls_full = [{
            "id": "call_" + uuid.uuid4().hex[:20],
            "type": "function",
            "function": {"name": n, "arguments": json.dumps(a)},
        } for n, a in calls]
        usage_obj = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                     "total_tokens": usage[0] + usage[1]}
        if not stream:
            msg = {"role": "assistant", "content": text or None}
            if tool_calls_full:
                msg["tool_calls"] = tool_calls_full
            return self._json(200, {"id": cid, "object": "chat.completion", "created": created,
                                    "model": model, "choices": [{"index": 0, "message": msg,
                                                                 "finish_reason": finish}],
                                    "usage": usage_obj})

        def chunk(delta, fr=None, with_usage=False):
            o = {"id": cid, "object": "chat.completion.chunk", "created": created,
                 "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": fr}]}
            if with_usage:
                o["usage"] = usage_obj
            return o

        try:
            self._sse_start()
            self._sse(chunk({"role": "assistant", "content": ""}))
            if text:
                words = re.findall(r"\S+\s*", text)
                for w in words:
                    self._sse(chunk({"content": w}))
                    if chunk_delay:
                        time.sleep(chunk_delay)
            for i, tc in enumerate(tool_calls_full):
                args = tc["function"]["arguments"]
                self._sse(chunk({"tool_calls": [{"index": i, "id": tc["id"], "type": "function",
                                                 "function": {"name": tc["function"]["name"],
                                                              "arguments": ""}}]}))
                # stream the arguments in a few pieces
                n = max(1, len(args) // 3)
                for j in range(0, len(args), n):
                    self._sse(chunk({"tool_calls": [{"index": i, "function": {
                        "arguments": args[j:j + n]}}]}))
            self._sse(chunk({}, fr=finish))
            o = {"id": cid, "object": "chat.completion.chunk", "created": created,
                 "model": model, "choices": [], "usage": usage_obj}
            self._sse(o)
            self._sse("[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            pass


def main():
    global _LOG_FILE, _EXTRA_DELAY
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--log", help="append one JSON line per request")
    ap.add_argument("--delay", type=float, default=0.0,
                    help="extra seconds before every (non-title) reply, to keep sessions busy longer")
    a = ap.parse_args()
    _LOG_FILE = a.log
    _EXTRA_DELAY = a.delay
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    srv.daemon_threads = True
    port = srv.server_address[1]
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, a.port_file)
    print("PORT %d" % port, flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
