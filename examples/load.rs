//! The load harness: how many Salesforce changes per second the whole pipeline carries to
//! Outreach, how long one change takes, and how that compares with what the same Kafka broker
//! does for bare rdkafka.
//!
//! ```sh
//! cargo run --release --example load -- --help
//! cargo run --release --example load                      # 2 000 changes per phase, tansu
//! cargo run --release --example load -- --brokers HOST:PORT --changes 10000 --json
//! ```
//!
//! # Why it is built this way
//!
//! The criterion benches measure parts (the engine, `usersync decide`, the normalizer). None of
//! them says what a change costs from Salesforce's commit to Outreach's answer, with Kafka in
//! between and both roles doing their real work: the subscriber's Pub/Sub stream, Avro decoding,
//! normalization and idempotent publishing; the processor's consumer group, store reads, the
//! Outreach call and the store transaction before the offset. So this harness runs the real
//! roles, through the same public wiring `usersync run` and `usersync demo` use
//! (`roles::subscriber::role::run`, `roles::processor::role::build_with`), against both simulators
//! on
//! loopback at zero added latency and a real Kafka-protocol broker. Everything but the broker
//! lives in this one process, so the process's CPU time and peak memory cover both roles (and,
//! unavoidably, both simulators).
//!
//! The broker is tansu (the one the end-to-end tests use, `scripts/tansu.sh`): without
//! `--brokers` the harness starts `~/.cargo/bin/tansu` itself on a free loopback port with
//! SQLite storage under `target/`, waits until it listens, and stops it and deletes its data
//! at the end — also on an error, a panic or Ctrl-C, through a drop guard. Every run uses fresh
//! topics and a fresh consumer group, so runs never see each other's records.
//!
//! # What a run does
//!
//! 1. Starts the broker (or uses `--brokers`), both simulators, a SQLite store (a temporary
//!    folder unless `--store-dir`), creates the topics with `--partitions` partitions.
//! 2. Creates one seed user in Salesforce, starts the subscriber and the processor, and waits
//!    until the seed's decision is recorded: the initial load is over, the Pub/Sub stream is
//!    open, the Outreach token is minted, so the phases measure the steady state.
//! 3. Phase `create`: `--changes` new Salesforce users with unique emails, each its own
//!    committed change (`SalesforceSim::create_user`); each becomes an Outreach `POST`.
//! 4. Phase `update`: the title of each of those users changes, one transaction per user
//!    (`update_users`); each becomes an Outreach `PATCH`.
//!    By default a phase commits all its changes as one burst (the worst case: the backlog
//!    queues in Kafka); `--rate` spreads them evenly instead, for latency under a steady load.
//! 5. Stops the roles, reads the event topic back (each record's Kafka timestamp splits a
//!    change's latency into its two hops), and replays exactly those records — same count,
//!    keys, payloads and headers — through a bare rdkafka producer and consumer on a fresh topic
//!    of the same broker, producing and consuming concurrently as the pipeline does.
//!
//! # What is measured
//!
//! - **commit**: the instant `create_user` / `update_users` returned, i.e. the change is in the
//!   simulator's event bus, as a Salesforce commit would be.
//! - **applied**: the instant the processor's decision broadcast (`Processor::decisions`)
//!   delivered the change's decision. The processor sends it after the Outreach call answered
//!   and the store transaction holding the decision committed, and before the offset is stored:
//!   it is the first moment the change is both in Outreach and recorded. (The store's applied
//!   markers say the same, but only by polling the database, which would compete for it.) A
//!   task does nothing but timestamp and forward each broadcast, so the channel never lags.
//! - **changes/s** of a phase: its changes ÷ (last applied − first commit).
//! - **latency**: applied − commit per change, as p50, p90, p99 and max (nearest rank).
//! - **in Kafka**: the record's timestamp (librdkafka's create time, in milliseconds), which
//!   splits the latency into commit → Kafka (the subscriber) and Kafka → applied (the
//!   processor, with any backlog waiting in Kafka).
//! - **Outreach requests per change**: the Outreach simulator's request count over the phase
//!   ÷ changes (every HTTP request, token mints and retries included); the processor's own
//!   count is also printed.
//! - **CPU seconds** during each phase (`/proc/PID/stat`): of this process, split by kind of
//!   thread (tokio workers, sqlx's SQLite threads, librdkafka's, the harness's main thread); of
//!   the broker; and of every other process on the machine (`/proc/stat` minus both), which
//!   says whether other load skewed the run. **I/O wait** is the share of the phase during
//!   which some task of the machine was stalled on I/O (`/proc/pressure/io`): the store's and
//!   the broker's disk syncs, and anyone else's. **Peak RSS** is `VmHWM` of this process and
//!   of the broker at the end.
//! - **raw rdkafka records/s**: records ÷ (last consumed − first produced), with the product
//!   producer's settings (idempotent, `acks=all`, murmur2; at most [`RAW_IN_FLIGHT`] records
//!   unconfirmed at a time) and the processor consumer's (`read_committed`); then a second
//!   consumer reads them all again once they are in, which is the broker's bare fetch speed.
//!   The **ratio** pipeline ÷ raw is the share of the broker's bare speed the pipeline reaches.
//!
//! Two knobs help to find where the time goes: `--store-dir /dev/shm` puts the SQLite store on
//! tmpfs (its commits then cost no disk sync), and `--kafka-property KEY=VALUE` passes a
//! librdkafka setting to every client of the run, the roles' and the raw comparison's alike.
//!
//! Logging is off (`warn`) unless `RUST_LOG` says otherwise; progress goes to standard error,
//! the report to standard output. The exit status is non-zero when any change is not applied
//! within `--timeout-secs`, a role stops, or the broker cannot be started.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use usersync::app::demo::{connect_outreach_sim, connect_salesforce_sim};
use usersync::config::{Config, KafkaConfig};
use usersync::engine::decision::DecisionRecord;
use usersync::kafka::{AdminTopicCreator, TopicCreator, TopicSpec};
use usersync::model::event::{ChangeKind, UserChange};
use usersync::model::salesforce_id::SalesforceId;
use usersync::roles::processor::{Processor, ProcessorError, ProcessorStats};
use usersync_sim::outreach::{OutreachSim, SimConfig};
use usersync_sim::salesforce::{SalesforceSim, SfSimConfig, Writer};

