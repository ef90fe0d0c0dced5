//! `usersync sim <service>`: run a simulator as a standalone process.
//!
//! Lets tools outside the test binary (a product instance, a scenario run, a manual `curl`)
//! talk to the simulator over the network and drive it through its control API. Once the
//! simulator listens the command prints its URLs, one a line (the base URL first), then serves
//! until Ctrl-C.
//!
//! The simulators themselves are the `usersync-sim` crate, which knows nothing of the product;
//! this is the product's side of the verb: the flags, the health listener a container's check
//! asks, and the calls that start a simulator. Built with the `sim` feature only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use usersync_sim::outreach::{self, OutreachSim, SimConfig};
use usersync_sim::salesforce::{self, SalesforceSim, SfSimConfig, pubsub::StreamTiming};

use crate::app::health::{HealthListen, Probes};

/// The simulators that can run standalone.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Outreach REST API v2 (users) and OAuth; control API under /_sim/.
    Outreach(OutreachArgs),
    /// Salesforce OAuth, Pub/Sub API (gRPC), REST query; control API under /_sim/.
    Salesforce(Box<SalesforceArgs>),
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
    /// The URL clients reach the simulator at, when not the listen address (a container's
    /// service name, e.g. http://outreach-sim:8710): its links are built on it.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// A refresh token to accept from the start for the default authorizing user with scope
    /// users.all, so that clients configured before the simulator starts can sign in
    /// (a compose file gives the same value to both sides).
    #[arg(long, value_name = "TOKEN")]
    pub refresh_token: Option<String>,
    #[command(flatten)]
    pub health: HealthListen,
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
            public_url: args.public_url,
            ..SimConfig::default()
        }
    }
}

impl OutreachArgs {
    /// Starts the simulator as configured, accepting `--refresh-token` when given.
    pub async fn start(self) -> anyhow::Result<OutreachSim> {
        let refresh_token = self.refresh_token.clone().filter(|t| !t.is_empty());
        let listen = self.listen;
        let sim = OutreachSim::start(self.into())
            .await
            .with_context(|| format!("cannot start the Outreach simulator on {listen}"))?;
        if let Some(token) = refresh_token {
            sim.accept_refresh_token(&token, &["users.all"]);
        }
        Ok(sim)
    }
}

/// Settings of the Salesforce simulator.
#[derive(Debug, Args)]
pub struct SalesforceArgs {
    /// Address of the HTTP port (OAuth, REST, control API); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8720")]
    pub listen: SocketAddr,
    /// Address of the Pub/Sub API (gRPC, plaintext HTTP/2); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8721")]
    pub pubsub_listen: SocketAddr,
    /// The org id, 15 letters or digits (`00D…`).
    #[arg(long, default_value = salesforce::DEFAULT_ORG_ID)]
    pub org_id: String,
    /// The connected app's consumer key (OAuth client_id).
    #[arg(long, default_value = salesforce::DEFAULT_CONSUMER_KEY)]
    pub consumer_key: String,
    /// The connected app's consumer secret.
    #[arg(long, default_value = salesforce::DEFAULT_CONSUMER_SECRET)]
    pub consumer_secret: String,
    /// PEM file with the RSA public key of the connected app's certificate; JWT bearer
    /// assertions are verified with it.
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key: PathBuf,
    /// Unapproved users get invalid_app_access ("admin approved users are pre-authorized").
    #[arg(long)]
    pub admin_approved_only: bool,
    /// Seconds without events after which a subscription gets an empty keepalive.
    #[arg(long, default_value_t = StreamTiming::default().keepalive.as_secs())]
    pub keepalive_secs: u64,
    /// Seconds a subscription may sit at zero credit before it is closed.
    #[arg(long, default_value_t = StreamTiming::default().zero_credit_timeout.as_secs())]
    pub zero_credit_timeout_secs: u64,
    /// How long change events are retained for replay, in seconds (72 hours by default).
    #[arg(long, default_value_t = DEFAULT_RETENTION_SECS)]
    pub retention_secs: u64,
    /// An authorizing user (active, approved) to add at start; repeatable.
    #[arg(long = "user", value_name = "USERNAME")]
    pub users: Vec<String>,
    /// The connected app's run-as user for the client credentials flow (added like --user).
    #[arg(long, value_name = "USERNAME")]
    pub run_as: Option<String>,
    /// The URL clients reach the HTTP port at, when not the listen address (a container's
    /// service name, e.g. http://salesforce-sim:8720): the login host, the JWT audience and
    /// the instance URL it answers with are built on it.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    #[command(flatten)]
    pub health: HealthListen,
}

