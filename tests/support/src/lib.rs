//! Dev-only test support shared by the daemon's unit tests, its integration tests
//! (`tests/integration`) and its benches (`daemon/benches`). Never a dependency of the daemon
//! itself.
//!
//! - [`fault_server`]: a fault-injecting stand-in for the Convex ingest HTTP action on
//!   127.0.0.1 (the same request/answer contract as `convex/convex/http.ts`).
//! - [`gen_db`]: generated OpenCode databases cloned from the real 1.18.33 fixture, and a
//!   writer that adds steps while the daemon runs.

pub mod fault_server;
pub mod gen_db;
