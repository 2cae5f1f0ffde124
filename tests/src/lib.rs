//! A cluster harness: one upstream and N nodes in this process on ephemeral
//! ports, each with its own temp store, all on one shared manual clock. Nodes
//! can be stopped and restarted on the same data dir and port. Tests wait for
//! conditions with a deadline, never for a fixed time.
//!
//! Every dialed link runs through a harness-owned TCP proxy ([`faults`]), so
//! [`TestCluster::cut`] and [`TestCluster::heal`] partition two running
//! nodes; [`TestCluster::shutdown`] (and dropping a cluster) stops every node
//! and checks seat conservation over all stores ([`conservation`]).
//!
//! [`process::ProcessCluster`] runs the same topologies as real `keyfed`
//! processes that can be SIGKILLed; [`kill_loop`] is the crash workload run
//! on it by `tests/tests/killing.rs` and the `kill-loop` command.
pub mod browser;
pub mod conservation;
pub mod faults;
pub mod http;
pub mod kill_loop;
pub mod ports;
pub mod process;

use chrono::{DateTime, Duration, Utc};
pub use conservation::{check_seat_conservation, SeatViolation};
use keyfed_core::{KeyFile, KeyKind, ManualClock, SharedClock};
use keyfed_node::config::{NeighborConfig, PeerConfig};
use keyfed_node::NodeConfig;
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::admin_client::AdminClient;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const START: &str = "2026-11-23T00:00:00Z";
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

pub struct RunningNode {
    pub config: NodeConfig,
    /// Where `/metrics` is served, when the config asks for it.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the JSON API (`/api/v1`) is served, when the config sets `api_listen`.
    pub api_addr: Option<SocketAddr>,
    stop: Option<CancellationToken>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub struct TestCluster {
    /// Set by [`Topology::tls`]: the federation CA and every certificate.
    pub tls: Option<ClusterTls>,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    pub upstream: keyfed_gus::Upstream,
    pub upstream_addr: SocketAddr,
    upstream_stop: CancellationToken,
    pub nodes: BTreeMap<String, RunningNode>,
    /// One proxy per dialed link, by (dialer, dialed node).
    pub links: BTreeMap<(String, String), faults::LinkProxy>,
    /// Set once the conservation check ran (or must not run again).
    checked: bool,
}

/// A change to one node's config before the cluster starts.
type Tweak = Box<dyn Fn(&mut NodeConfig)>;

/// Describes a tree before it starts.
#[derive(Default)]
pub struct Topology {
    nodes: Vec<(String, Option<String>)>,
    neighbors: Vec<(String, String)>,
    tweaks: Vec<(String, Tweak)>,
    tls: bool,
}

/// A TLS cluster's certificates: `ca.pem` and `<name>.pem`/`<name>.key` in
/// `dir` for every node, `upstream` and `admin` (listed in every node's
/// `tls.admin_names`).
#[derive(Debug, Clone)]
pub struct ClusterTls {
    pub dir: std::path::PathBuf,
}

impl ClusterTls {
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn cert(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
    pub fn key(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(format!("{name}.key"))
    }
    /// Issues another certificate from the cluster's CA.
    pub fn issue(&self, name: &str) {
        keyfed_node::pki::issue(&self.dir, name, &[], &[]).expect("certificate issued");
    }
    /// A node's `[tls]` using the certificate issued to `name`.
    pub fn node_config(&self, name: &str) -> keyfed_node::tls::TlsConfig {
        keyfed_node::tls::TlsConfig {
            ca: self.ca(),
            cert: self.cert(name),
            key: self.key(name),
            admin_names: vec!["admin".into()],
            ..keyfed_node::tls::TlsConfig::default()
        }
    }
    /// Client TLS trusting the CA, presenting `name`'s certificate if given.
    pub fn client(&self, name: Option<&str>) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: std::path::PathBuf| std::fs::read(p).expect("pki file");
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(self.ca())));
        match name {
            Some(n) => tls.identity(Identity::from_pem(read(self.cert(n)), read(self.key(n)))),
            None => tls,
        }
    }
    fn upstream_server(&self) -> tonic::transport::ServerTlsConfig {
        keyfed_gus::tls_config(&self.ca(), &self.cert("upstream"), &self.key("upstream"))
            .expect("upstream TLS")
    }
}

