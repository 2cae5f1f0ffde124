//! `keyfed-agent`: runs one station, or simulates many, against a node.
//!
//!   keyfed-agent run --node http://127.0.0.1:7601 --state-dir ./agent --components antivirus
//!   keyfed-agent run --stations 500 --fingerprint-prefix lab ...   (a fleet, one state dir each)
//!   keyfed-agent status --state-dir ./agent                         (the cached lease, offline)
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use keyfed_agent::{Agent, AgentConfig};
use keyfed_core::station::QueueFullPolicy;
use keyfed_core::SystemClock;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "keyfed-agent",
    version,
    about = "keyfed station agent and station simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Contact the node every interval, queue a report each time, keep
    /// working offline from the cached lease.
    Run(Box<RunArgs>),
    /// Print the cached state of a station without contacting the node or
    /// writing anything, whichever fingerprint wrote it.
    Status {
        #[arg(long, default_value = "./keyfed-agent")]
        state_dir: PathBuf,
        /// only compared: a different one is noted, the state still shown
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
}

#[derive(Parser)]
struct RunArgs {
    #[arg(long, env = "KEYFED_NODE", default_value = "http://127.0.0.1:7601")]
    node: String,
    #[arg(long, default_value = "./keyfed-agent")]
    state_dir: PathBuf,
    /// Stable machine fingerprint; default: this host's name.
    #[arg(long)]
    fingerprint: Option<String>,
    /// Components the station needs, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "antivirus")]
    components: Vec<String>,
    #[arg(long, default_value = "")]
    tenant: String,
    /// Simulate this many stations (fingerprints PREFIX-1 .. PREFIX-N).
    #[arg(long, default_value_t = 1)]
    stations: usize,
    #[arg(long, default_value = "sim")]
    fingerprint_prefix: String,
    #[arg(long, default_value_t = 60)]
    interval_secs: u64,
    /// o04: reports kept while offline.
    #[arg(long, default_value_t = 1000)]
    queue_capacity: usize,
    /// o04: what a full queue does: stop-collecting or drop-oldest.
    #[arg(long, default_value = "drop-oldest", value_parser = parse_policy)]
    queue_full: QueueFullPolicy,
    /// Stop after this many contacts per station (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    rounds: u64,
    /// For an https:// node: the federation CA (PEM)
    #[arg(long, env = "KEYFED_CA")]
    ca: Option<PathBuf>,
    /// This station's certificate and key (PEM), if the node asks for one
    #[arg(long, env = "KEYFED_CERT", requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, env = "KEYFED_KEY", requires = "cert")]
    key: Option<PathBuf>,
}

fn parse_policy(s: &str) -> Result<QueueFullPolicy, String> {
    match s {
        "stop-collecting" => Ok(QueueFullPolicy::StopCollecting),
        "drop-oldest" => Ok(QueueFullPolicy::DropOldest),
        other => Err(format!("{other:?}: use stop-collecting or drop-oldest")),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "station".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "keyfed_agent=info".into()),
        )
        // stdout is for status output; colour only on a terminal, never with NO_COLOR
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    match Cli::parse().command {
        Cmd::Status {
            state_dir,
            fingerprint,
        } => {
            let Some(agent) = Agent::inspect(&state_dir, Arc::new(SystemClock))
                .context("reading the station state (--state-dir)")?
            else {
                anyhow::bail!(
                    "no station state in {} (--state-dir): `keyfed-agent run --state-dir {}` creates it",
                    state_dir.display(),
                    state_dir.display()
                );
            };
            let status = agent.status();
            if let Some(fp) = fingerprint.filter(|f| *f != status.fingerprint) {
                eprintln!(
                    "note: the state in {} belongs to fingerprint {}, not {fp}; shown as it is",
                    state_dir.display(),
                    status.fingerprint
                );
            }
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "keyfed-agent",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Man => Ok(clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?),
        Cmd::Run(a) => run(*a).await,
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let mut fleet = Vec::new();
    for i in 1..=a.stations.max(1) {
        let (fp, dir) = if a.stations <= 1 {
            (
                a.fingerprint.clone().unwrap_or_else(hostname),
                a.state_dir.clone(),
            )
        } else {
            let fp = format!("{}-{i}", a.fingerprint_prefix);
            let dir = a.state_dir.join(&fp);
            (fp, dir)
        };
        let comps: Vec<&str> = a.components.iter().map(String::as_str).collect();
        let mut cfg = AgentConfig::new(&a.node, &dir, &fp, &comps);
        cfg.tenant = a.tenant.clone();
        cfg.queue_capacity = a.queue_capacity;
        cfg.queue_full = a.queue_full;
        cfg.tls_ca = a.ca.clone();
        cfg.tls_identity = a.cert.clone().zip(a.key.clone());
        fleet.push(
            Agent::open(cfg, Arc::new(SystemClock)).with_context(|| format!("station {fp}"))?,
        );
    }
    let every = Duration::from_secs(a.interval_secs.max(1));
    let mut tasks = Vec::new();
    for mut agent in fleet {
        let stop = stop.clone();
        let rounds = a.rounds;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let _ = agent.record(&format!("{{\"heartbeat\":{n}}}"));
                match agent.sync().await {
                    Ok(s) if s.licensed => tracing::debug!(fp = %agent.config().fingerprint, key = %s.key_id, "licensed"),
                    Ok(s) => tracing::warn!(fp = %agent.config().fingerprint, reason = %s.reason, "unlicensed"),
                    Err(e) => tracing::warn!(fp = %agent.config().fingerprint, licensed = agent.licensed(), error = %e, "offline"),
                }
                n += 1;
                if rounds > 0 && n >= rounds {
                    return agent.status();
                }
                tokio::select! {
                    () = stop.cancelled() => return agent.status(),
                    () = tokio::time::sleep(every) => {}
                }
            }
        }));
    }
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        ctrl_c.cancel();
    });
    let mut licensed = 0;
    let total = tasks.len();
    for t in tasks {
        if t.await?.licensed {
            licensed += 1;
        }
    }
    println!("{licensed} of {total} station(s) licensed");
    Ok(())
}
