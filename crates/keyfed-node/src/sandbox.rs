//! `keyfed sandbox`: an upstream and a small federation in one process, for
//! the README walkthrough: main (parent of child, neighbor of neighbor).
use crate::config::{NeighborConfig, NodeConfig, PeerConfig};
use keyfed_core::SharedClock;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct SandboxNode {
    pub name: String,
    pub role: &'static str,
    pub addr: SocketAddr,
}

/// The three node configs of the sandbox, wired main → child, neighbor ↔ main.
pub fn configs(
    dir: &Path,
    ip: IpAddr,
    base_port: u16,
    vendor_key: &str,
    tick_millis: u64,
) -> Vec<NodeConfig> {
    let addr = |n: u16| SocketAddr::new(ip, base_port + n);
    let url = |n: u16| format!("http://{}", addr(n));
    let base = |id: &str, n: u16| NodeConfig {
        node_id: id.into(),
        listen: addr(n),
        data_dir: dir.join(id),
        trusted_vendor_keys: vec![vendor_key.to_owned()],
        upstream: Some(url(0)),
        tick_millis,
        max_backoff_millis: 1000,
        // a demo: served on a non-loopback address (a container), Admin must
        // still answer the host's keyfedctl; the node WARNs that it is open
        insecure_open_admin: !ip.is_loopback(),
        ..NodeConfig::default()
    };
    let mut main = base("main", 1);
    // the console and JSON API of main, four ports above the upstream
    main.api_listen = Some(addr(4));
    main.children = vec!["child".into()];
    main.neighbors = vec![NeighborConfig {
        node_id: "neighbor".into(),
        ..NeighborConfig::default()
    }];
    let mut neighbor = base("neighbor", 2);
    neighbor.neighbors = vec![NeighborConfig {
        node_id: "main".into(),
        address: Some(url(1)),
        ..NeighborConfig::default()
    }];
    let mut child = base("child", 3);
    child.parent = Some(PeerConfig {
        node_id: "main".into(),
        address: url(1),
    });
    vec![main, neighbor, child]
}

pub async fn run(
    dir: PathBuf,
    ip: IpAddr,
    base_port: u16,
    clock: SharedClock,
    debug_clock: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let upstream = keyfed_gus::Upstream::open(&dir.join("upstream"), clock.clone())?;
    let vendor_key = upstream.public_key_hex();
    let gus_addr = SocketAddr::new(ip, base_port);
    let gus_listener = TcpListener::bind(gus_addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the upstream to {gus_addr}: {e}"))?;
    let mut tasks = tokio::task::JoinSet::new();
    let gus_shutdown = shutdown.clone();
    tasks.spawn(async move {
        keyfed_gus::serve(upstream, gus_listener, gus_shutdown)
            .await
            .map_err(anyhow::Error::from)
    });
    let mut table = vec![SandboxNode {
        name: "upstream".into(),
        role: "vendor (GUS)",
        addr: gus_addr,
    }];
    let mut console = None;
    for mut cfg in configs(&dir, ip, base_port, &vendor_key, 500) {
        cfg.debug_clock = debug_clock;
        console = console.or(cfg.api_listen);
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding {} to {}: {e}", cfg.node_id, cfg.listen))?;
        let role = match cfg.node_id.as_str() {
            "main" => "parent of child, neighbor of neighbor",
            "child" => "child of main",
            _ => "neighbor of main",
        };
        table.push(SandboxNode {
            name: cfg.node_id.clone(),
            role,
            addr: cfg.listen,
        });
        tasks.spawn(crate::run(cfg, listener, clock.clone(), shutdown.clone()));
    }
    print_banner(&dir, &table, &vendor_key, console);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

fn print_banner(dir: &Path, table: &[SandboxNode], vendor_key: &str, console: Option<SocketAddr>) {
    println!("keyfed sandbox in {}", dir.display());
    println!("{:<10} {:<40} ADDRESS", "NAME", "ROLE");
    for n in table {
        println!("{:<10} {:<40} http://{}", n.name, n.role, n.addr);
    }
    let up = table[0].addr;
    let main = table[1].addr;
    println!("\nvendor public key pinned on every node: {vendor_key}");
    if let Some(c) = console {
        println!("console of main (and its JSON API at /api/v1): http://{c}/");
    }
    println!("\ntry:");
    println!("  keyfedctl --addr http://{up} upstream issue --customer acme --product endpoint --components antivirus,firewall --seats 50 --expires 2027-12-31 -o acme.key");
    println!("  keyfedctl --addr http://{main} key add acme.key");
    println!("  keyfedctl --addr http://{main} key assign <KEY_ID> child 10");
    println!("  keyfedctl --addr http://{up} upstream renewal <KEY_ID> --components antivirus,firewall --seats 60 --expires 2028-12-31");
    println!("  keyfedctl --addr http://{main} key renew");
    println!("  keyfedctl --addr http://{main} peers");
    println!("\nCtrl-C stops the sandbox; running it again on the same --dir keeps all data.");
}