impl Topology {
    pub fn new() -> Self {
        Self::default()
    }
    /// A node without a parent.
    pub fn root(mut self, id: &str) -> Self {
        self.nodes.push((id.into(), None));
        self
    }
    /// `id` is a child of `parent` (it dials its parent).
    pub fn child(mut self, id: &str, parent: &str) -> Self {
        self.nodes.push((id.into(), Some(parent.into())));
        self
    }
    /// `id` and `other` are neighbors; `id` dials.
    pub fn neighbor(mut self, id: &str, other: &str) -> Self {
        self.nodes.push((id.into(), None));
        self.neighbors.push((id.into(), other.into()));
        self
    }
    pub fn tweak(mut self, id: &str, f: impl Fn(&mut NodeConfig) + 'static) -> Self {
        self.tweaks.push((id.into(), Box::new(f)));
        self
    }
    /// Mutual TLS everywhere: a CA in the cluster's temp dir, a certificate
    /// per node, for the upstream and for `admin` (the harness's client).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

pub fn start_time() -> DateTime<Utc> {
    START.parse().expect("START is RFC 3339")
}

impl TestCluster {
    pub async fn start(topology: Topology) -> Self {
        let clock = Arc::new(ManualClock::new(start_time()));
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = topology.tls.then(|| {
            let tls = ClusterTls {
                dir: dir.path().join("pki"),
            };
            keyfed_node::pki::init(&tls.dir).expect("CA created");
            tls.issue("upstream");
            tls.issue("admin");
            for (id, _) in &topology.nodes {
                tls.issue(id);
            }
            tls
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
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
            tls.as_ref().map(ClusterTls::upstream_server),
        ));

        // bind every node first so each config can name its peers' addresses
        let mut listeners = BTreeMap::new();
        for (id, _) in &topology.nodes {
            // a port the kernel never hands out, so it is still free when
            // the node restarts (see `ports`)
            let l = ports::bind_restartable([127, 0, 0, 1].into());
            l.set_nonblocking(true).expect("non-blocking");
            let l = TcpListener::from_std(l).expect("tokio listener");
            listeners.insert(id.clone(), l);
        }
        // every dialed link goes through a proxy of its own (the fault switch)
        let mut dialed: Vec<(String, String)> = topology
            .nodes
            .iter()
            .filter_map(|(id, p)| p.clone().map(|p| (id.clone(), p)))
            .collect();
        dialed.extend(topology.neighbors.iter().cloned());
        let mut links = BTreeMap::new();
        for (from, to) in dialed {
            let target = listeners[&to].local_addr().expect("addr");
            links.insert((from, to), faults::LinkProxy::start(target).await);
        }
        let addr = |from: &str, to: &str| {
            format!(
                "{scheme}://{}",
                links[&(from.to_owned(), to.to_owned())].listen
            )
        };
        let mut configs: BTreeMap<String, NodeConfig> = BTreeMap::new();
        for (id, parent) in &topology.nodes {
            let cfg = NodeConfig {
                node_id: id.clone(),
                listen: listeners[id].local_addr().expect("addr"),
                data_dir: dir.path().join(id),
                trusted_vendor_keys: vec![upstream.public_key_hex()],
                upstream: Some(format!("{scheme}://{upstream_addr}")),
                tls: tls.as_ref().map(|t| t.node_config(id)),
                parent: parent.as_ref().map(|p| PeerConfig {
                    node_id: p.clone(),
                    address: addr(id, p),
                }),
                tick_millis: 20,
                max_backoff_millis: 200,
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
            let b_addr = addr(a, b);
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
            tls,
            clock,
            dir,
            upstream,
            upstream_addr,
            upstream_stop,
            nodes: BTreeMap::new(),
            links,
            checked: false,
        };
        for (id, cfg) in configs {
            let l = listeners.remove(&id).expect("listener");
            cluster.nodes.insert(
                id.clone(),
                RunningNode {
                    config: cfg,
                    metrics_addr: None,
                    api_addr: None,
                    stop: None,
                    task: None,
                },
            );
            cluster.launch(&id, l);
        }
        cluster
    }

    fn launch(&mut self, id: &str, listener: TcpListener) {
        let clock: SharedClock = self.clock.clone();
        let n = self.nodes.get_mut(id).expect("node exists");
        let stop = CancellationToken::new();
        // metrics: bound here (port 0 the first time, the same port on a
        // restart) so the test can read the address back
        let metrics = n
            .config
            .metrics_listen
            .map(|asked| http_listener(&mut n.metrics_addr, asked));
        // the API likewise, when the config sets api_listen
        let api = n
            .config
            .api_listen
            .map(|asked| http_listener(&mut n.api_addr, asked));
        n.task = Some(tokio::spawn(keyfed_node::run_with_listeners(
            n.config.clone(),
            listener,
            metrics,
            api,
            clock,
            stop.clone(),
        )));
        n.stop = Some(stop);
    }

    /// Stops a node and waits until its store is closed.
    pub async fn stop(&mut self, id: &str) {
        let n = self.nodes.get_mut(id).expect("node exists");
        if let Some(s) = n.stop.take() {
            s.cancel();
        }
        if let Some(t) = n.task.take() {
            t.await.expect("node task").expect("node stopped cleanly");
        }
    }

    /// Starts a stopped node again on the same data dir, on the same port
    /// when it is still free. Node ports lie outside the kernel's ephemeral
    /// range (see `ports`), but another harness may still pick the same one
    /// while the node is down; then the node comes back on a fresh
    /// port and the link proxies that reach it follow (a real operator
    /// would move it the same way), so the dialers' configs stay as they are.
    pub async fn restart(&mut self, id: &str) {
        let addr = self.nodes[id].config.listen;
        let listener = match rebind(addr, std::time::Duration::from_secs(2)).await {
            Some(l) => l,
            None => {
                let l = ports::bind_restartable(addr.ip());
                l.set_nonblocking(true).expect("non-blocking");
                let l = TcpListener::from_std(l).expect("tokio listener");
                let moved = l.local_addr().expect("addr");
                eprintln!(
                    "{id}: port {addr} was taken while the node was down; moving it to {moved}"
                );
                self.nodes.get_mut(id).expect("node exists").config.listen = moved;
                for ((_, to), proxy) in &self.links {
                    if to == id {
                        proxy.retarget(moved);
                    }
                }
                l
            }
        };
        self.launch(id, listener);
        self.wait_healthy(id).await;
    }

    pub async fn wait_healthy(&self, id: &str) {
        let url = self.url(id);
        eventually(&format!("{id} answers"), || {
            let ep = self.endpoint(&url, Some("admin"));
            async move {
                // a node that demands a token it was not given still answers
                match AdminClient::new(ep.connect_lazy())
                    .status(pb::Empty {})
                    .await
                {
                    Ok(_) => true,
                    Err(s) => s.code() == tonic::Code::Unauthenticated,
                }
            }
        })
        .await;
    }

    /// `GET /metrics` of `id` (its config must set `metrics_listen`, e.g.
    /// `127.0.0.1:0` through [`Topology::tweak`]): status and body.
    pub async fn scrape(&self, id: &str) -> (u16, String) {
        self.http_get(id, "/metrics").await
    }

    /// A plain HTTP/1.0 GET of `path` on `id`'s metrics address.
    pub async fn http_get(&self, id: &str, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.nodes[id]
            .metrics_addr
            .expect("the node serves metrics (set metrics_listen)");
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the metrics address");
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .expect("send the request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read the reply");
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP reply");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (status, body.to_owned())
    }

    pub fn url(&self, id: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.nodes[id].config.listen)
    }

