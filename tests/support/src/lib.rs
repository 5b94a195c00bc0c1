//! Dev-only test support shared by the daemon's unit tests, its integration tests
//! (`tests/integration`) and its benches (`daemon/benches`). Never a dependency of the daemon
//! itself.
//!
//! - [`fault_server`]: a fault-injecting stand-in for the Convex ingest HTTP action on
//!   127.0.0.1 (the same request/answer contract as `convex/convex/http.ts`).
//! - [`gen_db`]: generated OpenCode databases cloned from the real 1.18.33 fixture, and a
//!   writer that adds steps while the daemon runs.
//! - [`measure`]: CPU time and peak RSS of a child process (benches and the memory tests).
//! - [`bounded`]: a time limit for async tests.

pub mod fault_server;
pub mod gen_db;
pub mod measure;

/// Runs `f`, failing the test if it takes over 10 s (async tests never hang CI).
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(10), f)
        .await
        .expect("test took over 10 s")
}
