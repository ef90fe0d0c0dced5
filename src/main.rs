fn main() -> std::process::ExitCode {
    usersync::app::cli::main()
}
