//! `usersync sim <service>`: run a simulator as a standalone process.
//!
//! Lets tools outside the test binary (a product instance, a scenario run, a manual `curl`)
//! talk to the simulator over the network and drive it through its control API. The command
//! prints one line, the base URL, once the simulator listens, then serves until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::outreach::{self, OutreachSim, SimConfig};

/// The simulators that can run standalone.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Outreach REST API v2 (users) and OAuth; control API under /_sim/.
    Outreach(OutreachArgs),
}

/// Settings of the Outreach simulator.
#[derive(Debug, Args)]
pub struct OutreachArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8710")]
    pub listen: SocketAddr,
    /// The registered OAuth client id.
    #[arg(long, default_value = outreach::DEFAULT_CLIENT_ID)]
    pub client_id: String,
    /// The registered OAuth client secret.
    #[arg(long, default_value = outreach::DEFAULT_CLIENT_SECRET)]
    pub client_secret: String,
    /// The client's registered redirect URI.
    #[arg(long, default_value = outreach::DEFAULT_REDIRECT_URI)]
    pub redirect_uri: String,
    /// Requests per rate-limit window per authorizing user.
    #[arg(long, default_value_t = outreach::DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,
    /// Length of a rate-limit window, in seconds.
    #[arg(long, default_value_t = outreach::DEFAULT_RATE_LIMIT_WINDOW_SECS)]
    pub rate_limit_window_secs: u64,
    /// Lifetime of an access token, in seconds.
    #[arg(long, default_value_t = outreach::DEFAULT_ACCESS_TOKEN_TTL_SECS)]
    pub access_token_ttl_secs: u64,
    /// Minimum seconds between two token mints for the same user and client (0 = off).
    #[arg(long, default_value_t = outreach::DEFAULT_MINT_THROTTLE_SECS)]
    pub mint_throttle_secs: u64,
}

impl From<OutreachArgs> for SimConfig {
    fn from(args: OutreachArgs) -> SimConfig {
        SimConfig {
            listen: args.listen,
            client_id: args.client_id,
            client_secret: args.client_secret,
            redirect_uri: args.redirect_uri,
            rate_limit_per_window: args.rate_limit,
            rate_limit_window: Duration::from_secs(args.rate_limit_window_secs),
            access_token_ttl: Duration::from_secs(args.access_token_ttl_secs),
            mint_throttle: Duration::from_secs(args.mint_throttle_secs),
        }
    }
}

impl SimCommand {
    /// Starts the simulator, prints its base URL, and serves until Ctrl-C.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            SimCommand::Outreach(args) => {
                let sim = OutreachSim::start(args.into()).await?;
                println!("{}", sim.base_url());
                tokio::signal::ctrl_c().await?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Harness {
        #[command(subcommand)]
        sim: SimCommand,
    }

    #[test]
    fn defaults_match_the_simulator_defaults() {
        let Harness {
            sim: SimCommand::Outreach(args),
        } = Harness::parse_from(["x", "outreach"]);
        let config = SimConfig::from(args);
        let defaults = SimConfig::default();
        assert_eq!(config.listen, "127.0.0.1:8710".parse().unwrap());
        assert_eq!(config.client_id, defaults.client_id);
        assert_eq!(config.client_secret, defaults.client_secret);
        assert_eq!(config.redirect_uri, defaults.redirect_uri);
        assert_eq!(config.rate_limit_per_window, defaults.rate_limit_per_window);
        assert_eq!(config.rate_limit_window, defaults.rate_limit_window);
        assert_eq!(config.access_token_ttl, defaults.access_token_ttl);
        assert_eq!(config.mint_throttle, defaults.mint_throttle);
    }

    #[test]
    fn flags_set_the_numbers() {
        let Harness {
            sim: SimCommand::Outreach(args),
        } = Harness::parse_from([
            "x",
            "outreach",
            "--listen",
            "127.0.0.1:0",
            "--rate-limit",
            "5",
            "--rate-limit-window-secs",
            "2",
            "--mint-throttle-secs",
            "0",
        ]);
        let config = SimConfig::from(args);
        assert_eq!(config.rate_limit_per_window, 5);
        assert_eq!(config.rate_limit_window, Duration::from_secs(2));
        assert!(config.mint_throttle.is_zero());
    }
}