/// The Salesforce user the subscriber signs in as (client credentials' run-as user).
const INTEGRATION_USER: &str = "integration@load.example";
/// The title every user gets in the update phase.
const NEW_TITLE: &str = "Senior Account Executive";
/// How long the broker may take to listen, and the roles to stop.
const BROKER_START: Duration = Duration::from_secs(30);
const ROLE_STOP: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "load",
    about = "Load harness: Salesforce changes through the real subscriber, Kafka and the real \
             processor into Outreach, timed; then bare rdkafka on the same broker for comparison.",
    long_about = None
)]
struct Args {
    /// Changes per phase: this many Salesforce users are created (phase `create`), then each
    /// of them changes title (phase `update`).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    changes: u32,
    /// Kafka bootstrap servers (`host:port,…`). Without it, the harness starts a tansu broker
    /// (~/.cargo/bin/tansu, SQLite storage under target/) and stops it at the end.
    #[arg(long)]
    brokers: Option<String>,
    /// Partitions of the fresh event topic (and of the raw comparison topic).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    /// How long each phase may take, from its first commit to its last change applied, before
    /// the run fails.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Changes committed per second, spread evenly. 0: each phase is one burst.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Folder for the SQLite store (e.g. /dev/shm to take disk syncs out). Default: a
    /// temporary folder.
    #[arg(long)]
    store_dir: Option<PathBuf>,
    /// An extra librdkafka setting for every Kafka client of the run, the roles' and the raw
    /// comparison's alike (`kafka.properties`); repeatable. E.g. `fetch.wait.max.ms=100`.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = key_value)]
    kafka_properties: Vec<(String, String)>,
    /// Print the report as one JSON line instead of tables.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        eprintln!("load: error: --rate must be 0 or a positive number of changes per second");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("load: error: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(&args));
    // The broker guard lives inside `run`: by now it has stopped the broker, whatever happened.
    // Whatever a task still holds must not keep the process from exiting.
    runtime.shutdown_timeout(Duration::from_secs(10));
    match outcome {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(line) => println!("{line}"),
                    Err(error) => {
                        eprintln!("load: error: cannot encode the report: {error}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                report.print();
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("load: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

fn progress(message: impl std::fmt::Display) {
    eprintln!("load: {message}");
}

/// The whole run; every process and folder it starts is gone when it returns.
async fn run(args: &Args) -> anyhow::Result<Report> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let broker = match &args.brokers {
        Some(brokers) => BrokerInUse::Given(brokers.clone()),
        None => BrokerInUse::Started(Tansu::start(&tag)?),
    };
    progress(format_args!("broker: {}", broker.describe()));
    let store_dir = match &args.store_dir {
        Some(dir) => StoreDir::Given(dir.join(format!("load-{tag}"))),
        None => StoreDir::Temporary(tempfile::tempdir().context("creating a temporary folder")?),
    };
    let mut pipeline = Pipeline::start(args, &tag, broker.brokers(), store_dir.path()).await?;
    let outcome = tokio::select! {
        outcome = measure(args, &tag, &broker, &mut pipeline) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if outcome.is_err() {
        // Stop the roles while the broker still runs: a Kafka client left behind its broker
        // can block for a long time in librdkafka's close.
        pipeline.abandon().await;
    }
    if let StoreDir::Given(dir) = &store_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    outcome
}

/// Everything between a live pipeline and the report.
async fn measure(
    args: &Args,
    tag: &str,
    broker: &BrokerInUse,
    pipeline: &mut Pipeline,
) -> anyhow::Result<Report> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let started = Instant::now();
    pipeline.await_seed(timeout).await?;
    progress(format_args!(
        "pipeline live: the seed user was applied {:.1} s after the roles started",
        started.elapsed().as_secs_f64()
    ));

    let mut phases = Vec::new();
    let mut ids = Vec::new();
    for kind in [PhaseKind::Create, PhaseKind::Update] {
        let phase = pipeline
            .run_phase(kind, args, tag, &mut ids, broker.pid(), timeout)
            .await?;
        progress(format_args!(
            "phase {}: {} changes applied in {:.2} s",
            kind.name(),
            phase.changes.len(),
            phase.seconds()
        ));
        phases.push(phase);
    }

    let stats = pipeline.stop().await?;
    let records = read_topic(
        &pipeline.config.kafka,
        &pipeline.config.kafka.topic,
        args.partitions,
        timeout,
    )
    .await?;
    let ours: Vec<OwnedMessage> = records
        .into_iter()
        .filter(|record| {
            record
                .key()
                .is_some_and(|key| key.starts_with(pipeline.email_prefix.as_bytes()))
        })
        .collect();
    stamp_kafka_times(&mut phases, &ours);
    progress(format_args!(
        "raw rdkafka: replaying the {} event records on a fresh topic",
        ours.len()
    ));
    let raw = raw_kafka(
        &pipeline.config.kafka,
        tag,
        args.partitions,
        &ours,
        broker.pid(),
        timeout,
    )
    .await?;

    let harness_peak_rss_mib = peak_rss_mib(std::process::id());
    let broker_peak_rss_mib = broker.pid().and_then(peak_rss_mib);
    Ok(Report::new(
        args,
        broker,
        &phases,
        raw,
        stats,
        harness_peak_rss_mib,
        broker_peak_rss_mib,
    ))
}

// ---- The broker -------------------------------------------------------------------------------

/// The Kafka broker of the run: given on the command line, or started here.
enum BrokerInUse {
    Given(String),
    Started(Tansu),
}

impl BrokerInUse {
    fn brokers(&self) -> &str {
        match self {
            BrokerInUse::Given(brokers) => brokers,
            BrokerInUse::Started(tansu) => &tansu.brokers,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            BrokerInUse::Given(_) => None,
            BrokerInUse::Started(tansu) => Some(tansu.child.id()),
        }
    }

    fn describe(&self) -> String {
        match self {
            BrokerInUse::Given(brokers) => format!("{brokers} (given with --brokers)"),
            BrokerInUse::Started(tansu) => format!(
                "{} at {}, SQLite storage in {}, started by the harness",
                tansu.version,
                tansu.brokers,
                tansu.dir.display()
            ),
        }
    }
}

/// A tansu broker this process started, as `scripts/tansu.sh` starts one. Dropping it stops
/// the broker (SIGTERM, then SIGKILL after 5 s) and deletes its data.
struct Tansu {
    child: Child,
    dir: PathBuf,
    brokers: String,
    version: String,
}

impl Tansu {
    fn start(tag: &str) -> anyhow::Result<Tansu> {
        let binary = tansu_binary();
        let version = Command::new(&binary)
            .arg("--version")
            .output()
            .with_context(|| {
                format!(
                    "running {} (install it with `cargo install tansu --locked --features libsql`, \
                     or pass --brokers)",
                    binary.display()
                )
            })?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        // A free port: bind port 0, note what the kernel chose, release it for tansu.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("finding a free loopback port for the broker")?
            .port();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("load-tansu-{tag}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::File::create(dir.join("tansu.log"))
            .with_context(|| format!("creating {}/tansu.log", dir.display()))?;
        let url = format!("tcp://127.0.0.1:{port}");
        // tansu resolves sqlite:// paths against its working directory.
        let child = Command::new(&binary)
            .current_dir(&dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("sharing the broker's log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut tansu = Tansu {
            child,
            dir,
            brokers: format!("127.0.0.1:{port}"),
            version,
        };
        tansu.await_listening(port)?;
        Ok(tansu)
    }

    fn await_listening(&mut self, port: u16) -> anyhow::Result<()> {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + BROKER_START;
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().context("watching the broker")? {
                let log = std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default();
                bail!("the broker exited at start ({status}); its log:\n{log}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "the broker did not listen on {address} within {BROKER_START:?}; its log is {}",
                    self.dir.join("tansu.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        progress("broker stopped, its data deleted");
    }
}

fn tansu_binary() -> PathBuf {
    std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".cargo/bin/tansu"))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("tansu"))
}

/// Where the store's SQLite file lives.
enum StoreDir {
    Temporary(tempfile::TempDir),
    Given(PathBuf),
}

impl StoreDir {
    fn path(&self) -> &Path {
        match self {
            StoreDir::Temporary(dir) => dir.path(),
            StoreDir::Given(dir) => dir,
        }
    }
}

// ---- The pipeline -------------------------------------------------------------------------------

/// What the decision feed carries: each decision with the instant it was recorded, or how many
/// decisions the broadcast dropped (which makes the run fail: a change would go unseen).
enum Recorded {
    Decision(Instant, Box<DecisionRecord>),
    Missed(u64),
}

/// Both simulators, both roles, and the feed of recorded decisions.
struct Pipeline {
    salesforce: SalesforceSim,
    outreach: OutreachSim,
    config: Config,
    seed: String,
    email_prefix: String,
    stop: watch::Sender<bool>,
    processor: Option<JoinHandle<(Processor, Result<(), ProcessorError>)>>,
    subscriber: Option<JoinHandle<anyhow::Result<()>>>,
    recorded: mpsc::UnboundedReceiver<Recorded>,
}

impl Pipeline {
    async fn start(
        args: &Args,
        tag: &str,
        brokers: &str,
        store_dir: &Path,
    ) -> anyhow::Result<Pipeline> {
        let mut config = Config::default();
        config.kafka.brokers = brokers.to_owned();
        config.kafka.topic = format!("usersync.load-{tag}.v1");
        config.kafka.dead_letter_topic = format!("usersync.load-{tag}.dlq");
        config.kafka.partitions = args.partitions;
        config.kafka.replication_factor = 1;
        config
            .kafka
            .properties
            .extend(args.kafka_properties.iter().cloned());
        config.processor.group_id = format!("usersync-load-{tag}");
        config.processor.retry_min = Duration::from_millis(100);
        config.processor.retry_max = Duration::from_millis(1_000);

        // Client credentials: the connected app has no certificate.
        let salesforce = SalesforceSim::start(SfSimConfig::new(""))
            .await
            .context("starting the Salesforce simulator")?;
        connect_salesforce_sim(&mut config.salesforce, &salesforce, INTEGRATION_USER);
        config.salesforce.backoff_min = Duration::from_millis(100);
        config.salesforce.backoff_max = Duration::from_millis(1_000);

        // Outreach's hourly budget is not what is measured: lift it far above any run.
        let outreach = OutreachSim::start(SimConfig {
            mint_throttle: Duration::ZERO,
            rate_limit_per_window: u32::MAX / 2,
            ..SimConfig::default()
        })
        .await
        .context("starting the Outreach simulator")?;
        connect_outreach_sim(&mut config.outreach, &outreach, &["users.all"]);

        config.store.url = format!("sqlite://{}", store_dir.join("usersync.db").display());
        config.validate().context("the harness's configuration")?;
        let store = usersync::store::open(&config.store.url)
            .await
            .context("opening the SQLite store")?;

        // The seed exists before the subscriber starts, so the initial load exports it.
        let email_prefix = format!("load-{tag}-");
        // Its email is outside the load users' prefix: it is not measured.
        let seed = salesforce
            .create_user(
                user_fields(&format!("seed-{tag}-"), "0"),
                &Writer::default(),
            )
            .map_err(|e| anyhow::anyhow!("creating the seed user in the simulator: {e}"))?;

        let client = usersync::roles::processor::role::outreach_client(&config.outreach)?;
        let mut processor = usersync::roles::processor::role::build_with(&config, store, client)
            .await
            .context("building the processor")?;
        let recorded = forward_decisions(processor.decisions());
        let (stop, stopped) = watch::channel(false);
        let processor = tokio::spawn({
            let stopped = stopped.clone();
            async move {
                let outcome = processor.run(stopped).await;
                (processor, outcome)
            }
        });
        let subscriber = tokio::spawn({
            let config = config.clone();
            async move {
                usersync::roles::subscriber::role::run(&config, &Default::default(), stopped).await
            }
        });
        Ok(Pipeline {
            salesforce,
            outreach,
            config,
            seed: SalesforceId::parse(&seed)?.as_str().to_owned(),
            email_prefix,
            stop,
            processor: Some(processor),
            subscriber: Some(subscriber),
            recorded,
        })
    }

    /// Waits for the seed user's decision: the initial load is done and the stream is read.
    async fn await_seed(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_recorded(deadline).await? {
                Some((_, decision))
                    if decision
                        .salesforce_user_id
                        .as_ref()
                        .map(SalesforceId::as_str)
                        == Some(self.seed.as_str()) =>
                {
                    return Ok(());
                }
                Some(_) => {}
                None => bail!(
                    "the seed user was not applied within {timeout:?}: the pipeline never \
                     became live (RUST_LOG=usersync=info shows why)"
                ),
            }
        }
    }

    /// Commits one phase's changes and waits until each is applied.
    async fn run_phase(
        &mut self,
        kind: PhaseKind,
        args: &Args,
        tag: &str,
        ids: &mut Vec<String>,
        broker_pid: Option<u32>,
        timeout: Duration,
    ) -> anyhow::Result<Phase> {
        let n = args.changes as usize;
        let requests_before = self.outreach.request_count();
        let usage_before = UsageSample::now(broker_pid);
        let mut changes: Vec<Change> = Vec::with_capacity(n);
        let mut index: HashMap<String, usize> = HashMap::with_capacity(n);
        let start = tokio::time::Instant::now();
        progress(format_args!(
            "phase {}: committing {n} changes {}",
            kind.name(),
            if args.rate > 0.0 {
                format!("at {} per second", args.rate)
            } else {
                "as one burst".to_owned()
            }
        ));
        for i in 0..n {
            if args.rate > 0.0 {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / args.rate))
                    .await;
            } else if i % 64 == 63 {
                // Let the roles' tasks and the decision feed run between commits.
                tokio::task::yield_now().await;
            }
            let id = match kind {
                PhaseKind::Create => {
                    let id = self
                        .salesforce
                        .create_user(
                            user_fields(&self.email_prefix, &i.to_string()),
                            &Writer::default(),
                        )
                        .map_err(|e| anyhow::anyhow!("creating load user {i} ({tag}): {e}"))?;
                    let id = SalesforceId::parse(&id)?.as_str().to_owned();
                    ids.push(id.clone());
                    id
                }
                PhaseKind::Update => {
                    let id = ids[i].clone();
                    self.salesforce
                        .update_users(
                            std::slice::from_ref(&id),
                            json!({ "Title": NEW_TITLE }),
                            &Writer::default(),
                        )
                        .map_err(|e| anyhow::anyhow!("updating load user {i} ({id}): {e}"))?;
                    id
                }
            };
            index.insert(id, changes.len());
            changes.push(Change {
                committed: Instant::now(),
                applied: None,
                in_kafka: None,
            });
        }

        let deadline = changes[0].committed + timeout;
        let mut waiting = n;
        let mut actions: BTreeMap<String, u64> = BTreeMap::new();
        let mut decision_calls = 0u64;
        while waiting > 0 {
            let Some((at, decision)) = self.next_recorded(deadline).await? else {
                bail!(
                    "phase {}: {waiting} of {n} changes were not applied within {timeout:?} of \
                     the first commit (decisions seen: {actions:?})",
                    kind.name()
                );
            };
            let Some(&slot) = decision
                .salesforce_user_id
                .as_ref()
                .and_then(|id| index.get(id.as_str()))
            else {
                continue;
            };
            *actions.entry(decision.action.to_string()).or_default() += 1;
            decision_calls += u64::from(decision.outreach_calls);
            let change = &mut changes[slot];
            if change.applied.is_none() && at >= change.committed {
                change.applied = Some(at);
                waiting -= 1;
            }
        }
        Ok(Phase {
            kind,
            ids: index,
            changes,
            actions,
            outreach_requests: self.outreach.request_count() - requests_before,
            decision_calls,
            usage: UsageSample::now(broker_pid).since(&usage_before),
        })
    }

    /// The next recorded decision before `deadline`; `None` at the deadline. Fails when a role
    /// stopped or the feed missed decisions.
    async fn next_recorded(
        &mut self,
        deadline: Instant,
    ) -> anyhow::Result<Option<(Instant, Box<DecisionRecord>)>> {
        loop {
            self.check_roles().await?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).min(Duration::from_millis(500));
            match tokio::time::timeout(wait, self.recorded.recv()).await {
                Ok(Some(Recorded::Decision(at, decision))) => return Ok(Some((at, decision))),
                Ok(Some(Recorded::Missed(n))) => bail!(
                    "the decision feed missed {n} decisions: the harness could not keep up with \
                     the processor's broadcast"
                ),
                Ok(None) => bail!("the processor's decision broadcast closed"),
                Err(_) => {}
            }
        }
    }

    /// Fails when the subscriber or the processor has stopped on its own.
    async fn check_roles(&mut self) -> anyhow::Result<()> {
        if self
            .subscriber
            .as_ref()
            .is_some_and(JoinHandle::is_finished)
            && let Some(task) = self.subscriber.take()
        {
            match task.await {
                Ok(Ok(())) => bail!("the subscriber stopped on its own"),
                Ok(Err(error)) => return Err(error.context("the subscriber stopped")),
                Err(panic) => bail!("the subscriber panicked: {panic}"),
            }
        }
        if self.processor.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(task) = self.processor.take()
        {
            match task.await {
                Ok((_, Ok(()))) => bail!("the processor stopped on its own"),
                Ok((_, Err(error))) => {
                    return Err(anyhow::Error::from(error).context("the processor stopped"));
                }
                Err(panic) => bail!("the processor panicked: {panic}"),
            }
        }
        Ok(())
    }

    /// Stops both roles (the processor commits its offsets) and returns the processor's counts.
    async fn stop(&mut self) -> anyhow::Result<ProcessorStats> {
        let _ = self.stop.send(true);
        let processor = self.processor.take().context("the processor is gone")?;
        let (processor, outcome) = tokio::time::timeout(ROLE_STOP, processor)
            .await
            .context("the processor did not stop in time")?
            .context("the processor panicked")?;
        outcome.context("the processor stopped with an error")?;
        if let Some(subscriber) = self.subscriber.take() {
            tokio::time::timeout(ROLE_STOP, subscriber)
                .await
                .context("the subscriber did not stop in time")?
                .context("the subscriber panicked")?
                .context("the subscriber stopped with an error")?;
        }
        Ok(processor.stats.clone())
    }

    /// Stops whichever role still runs, after a failure: results are not looked at.
    async fn abandon(&mut self) {
        let _ = self.stop.send(true);
        if let Some(processor) = self.processor.take() {
            let _ = tokio::time::timeout(ROLE_STOP, processor).await;
        }
        if let Some(subscriber) = self.subscriber.take() {
            let _ = tokio::time::timeout(ROLE_STOP, subscriber).await;
        }
    }
}

/// The SOQL fields of a load user `{prefix}{n}`: its own username and email.
fn user_fields(prefix: &str, n: &str) -> serde_json::Value {
    let email = format!("{prefix}{n}@load.example");
    json!({"Username": email, "Email": email, "FirstName": "Load", "LastName": format!("User {n}"),
           "Title": "Account Executive"})
}

/// Timestamps every decision the moment the broadcast delivers it and hands it on through an
/// unbounded channel, so a busy harness never makes the broadcast drop one.
fn forward_decisions(
    mut decisions: broadcast::Receiver<DecisionRecord>,
) -> mpsc::UnboundedReceiver<Recorded> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let recorded = match decisions.recv().await {
                Ok(decision) => Recorded::Decision(Instant::now(), Box::new(decision)),
                Err(broadcast::error::RecvError::Lagged(n)) => Recorded::Missed(n),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(recorded).is_err() {
                return;
            }
        }
    });
    rx
}

