//! Nodes as real `keyfed serve` processes: each gets a TOML config, its own
//! data dir and a port it keeps across restarts ([`free_port`]), and can be
//! SIGKILLed and started again on the same data and port. The upstream runs in this process (a real gRPC server).
//!
//! Every dialed link (child → parent, neighbor → neighbor) goes through a
//! [`faults::LinkProxy`], as in [`crate::TestCluster`]: [`ProcessCluster::cut`]
//! and [`ProcessCluster::heal`] partition two nodes, and a node that had to
//! come back on another port (its old one was taken meanwhile) is reached by
//! its peers through the same proxy address.
//!
//! Clocks: processes cannot share the harness's manual clock. Each node runs
//! with `--debug-clock` (a manual clock starting at the real time when the
//! process starts); [`ProcessCluster::advance`] moves the upstream's clock
//! and every running node's (Admin.AdvanceClock). A restarted node's clock
//! starts again at the real time: the binary has no flag for a start time.
//!
//! The binary: `KEYFED_BIN` if set, else `keyfed` next to the running
//! executable (`target/<profile>/keyfed`). `cargo test --workspace` builds
//! it; [`node_binary`] runs `cargo build -p keyfed-node --bin keyfed` once
//! per process anyway (a no-op when fresh), so `cargo test -p keyfed-tests`
//! never runs a binary older than the code it tests.
//!
//! Every process is killed when the cluster is dropped, also on a panic.
use crate::{faults, Topology};
use keyfed_core::{ManualClock, SharedClock};
use keyfed_node::config::{NeighborConfig, PeerConfig};
use keyfed_node::NodeConfig;
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::admin_client::AdminClient;
use keyfed_proto::v1::station_client::StationClient;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// How long a node process may take to answer after it was started.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a SIGTERMed node may take to flush and exit before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Where every node can be reached now, shareable with workload tasks (a
/// node that came back on another port is found here).
#[derive(Clone, Default)]
pub struct AddressBook(Arc<RwLock<BTreeMap<String, SocketAddr>>>);

