#!/usr/bin/env python3
"""Live end-to-end test: real OpenCode, its own event stream, and `opencode-telemetry run`.

Starts, in an isolated environment (own HOME/XDG dirs, OpenCode's network and side-effect flags
off, and a loopback-only network namespace when root can `unshare -n`):

  1. fake_llm.py, an OpenAI-compatible server replaying scripted turns (the model);
  2. `opencode serve` (the real OpenCode binary, pinned by the caller) and a subscriber to its
     `GET /global/event` SSE stream, which records every event with its receive time: OpenCode's
     own view of when each session went idle, errored, was archived or deleted;
  3. `opencode-telemetry run --transitions-log FILE` on OpenCode's live database, with the local
     NDJSON sink, while the sessions run. A watcher tails the sink and the transitions log every
     20 ms and timestamps each new line.

Then it drives one session per job through the serve API (see JOBS), waits until every export the
rules call for has reached the sink and the daemon has had time to make any it should not,
stops the daemon with SIGTERM (it must exit 0), stops OpenCode, and checks:

  * per root session, the exports (transitions log, joined with the sink records) equal the
    exports the daemon's rules derive from OpenCode's events (session.idle episodes, with the
    session.error of the episode; idles with open todos only after export.final_after_secs;
    a new prompt inside the debounce window cancels the pending export; an archive inside the
    window rides on the same export, one after it exports again; a deletion inside the window
    replaces the pending export); child sessions are never exported on their own;
  * latency: the time from OpenCode's event (its receive time here) to the record's line at the
    sink is at most debounce + poll + 1 s (final_after + poll + 1 s for an idle with open todos),
    and an idle/error export is not made before its window;
  * record contents against the final database: endReason, error name, archivedAt, deletedAt
    (session gone), children of the subagent parent, message count, todo counts.

Prints a JSON report on stdout (also written to --report) and exits 0 only if every check passed.
Every wait is bounded; every process is started in its own process group and stopped by it.

    python3 live_test.py --opencode OPENCODE_BIN --daemon OPENCODE_TELEMETRY_BIN --out DIR

Stdlib only (Python >= 3.8).
"""
import argparse
import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))


def now():
    return time.time()


def log(*a):
    print("[live %s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# jobs: one root session each (the subagent job adds a child session)
# ---------------------------------------------------------------------------

# kind -> (first prompt's scenario, what the driver does after the first idle)
JOBS = [
    # Longest first: these wait for an export, or for final_after, before they are done.
    ("multiturn", "text", "after the first export, a second prompt (incomplete_todos)"),
    ("noreply", "text", "after the first export, a noReply prompt: OpenCode answers nothing and publishes "
                        "nothing; exported NO_REPLY_AFTER_S after it was sent, plus the debounce"),
    ("shell", "text", "after the first export, POST /session/:id/shell (a ! command, no model): busy, idle"),
    ("incomplete_todos", "incomplete_todos", "ends idle with 2 open todos: exported after final_after"),
    ("complete", "complete", "todos all completed, file written and edited"),
    ("delete", "complete", "DELETE /session/:id 0.5 s after idle (inside the debounce window)"),
    ("abort", "slow", "POST /session/:id/abort while bash `sleep 30` runs (MessageAbortedError)"),
    ("archive_late", "text", "after the export, PATCH time.archived (exports again)"),
    ("cli_delete", "text", "after the export, `opencode session delete` from another process (no event)"),
    ("archive", "text", "PATCH time.archived 0.5 s after idle (inside the debounce window)"),
    ("multiturn_quick", "text", "a second prompt (text) 0.5 s after idle (inside the debounce window)"),
    ("subagent", "subagent", "task tool -> child session; only the parent is exported, listing it"),
    ("error", "error", "HTTP 401 from the model: session.error APIError"),
]

PROMPTS = {
    "text": "Say hello.",
    "complete": "Plan the work with todos, run a command, write and edit a notes file, finish the todos.",
    "incomplete_todos": "Start on the todo list but stop early.",
    "error": "This request should fail with an auth error.",
    "subagent": "Delegate a check to a subagent.",
    "slow": "Run a very slow command (will be aborted).",
    "noreply_text": "Context only, no reply wanted.",
}

# The daemon's `track::rules::NO_REPLY_AFTER_MS`: a user message with no reply started this long
# after it was sent is an ended turn (a normal prompt's reply starts within milliseconds).
NO_REPLY_AFTER_S = 30.0


# ---------------------------------------------------------------------------
# isolation (as the project's OpenCode harness does it)
# ---------------------------------------------------------------------------

def isolated_env(root):
    x = os.path.join(root, "xdg")
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "SHELL": "/bin/bash",
        "HOME": os.path.join(x, "home"),
        "XDG_DATA_HOME": os.path.join(x, "data"),
        "XDG_CONFIG_HOME": os.path.join(x, "config"),
        "XDG_CACHE_HOME": os.path.join(x, "cache"),
        "XDG_STATE_HOME": os.path.join(x, "state"),
        "TMPDIR": os.path.join(x, "tmp"),
        # network and side effects off (flags read from the 1.18.33 binary's embedded source)
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_CLAUDE_CODE": "1",
        "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
        "OPENCODE_DISABLE_EMBEDDED_WEB_UI": "1",
        # any npm install OpenCode might still attempt fails at once, locally
        "npm_config_registry": "http://127.0.0.1:9/",
        "npm_config_offline": "true",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "NO_COLOR": "1",
    }