    /// An endpoint for `url`; on a TLS cluster it trusts the cluster's CA
    /// and presents the certificate issued to `cert` (none: no client cert).
    pub fn endpoint(&self, url: &str, cert: Option<&str>) -> tonic::transport::Endpoint {
        let ep = tonic::transport::Endpoint::from_shared(url.to_owned()).expect("url");
        match &self.tls {
            Some(t) => ep.tls_config(t.client(cert)).expect("client TLS"),
            None => ep,
        }
    }

    /// An Admin client of `id` (on a TLS cluster, as the `admin` certificate).
    pub async fn admin(&self, id: &str) -> AdminClient<Channel> {
        AdminClient::new(self.endpoint(&self.url(id), Some("admin")).connect_lazy())
    }

    pub fn advance(&self, by: Duration) -> DateTime<Utc> {
        self.clock.advance(by)
    }

    /// A station agent on `node`, on the cluster's clock, with its state in
    /// the cluster's temp dir (the same fingerprint gets the same state).
    pub fn agent(&self, node: &str, fingerprint: &str, components: &[&str]) -> keyfed_agent::Agent {
        self.agent_with(node, fingerprint, components, |_| {})
    }

    pub fn agent_with(
        &self,
        node: &str,
        fingerprint: &str,
        components: &[&str],
        tweak: impl FnOnce(&mut keyfed_agent::AgentConfig),
    ) -> keyfed_agent::Agent {
        let dir = self.dir.path().join("agents").join(fingerprint);
        let mut cfg =
            keyfed_agent::AgentConfig::new(&self.url(node), &dir, fingerprint, components);
        cfg.timeout = std::time::Duration::from_secs(2);
        if let Some(tls) = &self.tls {
            // stations present a certificate of the federation CA
            if !tls.cert("stations").exists() {
                tls.issue("stations");
            }
            cfg.tls_ca = Some(tls.ca());
            cfg.tls_identity = Some((tls.cert("stations"), tls.key("stations")));
        }
        tweak(&mut cfg);
        keyfed_agent::Agent::open(cfg, self.clock.clone()).expect("agent state opens")
    }

