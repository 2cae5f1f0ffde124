//! `keyfed`: run a node (`serve`) or a local federation (`sandbox`), ask a
//! node or upstream whether it is serving (`health`, the container health
//! check), back a running node up (`backup`) or make a data dir from a
//! backup (`restore`).
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use keyfed_core::{ManualClock, SharedClock, SystemClock};
use keyfed_node::config::LogFormat;
use keyfed_node::NodeConfig;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "keyfed",
    version,
    about = "license key distribution server with neighbor federation"
)]
struct Cli {
    /// log format: text (default) or json; overrides `log_format` in the config
    #[arg(long, env = "KEYFED_LOG_FORMAT", global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node.
    Serve {
        /// TOML config file; without one, defaults run a single node
        #[arg(long, env = "KEYFED_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        node_id: Option<String>,
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        upstream: Option<String>,
        /// hex Ed25519 public key of a trusted vendor (repeatable)
        #[arg(long = "trust")]
        trust: Vec<String>,
        /// start on a manual clock that Admin.AdvanceClock moves (demos, smoke tests)
        #[arg(long)]
        debug_clock: bool,
        /// serve Prometheus metrics at http://ADDR/metrics
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// serve the JSON API at http(s)://ADDR/api/v1 (docs/api.md)
        #[arg(long)]
        api_listen: Option<std::net::SocketAddr>,
    },
    /// Run an upstream and three linked nodes (main, neighbor, child) in one process.
    Sandbox {
        #[arg(long, default_value = "./keyfed-sandbox")]
        dir: PathBuf,
        #[arg(long, default_value_t = 7600)]
        base_port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        ip: IpAddr,
        /// run on a manual clock that `keyfedctl clock advance` moves
        #[arg(long)]
        debug_clock: bool,
    },
    /// Ask a node's (or the upstream's) gRPC health service whether it is
    /// serving; exits 0 if so, 1 otherwise (the container HEALTHCHECK).
    Health {
        /// address of the node or upstream; `host:port` or a URL
        #[arg(long, env = "KEYFED_HEALTH_ADDR", default_value = "127.0.0.1:7601")]
        addr: String,
        /// service name to check; empty asks for the server as a whole
        #[arg(long, default_value = "")]
        service: String,
        /// give up after this many seconds
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
        /// for an https:// address: the CA that signed the server's certificate
        #[arg(long, env = "KEYFED_CA")]
        ca: Option<PathBuf>,
        /// client certificate and key, for a server that demands one (the upstream)
        #[arg(long, env = "KEYFED_CERT", requires = "key")]
        cert: Option<PathBuf>,
        #[arg(long, env = "KEYFED_KEY", requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Take a consistent backup of a running node over its Admin port, while
    /// it serves (needs an admin token or certificate; audited).
    Backup {
        /// the node's Admin address, e.g. http://127.0.0.1:7601 or https://…
        #[arg(long, env = "KEYFED_ADDR", default_value = "http://127.0.0.1:7601")]
        addr: String,
        /// where to write the backup file (written beside it, verified, then renamed)
        #[arg(short = 'o', long)]
        out: PathBuf,
        /// admin token, sent as `authorization: Bearer <token>`
        #[arg(
            long,
            env = "KEYFED_TOKEN",
            hide_env_values = true,
            conflicts_with = "token_file"
        )]
        token: Option<String>,
        /// file holding the admin token (kept out of shell history and `ps`)
        #[arg(long, env = "KEYFED_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// for an https:// address: the CA that signed the node's certificate
        #[arg(long, env = "KEYFED_CA")]
        ca: Option<PathBuf>,
        /// client certificate and key (mutual TLS, an administrator's certificate)
        #[arg(long, env = "KEYFED_CERT", requires = "key")]
        cert: Option<PathBuf>,
        #[arg(long, env = "KEYFED_KEY", requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Make a node's data directory from a backup file; DIR must be new or
    /// empty. The file is checked whole first: a damaged one creates nothing.
    Restore {
        /// the backup file `keyfed backup` wrote
        file: PathBuf,
        /// the data directory to create (the node's `data_dir`)
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Federation certificates: a CA, node and administrator certificates.
    #[command(subcommand)]
    Pki(keyfed_node::pki::PkiCmd),
    /// Print a shell completion script: `keyfed completions bash`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff): `keyfed man > keyfed.1`.
    Man,
}

fn clock(debug: bool) -> SharedClock {
    if debug {
        Arc::new(ManualClock::new(chrono::Utc::now()))
    } else {
        Arc::new(SystemClock)
    }
}

/// Cancels the token on SIGINT or SIGTERM (docker stop).
fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("signal received, shutting down");
        token.cancel();
    });
}

