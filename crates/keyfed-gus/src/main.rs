//! `keyfed-gus`: run the simulated vendor upstream.
use clap::{Parser, Subcommand};
use keyfed_core::{ManualClock, SharedClock, SystemClock};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "keyfed-gus",
    version,
    about = "simulated vendor upstream for keyfed"
)]
struct Cli {
    #[arg(
        long,
        env = "KEYFED_GUS_DATA_DIR",
        default_value = "./keyfed-gus-data",
        global = true
    )]
    data_dir: PathBuf,
    #[arg(long, env = "KEYFED_GUS_LISTEN", default_value = "127.0.0.1:7600")]
    listen: std::net::SocketAddr,
    /// run on a manual clock (demos)
    #[arg(long)]
    debug_clock: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the vendor public key (hex) for nodes to pin.
    Pubkey,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let clock: SharedClock = if cli.debug_clock {
        Arc::new(ManualClock::new(chrono::Utc::now()))
    } else {
        Arc::new(SystemClock)
    };
    let upstream = keyfed_gus::Upstream::open(&cli.data_dir, clock)?;
    if let Some(Command::Pubkey) = cli.command {
        println!("{}", upstream.public_key_hex());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,sled=warn".into()),
        )
        .init();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    keyfed_gus::serve(upstream, listener, shutdown).await?;
    Ok(())
}