    /// Admin.ListStations on `node`: every page.
    pub async fn stations(&self, node: &str) -> Vec<pb::StationInfo> {
        let mut admin = self.admin(node).await;
        let mut req = pb::ListStationsRequest::default();
        let mut all = Vec::new();
        loop {
            let page = admin
                .list_stations(req.clone())
                .await
                .expect("list stations")
                .into_inner();
            all.extend(page.stations);
            if page.next_page_token.is_empty() {
                return all;
            }
            req.page_token = page.next_page_token;
        }
    }

    pub async fn station(&self, node: &str, fingerprint: &str) -> Option<pb::StationInfo> {
        self.stations(node)
            .await
            .into_iter()
            .find(|s| s.fingerprint == fingerprint)
    }

    /// Admin.ListCommands on `node`.
    pub async fn commands(&self, node: &str) -> Vec<pb::CommandInfo> {
        self.admin(node)
            .await
            .list_commands(pb::Empty {})
            .await
            .expect("list commands")
            .into_inner()
            .commands
    }

    /// Issues a term key upstream and returns its file.
    pub fn issue(&self, components: &[&str], seats: u32, expires: &str) -> KeyFile {
        self.issue_kind(KeyKind::Term, "acme", components, seats, expires)
    }

    /// Issues a key of any kind for any customer.
    pub fn issue_kind(
        &self,
        kind: KeyKind,
        customer: &str,
        components: &[&str],
        seats: u32,
        expires: &str,
    ) -> KeyFile {
        self.upstream
            .issue(keyfed_gus::IssueRequest {
                customer: customer.into(),
                product: "endpoint".into(),
                components: components.iter().map(|c| (*c).to_owned()).collect(),
                seats,
                kind,
                expires: expires.parse().expect("date"),
            })
            .expect("upstream issues the key")
    }

    pub fn purchase(
        &self,
        key_id: &str,
        components: &[&str],
        seats: u32,
        expires: &str,
    ) -> KeyFile {
        self.upstream
            .purchase_renewal(
                key_id,
                components.iter().map(|c| (*c).to_owned()).collect(),
                seats,
                expires.parse().expect("date"),
            )
            .expect("upstream sells the renewal")
    }

    /// Adds a key file on `node` by hand (Admin.AddKey).
    pub async fn add(&self, node: &str, file: &KeyFile) -> pb::KeyInfo {
        self.admin(node)
            .await
            .add_key(pb::AddKeyRequest {
                key_file: file.render(),
                ..Default::default()
            })
            .await
            .expect("key added")
            .into_inner()
    }