// ---- One phase ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PhaseKind {
    Create,
    Update,
}

impl PhaseKind {
    fn name(self) -> &'static str {
        match self {
            PhaseKind::Create => "create",
            PhaseKind::Update => "update",
        }
    }

    /// The change kind of the events this phase produces.
    fn change_kind(self) -> ChangeKind {
        match self {
            PhaseKind::Create => ChangeKind::Create,
            PhaseKind::Update => ChangeKind::Update,
        }
    }
}

/// One committed change and when it reached Kafka and Outreach.
struct Change {
    committed: Instant,
    applied: Option<Instant>,
    in_kafka: Option<Instant>,
}

/// What one phase observed.
struct Phase {
    kind: PhaseKind,
    /// Salesforce id → index in `changes`.
    ids: HashMap<String, usize>,
    changes: Vec<Change>,
    actions: BTreeMap<String, u64>,
    outreach_requests: u64,
    decision_calls: u64,
    usage: Usage,
}

impl Phase {
    fn first_commit(&self) -> Instant {
        self.changes
            .iter()
            .map(|c| c.committed)
            .min()
            .expect("a phase has changes")
    }

    fn last_applied(&self) -> Instant {
        self.changes
            .iter()
            .filter_map(|c| c.applied)
            .max()
            .expect("a finished phase has applied changes")
    }

