fn main() -> anyhow::Result<()> {
    usersync::cli::main()
}