    pub async fn assign(
        &self,
        node: &str,
        key_id: &str,
        object: &str,
        seats: u32,
    ) -> Result<pb::GrantInfo, tonic::Status> {
        self.admin(node)
            .await
            .assign_seats(pb::AssignSeatsRequest {
                key_id: key_id.into(),
                object: object.into(),
                seats,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Takes `object`'s seats of `key_id` back on `node` (Admin.UnassignSeats).
    pub async fn unassign(&self, node: &str, key_id: &str, object: &str) {
        self.unassign_result(node, key_id, object)
            .await
            .expect("seats taken back");
    }

    pub async fn unassign_result(
        &self,
        node: &str,
        key_id: &str,
        object: &str,
    ) -> Result<(), tonic::Status> {
        let req = pb::UnassignSeatsRequest {
            key_id: key_id.into(),
            object: object.into(),
        };
        self.admin(node).await.unassign_seats(req).await.map(|_| ())
    }

    pub async fn objects(&self, node: &str) -> Vec<pb::ObjectInfo> {
        self.admin(node)
            .await
            .list_objects(pb::ListObjectsRequest::default())
            .await
            .expect("list objects")
            .into_inner()
            .objects
    }

    pub async fn keys(&self, node: &str) -> Vec<pb::KeyInfo> {
        self.admin(node)
            .await
            .list_keys(pb::Empty {})
            .await
            .expect("list keys")
            .into_inner()
            .keys
    }

    pub async fn key(&self, node: &str, id: &str) -> Option<pb::KeyInfo> {
        self.keys(node)
            .await
            .into_iter()
            .find(|k| k.key.as_ref().is_some_and(|x| x.id == id))
    }

    pub async fn notifications(&self, node: &str) -> Vec<pb::Notification> {
        self.admin(node)
            .await
            .list_notifications(pb::ListNotificationsRequest { after_seq: 0 })
            .await
            .expect("notifications")
            .into_inner()
            .notifications
    }

    pub async fn renew(&self, node: &str, key_id: &str) -> Vec<pb::RenewalOutcome> {
        self.admin(node)
            .await
            .check_for_updates(pb::CheckForUpdatesRequest {
                key_id: key_id.into(),
            })
            .await
            .expect("check for updates")
            .into_inner()
            .outcomes
    }

    pub async fn peer_online(&self, node: &str, peer: &str) -> bool {
        let peers = self
            .admin(node)
            .await
            .list_peers(pb::Empty {})
            .await
            .expect("peers")
            .into_inner()
            .peers;
        peers.iter().any(|p| p.node_id == peer && p.online)
    }

    /// Waits until every configured link is up.
    pub async fn wait_linked(&self) {
        for (id, n) in &self.nodes {
            if n.task.is_none() {
                continue;
            }
            for (peer, _) in n.config.peers() {
                if self.nodes.get(&peer).is_some_and(|p| p.task.is_some()) {
                    eventually(&format!("{id} sees {peer} online"), || {
                        self.peer_online(id, &peer)
                    })
                    .await;
                }
            }
        }
    }

    pub async fn has_key(&self, node: &str, id: &str) -> bool {
        self.key(node, id).await.is_some()
    }

    /// Stops the upstream's gRPC server (its store stays open): nodes see
    /// it unreachable until [`TestCluster::restart_upstream`].
    pub fn stop_upstream(&mut self) {
        self.upstream_stop.cancel();
    }

    /// Serves the upstream again on the same port.
    pub async fn restart_upstream(&mut self) {
        let addr = self.upstream_addr;
        let listener = rebind(addr, DEADLINE)
            .await
            .expect("rebinding the upstream port: still in use");
        self.upstream_stop = CancellationToken::new();
        tokio::spawn(keyfed_gus::serve_with_tls(
            self.upstream.clone(),
            listener,
            self.upstream_stop.clone(),
            self.tls.as_ref().map(ClusterTls::upstream_server),
        ));
    }

    /// A gRPC client of the upstream.
    pub fn upstream_client(&self) -> keyfed_proto::v1::upstream_client::UpstreamClient<Channel> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let ep = self.endpoint(&format!("{scheme}://{}", self.upstream_addr), Some("admin"));
        keyfed_proto::v1::upstream_client::UpstreamClient::new(ep.connect_lazy())
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

    /// Cuts the link between `a` and `b` (either order): open connections
    /// close, new ones are refused until [`Self::heal`]; both nodes keep
    /// running. Returns once each running side sees the other offline.
    pub async fn cut(&self, a: &str, b: &str) {
        self.link(a, b).cut();
        for (x, y) in [(a, b), (b, a)] {
            if self.is_running(x) {
                eventually(&format!("{x} sees {y} offline after the cut"), || async {
                    !self.peer_online(x, y).await
                })
                .await;
            }
        }
    }

    /// Heals a cut link; returns once both sides, if running, see each
    /// other online again (the dialer redials with its backoff).
    pub async fn heal(&self, a: &str, b: &str) {
        self.link(a, b).heal();
        if self.is_running(a) && self.is_running(b) {
            for (x, y) in [(a, b), (b, a)] {
                eventually(&format!("{x} sees {y} online after the heal"), || {
                    self.peer_online(x, y)
                })
                .await;
            }
        }
    }

    /// Seats of `key_id` that `node` holds (assigned and free; more than it
    /// may hold when over-allocated), 0 without the key.
    pub async fn held(&self, node: &str, key_id: &str) -> u32 {
        self.key(node, key_id)
            .await
            .map_or(0, |k| k.seats_assigned + k.seats_free)
    }

    /// Deliveries `node` has queued for `peer` and not yet had acked
    /// (`u64::MAX` when `peer` is not listed).
    pub async fn outbox_depth(&self, node: &str, peer: &str) -> u64 {
        self.admin(node)
            .await
            .list_peers(pb::Empty {})
            .await
            .expect("list peers")
            .into_inner()
            .peers
            .iter()
            .find(|p| p.node_id == peer)
            .map_or(u64::MAX, |p| p.outbox_depth)
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.nodes.get(id).is_some_and(|n| n.task.is_some())
    }

    /// Where `id` keeps its store (open it only while the node is stopped).
    pub fn store_dir(&self, id: &str) -> std::path::PathBuf {
        self.nodes[id].config.data_dir.join("store")
    }

    /// r13 over every node's store (see [`conservation`]); every node must
    /// be stopped.
    pub fn seat_violations(&self) -> Vec<SeatViolation> {
        let nodes: Vec<_> = self
            .nodes
            .keys()
            .map(|id| (id.clone(), self.store_dir(id)))
            .collect();
        check_seat_conservation(&nodes).expect("every store opens once its node stopped")
    }

    /// Stops every node, then checks seat conservation over all stores and
    /// panics naming every violation.
    pub async fn shutdown(mut self) {
        let ids: Vec<String> = self.nodes.keys().cloned().collect();
        for id in ids {
            self.stop(&id).await;
        }
        self.upstream_stop.cancel();
        self.checked = true;
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

/// A test that ends without [`TestCluster::shutdown`] still gets the check,
/// unless it is already failing (a second panic would abort the run) or
/// runs on a current-thread runtime (it cannot wait for the nodes there).
impl Drop for TestCluster {
    fn drop(&mut self) {
        if self.checked {
            return;
        }
        self.checked = true;
        self.upstream_stop.cancel();
        let can_wait = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if std::thread::panicking() || !can_wait {
            for n in self.nodes.values_mut() {
                if let Some(s) = n.stop.take() {
                    s.cancel();
                }
            }
            return;
        }
        let clean = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let mut clean = true;
                for n in self.nodes.values_mut() {
                    if let Some(s) = n.stop.take() {
                        s.cancel();
                    }
                    if let Some(t) = n.task.take() {
                        clean &= matches!(t.await, Ok(Ok(())));
                    }
                }
                clean
            })
        });
        if !clean {
            return; // a node failed; the test said so or will
        }
        let bad = self.seat_violations();
        assert!(
            bad.is_empty(),
            "r13 seat conservation violated when the cluster was dropped:\n{}",
            bad.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The value of one sample in a Prometheus text exposition: `series` is the
/// metric name with its labels exactly as rendered, e.g.
/// `keyfed_peer_up{peer="c",role="child"}`.
/// Copies a directory tree (a data dir, to restore or damage a copy of it).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for e in std::fs::read_dir(from).expect("read the dir") {
        let e = e.expect("dir entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy a file");
        }
    }
}

pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `cond` until it holds, or panics with `what` after the deadline.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub fn has_event(ns: &[pb::Notification], event: &str, key_id: &str) -> bool {
    ns.iter().any(|n| n.event == event && n.key_id == key_id)
}

/// Binds `addr` again, retrying `within` while a stopped server's sockets
/// close; `None` when the port stays taken (by someone else).
async fn rebind(addr: SocketAddr, within: std::time::Duration) -> Option<TcpListener> {
    let end = tokio::time::Instant::now() + within;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if tokio::time::Instant::now() >= end {
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    }
}

/// A listener for a node's metrics or API: on `asked` the first time (port
/// 0 picks one), on the same address on a restart unless that was taken
/// meanwhile, then on a fresh port; `bound` records where it listens.
fn http_listener(bound: &mut Option<SocketAddr>, asked: SocketAddr) -> TcpListener {
    let l = bound
        .and_then(|was| std::net::TcpListener::bind(was).ok())
        .unwrap_or_else(|| {
            std::net::TcpListener::bind(SocketAddr::new(
                asked.ip(),
                if bound.is_some() { 0 } else { asked.port() },
            ))
            .expect("bind the HTTP address")
        });
    l.set_nonblocking(true).expect("non-blocking");
    *bound = Some(l.local_addr().expect("addr"));
    TcpListener::from_std(l).expect("tokio listener")
}