impl AddressBook {
    pub fn addr(&self, id: &str) -> SocketAddr {
        *self
            .0
            .read()
            .expect("address book")
            .get(id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn url(&self, id: &str) -> String {
        format!("http://{}", self.addr(id))
    }

    fn set(&self, id: &str, addr: SocketAddr) {
        self.0
            .write()
            .expect("address book")
            .insert(id.to_owned(), addr);
    }

    /// A channel to `id` that connects on first use: a call to a node that
    /// is down fails fast, one to a live node gets 10 s to answer.
    pub fn channel(&self, id: &str) -> Channel {
        Endpoint::from_shared(self.url(id))
            .expect("url")
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .connect_lazy()
    }

    pub fn admin(&self, id: &str) -> AdminClient<Channel> {
        AdminClient::new(self.channel(id))
    }

    pub fn station(&self, id: &str) -> StationClient<Channel> {
        StationClient::new(self.channel(id))
    }
}

/// One node process and what it needs to start again.
pub struct NodeProcess {
    pub config: NodeConfig,
    pub config_path: PathBuf,
    /// The process's stdout and stderr, every start appended.
    pub log_path: PathBuf,
    child: Option<Child>,
    /// How often it was started.
    pub starts: u32,
}

impl NodeProcess {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct ProcessCluster {
    pub dir: tempfile::TempDir,
    /// The upstream's clock; nodes have their own (see the module docs).
    pub clock: Arc<ManualClock>,
    pub upstream: keyfed_gus::Upstream,
    pub upstream_addr: SocketAddr,
    upstream_stop: CancellationToken,
    bin: PathBuf,
    pub nodes: BTreeMap<String, NodeProcess>,
    /// One proxy per dialed link, by (dialer, dialed node).
    pub links: BTreeMap<(String, String), faults::LinkProxy>,
    book: AddressBook,
}

/// Why a node did not come up.
#[derive(Debug)]
pub enum StartError {
    /// The process exited; its status and the end of its log.
    Exited { status: String, log: String },
    /// It kept running but never answered.
    Silent { log: String },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited { status, log } => write!(f, "exited ({status}); log:\n{log}"),
            Self::Silent { log } => {
                write!(f, "did not answer within {START_DEADLINE:?}; log:\n{log}")
            }
        }
    }
}

/// A port nobody listens on right now (bound, read, closed), below the
/// kernel's ephemeral range (see [`crate::ports`]): a restarted node gets it
/// back, as a production node restarts on its configured port, since no
/// outgoing connection takes it meanwhile. The node binds it itself; if
/// another harness took it, [`ProcessCluster`] moves the node to another.
pub fn free_port() -> u16 {
    crate::ports::bind_restartable([127, 0, 0, 1].into())
        .local_addr()
        .expect("a bound port")
        .port()
}

impl ProcessCluster {
    /// Starts the upstream and every node of `topology` (TLS is not
    /// supported here) and waits until each answers.
    pub async fn start(topology: Topology) -> Self {
        assert!(
            !topology.tls,
            "ProcessCluster runs plaintext nodes; use TestCluster for TLS"
        );
        let bin = node_binary();
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let dir = tempfile::tempdir().expect("temp dir");
        let shared: SharedClock = clock.clone();
        let upstream = keyfed_gus::Upstream::open(&dir.path().join("upstream"), shared)
            .expect("upstream opens");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let upstream_addr = listener.local_addr().expect("addr");
        let upstream_stop = CancellationToken::new();
        tokio::spawn(keyfed_gus::serve_with_tls(
            upstream.clone(),
            listener,
            upstream_stop.clone(),
            None,
        ));

        let book = AddressBook::default();
        for (id, _) in &topology.nodes {
            book.set(id, SocketAddr::from(([127, 0, 0, 1], free_port())));
        }
        let mut dialed: Vec<(String, String)> = topology
            .nodes
            .iter()
            .filter_map(|(id, p)| p.clone().map(|p| (id.clone(), p)))
            .collect();
        dialed.extend(topology.neighbors.iter().cloned());
        let mut links = BTreeMap::new();
        for (from, to) in dialed {
            let proxy = faults::LinkProxy::start(book.addr(&to)).await;
            links.insert((from, to), proxy);
        }
        let via = |from: &str, to: &str| {
            format!("http://{}", links[&(from.to_owned(), to.to_owned())].listen)
        };
        let mut configs: BTreeMap<String, NodeConfig> = BTreeMap::new();
        for (id, parent) in &topology.nodes {
            let cfg = NodeConfig {
                node_id: id.clone(),
                listen: book.addr(id),
                data_dir: dir.path().join(id),
                trusted_vendor_keys: vec![upstream.public_key_hex()],
                upstream: Some(format!("http://{upstream_addr}")),
                parent: parent.as_ref().map(|p| PeerConfig {
                    node_id: p.clone(),
                    address: via(id, p),
                }),
                tick_millis: 20,
                max_backoff_millis: 200,
                debug_clock: true,
                store_cache_mb: 8,
                ..NodeConfig::default()
            };
            configs.insert(id.clone(), cfg);
        }
        for (id, parent) in &topology.nodes {
            if let Some(p) = parent {
                configs
                    .get_mut(p)
                    .expect("parent is in the topology")
                    .children
                    .push(id.clone());
            }
        }
        for (a, b) in &topology.neighbors {
            let b_addr = via(a, b);
            configs
                .get_mut(a)
                .expect("neighbor")
                .neighbors
                .push(NeighborConfig {
                    node_id: b.clone(),
                    address: Some(b_addr),
                    ..NeighborConfig::default()
                });
            configs
                .get_mut(b)
                .expect("neighbor")
                .neighbors
                .push(NeighborConfig {
                    node_id: a.clone(),
                    ..NeighborConfig::default()
                });
        }
        for (id, f) in &topology.tweaks {
            f(configs.get_mut(id).expect("tweaked node exists"));
        }
        let mut cluster = Self {
            clock,
            upstream,
            upstream_addr,
            upstream_stop,
            bin,
            nodes: BTreeMap::new(),
            links,
            book,
            dir,
        };
        for (id, config) in configs {
            let config_path = cluster.dir.path().join(format!("{id}.toml"));
            let log_path = cluster.dir.path().join(format!("{id}.log"));
            cluster.nodes.insert(
                id,
                NodeProcess {
                    config,
                    config_path,
                    log_path,
                    child: None,
                    starts: 0,
                },
            );
        }
        let ids: Vec<String> = cluster.nodes.keys().cloned().collect();
        for id in &ids {
            cluster.spawn(id);
        }
        for id in &ids {
            if let Err(e) = cluster.await_start(id).await {
                panic!("node {id} did not start: {e}");
            }
        }
        cluster
    }