    fn seconds(&self) -> f64 {
        (self.last_applied() - self.first_commit()).as_secs_f64()
    }
}

/// Gives each change the instant its event record was created in Kafka (the producer's
/// millisecond timestamp), matched by Salesforce id and change kind.
fn stamp_kafka_times(phases: &mut [Phase], records: &[OwnedMessage]) {
    // Wall-clock milliseconds to this process's monotonic clock, through one common instant.
    let (anchor, anchor_ms) = (Instant::now(), epoch_ms(SystemTime::now()));
    for record in records {
        let (Some(ms), Some(payload)) = (record.timestamp().to_millis(), record.payload()) else {
            continue;
        };
        let Ok(event) = UserChange::from_json(payload) else {
            continue;
        };
        let Ok(id) = SalesforceId::parse(&event.user_id) else {
            continue;
        };
        let at = if ms >= anchor_ms {
            anchor + Duration::from_millis((ms - anchor_ms) as u64)
        } else {
            anchor - Duration::from_millis((anchor_ms - ms) as u64)
        };
        for phase in phases.iter_mut() {
            if phase.kind.change_kind() != event.change {
                continue;
            }
            if let Some(&slot) = phase.ids.get(id.as_str()) {
                let change = &mut phase.changes[slot];
                // A record replayed after a retry: keep the first.
                change.in_kafka = Some(change.in_kafka.map_or(at, |seen| seen.min(at)));
            }
        }
    }
}

fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---- Kafka: reading back and the raw comparison ------------------------------------------------

/// A consumer with the processor's read settings and a group of its own, offsets never
/// committed.
fn bare_consumer(kafka: &KafkaConfig, group: &str) -> anyhow::Result<StreamConsumer> {
    let mut client = ClientConfig::new();
    for (key, value) in kafka.client_properties() {
        client.set(key, value);
    }
    client
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    client
        .create()
        .with_context(|| format!("creating a Kafka consumer on {}", kafka.brokers))
}

fn assign_from_start(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)
            .with_context(|| format!("assigning {topic} partition {partition}"))?;
    }
    consumer
        .assign(&list)
        .with_context(|| format!("assigning {topic}"))
}

/// Every record of `topic`, up to the high watermarks at the time of the call.
async fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer = bare_consumer(kafka, &format!("{topic}.read-back"))?;
    let mut ends = BTreeMap::new();
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("reading the watermarks of {topic} partition {partition}"))?;
        if high > low {
            ends.insert(partition, high);
        }
    }
    assign_from_start(&consumer, topic, partitions)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut records = Vec::new();
    while !ends.is_empty() {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .with_context(|| format!("reading {topic} back: still missing {ends:?}"))?
            .with_context(|| format!("reading {topic} back"))?;
        let (partition, next) = (message.partition(), message.offset() + 1);
        records.push(message.detach());
        if ends.get(&partition).is_some_and(|end| next >= *end) {
            ends.remove(&partition);
        }
    }
    Ok(records)
}

/// The producer with the product's delivery settings (`kafka::producer`): idempotent,
/// `acks=all`, murmur2 partitioning.
fn bare_producer(kafka: &KafkaConfig) -> anyhow::Result<FutureProducer> {
    let mut client = ClientConfig::new();
    for (key, value) in kafka.client_properties() {
        client.set(key, value);
    }
    client
        .set("bootstrap.servers", &kafka.brokers)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            kafka.message_timeout.as_millis().to_string(),
        );
    client
        .create()
        .with_context(|| format!("creating a Kafka producer on {}", kafka.brokers))
}

#[derive(Debug, Clone, Serialize)]
struct RawReport {
    records: usize,
    avg_key_bytes: f64,
    avg_value_bytes: f64,
    avg_header_bytes: f64,
    /// First produce to the last delivery confirmed.
    produced_seconds: f64,
    produced_per_second: f64,
    /// First produce to the last record consumed (the consumer reads while records are sent).
    seconds: f64,
    records_per_second: f64,
    usage: Usage,
    /// A second consumer reading every record once they are all in: assignment to the last.
    consumed_seconds: f64,
    consumed_per_second: f64,
    consumed_usage: Usage,
}