/// The event bus's retention, in seconds.
const DEFAULT_RETENTION_SECS: u64 = salesforce::eventbus::DEFAULT_RETENTION_MS as u64 / 1000;

impl SalesforceArgs {
    /// The simulator's configuration, with the public key read from its file. Fails, naming
    /// the file, when it cannot be read or holds no RSA public key.
    pub fn config(&self) -> anyhow::Result<SfSimConfig> {
        let pem = std::fs::read_to_string(&self.jwt_public_key).with_context(|| {
            format!(
                "cannot read the JWT public key file {}",
                self.jwt_public_key.display()
            )
        })?;
        jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).with_context(|| {
            format!(
                "the JWT public key file {} holds no RSA public key in PEM",
                self.jwt_public_key.display()
            )
        })?;
        let mut config = SfSimConfig::new(pem);
        config.listen = self.listen;
        config.pubsub_listen = self.pubsub_listen;
        config.org_id.clone_from(&self.org_id);
        config.consumer_key.clone_from(&self.consumer_key);
        config.consumer_secret.clone_from(&self.consumer_secret);
        config.admin_approved_only = self.admin_approved_only;
        config.stream_timing = StreamTiming {
            keepalive: Duration::from_secs(self.keepalive_secs),
            zero_credit_timeout: Duration::from_secs(self.zero_credit_timeout_secs),
        };
        config.public_url.clone_from(&self.public_url);
        Ok(config)
    }

    /// Starts the simulator as configured: retention set, authorizing users added.
    pub async fn start(&self) -> anyhow::Result<SalesforceSim> {
        let sim = SalesforceSim::start(self.config()?)
            .await
            .context("cannot start the Salesforce simulator")?;
        sim.set_retention(Duration::from_secs(self.retention_secs));
        for username in self.users.iter().chain(&self.run_as) {
            sim.add_user(username);
        }
        sim.set_run_as_user(self.run_as.as_deref());
        Ok(sim)
    }
}

