//! The command line: one binary, every role and tool as a subcommand.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "usersync",
    version,
    about = "Keeps Outreach users mapped to the right Salesforce users."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {}
}