/// Replays `records` (keys, payloads, headers) through a bare producer into a fresh topic while
/// a bare consumer reads them, and times both.
async fn raw_kafka(
    kafka: &KafkaConfig,
    tag: &str,
    partitions: i32,
    records: &[OwnedMessage],
    broker_pid: Option<u32>,
    timeout: Duration,
) -> anyhow::Result<RawReport> {
    if records.is_empty() {
        bail!("the event topic holds none of the run's records");
    }
    let topic = format!("usersync.load-{tag}.raw");
    AdminTopicCreator::new(kafka)?
        .create(&TopicSpec {
            name: topic.clone(),
            partitions,
            replication_factor: kafka.replication_factor,
            settings: Vec::new(),
        })
        .await
        .with_context(|| format!("creating {topic}"))?;
    let producer = bare_producer(kafka)?;
    let consumer = bare_consumer(kafka, &format!("{topic}.reader"))?;
    // Both clients connected and the consumer fetching before the clock starts, as the
    // pipeline's are after the seed.
    for partition in 0..partitions {
        consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .with_context(|| format!("reaching {topic} partition {partition}"))?;
    }
    rdkafka::producer::Producer::client(&producer)
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {topic}"))?;
    assign_from_start(&consumer, &topic, partitions)?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let expected = records.len();
    let mut reader = AbortOnDrop(tokio::spawn(async move {
        let mut seen = 0usize;
        let mut last = Instant::now();
        while seen < expected {
            consumer.recv().await?;
            seen += 1;
            last = Instant::now();
        }
        Ok::<Instant, KafkaError>(last)
    }));

    let usage_before = UsageSample::now(broker_pid);
    let start = Instant::now();
    let mut deliveries = std::collections::VecDeque::with_capacity(RAW_IN_FLIGHT);
    for record in records {
        if deliveries.len() >= RAW_IN_FLIGHT
            && let Some(oldest) = deliveries.pop_front()
        {
            confirmed(oldest).await?;
        }
        let mut next = FutureRecord::<[u8], [u8]>::to(&topic)
            .key(record.key().unwrap_or_default())
            .payload(record.payload().unwrap_or_default());
        if let Some(headers) = record.headers() {
            next = next.headers(headers.clone());
        }
        loop {
            match producer.send_result(next) {
                Ok(delivery) => {
                    deliveries.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    next = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => return Err(error).context("producing a raw record"),
            }
        }
    }
    for delivery in deliveries {
        confirmed(delivery).await?;
    }
    let produced = start.elapsed();
    let last = tokio::time::timeout(timeout, &mut reader.0)
        .await
        .with_context(|| format!("the raw consumer did not read {expected} records in time"))?
        .context("the raw consumer panicked")?
        .context("the raw consumer failed")?;
    let seconds = (last - start).as_secs_f64();
    let usage = UsageSample::now(broker_pid).since(&usage_before);

    // Consuming alone: a connected consumer assigned to records that are all there already.
    let rereader = bare_consumer(kafka, &format!("{topic}.rereader"))?;
    for partition in 0..partitions {
        rereader
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .with_context(|| format!("reaching {topic} partition {partition}"))?;
    }
    let usage_before = UsageSample::now(broker_pid);
    let reread = Instant::now();
    assign_from_start(&rereader, &topic, partitions)?;
    for _ in 0..expected {
        tokio::time::timeout(timeout, rereader.recv())
            .await
            .context("the second raw consumer did not read every record in time")?
            .context("the second raw consumer failed")?;
    }
    let consumed = reread.elapsed();
    let consumed_usage = UsageSample::now(broker_pid).since(&usage_before);

    let count = expected as f64;
    let total = |size: fn(&OwnedMessage) -> usize| records.iter().map(size).sum::<usize>() as f64;
    Ok(RawReport {
        records: expected,
        avg_key_bytes: total(|r| r.key().map_or(0, <[u8]>::len)) / count,
        avg_value_bytes: total(|r| r.payload().map_or(0, <[u8]>::len)) / count,
        avg_header_bytes: total(|r| r.headers().map_or(0, header_bytes)) / count,
        produced_seconds: produced.as_secs_f64(),
        produced_per_second: count / produced.as_secs_f64(),
        seconds,
        records_per_second: count / seconds,
        usage,
        consumed_seconds: consumed.as_secs_f64(),
        consumed_per_second: count / consumed.as_secs_f64(),
        consumed_usage,
    })
}

/// Raw records sent and not yet confirmed, at most: enough to keep the broker busy, few enough
/// that none waits in librdkafka's queue past `kafka.message_timeout_ms` on a slow broker.
const RAW_IN_FLIGHT: usize = 1000;

async fn confirmed(delivery: rdkafka::producer::DeliveryFuture) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error).context("a raw record was not delivered"),
        Err(_) => bail!("the raw producer dropped a delivery"),
    }
}

/// A task that is stopped when the harness lets go of it (on an error, say), so it never
/// outlives the broker it reads from.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn header_bytes(headers: &OwnedHeaders) -> usize {
    headers
        .iter()
        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
        .sum()
}

// ---- The process -------------------------------------------------------------------------------

/// `VmHWM` of a process: the most resident memory it ever had, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// User plus system CPU time of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds used so far by this process, the broker (when the harness started it) and the
/// whole machine.
#[derive(Debug, Clone)]
struct UsageSample {
    at: Instant,
    harness: Option<f64>,
    broker: Option<f64>,
    machine: Option<f64>,
    /// Seconds during which some task of the machine waited for I/O (`/proc/pressure/io`).
    io_stalled: Option<f64>,
    /// This process's threads: id → (kind, CPU seconds).
    threads: BTreeMap<u32, (&'static str, f64)>,
}

impl UsageSample {
    fn now(broker_pid: Option<u32>) -> UsageSample {
        UsageSample {
            at: Instant::now(),
            io_stalled: io_stalled_seconds(),
            harness: cpu_seconds(std::process::id()),
            broker: broker_pid.and_then(cpu_seconds),
            machine: machine_busy_seconds(),
            threads: thread_cpu_seconds(),
        }
    }

    fn since(&self, before: &UsageSample) -> Usage {
        let spent = |after: Option<f64>, before: Option<f64>| Some(after? - before?);
        let harness = spent(self.harness, before.harness);
        let broker = spent(self.broker, before.broker);
        let machine = spent(self.machine, before.machine);
        let mut by_thread: BTreeMap<&'static str, f64> = BTreeMap::new();
        for (tid, (kind, seconds)) in &self.threads {
            // A thread started during the phase counts from zero; one that ended is lost.
            let earlier = before.threads.get(tid).map_or(0.0, |(_, s)| *s);
            *by_thread.entry(kind).or_default() += seconds - earlier;
        }
        let wall = (self.at - before.at).as_secs_f64();
        Usage {
            harness,
            broker,
            by_thread,
            io_pressure: spent(self.io_stalled, before.io_stalled)
                .filter(|_| wall > 0.0)
                .map(|stalled| stalled / wall),
            // With a broker given on the command line, its CPU is in here too.
            other: machine
                .zip(harness)
                .map(|(machine, harness)| (machine - harness - broker.unwrap_or(0.0)).max(0.0)),
        }
    }
}

/// What a stretch of the run cost: CPU seconds of this process (both roles, both simulators),
/// of the broker and of every other process on the machine, and how much of it the machine
/// spent waiting for I/O. Other processes' CPU and I/O skew the figures: these say how much.
#[derive(Debug, Clone, Serialize)]
struct Usage {
    harness: Option<f64>,
    broker: Option<f64>,
    other: Option<f64>,
    /// This process's share by kind of thread (see [`thread_kind`]).
    by_thread: BTreeMap<&'static str, f64>,
    /// The share of the time some task of the machine (this one's or another's) waited for
    /// I/O: disk syncs of the store and the broker, and any other process's I/O.
    io_pressure: Option<f64>,
}

/// The machine's total I/O stall time so far, in seconds: the `some` line of
/// `/proc/pressure/io` (Linux 4.20 and later with PSI).
fn io_stalled_seconds() -> Option<f64> {
    let pressure = std::fs::read_to_string("/proc/pressure/io").ok()?;
    let some = pressure.lines().find(|l| l.starts_with("some "))?;
    let micros: f64 = some
        .split_whitespace()
        .find_map(|field| field.strip_prefix("total="))?
        .parse()
        .ok()?;
    Some(micros / 1e6)
}

/// CPU seconds of each thread of this process so far, with its kind.
fn thread_cpu_seconds() -> BTreeMap<u32, (&'static str, f64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return BTreeMap::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some((tid, (thread_kind(name), ticks / clock_ticks_per_second())))
        })
        .collect()
}