impl SimCommand {
    /// Starts the simulator, prints its URLs, and serves until `shutdown` turns true (SIGINT
    /// or SIGTERM: a container's stop).
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
        match self {
            SimCommand::Outreach(args) => {
                let health = args.health.clone();
                let sim = args.start().await?;
                let probes = health.start(Probes::alive()).await?;
                println!("{}", sim.base_url());
                let _ = shutdown.wait_for(|stop| *stop).await;
                probes.stop().await
            }
            SimCommand::Salesforce(args) => {
                let sim = args.start().await?;
                let probes = args.health.start(Probes::alive()).await?;
                println!("{}", sim.base_url());
                println!("{}", sim.pubsub_url());
                let _ = shutdown.wait_for(|stop| *stop).await;
                probes.stop().await
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
        } = Harness::parse_from(["x", "outreach"])
        else {
            panic!("not the outreach command")
        };
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
        ])
        else {
            panic!("not the outreach command")
        };
        let config = SimConfig::from(args);
        assert_eq!(config.rate_limit_per_window, 5);
        assert_eq!(config.rate_limit_window, Duration::from_secs(2));
        assert!(config.mint_throttle.is_zero());
    }

    fn outreach(flags: &[&str]) -> OutreachArgs {
        let argv = ["x", "outreach"].into_iter().chain(flags.iter().copied());
        let Harness {
            sim: SimCommand::Outreach(args),
        } = Harness::parse_from(argv)
        else {
            panic!("not the outreach command")
        };
        args
    }

    #[tokio::test]
    async fn outreach_links_use_the_public_url_and_the_given_refresh_token_signs_in() {
        let args = outreach(&[
            "--listen",
            "127.0.0.1:0",
            "--public-url",
            "http://outreach-sim:8710/",
            "--refresh-token",
            "compose-token",
            "--mint-throttle-secs",
            "0",
        ]);
        let sim = args.start().await.unwrap();
        assert_eq!(sim.base_url(), "http://outreach-sim:8710");
        assert_eq!(sim.api_url(), "http://outreach-sim:8710/api/v2");
        let (client_id, client_secret, redirect_uri) = sim.app();
        let token = |refresh_token: &'static str| {
            reqwest::Client::new()
                .post(format!("http://{}/oauth/token", sim.local_addr()))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.as_str()),
                    ("redirect_uri", redirect_uri.as_str()),
                ])
                .send()
        };
        let granted = token("compose-token").await.unwrap();
        assert_eq!(granted.status(), 200, "the given refresh token is accepted");
        let body: serde_json::Value = granted.json().await.unwrap();
        assert!(body["access_token"].is_string(), "{body}");
        let again = token("compose-token").await.unwrap();
        assert_eq!(again.status(), 200, "several clients may start from it");
        let refused = token("another-token").await.unwrap();
        assert_eq!(refused.status(), 400, "no other token is");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }

    #[tokio::test]
    async fn outreach_without_a_refresh_token_accepts_none() {
        let sim = outreach(&["--listen", "127.0.0.1:0"])
            .start()
            .await
            .unwrap();
        assert!(sim.base_url().starts_with("http://127.0.0.1:"));
        let (client_id, client_secret, redirect_uri) = sim.app();
        let refused = reqwest::Client::new()
            .post(format!("{}/oauth/token", sim.base_url()))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "usersync-demo-refresh-token"),
                ("client_id", client_id.as_str()),
                ("client_secret", client_secret.as_str()),
                ("redirect_uri", redirect_uri.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }

    #[tokio::test]
    async fn salesforce_answers_with_the_public_url() {
        let args = salesforce(&[
            "--listen",
            "0.0.0.0:0",
            "--pubsub-listen",
            "0.0.0.0:0",
            "--public-url",
            "http://salesforce-sim:8720",
            "--run-as",
            "robot@x.test",
        ]);
        let sim = args.start().await.unwrap();
        assert_eq!(sim.base_url(), "http://salesforce-sim:8720");
        assert_eq!(sim.my_domain_url(), "http://salesforce-sim:8720/my-domain");
        assert!(
            sim.pubsub_url().starts_with("http://127.0.0.1:"),
            "a wildcard Pub/Sub address is given on loopback: {}",
            sim.pubsub_url()
        );
        let port = sim.local_addr().port();
        let granted: serde_json::Value = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{port}/my-domain/services/oauth2/token"
            ))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", sim.consumer_key().as_str()),
                ("client_secret", sim.consumer_secret().as_str()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            granted["instance_url"], "http://salesforce-sim:8720/my-domain",
            "{granted}"
        );
    }

    const PUBLIC_KEY: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/salesforce_jwt_test_key_pub.pem"
    );

    /// `usersync sim salesforce --jwt-public-key <the test key> <flags>`.
    fn salesforce(flags: &[&str]) -> SalesforceArgs {
        with_key(PUBLIC_KEY, flags)
    }

    fn with_key(key: &str, flags: &[&str]) -> SalesforceArgs {
        let argv = ["x", "salesforce", "--jwt-public-key", key]
            .into_iter()
            .chain(flags.iter().copied());
        let Harness {
            sim: SimCommand::Salesforce(args),
        } = Harness::parse_from(argv)
        else {
            panic!("not the salesforce command")
        };
        *args
    }

    #[test]
    fn salesforce_defaults_match_the_simulator_defaults() {
        let args = salesforce(&[]);
        let config = args.config().unwrap();
        let defaults = SfSimConfig::new("");
        assert_eq!(config.listen, "127.0.0.1:8720".parse().unwrap());
        assert_eq!(config.pubsub_listen, "127.0.0.1:8721".parse().unwrap());
        assert_eq!(config.org_id, defaults.org_id);
        assert_eq!(config.consumer_key, defaults.consumer_key);
        assert_eq!(config.consumer_secret, defaults.consumer_secret);
        assert!(!config.admin_approved_only);
        assert_eq!(
            config.stream_timing.keepalive,
            defaults.stream_timing.keepalive
        );
        assert_eq!(
            config.stream_timing.zero_credit_timeout,
            defaults.stream_timing.zero_credit_timeout
        );
        assert_eq!(args.retention_secs, 72 * 3600);
        assert!(args.users.is_empty());
        assert!(config.jwt_public_key_pem.contains("BEGIN PUBLIC KEY"));
    }

    #[test]
    fn salesforce_needs_a_public_key_file() {
        let error = Harness::try_parse_from(["x", "salesforce"])
            .err()
            .expect("the key is required");
        assert!(error.to_string().contains("--jwt-public-key"), "{error}");

        let missing = with_key("/nonexistent/sf.pem", &[]);
        let error = format!("{:#}", missing.config().unwrap_err());
        assert!(error.contains("/nonexistent/sf.pem"), "{error}");

        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "not a key").unwrap();
        let path = file.path().to_str().unwrap();
        let garbage = with_key(path, &[]);
        let error = format!("{:#}", garbage.config().unwrap_err());
        assert!(
            error.contains(path) && error.contains("no RSA public key"),
            "{error}"
        );
    }

    #[test]
    fn salesforce_flags_set_the_config() {
        let args = salesforce(&[
            "--listen",
            "127.0.0.1:0",
            "--pubsub-listen",
            "127.0.0.1:0",
            "--org-id",
            "00DABC000000009",
            "--consumer-key",
            "key",
            "--consumer-secret",
            "secret",
            "--admin-approved-only",
            "--keepalive-secs",
            "5",
            "--zero-credit-timeout-secs",
            "2",
            "--retention-secs",
            "60",
            "--user",
            "a@x.test",
            "--user",
            "b@x.test",
        ]);
        let config = args.config().unwrap();
        assert_eq!(config.org_id, "00DABC000000009");
        assert_eq!(
            (
                config.consumer_key.as_str(),
                config.consumer_secret.as_str()
            ),
            ("key", "secret")
        );
        assert!(config.admin_approved_only);
        assert_eq!(config.stream_timing.keepalive, Duration::from_secs(5));
        assert_eq!(
            config.stream_timing.zero_credit_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(args.retention_secs, 60);
        assert_eq!(args.users, ["a@x.test", "b@x.test"]);
    }

    #[tokio::test]
    async fn salesforce_start_adds_the_users_and_sets_the_retention() {
        let args = salesforce(&[
            "--listen",
            "127.0.0.1:0",
            "--pubsub-listen",
            "127.0.0.1:0",
            "--user",
            "integration@x.test",
            "--run-as",
            "robot@x.test",
            "--retention-secs",
            "0",
        ]);
        let sim = args.start().await.unwrap();
        let user = sim.user("integration@x.test").expect("added with --user");
        assert!(user.active && user.approved);
        assert!(sim.user("robot@x.test").is_some(), "the run-as user exists");
        let granted = reqwest::Client::new()
            .post(format!("{}/services/oauth2/token", sim.my_domain_url()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", sim.consumer_key().as_str()),
                ("client_secret", sim.consumer_secret().as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(granted.status(), 200, "client credentials run as --run-as");
        for username in ["a@x.test", "b@x.test"] {
            sim.create_user(
                serde_json::json!({ "Username": username }),
                &salesforce::Writer::default(),
            )
            .unwrap();
        }
        assert_eq!(sim.records().len(), 2);
        assert_eq!(
            sim.retained_events().len(),
            1,
            "with a retention of 0 s each publish purges the events before it"
        );
        assert_ne!(sim.base_url(), sim.pubsub_url());
    }
}
