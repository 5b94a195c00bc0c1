//! The `opencode-telemetry` binary; see the library crate for the design.

fn main() -> std::process::ExitCode {
    opencode_telemetry::cli::main()
}
