//! End to end: the real binary → HTTP → the project's Convex functions (`convex/convex/`),
//! executed by convex-test behind Convex's HTTP API (`convex/emulator/`) → the rows queried
//! back and compared with the records.
//!
//! Needs `npm ci` in `convex/` (`.ci/run` does it).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::support::*;

const ADMIN_KEY: &str = "convex-emu|admin-key";
const TOKEN: &str = "e2e-ingest-token-0123456789";

/// A running emulator; killed on drop.
pub struct Emulator {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Emulator {
    /// Starts `convex/emulator/main.ts` on a free port with `INGEST_TOKEN` set.
    pub fn start(ingest_token: &str) -> Emulator {
        let root = repo_root();
        let tsx = root.join("convex/node_modules/.bin/tsx");
        assert!(
            tsx.exists(),
            "{} is missing: run `npm ci` in convex/ (the README's test command does)",
            tsx.display()
        );
        let mut child = Command::new(&tsx)
            .arg(root.join("convex/emulator/main.ts"))
            .current_dir(root.join("convex"))
            .env("CONVEX_EMU_PORT", "0")
            .env("CONVEX_EMU_ADMIN_KEY", ADMIN_KEY)
            .env("INGEST_TOKEN", ingest_token)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the convex emulator");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("convex-emu listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the emulator did not report its port within 60 s");
        Emulator { child, url }
    }

    /// Calls an internal query as admin and returns its value.
    pub fn admin_query(&self, path: &str, args: Value) -> Value {
        let body = json!({"path": path, "args": args, "format": "json"});
        let v = post_json(
            &format!("{}/api/query", self.url),
            Some(&format!("Convex {ADMIN_KEY}")),
            &body,
        );
        assert_eq!(v["status"], "success", "{v}");
        v["value"].clone()
    }
}

/// POSTs JSON and returns the JSON reply (any status).
pub fn post_json(url: &str, authorization: Option<&str>, body: &Value) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().post(url).json(body);
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.expect("request to the emulator");
        let bytes = resp.bytes().await.unwrap();
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("bad reply {e}: {}", String::from_utf8_lossy(&bytes)))
    })
}

/// Numbers as f64 and Convex's system fields removed, so a stored document compares equal to
/// the record that was sent (Convex stores every number as float64).
fn normalize(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| !k.starts_with('_'))
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn without_exported_at(v: &Value) -> Value {
    let mut v = normalize(v);
    v.as_object_mut().unwrap().remove("exportedAt");
    v
}

#[test]
fn records_reach_the_convex_functions_and_read_back_equal() {
    let emu = Emulator::start(TOKEN);
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();

    // The same pass to the local sink gives the reference records.
    let local_cfg = scratch.write_config("[export]\ninclude_messages = true\n");
    run_once(&scratch, &local_cfg, &db);
    let reference = read_ndjson(&scratch.local_sink());
    assert_eq!(reference.len(), 25);

    let convex_cfg = scratch.path("convex.toml");
    std::fs::write(
        &convex_cfg,
        format!(
            "data_dir = \"{}\"\n[export]\ninclude_messages = true\n[convex]\nurl = \"{}\"\n",
            scratch.path("data-convex").display(),
            emu.url
        ),
    )
    .unwrap();
    let once = |token: &str| {
        run(command(&scratch)
            .env("OPENCODE_TELEMETRY_INGEST_TOKEN", token)
            .arg("--config")
            .arg(&convex_cfg)
            .arg("--db")
            .arg(&db)
            .arg("once"))
    };
    let out = once(TOKEN);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for r in &reference {
        let id = r["sessionId"].as_str().unwrap();
        let doc = emu.admin_query("sessions:get", json!({"sessionId": id}));
        assert!(doc.is_object(), "no row for {id}");
        assert!(doc["exportedAt"].as_f64().unwrap() >= r["exportedAt"].as_f64().unwrap());
        assert_eq!(without_exported_at(&doc), without_exported_at(r), "{id}");
    }
    let listed = emu.admin_query("sessions:list", json!({"limit": 1000}));
    assert_eq!(listed.as_array().unwrap().len(), 25);

    // A second pass updates the same rows: still one row per session.
    let out = once(TOKEN);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = emu.admin_query("sessions:list", json!({"limit": 1000}));
    assert_eq!(listed.as_array().unwrap().len(), 25);

    // A wrong token: a clear error, exit 1, the token never printed, the records kept queued.
    let out = once("wrong-token-value");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ingest token"), "{stderr}");
    assert!(
        !stderr.contains("wrong-token-value") && !stderr.contains(TOKEN),
        "{stderr}"
    );
    let status = run(command(&scratch)
        .arg("--config")
        .arg(&convex_cfg)
        .arg("status"));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("25"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}
