fn main() -> std::process::ExitCode {
    opencode_telemetry::cli::main()
}