    /// The address book workload tasks share with the cluster.
    pub fn addresses(&self) -> AddressBook {
        self.book.clone()
    }

    pub fn url(&self, id: &str) -> String {
        self.book.url(id)
    }

    pub fn admin(&self, id: &str) -> AdminClient<Channel> {
        self.book.admin(id)
    }

    pub fn station(&self, id: &str) -> StationClient<Channel> {
        self.book.station(id)
    }

    /// Writes `id`'s config and starts its process (without waiting).
    fn spawn(&mut self, id: &str) {
        let bin = self.bin.clone();
        let n = self.nodes.get_mut(id).expect("node exists");
        assert!(n.child.is_none(), "{id} is already running");
        let text = toml::to_string(&n.config).expect("a node config renders as TOML");
        std::fs::write(&n.config_path, text).expect("write the node config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log_path)
            .expect("open the node log");
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&n.config_path)
            .arg("--debug-clock")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        // the config file is the whole truth: no KEYFED_* from our environment
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KEYFED_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1").env(
            "RUST_LOG",
            std::env::var("KEYFED_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        n.child = Some(child);
        n.starts += 1;
    }

    /// Waits until `id` answers Admin.Status; if it exited because its port
    /// was taken, starts it again on a fresh port (peers reach it through
    /// their link proxies, which follow).
    async fn await_start(&mut self, id: &str) -> Result<(), StartError> {
        for _ in 0..5 {
            match self.wait_healthy(id).await {
                Err(StartError::Exited { log, .. })
                    if log.contains("binding") || log.contains("Address already in use") =>
                {
                    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    self.move_to(id, addr);
                    self.spawn(id);
                }
                other => return other,
            }
        }
        self.wait_healthy(id).await
    }

    fn move_to(&mut self, id: &str, addr: SocketAddr) {
        self.nodes.get_mut(id).expect("node").config.listen = addr;
        self.book.set(id, addr);
        for ((_, to), proxy) in &self.links {
            if to == id {
                proxy.retarget(addr);
            }
        }
    }

    /// Polls Admin.Status until `id` answers, its process exits, or the
    /// start deadline passes.
    pub async fn wait_healthy(&mut self, id: &str) -> Result<(), StartError> {
        let end = Instant::now() + START_DEADLINE;
        loop {
            let n = self.nodes.get_mut(id).expect("node exists");
            let Some(child) = n.child.as_mut() else {
                return Err(StartError::Exited {
                    status: "not started".into(),
                    log: String::new(),
                });
            };
            if let Ok(Some(status)) = child.try_wait() {
                n.child = None;
                return Err(StartError::Exited {
                    status: status.to_string(),
                    log: log_tail(&n.log_path),
                });
            }
            let mut admin = self.book.admin(id);
            let asked = tokio::time::timeout(Duration::from_secs(1), admin.status(pb::Empty {}));
            if matches!(asked.await, Ok(Ok(_))) {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(StartError::Silent {
                    log: log_tail(&self.nodes[id].log_path),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.nodes.get(id).is_some_and(|n| n.child.is_some())
    }

    /// SIGKILL: the process dies at once, whatever it was doing, and is reaped.
    pub fn kill(&mut self, id: &str) {
        let n = self.nodes.get_mut(id).expect("node exists");
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits until the node flushed its store and exited
    /// (SIGKILL after a deadline). Returns whether it exited cleanly.
    pub async fn terminate(&mut self, id: &str) -> bool {
        let n = self.nodes.get_mut(id).expect("node exists");
        let Some(mut c) = n.child.take() else {
            return true;
        };
        let asked = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        let end = Instant::now() + STOP_DEADLINE;
        while asked && Instant::now() < end {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Starts a stopped (or killed) node on the same data dir, normally on
    /// the same port; returns once it answers, with how long that took.
    pub async fn restart(&mut self, id: &str) -> Result<Duration, StartError> {
        let t = Instant::now();
        self.spawn(id);
        self.await_start(id).await?;
        Ok(t.elapsed())
    }

    /// Moves the upstream's clock and every running node's by `by`.
    pub async fn advance(&self, by: chrono::Duration) {
        self.clock.advance(by);
        for id in self.nodes.keys().filter(|id| self.is_running(id)) {
            self.admin(id)
                .advance_clock(pb::AdvanceClockRequest {
                    seconds: by.num_seconds(),
                })
                .await
                .unwrap_or_else(|e| panic!("advance {id}'s clock: {e}"));
        }
    }

    /// The proxy of the link between `a` and `b`, whichever of them dials.
    pub fn link(&self, a: &str, b: &str) -> &faults::LinkProxy {
        let ab = (a.to_owned(), b.to_owned());
        let ba = (b.to_owned(), a.to_owned());
        self.links
            .get(&ab)
            .or_else(|| self.links.get(&ba))
            .unwrap_or_else(|| panic!("no link between {a} and {b} in the topology"))
    }

    /// Cuts the link between `a` and `b` (open connections close, new ones
    /// are refused) until [`Self::heal`]; both processes keep running.
    pub fn cut(&self, a: &str, b: &str) {
        self.link(a, b).cut();
    }

    pub fn heal(&self, a: &str, b: &str) {
        self.link(a, b).heal();
    }

    /// Admin.ListPeers of `id`.
    pub async fn peers(&self, id: &str) -> Result<Vec<pb::PeerInfo>, tonic::Status> {
        Ok(self
            .admin(id)
            .list_peers(pb::Empty {})
            .await?
            .into_inner()
            .peers)
    }

    /// Whether every running node sees every running peer online with
    /// nothing queued for it (every delivery acked).
    pub async fn quiet(&self) -> bool {
        for id in self.nodes.keys().filter(|id| self.is_running(id)) {
            let Ok(peers) = self.peers(id).await else {
                return false;
            };
            for p in peers {
                if self.is_running(&p.node_id) && (!p.online || p.outbox_depth > 0) {
                    return false;
                }
            }
        }
        true
    }

    /// Where `id` keeps its store (open it only while the node is stopped).
    pub fn store_dir(&self, id: &str) -> PathBuf {
        self.nodes[id].config.data_dir.join("store")
    }

    /// The end of `id`'s log (every start of it).
    pub fn log_tail(&self, id: &str) -> String {
        log_tail(&self.nodes[id].log_path)
    }

    /// SIGTERMs every node (each flushes and exits) and stops the upstream.
    pub async fn stop_all(&mut self) {
        let ids: Vec<String> = self.nodes.keys().cloned().collect();
        for id in ids {
            self.terminate(&id).await;
        }
        self.upstream_stop.cancel();
    }

    /// r13 over every node's store (see [`crate::conservation`]); every node
    /// must be stopped.
    pub fn seat_violations(&self) -> Vec<crate::SeatViolation> {
        assert!(
            self.nodes.values().all(|n| n.child.is_none()),
            "stop every node before opening their stores"
        );
        let nodes: Vec<_> = self
            .nodes
            .keys()
            .map(|id| (id.clone(), self.store_dir(id)))
            .collect();
        crate::check_seat_conservation(&nodes).expect("every store opens once its node stopped")
    }

    /// Stops every node, then checks seat conservation over all stores and
    /// panics naming every violation.
    pub async fn shutdown(mut self) {
        self.stop_all().await;
        let bad = self.seat_violations();
        assert!(
            bad.is_empty(),
            "r13 seat conservation violated at shutdown:\n{}",
            bad.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// No process outlives its cluster, whatever the test did.
impl Drop for ProcessCluster {
    fn drop(&mut self) {
        self.upstream_stop.cancel();
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The `keyfed` binary to run (see the module docs), brought up to date
/// once per process: `cargo build -p keyfed-node --bin keyfed` is a no-op
/// when it is fresh, and `cargo test -p keyfed-tests` alone would otherwise
/// run a binary older than the code under test.
pub fn node_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("KEYFED_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("own path");
        let mut profile_dir = exe.parent().expect("exe dir").to_path_buf();
        if profile_dir.ends_with("deps") {
            profile_dir.pop();
        }
        let bin = profile_dir.join("keyfed");
        match build_node_binary(&profile_dir) {
            Some(built) => built,
            None if bin.exists() => {
                eprintln!(
                    "process harness: could not build keyfed; running {} as it is",
                    bin.display()
                );
                bin
            }
            None => panic!(
                "{} is missing and could not be built: run `cargo build -p keyfed-node --bin keyfed` (or set KEYFED_BIN)",
                bin.display()
            ),
        }
    })
    .clone()
}

/// `cargo build -p keyfed-node --bin keyfed` into the tests' own target
/// dir. A `cargo test` holds that dir's lock while tests run, so if cargo
/// blocks on it the build goes to `<target>/process-harness` instead (its
/// own lock; a full build the first time).
fn build_node_binary(profile_dir: &Path) -> Option<PathBuf> {
    let target = profile_dir.parent()?.to_path_buf();
    let profile = profile_dir.file_name()?.to_string_lossy().into_owned();
    if let Some(bin) = cargo_build(&target, &profile, true) {
        return Some(bin);
    }
    let own = target.join("process-harness");
    eprintln!(
        "process harness: the target dir is locked; building keyfed into {}",
        own.display()
    );
    cargo_build(&own, &profile, false)
}

/// Runs the build; `None` if it failed, or if `give_up_if_locked` and cargo
/// waited for the target dir's lock.
fn cargo_build(target: &Path, profile: &str, give_up_if_locked: bool) -> Option<PathBuf> {
    use std::io::BufRead;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // what cargo set for this test run (CARGO_PKG_NAME, CARGO_MANIFEST_DIR,
    // OUT_DIR…) would reach build scripts that watch them (ring's, cc's) and
    // rebuild half the tree, twice: once here, once on the next plain build
    let inherited = |k: &str| {
        k == "OUT_DIR"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_BIN_",
                "CARGO_CFG_",
                "CARGO_FEATURE_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&k)
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", "keyfed-node", "--bin", "keyfed"])
        .arg("--target-dir")
        .arg(target)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if inherited(&k.to_string_lossy()) {
            cmd.env_remove(k);
        }
    }
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let mut child = cmd.spawn().ok()?;
    let stderr = child.stderr.take().expect("piped stderr");
    for line in std::io::BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if give_up_if_locked && line.contains("Blocking waiting for file lock") {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        if line.contains("Compiling") || line.contains("error") {
            eprintln!("process harness: {}", line.trim());
        }
    }
    let ok = child.wait().ok()?.success();
    let bin = target.join(profile).join("keyfed");
    (ok && bin.exists()).then_some(bin)
}