/// What a thread of this process does, from its name: tokio's workers run every spawned task
/// (both roles' loops, gRPC and HTTP on both sides, both simulators); the main thread runs the
/// harness's own loop (commits, waiting for decisions); sqlx runs each SQLite connection on a
/// thread of its own; librdkafka has its own threads per client (and rdkafka's producers a
/// polling thread).
fn thread_kind(name: &str) -> &'static str {
    if name.starts_with("tokio-") {
        "tokio"
    } else if name.starts_with("sqlx-sqlite") {
        "sqlite"
    } else if name.starts_with("rdk:") || name.starts_with("producer poll") {
        "librdkafka"
    } else if name == "load" {
        "harness"
    } else {
        "other"
    }
}

/// Busy CPU seconds of the whole machine since boot, all cores (`/proc/stat`: user, nice,
/// system, irq, softirq, steal; idle and iowait left out).
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| fields.get(i).copied().unwrap_or(0.0))
        .sum::<f64>();
    Some(busy / clock_ticks_per_second())
}

// ---- The report --------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
struct Machine {
    cores: usize,
    memory_gib: Option<f64>,
    cpu_model: Option<String>,
    kernel: Option<String>,
}

impl Machine {
    fn read() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| kib / 1024.0 / 1024.0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, model)| model.trim().to_owned());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|k| k.trim().to_owned()),
        }
    }
}

/// Nearest-rank percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut millis: Vec<f64>) -> Option<Percentiles> {
        if millis.is_empty() {
            return None;
        }
        millis.sort_by(f64::total_cmp);
        let rank =
            |p: f64| millis[((p * millis.len() as f64).ceil() as usize).clamp(1, millis.len()) - 1];
        Some(Percentiles {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: millis[millis.len() - 1],
        })
    }
}

#[derive(Debug, Clone, Serialize)]
struct PhaseReport {
    phase: &'static str,
    changes: usize,
    seconds: f64,
    changes_per_second: f64,
    /// Salesforce commit → decision recorded (Outreach answered, store committed).
    latency_ms: Percentiles,
    /// Salesforce commit → the event's record created in Kafka.
    commit_to_kafka_ms: Option<Percentiles>,
    /// Record in Kafka → decision recorded.
    kafka_to_applied_ms: Option<Percentiles>,
    /// First commit → last commit (the simulator's side of the phase).
    committing_seconds: f64,
    /// First commit → the last of the phase's records in Kafka.
    in_kafka_seconds: Option<f64>,
    outreach_requests: u64,
    outreach_requests_per_change: f64,
    decision_calls_per_change: f64,
    actions: BTreeMap<String, u64>,
    usage: Usage,
}

