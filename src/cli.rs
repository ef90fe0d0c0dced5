//! The command line: one binary, every role and tool as a subcommand.
//!
//! Logs go to standard error (text by default; JSON with `USERSYNC_LOG_FORMAT=json`, as in
//! containers; the level from `RUST_LOG`), so standard output stays for the command's own
//! output — `usersync decide` prints exactly one JSON document there, or nothing.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::scenario::{Scenario, run};

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
    /// Run the decision engine offline on a scenario and print the decisions as JSON.
    ///
    /// The scenario holds settings, the Outreach users, the last-known Salesforce users and
    /// the mappings before, and user_change.v1 events in delivery order (see
    /// docs/decisions.md). The real engine and Outreach client run against an in-process
    /// Outreach simulator. Exit 0 with the result on stdout; exit 2 with a message naming the
    /// field (and the event's index) on stderr if the scenario does not parse.
    Decide {
        /// The scenario file, or - for standard input.
        scenario: PathBuf,
    },
    /// Run the Salesforce subscriber: Change Data Capture events of User in, one
    /// user_change.v1 event per changed user out to Kafka.
    ///
    /// Reads the configuration file (if given) and USERSYNC_… variables (docs/settings.md):
    /// [salesforce] for the org and the stream, [kafka] for the brokers and topics, [store] for
    /// the replay checkpoint. Without a checkpoint it first exports every user as snapshots.
    /// Stops on SIGINT or SIGTERM after Kafka confirmed what was in flight and the checkpoint
    /// was saved; exits non-zero with the reason when only an admin can fix the problem
    /// (for example View All Users removed).
    Subscriber {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the processor: user_change.v1 events in from Kafka, create / link / remap / update
    /// decisions applied to Outreach.
    ///
    /// Reads [kafka] for the brokers and topic, [processor] for the consumer group, [outreach]
    /// for the API and its authorization (refresh_token or token_file), [store] for mappings
    /// and the decision log, [sync] for the settings used until an admin saves others. Loads
    /// the Outreach user index first. Stops on SIGINT or SIGTERM after the event in flight is
    /// recorded and offsets are committed.
    Processor {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run every role in one process: the subscriber, the processor and the admin server.
    ///
    /// The same configuration as the roles on their own (docs/settings.md); the admin server
    /// listens on [admin] listen. Stops on SIGINT or SIGTERM, each role as it does alone.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the pipeline on embedded defaults: Kafka's in-process mock cluster, both
    /// simulators on loopback, SQLite in a temporary folder.
    ///
    /// Seeds Outreach user 1 mapped to Salesforce user X, creates Y with X's email,
    /// deactivates X, and prints each decision as it happens, the final mapping and the admin
    /// address; then runs until Ctrl-C.
    Demo {
        /// Exit after the final mapping: 0 if Outreach user 1 was remapped to Y, 1 otherwise.
        #[arg(long)]
        once: bool,
    },
    /// Run a simulator of an external service (test equipment).
    #[command(subcommand)]
    Sim(crate::sim::SimCommand),
}

/// An error with its own exit code (2: the input is wrong).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct InputError {
    message: String,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let outcome = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(dispatch(cli.command)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("usersync: {err:#}");
            if err.downcast_ref::<InputError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("USERSYNC_LOG_FORMAT").is_ok_and(|v| v == "json");
    // A second initialisation (tests) is harmless: the first subscriber stays.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Decide { scenario } => decide(scenario).await,
        Command::Subscriber { config } => {
            let config = crate::config::Config::load(config.as_deref())?;
            crate::salesforce::role::run(&config, shutdown_signal()).await
        }
        Command::Processor { config } => {
            let config = crate::config::Config::load(config.as_deref())?;
            crate::processor::role::run(&config, shutdown_signal()).await
        }
        Command::Run { config } => {
            let config = crate::config::Config::load(config.as_deref())?;
            crate::run::run(&config, shutdown_signal()).await
        }
        Command::Demo { once } => {
            if crate::demo::run(once, shutdown_signal()).await? {
                Ok(())
            } else {
                anyhow::bail!("the remap did not happen (see the decisions above)")
            }
        }
        Command::Sim(sim) => sim.run().await,
    }
}

/// Turns true on the first SIGINT or SIGTERM.
fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut terminate =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(signal) => signal,
                    Err(error) => {
                        tracing::error!(%error, "cannot listen for SIGTERM");
                        let _ = interrupt.await;
                        let _ = tx.send(true);
                        return;
                    }
                };
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = interrupt.await;
        tracing::info!("shutting down: finishing in-flight work");
        let _ = tx.send(true);
    });
    rx
}

async fn decide(path: PathBuf) -> anyhow::Result<()> {
    let bytes = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| InputError {
                message: format!("cannot read the scenario from standard input: {e}"),
            })?;
        buf
    } else {
        std::fs::read(&path).map_err(|e| InputError {
            message: format!("cannot read scenario {}: {e}", path.display()),
        })?
    };
    let scenario = Scenario::parse(&bytes).map_err(|e| InputError { message: e.0 })?;
    let output = run(&scenario).await?;
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}
