//! The command line: one binary, every role and tool as a subcommand.
//!
//! Logs go to standard error (text by default; JSON with `USERSYNC_LOG_FORMAT=json`, as in
//! containers; the level from `RUST_LOG`), so standard output stays for the command's own
//! output — `usersync decide` prints exactly one JSON document there, or nothing.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use clap::{Parser, Subcommand};

/// The variable naming the configuration file, for every verb that reads one (a container
/// sets it once for the verb and its health check).
const CONFIG_ENV: &str = "USERSYNC_CONFIG";

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
    /// Ask a running usersync in this container whether it is alive (its GET /healthz): the
    /// health check of the container image, needing nothing but this binary.
    ///
    /// Asks --address (or USERSYNC_HEALTH_LISTEN: the --health-listen address of a role run
    /// alone), else the admin server of `usersync run` at admin.listen of the configuration.
    /// A wildcard address is asked on loopback. Exit 0 when it answers 200, 1 otherwise, with
    /// a message naming the URL asked.
    Health {
        /// host:port of the health listener or admin server to ask.
        #[arg(long, env = crate::app::health::HEALTH_LISTEN_ENV, value_name = "HOST:PORT")]
        address: Option<String>,
        /// The TOML configuration file (for admin.listen).
        #[arg(long, short, env = CONFIG_ENV)]
        config: Option<PathBuf>,
        /// How long to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout_seconds: u64,
    },
    /// Run the decision engine offline on a scenario and print the decisions as JSON.
    ///
    /// The scenario holds settings, the Outreach users, the last-known Salesforce users and
    /// the mappings before, and user_change.v1 events in delivery order (see
    /// docs/decisions.md). The real engine and Outreach client run against an in-process
    /// Outreach simulator. Exit 0 with the result on stdout; exit 2 with a message naming the
    /// field (and the event's index) on stderr if the scenario does not parse.
    #[cfg(feature = "sim")]
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
        #[arg(long, short, env = CONFIG_ENV)]
        config: Option<PathBuf>,
        #[command(flatten)]
        health: crate::app::health::HealthListen,
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
        #[arg(long, short, env = CONFIG_ENV)]
        config: Option<PathBuf>,
        #[command(flatten)]
        health: crate::app::health::HealthListen,
    },
    /// Run every role in one process: the subscriber, the processor and the admin server.
    ///
    /// The same configuration as the roles on their own (docs/settings.md); the admin server
    /// listens on [admin] listen. Stops on SIGINT or SIGTERM, each role as it does alone.
    Run {
        /// The TOML configuration file.
        #[arg(long, short, env = CONFIG_ENV)]
        config: Option<PathBuf>,
        #[command(flatten)]
        health: crate::app::health::HealthListen,
    },
    /// Show the pipeline on embedded defaults: Kafka's in-process mock cluster, both
    /// simulators on loopback, SQLite in a temporary folder.
    ///
    /// Seeds Outreach user 1 mapped to Salesforce user X, creates Y with X's email,
    /// deactivates X, and prints each decision as it happens, the final mapping and the admin
    /// address; then runs until Ctrl-C.
    ///
    /// With --salesforce-sim and --outreach-sim it tells the same story to a pipeline that runs
    /// elsewhere instead (the compose file's demo profile): it writes through the simulators'
    /// control APIs, follows the decisions through the admin API (--admin-url), and exits 0
    /// when Outreach user 1 was remapped to Y, 1 otherwise.
    ///
    /// In one process, --admin-token (or --admin-token-file) is the token its own admin server
    /// asks for, as admin.token does for `usersync run`; without one it asks for none.
    #[cfg(feature = "sim")]
    Demo {
        /// Exit after the final mapping: 0 if Outreach user 1 was remapped to Y, 1 otherwise.
        #[arg(long)]
        once: bool,
        /// The running Salesforce simulator's base URL (drive a pipeline running elsewhere).
        #[arg(long, value_name = "URL", requires = "outreach_sim")]
        salesforce_sim: Option<String>,
        /// The running Outreach simulator's base URL.
        #[arg(long, value_name = "URL", requires = "salesforce_sim")]
        outreach_sim: Option<String>,
        /// How long to wait for the simulators and the admin server to answer, and then for
        /// the first decision.
        #[arg(long, default_value_t = 180)]
        wait_seconds: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show both connections of a running usersync: state, reason, who is authorized, and
    /// what to do when a side is disconnected (docs/operations.md).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Ask a side to sign in again, optionally with new credentials (stored sealed; the
    /// server needs USERSYNC_SECRET_KEY or secrets.key_file for that).
    ///
    /// Without credentials the stored ones are tried again: for a reason fixed on the
    /// provider's side (a permission given back, a run-as user changed, a manual disconnect).
    /// A value of - reads that secret from standard input, keeping it out of the process list.
    Reconnect {
        /// salesforce or outreach.
        side: crate::connection::Side,
        /// Outreach or Salesforce: a new refresh token.
        #[arg(long)]
        refresh_token: Option<String>,
        /// Salesforce: the flow to sign in with (jwt_bearer, client_credentials, refresh_token).
        #[arg(long)]
        flow: Option<String>,
        /// Salesforce: a new consumer secret.
        #[arg(long)]
        consumer_secret: Option<String>,
        /// Salesforce JWT bearer: the authorizing user (switches who is authorized).
        #[arg(long)]
        username: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Test a side's connection now: each step of the checklist (docs/operations.md) passed or
    /// failed with the provider's error. Exits 1 when a step failed.
    TestConnection {
        /// salesforce or outreach.
        side: crate::connection::Side,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Disconnect a side by hand: it stops, keeping its checkpoint and mappings, until a
    /// reconnect.
    Disconnect {
        /// salesforce or outreach.
        side: crate::connection::Side,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Follow the live feed: decisions and connection changes as they happen.
    Tail {
        /// Print each message as the JSON the feed sends.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Read or change the sync settings of a running usersync (the CRM page's User <> User
    /// and Email <> Email settings; docs/settings.md, [sync]).
    Settings {
        #[command(subcommand)]
        verb: SettingsVerb,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Read every Salesforce user again and publish each one's state, then go on with the
    /// stream (nothing is skipped: the stream position is pinned before the read). For when
    /// Outreach was changed by hand and should be brought back in line.
    Resync {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Move the subscriber's replay position: read again every change Salesforce still holds
    /// (earliest, its 72-hour retention), skip to the newest position (latest), or start after
    /// a replay id (docs/operations.md).
    ///
    /// Prints the plan first — where the stream is now, what will be read again, what will not
    /// be read — and asks to type yes. Recorded as an admin action. Without a terminal, only
    /// --yes confirms (otherwise the plan is printed and nothing changes, exit 2).
    Replay {
        /// earliest, latest, or a replay id as events carry it in origin.replay_id: lower-case
        /// hex on Pub/Sub, a decimal number on CometD (salesforce.transport).
        #[arg(long)]
        from: String,
        /// Confirm without the question.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Look up mappings between Outreach users and Salesforce users.
    Mappings {
        #[command(subcommand)]
        verb: MappingsVerb,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run a simulator of an external service (test equipment).
    #[cfg(feature = "sim")]
    #[command(subcommand)]
    Sim(crate::app::sim_command::SimCommand),
}

#[derive(Subcommand)]
enum SettingsVerb {
    /// Print the settings in force, as JSON.
    Get,
    /// Change some settings and save: e.g. `user_mapping.auto_remap_on_inactive=false` or
    /// `email_field.dedupe=both`. The server checks the whole (remap needs Create and
    /// "When syncing both ways" deduping); a refused save names the rule and changes nothing.
    Set {
        /// section.name=value; true/false for the checkboxes.
        #[arg(required = true, value_parser = setting_change)]
        changes: Vec<(String, serde_json::Value)>,
    },
}

#[derive(Subcommand)]
enum MappingsVerb {
    /// The mappings matching every filter given (all of them with none).
    Find {
        /// Either user's email (any case).
        #[arg(long)]
        email: Option<String>,
        /// A Salesforce user id (15 or 18 characters).
        #[arg(long)]
        salesforce_user_id: Option<String>,
        /// An Outreach user id.
        #[arg(long)]
        outreach_user_id: Option<String>,
    },
}

/// `section.name=value`: true/false become booleans, anything else a string.
fn setting_change(raw: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("{raw:?} is not section.name=value"))?;
    let value = match value {
        "true" => serde_json::Value::Bool(true),
        "false" => serde_json::Value::Bool(false),
        other => serde_json::Value::String(other.to_owned()),
    };
    Ok((key.trim().to_owned(), value))
}

/// Where the admin API of a running usersync is.
#[derive(clap::Args)]
struct AdminArgs {
    /// The admin API's base URL.
    #[arg(long, env = "USERSYNC_ADMIN_URL", default_value = crate::admin::client::DEFAULT_ADMIN_URL)]
    admin_url: String,
    /// The admin token (admin.token of the server); better given in the environment than on
    /// the command line, where the process list shows it.
    #[arg(long, env = "USERSYNC_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A file holding the admin token (a mounted container secret), instead of --admin-token.
    #[arg(
        long,
        env = "USERSYNC_ADMIN_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "admin_token"
    )]
    admin_token_file: Option<PathBuf>,
}

impl AdminArgs {
    fn api(&self) -> anyhow::Result<crate::admin::client::AdminApi> {
        Ok(crate::admin::client::AdminApi::new(
            &self.admin_url,
            self.token()?,
        ))
    }

    /// The token given, from --admin-token or the file --admin-token-file names.
    fn token(&self) -> anyhow::Result<Option<String>> {
        Ok(match &self.admin_token_file {
            None => self.admin_token.clone(),
            Some(file) => {
                let text = std::fs::read_to_string(file).with_context(|| {
                    format!(
                        "reading the admin token from {} (--admin-token-file, \
                         USERSYNC_ADMIN_TOKEN_FILE)",
                        file.display()
                    )
                })?;
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            }
        })
    }
}

/// A secret from the command line; `-` reads it from standard input.
fn secret_argument(value: Option<String>) -> anyhow::Result<Option<String>> {
    match value.as_deref() {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| InputError {
                    message: format!("cannot read the secret from standard input: {e}"),
                })?;
            Ok(Some(text.trim().to_owned()))
        }
        _ => Ok(value),
    }
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
    // Before anything decodes Avro: apache-avro keeps the first cap it is given.
    if let Err(problem) = crate::salesforce::avro::cap_allocations() {
        tracing::warn!(%problem, "Avro allocations are not capped as usersync intends");
    }
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
        #[cfg(feature = "sim")]
        Command::Decide { scenario } => decide(scenario).await,
        Command::Status { admin } => crate::admin::client::status(&admin.api()?).await,
        Command::Reconnect {
            side,
            refresh_token,
            flow,
            consumer_secret,
            username,
            admin,
        } => {
            let refresh_token = secret_argument(refresh_token)?;
            let consumer_secret = secret_argument(consumer_secret)?;
            let authorization = match side {
                crate::connection::Side::Outreach => {
                    refresh_token.map(|token| serde_json::json!({"refresh_token": token}))
                }
                crate::connection::Side::Salesforce => {
                    let given = [&refresh_token, &consumer_secret, &username, &flow]
                        .iter()
                        .any(|v| v.is_some());
                    if given && flow.is_none() {
                        return Err(InputError {
                            message: "--flow is needed with new Salesforce credentials \
                                      (jwt_bearer, client_credentials or refresh_token)"
                                .into(),
                        }
                        .into());
                    }
                    given.then(|| {
                        let mut body = serde_json::json!({"flow": flow});
                        for (key, value) in [
                            ("refresh_token", &refresh_token),
                            ("consumer_secret", &consumer_secret),
                            ("username", &username),
                        ] {
                            if let Some(value) = value {
                                body[key] = serde_json::Value::String(value.clone());
                            }
                        }
                        body
                    })
                }
            };
            crate::admin::client::reconnect(&admin.api()?, side, authorization).await
        }
        Command::TestConnection { side, admin } => {
            crate::admin::client::test_connection(&admin.api()?, side).await
        }
        Command::Disconnect { side, admin } => {
            crate::admin::client::disconnect(&admin.api()?, side).await
        }
        Command::Tail { json, admin } => crate::admin::client::tail(&admin.api()?, json).await,
        Command::Settings { verb, admin } => match verb {
            SettingsVerb::Get => crate::admin::client::settings_get(&admin.api()?).await,
            SettingsVerb::Set { changes } => {
                crate::admin::client::settings_set(&admin.api()?, &changes).await
            }
        },
        Command::Resync { admin } => crate::admin::client::resync(&admin.api()?).await,
        Command::Replay { from, yes, admin } => {
            crate::admin::client::replay(&admin.api()?, &from, |plan| confirm_replay(plan, yes))
                .await
        }
        Command::Mappings { verb, admin } => match verb {
            MappingsVerb::Find {
                email,
                salesforce_user_id,
                outreach_user_id,
            } => {
                let filters: Vec<(&str, String)> = [
                    ("email", email),
                    ("salesforce_user_id", salesforce_user_id),
                    ("outreach_user_id", outreach_user_id),
                ]
                .into_iter()
                .filter_map(|(name, value)| value.map(|v| (name, v)))
                .collect();
                crate::admin::client::mappings_find(&admin.api()?, &filters).await
            }
        },
        Command::Health {
            address,
            config,
            timeout_seconds,
        } => {
            let address = crate::app::health::target(address.as_deref(), || {
                Ok(crate::config::Config::load(config.as_deref())?.admin.listen)
            })?;
            let line =
                crate::app::health::check(address, std::time::Duration::from_secs(timeout_seconds))
                    .await?;
            println!("{line}");
            Ok(())
        }
        Command::Subscriber { config, health } => {
            let config = crate::config::Config::load(config.as_deref())?;
            crate::roles::subscriber::role::run(&config, &health, shutdown_signal()).await
        }
        Command::Processor { config, health } => {
            let config = crate::config::Config::load(config.as_deref())?;
            crate::roles::processor::role::run(&config, &health, shutdown_signal()).await
        }
        Command::Run { config, health } => {
            let config = crate::config::Config::load(config.as_deref())?;
            crate::app::run::run(&config, &health, shutdown_signal()).await
        }
        #[cfg(feature = "sim")]
        Command::Demo {
            once,
            salesforce_sim,
            outreach_sim,
            wait_seconds,
            admin,
        } => {
            let remapped = match (salesforce_sim, outreach_sim) {
                (Some(salesforce_sim), Some(outreach_sim)) => {
                    crate::app::demo::drive(crate::app::demo::Remote {
                        salesforce_sim,
                        outreach_sim,
                        admin: admin.api()?,
                        admin_url: admin.admin_url.clone(),
                        wait: std::time::Duration::from_secs(wait_seconds),
                    })
                    .await?
                }
                _ => crate::app::demo::run(once, admin.token()?, shutdown_signal()).await?,
            };
            if remapped {
                Ok(())
            } else {
                anyhow::bail!("the remap did not happen (see the decisions above)")
            }
        }
        #[cfg(feature = "sim")]
        Command::Sim(sim) => sim.run(shutdown_signal()).await,
    }
}

/// `--yes`, or `yes` typed on the terminal; without a terminal and without `--yes`, a refusal
/// that says how to confirm (the plan is already printed, so this is a dry run).
fn confirm_replay(
    plan: &crate::salesforce::replay_from::ReplayPlan,
    yes: bool,
) -> anyhow::Result<bool> {
    use std::io::IsTerminal;
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(InputError {
            message: format!(
                "the replay from {} needs a confirmation: standard input is not a terminal to \
                 type yes on; give --yes to confirm without the question",
                plan.from
            ),
        }
        .into());
    }
    crate::admin::client::typed_yes(std::io::stdin().lock(), std::io::stdout(), plan)
        .map_err(|e| anyhow::anyhow!("reading the confirmation from the terminal: {e}"))
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

#[cfg(feature = "sim")]
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
    let scenario =
        crate::app::scenario::Scenario::parse(&bytes).map_err(|e| InputError { message: e.0 })?;
    let output = crate::app::scenario::run(&scenario).await?;
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}