impl PhaseReport {
    fn of(phase: &Phase) -> PhaseReport {
        let n = phase.changes.len();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let latency = phase
            .changes
            .iter()
            .filter_map(|c| Some(ms(c.applied? - c.committed)))
            .collect();
        // The two hops, from millisecond Kafka timestamps: clamp at zero.
        let hop = |from: fn(&Change) -> Option<Instant>, to: fn(&Change) -> Option<Instant>| {
            let hops: Vec<f64> = phase
                .changes
                .iter()
                .filter_map(|c| Some(ms(to(c)?.saturating_duration_since(from(c)?))))
                .collect();
            (hops.len() == n).then(|| Percentiles::of(hops)).flatten()
        };
        let first = phase.first_commit();
        let all_in_kafka = phase.changes.iter().all(|c| c.in_kafka.is_some());
        let seconds = phase.seconds();
        PhaseReport {
            phase: phase.kind.name(),
            changes: n,
            seconds,
            changes_per_second: n as f64 / seconds,
            latency_ms: Percentiles::of(latency).expect("a finished phase has latencies"),
            commit_to_kafka_ms: hop(|c| Some(c.committed), |c| c.in_kafka),
            kafka_to_applied_ms: hop(|c| c.in_kafka, |c| c.applied),
            committing_seconds: phase
                .changes
                .iter()
                .map(|c| c.committed)
                .max()
                .map_or(0.0, |last| (last - first).as_secs_f64()),
            in_kafka_seconds: all_in_kafka
                .then(|| phase.changes.iter().filter_map(|c| c.in_kafka).max())
                .flatten()
                .map(|last| last.saturating_duration_since(first).as_secs_f64()),
            outreach_requests: phase.outreach_requests,
            outreach_requests_per_change: phase.outreach_requests as f64 / n as f64,
            decision_calls_per_change: phase.decision_calls as f64 / n as f64,
            actions: phase.actions.clone(),
            usage: phase.usage.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct ProcessorCounts {
    records: u64,
    applied: u64,
    duplicates: u64,
    dead_letters: u64,
    retries: u64,
    outreach_calls: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    machine: Machine,
    broker: String,
    partitions: i32,
    changes_per_phase: u32,
    /// Where the SQLite store lived.
    store: String,
    /// Extra librdkafka settings given with `--kafka-property`.
    kafka_properties: BTreeMap<String, String>,
    /// Changes committed per second; `None`: each phase was one burst.
    rate: Option<f64>,
    phases: Vec<PhaseReport>,
    /// Every phase together: changes ÷ the sum of the phases' durations.
    changes: usize,
    seconds: f64,
    changes_per_second: f64,
    raw: RawReport,
    /// Pipeline changes/s ÷ raw records/s, on the same broker in the same run.
    pipeline_to_raw: f64,
    processor: ProcessorCounts,
    peak_rss_mib_harness: Option<f64>,
    peak_rss_mib_broker: Option<f64>,
}

impl Report {
    fn new(
        args: &Args,
        broker: &BrokerInUse,
        phases: &[Phase],
        raw: RawReport,
        stats: ProcessorStats,
        peak_rss_mib_harness: Option<f64>,
        peak_rss_mib_broker: Option<f64>,
    ) -> Report {
        let phases: Vec<PhaseReport> = phases.iter().map(PhaseReport::of).collect();
        let changes = phases.iter().map(|p| p.changes).sum::<usize>();
        let seconds = phases.iter().map(|p| p.seconds).sum::<f64>();
        let changes_per_second = changes as f64 / seconds;
        Report {
            machine: Machine::read(),
            broker: broker.describe(),
            partitions: args.partitions,
            changes_per_phase: args.changes,
            store: args.store_dir.as_ref().map_or_else(
                || format!("a temporary folder in {}", std::env::temp_dir().display()),
                |dir| dir.display().to_string(),
            ),
            kafka_properties: args.kafka_properties.iter().cloned().collect(),
            rate: (args.rate > 0.0).then_some(args.rate),
            phases,
            changes,
            seconds,
            changes_per_second,
            pipeline_to_raw: changes_per_second / raw.records_per_second,
            raw,
            processor: ProcessorCounts {
                records: stats.records,
                applied: stats.applied,
                duplicates: stats.duplicates,
                dead_letters: stats.dead_letters,
                retries: stats.retries,
                outreach_calls: stats.outreach_calls,
            },
            peak_rss_mib_harness,
            peak_rss_mib_broker,
        }
    }

    fn print(&self) {
        let m = &self.machine;
        println!("usersync load harness");
        println!(
            "  machine     {} cores, {} RAM, {}, Linux {}",
            m.cores,
            m.memory_gib.map_or("?".into(), |g| format!("{g:.1} GiB")),
            m.cpu_model.as_deref().unwrap_or("?"),
            m.kernel.as_deref().unwrap_or("?")
        );
        println!("  broker      {}", self.broker);
        println!(
            "  load        {} changes per phase, {} partitions, {}",
            self.changes_per_phase,
            self.partitions,
            self.rate
                .map_or("each phase one burst".into(), |r| format!("{r} changes/s"))
        );
        println!("  store       SQLite in {}", self.store);
        if !self.kafka_properties.is_empty() {
            println!("  librdkafka  {:?}", self.kafka_properties);
        }
        println!();
        println!("Salesforce commit → decision recorded (Outreach answered, store committed)");
        println!(
            "  {:<8} {:>7} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "phase", "changes", "seconds", "changes/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for p in &self.phases {
            let l = p.latency_ms;
            println!(
                "  {:<8} {:>7} {:>8.2} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                p.phase, p.changes, p.seconds, p.changes_per_second, l.p50, l.p90, l.p99, l.max
            );
        }
        println!(
            "  {:<8} {:>7} {:>8.2} {:>10.1}",
            "all", self.changes, self.seconds, self.changes_per_second
        );
        println!();
        println!(
            "Where the time goes: seconds after the phase's first commit, and each change's two hops"
        );
        println!(
            "  {:<8} {:>10} {:>10} {:>21} {:>21} {:>8} {:>9} {:>9} {:>9} {:>8}",
            "phase",
            "committed",
            "in Kafka",
            "commit→Kafka p50/p99",
            "Kafka→applied p50/p99",
            "req/chg",
            "CPU here",
            "CPU tansu",
            "CPU other",
            "I/O wait"
        );
        let pair = |p: Option<Percentiles>| {
            p.map_or("?".into(), |p| format!("{:.0}/{:.0} ms", p.p50, p.p99))
        };
        let secs = |s: Option<f64>| s.map_or("?".into(), |s| format!("{s:.2} s"));
        let percent = |s: Option<f64>| s.map_or("?".into(), |s| format!("{:.0} %", s * 100.0));
        for p in &self.phases {
            println!(
                "  {:<8} {:>10} {:>10} {:>21} {:>21} {:>8.3} {:>9} {:>9} {:>9} {:>8}",
                p.phase,
                secs(Some(p.committing_seconds)),
                secs(p.in_kafka_seconds),
                pair(p.commit_to_kafka_ms),
                pair(p.kafka_to_applied_ms),
                p.outreach_requests_per_change,
                secs(p.usage.harness),
                secs(p.usage.broker),
                secs(p.usage.other),
                percent(p.usage.io_pressure),
            );
        }
        println!(
            "  (req/chg: Outreach requests per change; CPU: user + system seconds of this process \
             (roles and simulators), of the broker, and of every other process; I/O wait: share of \
             the phase some task of the machine waited for I/O)"
        );
        for p in &self.phases {
            let threads: Vec<String> = p
                .usage
                .by_thread
                .iter()
                .map(|(kind, seconds)| format!("{kind} {seconds:.2} s"))
                .collect();
            println!(
                "  {:<8} CPU here by thread: {}",
                p.phase,
                threads.join(", ")
            );
        }
        for p in &self.phases {
            println!(
                "  {:<8} decisions {:?}; Outreach calls on the decisions {:.3}/change",
                p.phase, p.actions, p.decision_calls_per_change
            );
        }
        println!();
        let r = &self.raw;
        println!(
            "Raw rdkafka on the same broker: {} records (key {:.0} B, value {:.0} B, headers {:.0} B on average)",
            r.records, r.avg_key_bytes, r.avg_value_bytes, r.avg_header_bytes
        );
        let cpu = |c: &Usage| {
            let s = |s: Option<f64>| s.map_or("?".into(), |s| format!("{s:.2} s"));
            format!(
                "CPU here {}, tansu {}, other {}; I/O wait {}",
                s(c.harness),
                s(c.broker),
                s(c.other),
                c.io_pressure
                    .map_or("?".into(), |p| format!("{:.0} %", p * 100.0))
            )
        };
        println!(
            "  produced and consumed concurrently in {:.3} s: {:.0} records/s ({})",
            r.seconds,
            r.records_per_second,
            cpu(&r.usage)
        );
        println!(
            "    of which produced and confirmed in {:.3} s ({:.0} records/s)",
            r.produced_seconds, r.produced_per_second
        );
        println!(
            "  consumed alone, every record already in, in {:.3} s: {:.0} records/s ({})",
            r.consumed_seconds,
            r.consumed_per_second,
            cpu(&r.consumed_usage)
        );
        println!(
            "  pipeline ÷ raw: {:.4} ({:.1} changes/s against {:.0} records/s)",
            self.pipeline_to_raw, self.changes_per_second, r.records_per_second
        );
        println!();
        let s = &self.processor;
        println!(
            "Processor: {} records read, {} applied, {} duplicates, {} dead letters, {} retries, {} Outreach calls (index load included)",
            s.records, s.applied, s.duplicates, s.dead_letters, s.retries, s.outreach_calls
        );
        let mib = |m: Option<f64>| m.map_or("?".into(), |m| format!("{m:.1} MiB"));
        println!(
            "Peak RSS (VmHWM): this process {} (both roles and both simulators), broker {}",
            mib(self.peak_rss_mib_harness),
            mib(self.peak_rss_mib_broker)
        );
    }
}