/// One `grpc.health.v1.Health/Check` call, bounded by `timeout`.
async fn health(
    addr: &str,
    service: &str,
    timeout: Duration,
    tls: (Option<&PathBuf>, Option<&PathBuf>, Option<&PathBuf>),
) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let check = async {
        let mut ep = tonic::transport::Endpoint::from_shared(url.clone())
            .with_context(|| format!("{addr:?} is not a valid address"))?;
        if url.starts_with("https://") {
            let read =
                |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let ca = tls
                .0
                .context("an https:// address needs --ca (or KEYFED_CA)")?;
            let mut t = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
            if let (Some(c), Some(k)) = (tls.1, tls.2) {
                t = t.identity(tonic::transport::Identity::from_pem(read(c)?, read(k)?));
            }
            ep = ep.tls_config(t)?;
        }
        let channel = ep
            .connect()
            .await
            .with_context(|| format!("could not reach {url}"))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .with_context(|| format!("health check of {url}"))?
            .into_inner();
        anyhow::Ok(reply.status())
    };
    let status = tokio::time::timeout(timeout, check)
        .await
        .with_context(|| format!("no answer from {url} within {timeout:?}"))??;
    if status == ServingStatus::Serving {
        println!("SERVING");
        Ok(())
    } else {
        anyhow::bail!("{url} reports {}", status.as_str_name())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Health {
        addr,
        service,
        timeout_secs,
        ca,
        cert,
        key,
    } = &cli.command
    {
        // no tracing or signal handling: a health probe prints one line
        return health(
            addr,
            service,
            Duration::from_secs(*timeout_secs),
            (ca.as_ref(), cert.as_ref(), key.as_ref()),
        )
        .await;
    }
    if let Command::Backup {
        addr,
        out,
        token,
        token_file,
        ca,
        cert,
        key,
    } = &cli.command
    {
        let token = match (token, token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading the admin token file {}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let target = keyfed_node::backup::Target {
            addr: addr.clone(),
            token,
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        };
        let b = keyfed_node::backup::fetch(&target, out).await?;
        println!(
            "backup of node {} at commit {} ({}): {} bytes, {} entries, writes held {} µs; written to {}",
            b.header.node_id,
            b.header.commit,
            b.header.taken_at.to_rfc3339(),
            b.bytes,
            b.header.entries,
            b.barrier.as_micros(),
            b.path.display()
        );
        return Ok(());
    }
    if let Command::Restore { file, data_dir } = &cli.command {
        let (header, done) = keyfed_node::backup::restore(file, data_dir)?;
        println!(
            "restored the backup of node {} at commit {} ({}): {} entries into {}; start the node with data_dir = {:?}",
            header.node_id,
            header.commit,
            header.taken_at.to_rfc3339(),
            done.entries,
            done.store.display(),
            data_dir.display().to_string()
        );
        return Ok(());
    }
    if let Command::Pki(cmd) = cli.command {
        return keyfed_node::pki::run_cli(cmd);
    }
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "keyfed", &mut std::io::stdout());
        return Ok(());
    }
    if let Command::Man = cli.command {
        return Ok(clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?);
    }
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    match cli.command {
        Command::Serve {
            config,
            node_id,
            listen,
            data_dir,
            upstream,
            trust,
            debug_clock,
            metrics_listen,
            api_listen,
        } => {
            let flags = keyfed_node::config::ConfigFlags {
                node_id,
                listen,
                data_dir,
                upstream,
                trust,
                debug_clock,
                metrics_listen,
                api_listen,
                log_format: cli.log_format,
            };
            let cfg = NodeConfig::load(config.as_deref(), |k| std::env::var(k).ok(), &flags)
                .map_err(anyhow::Error::msg)?;
            keyfed_node::logging::init(cfg.log_format);
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .with_context(|| {
                    format!("binding {} (listen, KEYFED_LISTEN or --listen): is another process using the port?", cfg.listen)
                })?;
            let clock = clock(cfg.debug_clock);
            keyfed_node::run(cfg, listener, clock, shutdown).await
        }
        Command::Health { .. } => unreachable!("handled before tracing starts"),
        Command::Sandbox {
            dir,
            base_port,
            ip,
            debug_clock,
        } => {
            keyfed_node::logging::init(cli.log_format.unwrap_or_default());
            keyfed_node::sandbox::run(
                dir,
                ip,
                base_port,
                clock(debug_clock),
                debug_clock,
                shutdown,
            )
            .await
        }
        Command::Pki(_)
        | Command::Completions { .. }
        | Command::Man
        | Command::Backup { .. }
        | Command::Restore { .. } => {
            unreachable!("handled before tracing starts")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_the_man_page_come_from_the_clap_definitions() {
        Cli::command().debug_assert();
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(
            man.contains(".TH keyfed") && man.contains("sandbox"),
            "{man}"
        );
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "keyfed",
            &mut bash,
        );
        assert!(String::from_utf8(bash).unwrap().contains("serve"));
    }
}