def write_opencode_config(root, llm_port):
    cfgdir = os.path.join(root, "xdg", "config", "opencode")
    os.makedirs(cfgdir, exist_ok=True)
    model = {"name": "Fake Model", "tool_call": True, "attachment": False, "reasoning": False,
             "temperature": True, "limit": {"context": 128000, "output": 8192},
             "cost": {"input": 1.0, "output": 2.0}}
    cfg = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "fake": {
                "npm": "@ai-sdk/openai-compatible",  # bundled in the binary: nothing is installed
                "name": "Fake LLM",
                "options": {"baseURL": "http://127.0.0.1:%d/v1" % llm_port, "apiKey": "fake-key"},
                "models": {"fake-model": model, "fake-small": dict(model, name="Fake Small")},
            }
        },
        "enabled_providers": ["fake"],
        "model": "fake/fake-model",
        "small_model": "fake/fake-small",
        "autoupdate": False,
        "share": "disabled",
        "permission": {"*": "allow"},
    }
    with open(os.path.join(cfgdir, "opencode.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    # OpenCode npm-installs @opencode-ai/plugin into every config dir in the background unless
    # node_modules exists and package(-lock).json already list it: seed that, so no registry
    # request is ever made.
    dep = {"@opencode-ai/plugin": "*"}
    with open(os.path.join(cfgdir, "package.json"), "w") as f:
        json.dump({"dependencies": dep}, f)
    with open(os.path.join(cfgdir, "package-lock.json"), "w") as f:
        json.dump({"lockfileVersion": 3, "requires": True, "packages": {"": {"dependencies": dep}}}, f)
    os.makedirs(os.path.join(cfgdir, "node_modules"), exist_ok=True)


def make_repo(path, name):
    os.makedirs(path, exist_ok=True)
    g = ["git", "-C", path]
    env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1")
    for argv in (g + ["init", "-q", "-b", "main"],
                 g + ["config", "user.email", "live-test@example.invalid"],
                 g + ["config", "user.name", "Live Test"]):
        subprocess.run(argv, check=True, env=env, timeout=30, stdout=subprocess.DEVNULL)
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write("# %s\n\nScratch project for the opencode-telemetry live test.\n" % name)
    os.makedirs(os.path.join(path, "src"), exist_ok=True)
    with open(os.path.join(path, "src", "main.py"), "w") as f:
        f.write("def main():\n    print('hello from %s')\n" % name)
    subprocess.run(g + ["add", "-A"], check=True, env=env, timeout=30)
    subprocess.run(g + ["commit", "-q", "-m", "initial commit"], check=True, env=env, timeout=30)


def reexec_in_netns(marker_var):
    """Re-runs this script in a fresh network namespace with only loopback up (root + unshare)."""
    if os.environ.get(marker_var) == "1":
        return
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        log("netns: not root or unshare/ip missing -> running without a network namespace (loopback only anyway)")
        return
    probe = subprocess.run(["unshare", "-n", "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe.returncode != 0:
        log("netns: unshare -n not permitted -> running without a network namespace (loopback only anyway)")
        return
    env = dict(os.environ, **{marker_var: "1"})
    cmd = "ip link set lo up && exec \"$0\" \"$@\""
    argv = ["unshare", "-n", "sh", "-c", cmd, sys.executable, os.path.abspath(__file__)] + sys.argv[1:]
    log("netns: re-executing inside `unshare -n` (loopback only)")
    os.execvpe("unshare", argv, env)  # same pid: the caller's process group still holds us


# ---------------------------------------------------------------------------
# processes (only ours: each in its own process group, stopped through it)
# ---------------------------------------------------------------------------

class Proc:
    def __init__(self, name, argv, cwd, env, logpath):
        self.name = name
        self.logf = open(logpath, "ab")
        self.p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
        self.lines = queue.Queue()
        self.t = threading.Thread(target=self._pump, daemon=True)
        self.t.start()
        self.stopped = False
        log("started %s pid=%d" % (name, self.p.pid))

    def _pump(self):
        for line in iter(self.p.stdout.readline, b""):
            self.logf.write(line)
            self.logf.flush()
            self.lines.put(line.decode("utf-8", "replace"))
        self.lines.put(None)

    def wait_line(self, pattern, timeout):
        deadline = now() + timeout
        rx = re.compile(pattern)
        while now() < deadline:
            try:
                line = self.lines.get(timeout=max(0.05, deadline - now()))
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError("%s exited before printing %r (rc=%s)" % (self.name, pattern, self.p.poll()))
            m = rx.search(line)
            if m:
                return m
        raise TimeoutError("%s did not print %r within %ss" % (self.name, pattern, timeout))

    def stop(self, timeout=10.0):
        """SIGTERM to the process group, SIGKILL after `timeout`; returns (rc, seconds, killed)."""
        t0 = now()
        killed = False
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log("%s pid=%d ignored SIGTERM for %.0fs, sending SIGKILL" % (self.name, self.p.pid, timeout))
                killed = True
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=10)
        else:
            # Already gone: still clear the group of anything it left behind.
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.t.join(timeout=5)
        if not self.stopped:
            self.logf.close()
            self.stopped = True
            log("stopped %s rc=%s" % (self.name, self.p.returncode))
        return self.p.returncode, now() - t0, killed


def sweep_leftovers(home):
    """Kills, by pid, any process still carrying this run's isolated HOME in its environment:
    only descendants of this test have it (e.g. a tool subprocess OpenCode detached)."""
    marker = ("HOME=%s" % home).encode()
    me = os.getpid()
    killed = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if marker in env:
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
            except OSError:
                pass
    if killed:
        log("killed leftover processes of this run: %s" % killed)
    return killed


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ---------------------------------------------------------------------------
# OpenCode's HTTP API and its event stream
# ---------------------------------------------------------------------------

class Api:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def call(self, method, path, body=None, query=None, timeout=20):
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw = e.read()
            status = e.code
        try:
            js = json.loads(raw) if raw else None
        except ValueError:
            js = raw.decode("utf-8", "replace")
        return status, js


def ev_session(props):
    if not isinstance(props, dict):
        return None
    if props.get("sessionID"):
        return props["sessionID"]
    for k in ("info", "part"):
        v = props.get(k)
        if isinstance(v, dict) and v.get("sessionID"):
            return v["sessionID"]
    return None


class EventHub:
    """Subscribes to GET /global/event; appends every event, with its receive time, to
    events.jsonl and memory; jobs wait on it. Marker lines record what the driver did."""

    def __init__(self, host, port, path, out_path):
        self.host, self.port, self.path = host, port, path
        self.out = open(out_path, "a")
        self.cond = threading.Condition()
        self.events = []
        self.stop_flag = False
        self.reconnects = 0
        self.connected = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def marker(self, **kw):
        rec = {"recv_ts": now(), "harness": kw}
        with self.cond:
            if not self.out.closed:  # a job thread may still be finishing during clean-up
                self.out.write(json.dumps(rec) + "\n")
                self.out.flush()
        return rec["recv_ts"]

    def _run(self):
        while not self.stop_flag:
            conn = None
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=90)
                conn.request("GET", self.path, headers={"Accept": "text/event-stream"})
                resp = conn.getresponse()
                if resp.status != 200:
                    raise RuntimeError("SSE status %s" % resp.status)
                self.connected.set()
                data_lines = []
                while not self.stop_flag:
                    line = resp.readline()
                    if not line:
                        break
                    line = line.decode("utf-8", "replace").rstrip("\r\n")
                    if line.startswith("data:"):
                        data_lines.append(line[5:].lstrip())
                    elif line == "" and data_lines:
                        self._dispatch("\n".join(data_lines))
                        data_lines = []
            except Exception as e:  # noqa: BLE001 - logged as a marker, then reconnect
                if self.stop_flag:
                    break
                self.marker(kind="sse_error", error=repr(e))
                time.sleep(0.5)
            finally:
                if conn:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
            if not self.stop_flag:
                self.reconnects += 1
                self.marker(kind="sse_reconnect")

    def _dispatch(self, raw):
        ts = now()
        try:
            ev = json.loads(raw)
        except ValueError:
            ev = {"unparsed": raw}
        rec = {"recv_ts": ts}
        rec.update(ev)
        with self.cond:
            if not self.out.closed:
                self.out.write(json.dumps(rec) + "\n")
                self.out.flush()
            self.events.append(rec)
            self.cond.notify_all()

    def index(self):
        with self.cond:
            return len(self.events)

    def snapshot(self):
        with self.cond:
            return list(self.events)

    def wait_for(self, pred, timeout, since=0):
        """(event, next index) of the first event at/after `since` matching pred, or (None, i)."""
        deadline = now() + timeout
        i = since
        with self.cond:
            while True:
                while i < len(self.events):
                    ev = self.events[i]
                    i += 1
                    p = ev.get("payload") or {}
                    if pred(p.get("type"), p.get("properties") or {}):
                        return ev, i
                left = deadline - now()
                if left <= 0:
                    return None, i
                self.cond.wait(timeout=min(left, 1.0))

    def close(self):
        self.stop_flag = True
        self.t.join(timeout=3)
        with self.cond:
            self.out.close()


# ---------------------------------------------------------------------------
# the daemon's outputs, timestamped as their lines appear
# ---------------------------------------------------------------------------

class Tail:
    def __init__(self, path):
        self.path = path
        self.off = 0
        self.buf = b""
        self.bad = []

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except FileNotFoundError:
            return []
        self.off += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                out.append(json.loads(raw))
            except ValueError:
                self.bad.append(raw.decode("utf-8", "replace")[:200])
        return out


class OutputWatcher:
    """Tails the local sink (NDJSON records) and the transitions log every `period` seconds;
    each line gets the time it was first seen (`seen`)."""

    def __init__(self, sink_path, tlog_path, period=0.02):
        self.sink = Tail(sink_path)
        self.tlog = Tail(tlog_path)
        self.records = []      # {"seen", "record"}
        self.transitions = []  # {"seen", "line"}
        self.cond = threading.Condition()
        self.period = period
        self.stop_flag = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop_flag:
            self.poll_once()
            time.sleep(self.period)

    def poll_once(self):
        ts = now()
        recs = self.sink.poll()
        lines = self.tlog.poll()
        if recs or lines:
            with self.cond:
                self.records += [{"seen": ts, "record": r} for r in recs]
                self.transitions += [{"seen": ts, "line": x} for x in lines]
                self.cond.notify_all()

    def count(self, sid):
        with self.cond:
            return sum(1 for r in self.records if r["record"].get("sessionId") == sid)

    def wait_records(self, sid, n, timeout):
        """Waits until `n` records of session `sid` are at the sink; True if so."""
        deadline = now() + timeout
        with self.cond:
            while True:
                if sum(1 for r in self.records if r["record"].get("sessionId") == sid) >= n:
                    return True
                left = deadline - now()
                if left <= 0:
                    return False
                self.cond.wait(timeout=min(left, 0.5))

    def close(self):
        self.stop_flag = True
        self.t.join(timeout=3)
        self.poll_once()


class RowWatch:
    """Polls OpenCode's database (read-only) every `period` s for one session row, to time a
    deletion made by another process, which publishes no event. `present_ts` is the last poll
    that still saw the row, `gone_ts` the first that did not."""

    def __init__(self, db_path, sid, period=0.05):
        self.db_path, self.sid, self.period = db_path, sid, period
        self.present_ts = None
        self.gone_ts = None
        self.error = None
        self.stop_flag = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            conn = sqlite3.connect("file:%s?mode=ro" % self.db_path, uri=True, timeout=5)
            try:
                while not self.stop_flag:
                    t = now()
                    row = conn.execute("SELECT 1 FROM session WHERE id = ?", (self.sid,)).fetchone()
                    if row is None:
                        self.gone_ts = t
                        return
                    self.present_ts = t
                    time.sleep(self.period)
            finally:
                conn.close()
        except Exception as e:  # noqa: BLE001 - reported by the job
            self.error = repr(e)

    def join(self, timeout):
        self.t.join(timeout=timeout)
        self.stop_flag = True


# ---------------------------------------------------------------------------
# driving one job
# ---------------------------------------------------------------------------

class JobFailed(Exception):
    pass


class Ctx:
    """What jobs share."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def run_job(job, c):
    kind, scenario = job["kind"], job["scenario"]
    q = {"directory": job["repo"]}
    job["t_start"] = now()
    c.hub.marker(kind="job_start", job=job["id"], job_kind=kind, scenario=scenario)
    st, sess = c.api.call("POST", "/session", body={}, query=q)
    if st != 200 or not isinstance(sess, dict) or "id" not in sess:
        raise JobFailed("create session failed: %s %s" % (st, sess))
    sid = sess["id"]
    job["session_id"] = sid
    c.hub.marker(kind="session_created", job=job["id"], sessionID=sid)

    def prompt(scen, no_reply=False):
        idx = c.hub.index()
        text = "SCENARIO=%s RUN=%s %s" % (scen, job["id"], PROMPTS.get(scen, ""))
        body = {"parts": [{"type": "text", "text": text}]}
        if no_reply:
            body["noReply"] = True
        st, r = c.api.call("POST", "/session/%s/prompt_async" % sid, body=body, query=q)
        if st not in (200, 204):
            raise JobFailed("prompt_async failed: %s %s" % (st, r))
        return idx

    def wait_event(pred, since, what):
        ev, _ = c.hub.wait_for(pred, c.job_timeout, since=since)
        if ev is None:
            raise JobFailed("timeout (%ss) waiting for %s" % (c.job_timeout, what))
        return ev

    def wait_idle(since, what):
        return wait_event(lambda t, p: t == "session.idle" and p.get("sessionID") == sid, since,
                          "session.idle (%s)" % what)

    def wait_export(n, idle_ev, what):
        """Waits for the session's n-th record at the sink, and until the next action cannot
        be mistaken for one inside the debounce window (the oracle's margin is 0.6 s)."""
        limit = c.export_bound_s + 10
        if not c.watcher.wait_records(sid, n, limit):
            raise JobFailed("record %d of the session not at the sink within %.0fs (%s)" % (n, limit, what))
        time.sleep(max(0.3, idle_ev["recv_ts"] + c.debounce_s + 1.0 - now()))

    idx = prompt(scenario)
    if kind == "abort":
        wait_event(lambda t, p: t == "message.part.updated" and ev_session(p) == sid
                   and (p.get("part") or {}).get("tool") == "bash"
                   and ((p.get("part") or {}).get("state") or {}).get("status") == "running",
                   idx, "the bash tool running")
        time.sleep(1.0)
        c.hub.marker(kind="abort_request", job=job["id"], sessionID=sid)
        st, r = c.api.call("POST", "/session/%s/abort" % sid, query=q)
        job["notes"].append("abort -> %s %s" % (st, r))
    first_idle = wait_idle(idx, "first prompt")

    if kind == "multiturn":
        wait_export(1, first_idle, "first turn")
        idx = prompt("incomplete_todos")
        wait_idle(idx, "second prompt")
    elif kind == "noreply":
        wait_export(1, first_idle, "first turn")
        c.hub.marker(kind="noreply_request", job=job["id"], sessionID=sid)
        job["noreply_ts"] = now()
        prompt("noreply_text", no_reply=True)
        if not c.watcher.wait_records(sid, 2, NO_REPLY_AFTER_S + c.export_bound_s + 10):
            raise JobFailed("no record after the noReply prompt within %.0fs"
                            % (NO_REPLY_AFTER_S + c.export_bound_s + 10))
    elif kind == "shell":
        wait_export(1, first_idle, "first turn")
        idx = c.hub.index()
        c.hub.marker(kind="shell_request", job=job["id"], sessionID=sid)
        st, r = c.api.call("POST", "/session/%s/shell" % sid,
                           body={"agent": "build", "command": "echo from-shell"}, query=q)
        job["notes"].append("shell -> %s %s" % (st, str(r)[:200]))
        if st != 200:
            raise JobFailed("shell failed: %s %s" % (st, str(r)[:300]))
        wait_idle(idx, "the shell command")
    elif kind == "multiturn_quick":
        time.sleep(0.5)
        idx = prompt("text")
        wait_idle(idx, "second prompt")
    elif kind == "delete":
        time.sleep(0.5)
        idx = c.hub.index()
        c.hub.marker(kind="delete_request", job=job["id"], sessionID=sid)
        st, r = c.api.call("DELETE", "/session/%s" % sid, query=q)
        job["notes"].append("DELETE -> %s %s" % (st, r))
        wait_event(lambda t, p: t == "session.deleted" and ev_session(p) == sid, idx, "session.deleted")
    elif kind in ("archive", "archive_late"):
        if kind == "archive_late":
            wait_export(1, first_idle, "before archiving")
        else:
            time.sleep(0.5)
        idx = c.hub.index()
        c.hub.marker(kind="archive_request", job=job["id"], sessionID=sid)
        st, r = c.api.call("PATCH", "/session/%s" % sid, body={"time": {"archived": int(now() * 1000)}}, query=q)
        job["notes"].append("PATCH archived -> %s" % st)
        wait_event(lambda t, p: t == "session.updated" and ev_session(p) == sid
                   and ((p.get("info") or {}).get("time") or {}).get("archived"), idx,
                   "session.updated with time.archived")
    elif kind == "cli_delete":
        wait_export(1, first_idle, "before deleting")
        watch = RowWatch(c.db_path, sid)
        c.hub.marker(kind="cli_delete_start", job=job["id"], sessionID=sid)
        t0 = now()
        cp = subprocess.run([c.opencode, "session", "delete", sid], cwd=job["repo"], env=c.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            timeout=c.job_timeout, start_new_session=True)
        t1 = now()
        watch.join(timeout=5)
        c.hub.marker(kind="cli_delete_end", job=job["id"], sessionID=sid, rc=cp.returncode,
                     row_present_ts=watch.present_ts, row_gone_ts=watch.gone_ts)
        said = re.sub(r"\x1b\[[0-9;]*m", "", cp.stdout.decode("utf-8", "replace"))[-200:].strip()
        job["notes"].append("opencode session delete rc=%s in %.1fs: %s" % (cp.returncode, t1 - t0, said))
        if cp.returncode != 0:
            raise JobFailed("opencode session delete exited %s" % cp.returncode)
        if watch.gone_ts is None:
            raise JobFailed("the session row did not disappear (%s)" % (watch.error or "still there"))
        # No event exists for this deletion: the reference time is the last database poll that
        # still saw the row (conservative: latencies are over-, never under-estimated).
        job["deleted_ref_ts"] = watch.present_ts or t0
        job["deleted_gone_ts"] = watch.gone_ts

    job["t_end"] = now()
    job["status"] = "ok"
    c.hub.marker(kind="job_end", job=job["id"], sessionID=sid, status="ok")


# ---------------------------------------------------------------------------
# what the rules call for, from OpenCode's own events
# ---------------------------------------------------------------------------

def moments_of(events, sid, job):
    """The lifecycle moments of one session, in receive order."""
    out = []
    for rec in events:
        pl = rec.get("payload") or {}
        t = pl.get("type")
        p = pl.get("properties") or {}
        if ev_session(p) != sid:
            continue
        ts = rec["recv_ts"]
        st = (p.get("status") or {}).get("type") if t == "session.status" else None
        if t == "session.status" and st in ("busy", "retry"):
            out.append({"kind": "busy", "ts": ts})
        elif t == "session.error":
            out.append({"kind": "error", "ts": ts, "error": (p.get("error") or {}).get("name")})
        elif t == "todo.updated":
            todos = p.get("todos") or []
            out.append({"kind": "todos", "ts": ts,
                        "open": any(x.get("status") not in ("completed", "cancelled") for x in todos)})
        elif t == "session.idle":
            out.append({"kind": "idle", "ts": ts})
        elif t == "session.updated" and ((p.get("info") or {}).get("time") or {}).get("archived"):
            if not any(m["kind"] == "archived" for m in out):
                out.append({"kind": "archived", "ts": ts})
        elif t == "session.deleted":
            out.append({"kind": "deleted", "ts": ts, "ref_event": "session.deleted"})
    if job.get("deleted_ref_ts"):
        out.append({"kind": "deleted", "ts": job["deleted_ref_ts"],
                    "ref_event": "none (opencode session delete); last DB poll that saw the row"})
    if job.get("noreply_ts"):
        # No event exists: the reference is when the prompt was sent (just before the request).
        out.append({"kind": "noreply", "ts": job["noreply_ts"]})
    out.sort(key=lambda m: m["ts"])
    return out


def expected_exports(moments, debounce, final_after, shift=0.0):
    """The exports the daemon's rules call for (see the module docs), in order. `shift` moves
    every debounce/final deadline, to find moments too close to a deadline to call."""
    out = []
    pending = None
    in_idle = False
    err = None
    err_ts = None
    todos_open = False
    archived = False

    def flush(until):
        nonlocal pending
        if pending is not None and pending["due"] <= until:
            out.append(pending)
        pending = None

    for m in moments:
        k, ts = m["kind"], m["ts"]
        if k == "busy":
            in_idle = False
            err, err_ts = None, None
            flush(ts)  # exported if its window had passed, else cancelled by the new turn
        elif k == "error":
            err = m["error"]
            err_ts = err_ts or ts
        elif k == "todos":
            todos_open = m["open"]
        elif k == "idle":
            if in_idle:
                continue  # error turns publish session.idle twice
            in_idle = True
            flush(ts)
            wait = max(debounce, final_after) if todos_open else debounce
            pending = {"event": "session.error" if err else "session.idle", "error": err,
                       "archived": archived,
                       "ref": min(err_ts, ts) if err_ts else ts,
                       "ref_event": "session.error" if err_ts and err_ts <= ts else "session.idle",
                       "wait": wait, "todos_open": todos_open, "due": ts + wait + shift}
        elif k == "archived":
            archived = True
            if pending is not None and ts < pending["due"]:
                pending["archived"] = True  # rides on the pending export
            else:
                flush(ts)
                if out and out[-1]["event"] != "session.deleted":
                    last = out[-1]
                    out.append(dict(last, archived=True, ref=ts, ref_event="session.updated (time.archived)",
                                    wait=0.0, todos_open=False, due=ts))
        elif k == "noreply":
            # A user message nobody answers: the daemon calls the turn ended NO_REPLY_AFTER_S
            # after it was sent, then exports it like an idle after the debounce.
            flush(ts)
            ended = ts + NO_REPLY_AFTER_S
            in_idle = True
            pending = {"event": "session.idle", "error": None, "archived": archived,
                       "ref": ended, "ref_event": "noReply prompt + %.0f s" % NO_REPLY_AFTER_S,
                       "wait": debounce, "todos_open": False, "due": ended + debounce + shift}
        elif k == "deleted":
            flush(ts)  # a deletion inside the window replaces the pending export
            out.append({"event": "session.deleted", "error": None, "archived": None, "ref": ts,
                        "ref_event": m["ref_event"], "wait": 0.0, "todos_open": False, "due": ts})
    flush(float("inf"))
    return out


def check_oracle():
    """Guards the oracle above on hand-made moment lists (debounce 2 s, final_after 6 s)."""
    def sig(ms):
        return [(e["event"], e["error"], e["archived"]) for e in expected_exports(ms, 2.0, 6.0)]

    def mk(*items):
        out = []
        for kind, ts, *extra in items:
            m = {"kind": kind, "ts": ts, "ref_event": kind}
            if kind == "error":
                m["error"] = extra[0]
            if kind == "todos":
                m["open"] = extra[0]
            out.append(m)
        return out

    idle = ("session.idle", None, False)
    assert sig(mk(("busy", 0), ("idle", 1))) == [idle]
    # error turns publish idle twice: one export, as session.error
    assert sig(mk(("busy", 0), ("error", 1, "APIError"), ("idle", 1), ("idle", 1.3))) == [
        ("session.error", "APIError", False)]
    # a new prompt inside the window cancels the pending export; after it, both are exported
    assert sig(mk(("busy", 0), ("idle", 1), ("busy", 1.5), ("idle", 2))) == [idle]
    assert sig(mk(("busy", 0), ("idle", 1), ("busy", 3.5), ("idle", 4))) == [idle, idle]
    # open todos: exported after final_after unless a prompt comes first
    exp = expected_exports(mk(("busy", 0), ("todos", 0.5, True), ("idle", 1)), 2.0, 6.0)
    assert [e["due"] for e in exp] == [7.0] and exp[0]["todos_open"]
    assert sig(mk(("busy", 0), ("todos", 0.5, True), ("idle", 1), ("busy", 4), ("todos", 5, False),
                  ("idle", 6))) == [idle]
    # archive inside the window rides on the export; after it, exports again
    assert sig(mk(("busy", 0), ("idle", 1), ("archived", 1.5))) == [("session.idle", None, True)]
    assert sig(mk(("busy", 0), ("idle", 1), ("archived", 4))) == [idle, ("session.idle", None, True)]
    # a noReply prompt after an export: one more export, NO_REPLY_AFTER_S + debounce after it
    exp = expected_exports(mk(("busy", 0), ("idle", 1), ("noreply", 5)), 2.0, 6.0)
    assert signature(exp) == [idle, idle] and exp[1]["due"] == 5 + NO_REPLY_AFTER_S + 2.0
    # deletion inside the window replaces the pending export; after it, follows it
    assert sig(mk(("busy", 0), ("idle", 1), ("deleted", 1.5))) == [("session.deleted", None, None)]
    assert sig(mk(("busy", 0), ("idle", 1), ("deleted", 4))) == [idle, ("session.deleted", None, None)]


def signature(exports):
    return [(e["event"], e["error"], e["archived"]) for e in exports]


def actual_signature(actual):
    out = []
    for a in actual:
        line = a["line"]
        arch = None if line.get("event") == "session.deleted" else line.get("archivedAt") is not None
        out.append((line.get("event"), line.get("error"), arch))
    return out


# ---------------------------------------------------------------------------
# the final database, read by the test's own SQL
# ---------------------------------------------------------------------------

def db_facts(db_file, sid):
    conn = sqlite3.connect("file:%s?mode=ro" % db_file, uri=True)
    try:
        row = conn.execute("SELECT parent_id, time_archived, title FROM session WHERE id = ?", (sid,)).fetchone()
        if row is None:
            return None
        last = conn.execute(
            "SELECT json_extract(data, '$.time.completed'), json_extract(data, '$.error.name') FROM message "
            "WHERE session_id = ? AND json_extract(data, '$.role') = 'assistant' "
            "ORDER BY time_created DESC, id DESC LIMIT 1", (sid,)).fetchone()
        todos = {}
        for (status,) in conn.execute("SELECT status FROM todo WHERE session_id = ?", (sid,)):
            todos[status] = todos.get(status, 0) + 1
        return {
            "parent_id": row[0],
            "time_archived": row[1],
            "title": row[2],
            "last_completed": last[0] if last else None,
            "last_error": last[1] if last else None,
            "messages": conn.execute("SELECT COUNT(*) FROM message WHERE session_id = ?", (sid,)).fetchone()[0],
            "children": sorted(r[0] for r in conn.execute("SELECT id FROM session WHERE parent_id = ?", (sid,))),
            "todo_stats": {"total": sum(todos.values()), "completed": todos.get("completed", 0),
                           "cancelled": todos.get("cancelled", 0), "pending": todos.get("pending", 0),
                           "inProgress": todos.get("in_progress", 0)},
        }
    finally:
        conn.close()


# Tool calls of each job's first turn as scripted in fake_llm.py: the `tools` of the job's first
# record must count exactly these (a subagent's own calls belong to the child session).
FIRST_TURN_TOOLS = {
    "complete": {"todowrite": 2, "bash": 1, "write": 1, "read": 1, "edit": 1},
    "delete": {"todowrite": 2, "bash": 1, "write": 1, "read": 1, "edit": 1},
    "incomplete_todos": {"todowrite": 2, "bash": 1},
    "subagent": {"task": 1},
    "abort": {"bash": 1},
}


def check_record(kind, rec, facts):
    """Problems with the session's last record against the final database."""
    p = []
    if facts is None:
        if kind not in ("delete", "cli_delete"):
            p.append("session missing from the database but not deleted by the test")
        if rec.get("endReason") != "deleted":
            p.append("deleted session: endReason %r, want 'deleted'" % rec.get("endReason"))
        if rec.get("deletedAt") is None:
            p.append("deleted session: deletedAt missing")
        if not rec.get("messageCount"):
            p.append("deleted session: the record lost its contents (messageCount %r)" % rec.get("messageCount"))
        return p
    want_end = "error" if facts["last_error"] else "idle"
    if rec.get("endReason") != want_end:
        p.append("endReason %r, database says %r" % (rec.get("endReason"), want_end))
    got_err = (rec.get("error") or {}).get("name")
    if got_err != facts["last_error"]:
        p.append("error.name %r, database says %r" % (got_err, facts["last_error"]))
    if rec.get("archivedAt") != facts["time_archived"]:
        p.append("archivedAt %r, session.time_archived %r" % (rec.get("archivedAt"), facts["time_archived"]))
    if rec.get("deletedAt") is not None:
        p.append("deletedAt %r on a session that exists" % rec.get("deletedAt"))
    if rec.get("parentSessionId") is not None:
        p.append("a root session's record has parentSessionId %r" % rec.get("parentSessionId"))
    kids = sorted(ch.get("sessionId") for ch in rec.get("children") or [])
    if kids != facts["children"]:
        p.append("children %s, database says %s" % (kids, facts["children"]))
    if rec.get("messageCount") != facts["messages"]:
        p.append("messageCount %r, database has %r messages" % (rec.get("messageCount"), facts["messages"]))
    ts = rec.get("todoStats") or {}
    got_ts = {k: ts.get(k) for k in facts["todo_stats"]}
    if got_ts != facts["todo_stats"]:
        p.append("todoStats %s, database says %s" % (got_ts, facts["todo_stats"]))
    if rec.get("incomplete"):
        p.append("incomplete: true on a turn that completed")
    return p


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

class Terminated(Exception):
    pass


def on_sigterm(signum, _frame):
    raise Terminated("signal %d" % signum)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opencode", required=True, help="the opencode binary (tests/live/install_opencode.sh)")
    ap.add_argument("--daemon", required=True, help="the opencode-telemetry binary")
    ap.add_argument("--out", required=True, help="scratch directory (emptied first)")
    ap.add_argument("--report", help="where to write the JSON report (default OUT/report.json)")
    ap.add_argument("--debounce-ms", type=int, default=2000)
    ap.add_argument("--poll-ms", type=int, default=250)
    ap.add_argument("--final-after-secs", type=int, default=6)
    ap.add_argument("--parallel", type=int, default=4, help="concurrent jobs")
    ap.add_argument("--job-timeout", type=float, default=60)
    ap.add_argument("--total-timeout", type=float, default=240, help="hard limit for the whole run")
    ap.add_argument("--no-netns", action="store_true", help="do not re-run inside `unshare -n`")
    ap.add_argument("--daemon-debounce-ms", type=int,
                    help="configure the daemon with this debounce while the checks keep --debounce-ms "
                         "(to see the test catch a daemon that does not keep its rules)")
    ap.add_argument("--daemon-after-opencode", dest="daemon_first", action="store_false",
                    help="start the daemon once `opencode serve` is up (default: before it, when "
                         "OpenCode's database does not exist yet, as a user service would be)")
    a = ap.parse_args()
    a.opencode = os.path.abspath(a.opencode)
    a.daemon = os.path.abspath(a.daemon)

    if not a.no_netns:
        reexec_in_netns("OPENCODE_TELEMETRY_LIVE_IN_NETNS")
    signal.signal(signal.SIGTERM, on_sigterm)

    check_oracle()
    t0 = now()
    deadline = t0 + a.total_timeout
    out = os.path.abspath(a.out)
    report_path = os.path.abspath(a.report or os.path.join(out, "report.json"))
    if os.path.exists(out):
        shutil.rmtree(out)
    logs = os.path.join(out, "logs")
    os.makedirs(logs)
    for d in ("home", "data", "config", "cache", "state", "tmp"):
        os.makedirs(os.path.join(out, "xdg", d))
    env = isolated_env(out)
    debounce = a.debounce_ms / 1000.0
    poll = a.poll_ms / 1000.0
    final_after = float(a.final_after_secs)
    idle_bound = debounce + poll + 1.0
    report = {
        "ok": False,
        "opencode_bin": os.path.abspath(a.opencode),
        "daemon_bin": os.path.abspath(a.daemon),
        "netns": os.environ.get("OPENCODE_TELEMETRY_LIVE_IN_NETNS") == "1",
        "config": {"debounce_ms": a.debounce_ms, "poll_interval_ms": a.poll_ms,
                   "final_after_secs": a.final_after_secs, "parallel": a.parallel,
                   "daemon_first": a.daemon_first},
        "bounds_s": {"idle_or_error": idle_bound, "open_todos": final_after + poll + 1.0,
                     "archive_or_delete": idle_bound},
        "problems": [],
        "sessions": [],
        "timings_s": {},
    }
    problems = report["problems"]
    version = subprocess.run([a.opencode, "--version"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=60).stdout.decode().strip()
    report["opencode_version"] = version
    log("opencode %s; daemon %s; out %s" % (version, a.daemon, out))

    repos = []
    for name in ("project-a", "project-b"):
        p = os.path.join(out, "work", name)
        make_repo(p, name)
        repos.append(p)

    procs = {}
    stopping = threading.Event()
    hub = None
    watcher = None
    jobs = []
    db_path = os.path.join(out, "xdg", "data", "opencode", "opencode.db")
    daemon_dir = os.path.join(out, "daemon")
    sink_path = os.path.join(daemon_dir, "sessions.ndjson")
    tlog_path = os.path.join(daemon_dir, "transitions.ndjson")
    try:
        # 1. the model
        fake = Proc("fake_llm", [sys.executable, os.path.join(HERE, "fake_llm.py"), "--port", "0",
                                 "--log", os.path.join(out, "llm_requests.jsonl")],
                    out, {"PATH": env["PATH"], "LANG": "C.UTF-8"}, os.path.join(logs, "fake_llm.log"))
        procs["fake_llm"] = fake
        llm_port = int(fake.wait_line(r"PORT (\d+)", 15).group(1))
        write_opencode_config(out, llm_port)

        def start_daemon():
            os.makedirs(daemon_dir)
            cfg_path = os.path.join(daemon_dir, "config.toml")
            with open(cfg_path, "w") as f:
                f.write(
                    "data_dir = %s\n\n[source]\ndb_path = %s\npoll_interval_ms = %d\n\n"
                    "[export]\ndebounce_ms = %d\nfinal_after_secs = %d\n\n[local]\npath = %s\n\n"
                    "[privacy]\nlevel = \"content\"\n\n"
                    "[service]\nshutdown_grace_secs = 5\nlog_level = \"info\"\n"
                    % (json.dumps(os.path.join(daemon_dir, "data")), json.dumps(db_path), a.poll_ms,
                       a.daemon_debounce_ms or a.debounce_ms, a.final_after_secs, json.dumps(sink_path)))
            dhome = os.path.join(daemon_dir, "home")
            denv = {"PATH": env["PATH"], "HOME": dhome, "XDG_CONFIG_HOME": os.path.join(dhome, ".config"),
                    "XDG_DATA_HOME": os.path.join(dhome, ".local/share"),
                    "XDG_STATE_HOME": os.path.join(dhome, ".local/state"), "NO_COLOR": "1"}
            daemon = Proc("opencode-telemetry",
                          [a.daemon, "--config", cfg_path, "run", "--transitions-log", tlog_path],
                          daemon_dir, denv, os.path.join(logs, "daemon.log"))
            procs["daemon"] = daemon
            daemon.wait_line(r"running", 20)
            report["timings_s"]["daemon_running"] = round(now() - t0, 2)

        watcher = OutputWatcher(sink_path, tlog_path)
        if a.daemon_first:
            # As a user service would: running before OpenCode has ever created its database.
            start_daemon()

        # 2. OpenCode serve + its event stream
        port = free_port()
        serve = Proc("opencode-serve", [a.opencode, "serve", "--port", str(port), "--hostname", "127.0.0.1"],
                     repos[0], env, os.path.join(logs, "serve.log"))
        procs["serve"] = serve
        m = serve.wait_line(r"listening on (http://[0-9.]+:(\d+))", 60)
        api = Api(m.group(1))
        health_deadline = now() + 30
        while True:
            try:
                st, _ = api.call("GET", "/global/health", timeout=3)
                if st == 200:
                    break
            except Exception:  # noqa: BLE001 - retried until the deadline
                pass
            if now() > health_deadline:
                raise RuntimeError("opencode serve never became healthy")
            time.sleep(0.3)
        hub = EventHub("127.0.0.1", int(m.group(2)), "/global/event", os.path.join(out, "events.jsonl"))
        if not hub.connected.wait(15):
            raise RuntimeError("could not subscribe to /global/event")
        if not os.path.exists(db_path):
            raise RuntimeError("OpenCode's database is not at %s" % db_path)
        report["timings_s"]["opencode_ready"] = round(now() - t0, 2)

        # 3. the daemon on the live database (unless it was started first)
        if not a.daemon_first:
            start_daemon()

        # 4. the jobs
        c = Ctx(api=api, hub=hub, watcher=watcher, job_timeout=a.job_timeout, export_bound_s=idle_bound,
                debounce_s=debounce,
                db_path=db_path, opencode=a.opencode, env=env)
        for i, (kind, scenario, what) in enumerate(JOBS):
            jobs.append({"id": "j%02d" % i, "kind": kind, "scenario": scenario, "what": what,
                         "repo": repos[i % len(repos)], "notes": [], "status": "not run"})
        work = queue.Queue()
        for j in jobs:
            work.put(j)

        def worker():
            while True:
                try:
                    j = work.get_nowait()
                except queue.Empty:
                    return
                if now() > deadline or stopping.is_set():
                    j["status"] = "skipped (total timeout or stopping)"
                    continue
                try:
                    run_job(j, c)
                    log("job %s %-16s %s %.1fs" % (j["id"], j["kind"], j["session_id"], j["t_end"] - j["t_start"]))
                except Exception as e:  # noqa: BLE001 - recorded as the job's failure
                    j["status"] = "failed: %s" % e
                    j["t_end"] = now()
                    log("job %s %s FAILED: %s" % (j["id"], j["kind"], e))
                    hub.marker(kind="job_end", job=j["id"], sessionID=j.get("session_id"), status="failed",
                               error=str(e))

        t_jobs = now()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, a.parallel))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, deadline - now()))
        if any(t.is_alive() for t in threads):
            problems.append("jobs still running at the total timeout (%.0fs)" % a.total_timeout)
        report["timings_s"]["jobs"] = round(now() - t_jobs, 2)

        # 5. wait for every export the rules call for, then long enough to see any extra one
        t_wait = now()
        while True:
            events = hub.snapshot()
            want = {}
            last_ts = t_jobs
            for j in jobs:
                if j.get("session_id"):
                    exp = expected_exports(moments_of(events, j["session_id"], j), debounce, final_after)
                    want[j["session_id"]] = len(exp)
                    if exp:
                        last_ts = max(last_ts, max(e["due"] for e in exp))
            for rec in events:
                if (rec.get("payload") or {}).get("type") not in ("server.heartbeat", "server.connected"):
                    last_ts = max(last_ts, rec["recv_ts"])
            all_there = all(watcher.count(s) >= n for s, n in want.items())
            quiet_until = last_ts + debounce + poll + 1.0
            if all_there and now() >= quiet_until:
                break
            if now() > min(deadline, quiet_until + final_after + 10):
                problems.append("not every expected export reached the sink in time")
                break
            time.sleep(0.2)
        report["timings_s"]["wait_exports"] = round(now() - t_wait, 2)
    except Terminated as e:
        problems.append("terminated (%s)" % e)
    except Exception as e:  # noqa: BLE001 - reported, then everything is cleaned up
        problems.append("driver error: %r" % e)
        log("driver error: %r" % e)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the clean-up finish
        stopping.set()
        d = procs.get("daemon")
        if d is not None:
            rc, secs, killed = d.stop(timeout=15)
            report["daemon"] = {"exit_code": rc, "stop_seconds": round(secs, 2), "killed": killed}
            if rc != 0 or killed:
                problems.append("the daemon did not exit 0 on SIGTERM (rc=%s, killed=%s)" % (rc, killed))
        if watcher is not None:
            watcher.close()
        if hub is not None:
            hub.stop_flag = True
        for name in ("serve", "fake_llm"):
            if name in procs:
                procs[name].stop()
        if hub is not None:
            hub.close()
        report["leftover_pids_killed"] = sweep_leftovers(env["HOME"])

    # 6. compare
    final_db = os.path.join(out, "final.db")
    if os.path.exists(db_path):
        src = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True, timeout=30)
        dst = sqlite3.connect(final_db)
        src.backup(dst)
        src.close()
        dst.close()
    events = hub.snapshot() if hub else []
    report["events_captured"] = len(events)
    report["sse_reconnects"] = hub.reconnects if hub else None
    records = watcher.records if watcher else []
    transitions = watcher.transitions if watcher else []
    if watcher and (watcher.sink.bad or watcher.tlog.bad):
        problems.append("unparseable lines: sink %s, transitions log %s" % (watcher.sink.bad, watcher.tlog.bad))
    report["records_at_sink"] = len(records)
    report["transitions_logged"] = len(transitions)

    children = {}
    for rec in events:
        pl = rec.get("payload") or {}
        if pl.get("type") == "session.created":
            info = (pl.get("properties") or {}).get("info") or {}
            if info.get("parentID"):
                children[info["id"]] = info["parentID"]
    roots = {j["session_id"] for j in jobs if j.get("session_id")}
    for r in records:
        sid = r["record"].get("sessionId")
        if sid not in roots:
            problems.append("record for a session that is not a root session of this test: %s%s" % (
                sid, " (a child: exported on its own)" if sid in children else ""))

    for j in jobs:
        s = {"job": j["id"], "kind": j["kind"], "what": j["what"], "session_id": j.get("session_id"),
             "job_status": j["status"], "notes": j["notes"], "problems": []}
        report["sessions"].append(s)
        sp = s["problems"]
        if j["status"] != "ok":
            sp.append("job %s" % j["status"])
        sid = j.get("session_id")
        if not sid:
            continue
        moments = moments_of(events, sid, j)
        s["opencode_moments"] = [dict(m, ts=round(m["ts"] - t0, 3)) for m in moments]
        alts = []
        for shift in (0.0, -0.6, 0.6):
            e = expected_exports(moments, debounce, final_after, shift)
            if signature(e) not in [signature(x) for x in alts]:
                alts.append(e)
        if len(alts) > 1:
            s["ambiguous"] = "a moment fell within 0.6 s of a debounce deadline; either outcome accepted"
        actual = sorted((t for t in transitions if t["line"].get("sessionId") == sid),
                        key=lambda t: t["line"].get("ts", 0))
        recs = [r for r in records if r["record"].get("sessionId") == sid]
        s["expected"] = [{"event": e["event"], "error": e["error"], "archived": e["archived"],
                          "answers": e["ref_event"]} for e in alts[0]]
        s["actual"] = [{k: t["line"].get(k) for k in ("event", "endReason", "error", "archivedAt", "deletedAt",
                                                       "incomplete")} for t in actual]
        match = next((e for e in alts if signature(e) == actual_signature(actual)), None)
        if match is None:
            sp.append("exports %s, OpenCode's events call for %s" % (
                actual_signature(actual), " or ".join(str(signature(e)) for e in alts)))
        # When the terminal message of the session's last turn was written (time.completed, s).
        # OpenCode publishes session.error for an abort *before* it writes the message, and the
        # daemon can only see, and debounce from, the write; a loaded machine widens that gap.
        early = db_facts(final_db, sid) if os.path.exists(final_db) else None
        written = early["last_completed"] / 1000.0 if early and early["last_completed"] else None
        ends_at = [i for i, e in enumerate(match or []) if e["ref_event"] in ("session.idle", "session.error")]
        # join each decided export with its line at the sink (exportedAt == the log's ts)
        lat = []
        for i, t in enumerate(actual):
            line = t["line"]
            sink = next((r for r in recs if r["record"].get("exportedAt") == line.get("ts")), None)
            item = {"event": line.get("event"), "decided_at": line.get("ts")}
            if sink is None:
                sp.append("export %d (%s, exportedAt %s) never reached the sink" % (i, line.get("event"), line.get("ts")))
            else:
                if sink["record"].get("endReason") != line.get("endReason"):
                    sp.append("sink record endReason %r != transitions log %r" % (
                        sink["record"].get("endReason"), line.get("endReason")))
            if match is not None:
                e = match[i]
                bound = (final_after if e["todos_open"] else debounce) + poll + 1.0
                if ends_at and i == ends_at[-1] and written is not None and written > e["ref"]:
                    # Counted from the write the daemon sees, not from the earlier event.
                    gap = round(written - e["ref"], 3)
                    bound += gap
                    item["written_after_event_s"] = gap
                item["answers"] = e["ref_event"]
                item["decide_latency_s"] = round(line["ts"] / 1000.0 - e["ref"], 3)
                if sink is not None:
                    item["sink_latency_s"] = round(sink["seen"] - e["ref"], 3)
                    item["bound_s"] = bound
                    if item["sink_latency_s"] > bound:
                        sp.append("%s reached the sink %.3f s after OpenCode's %s (bound %.2f s)" % (
                            line.get("event"), item["sink_latency_s"], e["ref_event"], bound))
                if e["wait"] > 0 and item["decide_latency_s"] < e["wait"] - 0.5:
                    sp.append("%s exported %.3f s after OpenCode's %s: before its %.1f s window" % (
                        line.get("event"), item["decide_latency_s"], e["ref_event"], e["wait"]))
            lat.append(item)
        s["latencies"] = lat
        if len(recs) != len(actual):
            sp.append("%d records at the sink, %d exports in the transitions log" % (len(recs), len(actual)))
        # contents against the final database, OpenCode's events and the scripted turns
        if recs and os.path.exists(final_db):
            facts = db_facts(final_db, sid)
            s["db"] = facts
            last = recs[-1]["record"]
            sp += check_record(j["kind"], last, facts)
            for r in recs:
                rec = r["record"]
                if rec.get("opencodeVersion") != version:
                    sp.append("opencodeVersion %r, want %r" % (rec.get("opencodeVersion"), version))
                # A deleted session's tombstone (privacy.on_delete, the default) has no path.
                tombstone = rec.get("endReason") == "deleted" and rec.get("deletion") == "tombstone"
                if tombstone:
                    for gone in ("title", "projectDirectory", "projectWorktree", "hostname", "todos", "messages"):
                        if gone in rec:
                            sp.append("the tombstone has %s" % gone)
                elif rec.get("projectDirectory") != j["repo"]:
                    sp.append("projectDirectory %r, want %r" % (rec.get("projectDirectory"), j["repo"]))
                if not rec.get("createdAt") or not rec.get("updatedAt") or rec["updatedAt"] > rec.get("exportedAt", 0):
                    sp.append("createdAt/updatedAt/exportedAt out of order: %s/%s/%s" % (
                        rec.get("createdAt"), rec.get("updatedAt"), rec.get("exportedAt")))
            want_tools = FIRST_TURN_TOOLS.get(j["kind"], {})
            got_tools = {t.get("name"): t.get("calls") for t in recs[0]["record"].get("tools") or []}
            if got_tools != want_tools:
                sp.append("tools %s, the scripted turn made %s" % (got_tools, want_tools))
            ev_kids = sorted(k for k, v in children.items() if v == sid)
            if facts is not None:
                rec_kids = sorted(ch.get("sessionId") for ch in last.get("children") or [])
                if rec_kids != ev_kids:
                    sp.append("children %s, OpenCode's session.created events say %s" % (rec_kids, ev_kids))
            if facts is not None and facts["last_completed"] and match:
                ends = [e for e in match if e["ref_event"] in ("session.idle", "session.error")]
                if ends:
                    # How long after OpenCode's event the terminal message's time.completed was
                    # written: the daemon's debounce counts from the latter.
                    s["completed_after_event_s"] = round(facts["last_completed"] / 1000.0 - ends[-1]["ref"], 3)
            if j["kind"] == "subagent" and not (facts and facts["children"] and ev_kids):
                sp.append("the subagent job left no child session in the database")
            if j["kind"] in ("archive", "archive_late") and not (facts and facts["time_archived"]):
                sp.append("the archived session has no time_archived in the database")
        for p in sp:
            problems.append("%s %s %s: %s" % (j["id"], j["kind"], sid, p))

    daemon_log = os.path.join(logs, "daemon.log")
    if os.path.exists(daemon_log):
        text = open(daemon_log, encoding="utf-8", errors="replace").read().splitlines()
        errors = [x for x in text if re.search(r"\bERROR\b|panicked", x)]
        warns = [x for x in text if re.search(r"\bWARN\b", x)]
        report.setdefault("daemon", {}).update(error_lines=errors[:20], warn_lines=warns[:20])
        if errors:
            problems.append("the daemon logged %d ERROR/panic line(s), e.g. %s" % (len(errors), errors[0]))

    report["timings_s"]["total"] = round(now() - t0, 2)
    report["ok"] = not problems
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)
    print_summary(report)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


def print_summary(report):
    log("opencode %s, netns %s, debounce %d ms, poll %d ms, final_after %d s; total %.1f s" % (
        report.get("opencode_version"), report["netns"], report["config"]["debounce_ms"],
        report["config"]["poll_interval_ms"], report["config"]["final_after_secs"],
        report["timings_s"].get("total", 0)))
    for s in report["sessions"]:
        lat = ", ".join("%s %.2fs/%.2fs (from %s)" % (x["event"], x["sink_latency_s"], x["bound_s"], x["answers"])
                        if "sink_latency_s" in x else "%s (unmatched)" % x["event"]
                        for x in s.get("latencies", []))
        log("  %-16s %s  %s  %s" % (s["kind"], s.get("session_id"), lat or "no export",
                                    "OK" if not s["problems"] else "PROBLEMS: " + "; ".join(s["problems"])))
    for p in report["problems"]:
        log("PROBLEM: %s" % p)
    log("RESULT: %s" % ("ok" if report["ok"] else "FAILED"))


if __name__ == "__main__":
    sys.exit(main())
