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
enum Command {
    /// Run a simulator of an external service (test equipment).
    #[command(subcommand)]
    Sim(crate::sim::SimCommand),
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Runtime::new()?.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Sim(sim) => sim.run().await,
    }
}
