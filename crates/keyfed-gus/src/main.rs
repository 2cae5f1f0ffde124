//! `keyfed-gus`: run the simulated vendor upstream, or print its public key.
//! Flags and signals only; the server is `keyfed_gus::serve`.
use anyhow::Context;
use clap::{Parser, Subcommand};
use keyfed_core::{SharedClock, SystemClock};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "keyfed-gus",
    version,
    about = "simulated vendor upstream (GUS) for keyfed"
)]
struct Cli {
    /// Directory of the upstream's store (keys and the vendor signing seed).
    #[arg(
        long,
        env = "KEYFED_GUS_DATA_DIR",
        default_value = "./keyfed-gus-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Address the gRPC server listens on.
    #[arg(long, env = "KEYFED_GUS_LISTEN", default_value = "127.0.0.1:7600")]
    listen: std::net::SocketAddr,
    /// Also write the vendor public key (hex) to this file at start, before
    /// serving, so nodes can trust it with `trusted_vendor_key_files`
    /// (the compose federation shares it through a volume).
    #[arg(long, env = "KEYFED_GUS_PUBKEY_FILE")]
    pubkey_file: Option<PathBuf>,
    /// PEM CA every caller's client certificate must chain to (turns on mutual TLS)
    #[arg(long, env = "KEYFED_GUS_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// PEM certificate of the upstream
    #[arg(long, env = "KEYFED_GUS_TLS_CERT", requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the upstream
    #[arg(long, env = "KEYFED_GUS_TLS_KEY", requires = "tls_ca")]
    tls_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the vendor public key (hex) for nodes to trust
    /// (`trusted_vendor_keys`). Creates the identity if the store is new.
    Pubkey,
}

/// Writes `key` to `path` atomically (a temporary file renamed over it), so a
/// reader never sees half a key.
fn write_pubkey(path: &std::path::Path, key: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{key}\n"))?;
    std::fs::rename(&tmp, path)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,sled=warn".into()),
        )
        .with_writer(std::io::stderr)
        // colour only on a terminal, never with NO_COLOR (logs go to files and pipes)
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let clock: SharedClock = Arc::new(SystemClock);
    let upstream = keyfed_gus::Upstream::open(&cli.data_dir, clock).with_context(|| {
        format!(
            "opening the upstream store in {} (is another keyfed-gus using it?)",
            cli.data_dir.display()
        )
    })?;
    if let Some(path) = &cli.pubkey_file {
        write_pubkey(path, &upstream.public_key_hex())
            .with_context(|| format!("writing the vendor public key to {}", path.display()))?;
    }
    if let Some(Command::Pubkey) = cli.command {
        println!("{}", upstream.public_key_hex());
        return Ok(());
    }

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        token.cancel();
    });

    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let tls = match (&cli.tls_ca, &cli.tls_cert, &cli.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(keyfed_gus::tls_config(ca, cert, key)?),
        _ => None,
    };
    keyfed_gus::serve_with_tls(upstream, listener, shutdown, tls).await?;
    tracing::info!("upstream stopped, store flushed");
    Ok(())
}
