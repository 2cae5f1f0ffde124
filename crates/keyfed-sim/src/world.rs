//! One simulated federation: five engines on in-memory stores, one seeded
//! RNG that draws the workload and the faults, a simulated clock per node,
//! and a network of per-link message queues between the engines' outboxes.
//! Every step is logged (and hashed into the run's digest) and followed by
//! the invariant checks that must hold at every step; after the last step
//! every link is healed, the network drained, and the quiescent checks run.
use crate::check::{self, SerialMemory};
use crate::rng::Rng;
use crate::upstream::{SimUpstream, Terms, UpstreamBug};
use chrono::{DateTime, Duration, Utc};
use keyfed_core::entitlement::ActivationMode;
use keyfed_core::{KeyKind, ManualClock};
use keyfed_engine::config::{EngineConfig, NeighborConfig, PeerConfig, PeerRole};
use keyfed_engine::{Command, Engine, EngineParts, Hello, NoUpstream, Outcome, UpstreamPort};
use keyfed_store::{Grant, ObjectKind, Store, StoredKey};
use keyfed_wire::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The topology: a root with two children and a neighbor; one grandchild.
pub const NODES: [&str; 5] = ["r", "c1", "c2", "n1", "g1"];
const ROOT: usize = 0;
const LINKS: [(usize, usize); 4] = [(0, 1), (0, 2), (0, 3), (1, 4)];
/// Stations that connect (to any node, b02).
const FINGERPRINTS: [&str; 6] = ["fp-a", "fp-b", "fp-c", "fp-d", "fp-e", "fp-f"];

/// Every fault kind the network, the clocks and the nodes can inject.
pub const FAULTS: [&str; 9] = [
    "delay",
    "drop",
    "ack-drop",
    "duplicate",
    "reorder",
    "cut",
    "crash",
    "crash-before-ack",
    "clock-skew",
];

/// Every invariant the checker holds the federation to.
pub const INVARIANTS: [&str; 5] = [
    "conservation",
    "durability",
    "convergence",
    "one-seat",
    "rollback",
];

/// A bug planted on purpose, to show the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plant {
    #[default]
    None,
    /// A node acks a delivery before its store synced it, then crashes:
    /// the peer dropped the entry, the node restarts without it.
    AckBeforeSync,
    /// The network replays an old delivery under a fresh sequence number.
    StaleReplay,
    /// The checker is fed a store with a corrupted (inflated) grant.
    CorruptGrant,
    /// The upstream sells renewals with an older serial.
    OlderSerial,
    /// A link silently stalls every key renewal: never delivered, never
    /// dropped (so the stream never breaks and nothing is resent).
    StallRenewal,
    /// A restart that loses the store's memory of the highest serial of
    /// each license (say, a migration that dropped it).
    ForgetSerials,
    /// A node counts a station's seat without asking the key's origin.
    UnclaimedSeat,
}

impl Plant {
    pub const ALL: [Plant; 7] = [
        Self::AckBeforeSync,
        Self::StaleReplay,
        Self::CorruptGrant,
        Self::OlderSerial,
        Self::StallRenewal,
        Self::ForgetSerials,
        Self::UnclaimedSeat,
    ];
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub steps: usize,
    pub trace: bool,
    pub plant: Plant,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            steps: 160,
            trace: false,
            plant: Plant::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub step: usize,
    pub invariant: &'static str,
    pub detail: String,
}

/// What one seed did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    pub steps: usize,
    pub faults: BTreeMap<&'static str, u64>,
    pub checks: BTreeMap<&'static str, u64>,
    pub violation: Option<Violation>,
    pub digest: String,
    pub trace: Vec<String>,
}

/// Runs one seed to its end (or its first violation), deterministically.
#[must_use]
pub fn run_seed(seed: u64, cfg: &SimConfig) -> Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    rt.block_on(async {
        let mut w = World::new(seed, cfg.clone());
        let _ = w.run().await;
        w.finish()
    })
}

/// Runs `count` seeds from `first` on `jobs` threads; reports in seed order.
#[must_use]
pub fn run_seeds(first: u64, count: u64, cfg: &SimConfig, jobs: usize) -> Vec<Report> {
    let next = std::sync::atomic::AtomicU64::new(first);
    let out = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= first + count {
                    return;
                }
                let r = run_seed(seed, cfg);
                out.lock().expect("reports lock").push(r);
            });
        }
    });
    let mut v = out.into_inner().expect("reports lock");
    v.sort_by_key(|r| r.seed);
    v
}

enum Msg {
    Delivery { seq: u64, bytes: Vec<u8> },
    Ack { seq: u64 },
}

/// One direction of a link: what is on the wire from one node to another.
#[derive(Default)]
struct Dir {
    flight: VecDeque<Msg>,
    next_send: u64,
    held: u64,
    max_delivered: u64,
    history: Vec<Vec<u8>>,
    /// Planted: the front message never moves.
    stalled: bool,
}

struct Node {
    config: EngineConfig,
    engine: Engine,
    shutdown: CancellationToken,
    clock: Arc<ManualClock>,
    skew: i64,
    last: DateTime<Utc>,
    serials: SerialMemory,
}

/// Stop the seed: an invariant broke.
struct Broken;

type Step = Result<(), Broken>;

pub struct World {
    seed: u64,
    rng: Rng,
    cfg: SimConfig,
    upstream: Arc<SimUpstream>,
    nodes: Vec<Node>,
    up: Vec<bool>,
    dirs: BTreeMap<(usize, usize), Dir>,
    leases: BTreeMap<(usize, String), String>,
    global: DateTime<Utc>,
    step: usize,
    report: Report,
    hasher: Sha256,
}

fn base_time() -> DateTime<Utc> {
    // ten minutes before midnight: the first keys expire at it (e01)
    "2026-03-01T23:50:00Z".parse().expect("a valid time")
}

fn configs(vendor: &str) -> Vec<EngineConfig> {
    let base = |id: &str| EngineConfig {
        node_id: id.into(),
        trusted_vendor_keys: vec![vendor.to_owned()],
        ..EngineConfig::default()
    };
    let parent = |id: &str| {
        Some(PeerConfig {
            node_id: id.into(),
            address: String::new(),
        })
    };
    let neighbor = |id: &str| NeighborConfig {
        node_id: id.into(),
        ..NeighborConfig::default()
    };
    vec![
        EngineConfig {
            has_upstream: true,
            children: vec!["c1".into(), "c2".into()],
            neighbors: vec![neighbor("n1")],
            ..base("r")
        },
        EngineConfig {
            parent: parent("r"),
            children: vec!["g1".into()],
            ..base("c1")
        },
        EngineConfig {
            parent: parent("r"),
            ..base("c2")
        },
        EngineConfig {
            neighbors: vec![neighbor("r")],
            ..base("n1")
        },
        EngineConfig {
            parent: parent("c1"),
            ..base("g1")
        },
    ]
}

fn start(
    config: &EngineConfig,
    store: Store,
    clock: Arc<ManualClock>,
    upstream: Arc<dyn UpstreamPort>,
) -> (Engine, CancellationToken) {
    let shutdown = CancellationToken::new();
    let engine = Engine::new(EngineParts {
        config: config.clone(),
        store,
        clock,
        upstream,
        sinks: Vec::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        shutdown: shutdown.clone(),
    })
    .expect("an engine starts on an in-memory store");
    (engine, shutdown)
}

fn label(cmd: &Command) -> String {
    use Command as C;
    match cmd {
        C::AddKey { text, .. } | C::ActivateKey { text, .. } => {
            let id = keyfed_core::KeyFile::parse(text)
                .map(|f| format!("{} serial {}", f.key.id, f.key.serial))
                .unwrap_or_default();
            let what = if matches!(cmd, C::AddKey { .. }) {
                "add-key"
            } else {
                "activate-key"
            };
            format!("{what} {id}")
        }
        C::DeleteKey { key_id, .. } => format!("delete-key {key_id}"),
        C::Assign {
            key_id,
            object,
            seats,
            donation_days,
            ..
        } => format!("assign {key_id} {object} {seats} (lend {donation_days}d)"),
        C::Unassign { key_id, object, .. } => format!("unassign {key_id} {object}"),
        C::StationContact { hello, .. } => format!("contact {}", hello.fingerprint),
        C::ReleaseStation { lease_id, .. } => format!("release {lease_id}"),
        C::PeerLink { peer, online, .. } => format!("link {peer} online={online}"),
        C::Delivery { peer, delivery, .. } => {
            let d = pb::Delivery::decode(delivery.as_slice()).unwrap_or_default();
            let what = d
                .body
                .as_ref()
                .map_or("empty", keyfed_engine::engine::body_name);
            format!("delivery from {peer} seq {} {what}", d.seq)
        }
        C::Acked { peer, seq, .. } => format!("acked by {peer} to {seq}"),
        C::Tick { .. } => "tick".into(),
        other => format!("{other:?}").chars().take(60).collect(),
    }
}

fn outcome(r: &Result<Outcome, String>) -> String {
    match r {
        Err(e) => format!("err: {e}"),
        Ok(Outcome::Grant(g)) => format!("granted {}", g.seats),
        Ok(Outcome::Lease(l, origin)) => format!(
            "lease {} licensed={}{}",
            l.key_id,
            l.licensed,
            origin
                .as_ref()
                .map(|o| format!(" provisional (origin {o})"))
                .unwrap_or_default()
        ),
        Ok(Outcome::Key(k)) => format!("key {}", k.key.id),
        Ok(Outcome::Renewal(o)) => format!("renewal {} {}", o.outcome, o.new_key_id),
        Ok(_) => "ok".into(),
    }
}

impl World {
    #[must_use]
    pub fn new(seed: u64, cfg: SimConfig) -> Self {
        let mut rng = Rng::new(seed);
        let bug = if cfg.plant == Plant::OlderSerial {
            UpstreamBug::OlderSerial
        } else {
            UpstreamBug::None
        };
        let upstream = Arc::new(SimUpstream::new(rng.seed32(), bug));
        let global = base_time();
        let nodes = configs(&upstream.public_hex())
            .into_iter()
            .enumerate()
            .map(|(i, config)| {
                let skew = rng.range(-300, 300);
                let now = global + Duration::seconds(skew);
                let clock = Arc::new(ManualClock::new(now));
                let port: Arc<dyn UpstreamPort> = if i == ROOT {
                    upstream.clone()
                } else {
                    Arc::new(NoUpstream)
                };
                let (engine, shutdown) = start(&config, Store::in_memory(), clock.clone(), port);
                Node {
                    config,
                    engine,
                    shutdown,
                    clock,
                    skew,
                    last: now,
                    serials: SerialMemory::default(),
                }
            })
            .collect();
        let mut dirs = BTreeMap::new();
        for (a, b) in LINKS {
            dirs.insert((a, b), Dir::default());
            dirs.insert((b, a), Dir::default());
        }
        let report = Report {
            seed,
            faults: FAULTS.iter().map(|f| (*f, 0)).collect(),
            checks: INVARIANTS.iter().map(|i| (*i, 0)).collect(),
            ..Report::default()
        };
        Self {
            seed,
            rng,
            cfg,
            upstream,
            nodes,
            up: vec![false; LINKS.len()],
            dirs,
            leases: BTreeMap::new(),
            global,
            step: 0,
            report,
            hasher: Sha256::new(),
        }
    }

    fn log(&mut self, line: String) {
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        if self.cfg.trace {
            self.report.trace.push(format!("#{:<4} {line}", self.step));
        }
    }

    fn fault(&mut self, kind: &'static str, what: String) {
        *self.report.faults.entry(kind).or_default() += 1;
        self.log(format!("FAULT {kind}: {what}"));
    }

    fn fail(&mut self, invariant: &'static str, detail: String) -> Broken {
        self.log(format!("VIOLATION {invariant}: {detail}"));
        self.report.violation = Some(Violation {
            step: self.step,
            invariant,
            detail,
        });
        Broken
    }

    fn count(&mut self, invariant: &'static str) {
        *self.report.checks.entry(invariant).or_default() += 1;
    }

    /// A node's clock: the global time plus its skew, never going back.
    fn now_of(&mut self, n: usize) -> DateTime<Utc> {
        let node = &mut self.nodes[n];
        let t = (self.global + Duration::seconds(node.skew)).max(node.last);
        node.last = t;
        node.clock.set(t);
        t
    }

    async fn exec(
        &mut self,
        n: usize,
        cmd: impl FnOnce(DateTime<Utc>) -> Command,
    ) -> Result<Outcome, String> {
        let cmd = cmd(self.now_of(n));
        let what = label(&cmd);
        let r = self.nodes[n]
            .engine
            .execute(cmd)
            .await
            .map_err(|e| e.to_string());
        self.log(format!("{} {what} -> {}", NODES[n], outcome(&r)));
        r
    }

    fn store(&self, n: usize) -> Store {
        self.nodes[n].engine.store().clone()
    }

    fn link_of(a: usize, b: usize) -> Option<usize> {
        LINKS
            .iter()
            .position(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    }

    fn dir(&mut self, from: usize, to: usize) -> &mut Dir {
        self.dirs.get_mut(&(from, to)).expect("a configured link")
    }

    /// Runs the workload, then quiescence; stops at the first violation.
    async fn run(&mut self) -> Step {
        for i in 0..LINKS.len() {
            self.heal(i).await;
        }
        for step in 0..self.cfg.steps {
            self.step = step;
            self.one_step().await?;
            for d in self.dirs.values_mut() {
                d.held = d.held.saturating_sub(1);
            }
            self.check_step()?;
        }
        self.report.steps = self.cfg.steps;
        self.step = self.cfg.steps;
        self.quiesce().await?;
        self.check_quiescent()
    }

    fn finish(mut self) -> Report {
        for n in &self.nodes {
            if let Ok(d) = n.engine.store().dump() {
                for (tree, entries) in check::acknowledged_state(&d) {
                    self.hasher.update(tree.as_bytes());
                    for (k, v) in entries {
                        self.hasher.update(&k);
                        self.hasher.update(&v);
                    }
                }
            }
            n.shutdown.cancel();
        }
        self.report.digest = hex::encode(self.hasher.finalize());
        if self.report.steps == 0 {
            self.report.steps = self.step;
        }
        self.report
    }

    async fn one_step(&mut self) -> Step {
        match self.rng.below(100) {
            0..=29 | 95..=99 => self.deliver_some().await?,
            30..=41 => {
                let (f, t) = self.random_dir();
                self.send(f, t);
            }
            42..=46 => self.advance_time(),
            47..=50 => {
                let n = self.rng.index(NODES.len());
                let seed = self.rng.seed32();
                let _ = self.exec(n, |now| Command::Tick { now, seed }).await;
            }
            51..=57 => self.contact().await,
            58..=60 => self.release().await,
            61..=68 => self.assign().await?,
            69..=71 => self.unassign().await,
            72..=73 => self.add_key().await,
            74..=76 => self.renewal().await,
            77 => self.activate().await,
            78 => self.delete_or_readd().await,
            79..=82 => {
                let l = self.rng.index(LINKS.len());
                if self.up[l] {
                    self.fault(
                        "cut",
                        format!("{}-{}", NODES[LINKS[l].0], NODES[LINKS[l].1]),
                    );
                    self.cut(l).await;
                }
            }
            83..=88 => {
                let l = self.rng.index(LINKS.len());
                self.heal(l).await;
            }
            89..=90 => {
                let n = self.rng.index(NODES.len());
                self.fault("crash", NODES[n].to_owned());
                self.crash(n, None).await?;
            }
            91..=92 => {
                let (f, t) = self.random_dir();
                let steps = self.rng.below(8) + 1;
                self.fault(
                    "delay",
                    format!("{}->{} held {steps} steps", NODES[f], NODES[t]),
                );
                self.dir(f, t).held = steps;
            }
            _ => {
                let n = self.rng.index(NODES.len());
                let by = self.rng.range(-120, 120);
                self.nodes[n].skew += by;
                self.fault("clock-skew", format!("{} by {by}s", NODES[n]));
            }
        }
        if self.cfg.plant == Plant::UnclaimedSeat && self.rng.chance(10) {
            self.plant_unclaimed_seat();
        }
        Ok(())
    }

    fn random_dir(&mut self) -> (usize, usize) {
        let (a, b) = LINKS[self.rng.index(LINKS.len())];
        if self.rng.chance(50) {
            (a, b)
        } else {
            (b, a)
        }
    }

    fn advance_time(&mut self) {
        let secs = match self.rng.below(100) {
            0..=69 => self.rng.range(1, 600),
            70..=89 => self.rng.range(600, 7200),
            90..=97 => 86_400,
            _ => self.rng.range(10, 31) * 86_400,
        };
        self.global += Duration::seconds(secs);
        self.log(format!("time +{secs}s -> {}", self.global));
    }

    /// The link's pusher: every outbox entry past what was sent goes out.
    fn send(&mut self, f: usize, t: usize) {
        let Some(l) = Self::link_of(f, t) else { return };
        if !self.up[l] {
            return;
        }
        let entries = self.store(f).outbox(NODES[t]).expect("outbox readable");
        let from = self.dir(f, t).next_send;
        let mut sent = Vec::new();
        for e in entries.into_iter().filter(|e| e.seq >= from) {
            let mut d = pb::Delivery::decode(e.body.as_slice()).expect("outbox entries decode");
            d.seq = e.seq;
            d.message_id.clone_from(&e.message_id);
            sent.push((e.seq, d.encode_to_vec()));
        }
        let mut dups = Vec::new();
        for (seq, bytes) in sent {
            let dup = self.rng.chance(5);
            let dir = self.dir(f, t);
            dir.next_send = seq + 1;
            if dup {
                dir.flight.push_back(Msg::Delivery {
                    seq,
                    bytes: bytes.clone(),
                });
                dups.push(seq);
            }
            dir.flight.push_back(Msg::Delivery { seq, bytes });
        }
        for seq in dups {
            self.fault("duplicate", format!("{}->{} seq {seq}", NODES[f], NODES[t]));
        }
    }

    async fn deliver_some(&mut self) -> Step {
        let busy: Vec<(usize, usize)> = self
            .dirs
            .iter()
            .filter(|(_, d)| !d.flight.is_empty() && d.held == 0 && !d.stalled)
            .map(|(k, _)| *k)
            .collect();
        if busy.is_empty() {
            let (f, t) = self.random_dir();
            self.send(f, t);
            return Ok(());
        }
        let (f, t) = *self.rng.pick(&busy);
        self.deliver(f, t, true).await
    }

    /// Takes one message off the wire from `f` to `t` and applies it.
    async fn deliver(&mut self, f: usize, t: usize, faults: bool) -> Step {
        let mut idx = 0;
        if faults && self.rng.chance(20) {
            // one link is one ordered stream: only a stale duplicate or an
            // (idempotent, cumulative) ack may overtake what was sent before it
            let d = self.dir(f, t);
            let movable: Vec<usize> = d
                .flight
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(_, m)| match m {
                    Msg::Ack { .. } => true,
                    Msg::Delivery { seq, .. } => *seq <= d.max_delivered,
                })
                .map(|(i, _)| i)
                .collect();
            if !movable.is_empty() {
                idx = *self.rng.pick(&movable);
                self.fault(
                    "reorder",
                    format!("{}->{} message {idx} first", NODES[f], NODES[t]),
                );
            }
        }
        if self.cfg.plant == Plant::StallRenewal {
            if let Some(Msg::Delivery { bytes, .. }) = self.dir(f, t).flight.get(idx) {
                let d = pb::Delivery::decode(bytes.as_slice()).unwrap_or_default();
                if matches!(d.body, Some(pb::delivery::Body::Renewed(_))) {
                    self.log(format!("PLANT {}->{} stalls a renewal", NODES[f], NODES[t]));
                    self.dir(f, t).stalled = true;
                    return Ok(());
                }
            }
        }
        let Some(msg) = self.dir(f, t).flight.remove(idx) else {
            return Ok(());
        };
        let peer = NODES[f].to_owned();
        match msg {
            Msg::Ack { seq } => {
                if faults && self.rng.chance(5) {
                    // an ack lost on a stream breaks the stream; the next
                    // Hello carries what was applied
                    self.fault("ack-drop", format!("{}->{} ack {seq}", NODES[f], NODES[t]));
                    let l = Self::link_of(f, t).expect("a link");
                    self.cut(l).await;
                    return Ok(());
                }
                let _ = self.exec(t, |now| Command::Acked { peer, seq, now }).await;
            }
            Msg::Delivery { seq, bytes } => {
                if faults && self.rng.chance(3) {
                    // a message lost on a stream breaks the stream
                    self.fault("drop", format!("{}->{} seq {seq}", NODES[f], NODES[t]));
                    let l = Self::link_of(f, t).expect("a link");
                    self.cut(l).await;
                    return Ok(());
                }
                if faults && self.planted_delivery(f, t, seq, &bytes).await? {
                    return Ok(());
                }
                let delivery = bytes.clone();
                let r = self
                    .exec(t, |now| Command::Delivery {
                        peer,
                        delivery,
                        now,
                    })
                    .await;
                if r.is_err() {
                    // not acked: the peer replays it on the next link
                    let l = Self::link_of(f, t).expect("a link");
                    self.cut(l).await;
                    return Ok(());
                }
                let d = self.dir(f, t);
                d.max_delivered = d.max_delivered.max(seq);
                d.history.push(bytes);
                if faults && self.rng.chance(3) {
                    self.fault(
                        "crash-before-ack",
                        format!("{} applied seq {seq} from {}", NODES[t], NODES[f]),
                    );
                    return self.crash(t, None).await;
                }
                self.dir(t, f).flight.push_back(Msg::Ack { seq });
            }
        }
        Ok(())
    }

    /// The planted network and node bugs; true if the message was taken.
    async fn planted_delivery(
        &mut self,
        f: usize,
        t: usize,
        seq: u64,
        bytes: &[u8],
    ) -> Result<bool, Broken> {
        let peer = NODES[f].to_owned();
        let replayable = !self.dir(f, t).history.is_empty();
        match self.cfg.plant {
            Plant::AckBeforeSync if self.rng.chance(10) => {
                let before = self.store(t).crash().expect("memory store");
                let delivery = bytes.to_vec();
                let r = self
                    .exec(t, |now| Command::Delivery {
                        peer,
                        delivery,
                        now,
                    })
                    .await;
                if r.is_ok() {
                    self.dir(t, f).flight.push_back(Msg::Ack { seq });
                    self.log(format!(
                        "PLANT {} acked seq {seq} before its sync, then crashed",
                        NODES[t]
                    ));
                    self.crash(t, Some(before)).await?;
                }
                Ok(true)
            }
            Plant::StaleReplay if replayable && self.rng.chance(10) => {
                let len = self.dir(f, t).history.len();
                let i = self.rng.index(len);
                let old = self.dir(f, t).history[i].clone();
                let mut d = pb::Delivery::decode(old.as_slice()).expect("decodes");
                let fresh = self.store(t).cursor(NODES[f]).expect("cursor").applied + 1;
                d.seq = fresh;
                d.message_id = format!("replay/{fresh}");
                self.log(format!("PLANT replay of an old delivery as seq {fresh}"));
                let delivery = d.encode_to_vec();
                let _ = self
                    .exec(t, |now| Command::Delivery {
                        peer,
                        delivery,
                        now,
                    })
                    .await;
                self.dir(f, t).flight.push_front(Msg::Delivery {
                    seq,
                    bytes: bytes.to_vec(),
                });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn cut(&mut self, l: usize) {
        let (a, b) = LINKS[l];
        for (f, t) in [(a, b), (b, a)] {
            let d = self.dir(f, t);
            d.flight.clear();
            d.held = 0;
            d.stalled = false;
        }
        if !self.up[l] {
            return;
        }
        self.up[l] = false;
        for (n, peer) in [(a, b), (b, a)] {
            let peer = NODES[peer].to_owned();
            let _ = self
                .exec(n, |now| Command::PeerLink {
                    peer,
                    online: false,
                    hello: None,
                    now,
                })
                .await;
        }
    }

    /// A link comes up: Hellos both ways (each side counts what the other
    /// says it applied as acked), then each pusher starts past it.
    async fn heal(&mut self, l: usize) {
        if self.up[l] {
            return;
        }
        self.up[l] = true;
        let (a, b) = LINKS[l];
        for (n, peer) in [(a, b), (b, a)] {
            let peer = NODES[peer].to_owned();
            let _ = self
                .exec(n, |now| Command::PeerLink {
                    peer,
                    online: true,
                    hello: Some((keyfed_core::PROTOCOL_VERSION, true)),
                    now,
                })
                .await;
        }
        for (f, t) in [(a, b), (b, a)] {
            let applied = self.store(t).cursor(NODES[f]).expect("cursor").applied;
            let peer = NODES[t].to_owned();
            let _ = self
                .exec(f, |now| Command::Acked {
                    peer,
                    seq: applied,
                    now,
                })
                .await;
            let d = self.dir(f, t);
            d.next_send = applied + 1;
            d.flight.clear();
            d.max_delivered = applied;
        }
    }

    /// Crashes node `n` and restarts it on what its store synced (or, for a
    /// planted bug, on `restart_from`); checks nothing acknowledged was lost.
    async fn crash(&mut self, n: usize, restart_from: Option<Store>) -> Step {
        let live = self.store(n);
        let restarted = match restart_from {
            Some(s) => s,
            None => live.crash().expect("a memory store crashes"),
        };
        self.count("durability");
        if let Some(why) = check::durability(&live, &restarted).expect("stores readable") {
            return Err(self.fail(
                "durability",
                format!("{} restarted without acknowledged writes: {why}", NODES[n]),
            ));
        }
        if self.cfg.plant == Plant::ForgetSerials {
            forget_serials(&restarted);
            self.log(format!(
                "PLANT {} restarts without its serial memory",
                NODES[n]
            ));
        }
        self.nodes[n].shutdown.cancel();
        let port: Arc<dyn UpstreamPort> = if n == ROOT {
            self.upstream.clone()
        } else {
            Arc::new(NoUpstream)
        };
        let node = &self.nodes[n];
        let (engine, shutdown) = start(&node.config, restarted, node.clock.clone(), port);
        self.nodes[n].engine = engine;
        self.nodes[n].shutdown = shutdown;
        self.log(format!("{} restarted from its synced store", NODES[n]));
        for (l, &(a, b)) in LINKS.iter().enumerate() {
            if a == n || b == n {
                self.cut(l).await;
            }
        }
        Ok(())
    }

    /// Keys `n` may hand out now.
    fn live_keys(&self, n: usize) -> Vec<StoredKey> {
        self.store(n)
            .keys()
            .expect("keys")
            .into_iter()
            .filter(|k| k.superseded_by.is_none() && k.merged_into.is_none() && k.distributable)
            .collect()
    }

    async fn contact(&mut self) {
        let n = self.rng.index(NODES.len());
        let fp = (*self.rng.pick(&FINGERPRINTS)).to_owned();
        let hello = Hello {
            fingerprint: fp.clone(),
            station_id: fp.clone(),
            components: vec!["antivirus".into()],
            ..Hello::default()
        };
        if let Ok(Outcome::Lease(l, _)) = self
            .exec(n, |now| Command::StationContact { hello, now })
            .await
        {
            if !l.lease_id.is_empty() {
                self.leases.insert((n, fp), l.lease_id);
            }
        }
    }

    async fn release(&mut self) {
        let held: Vec<(usize, String)> = self.leases.keys().cloned().collect();
        if held.is_empty() {
            return;
        }
        let (n, fp) = self.rng.pick(&held).clone();
        let lease_id = self.leases.remove(&(n, fp.clone())).unwrap_or_default();
        let _ = self
            .exec(n, |now| Command::ReleaseStation {
                lease_id,
                fingerprint: fp,
                now,
            })
            .await;
    }

    async fn assign(&mut self) -> Step {
        let n = self.rng.index(NODES.len());
        let keys = self.live_keys(n);
        if keys.is_empty() {
            return Ok(());
        }
        let k = self.rng.pick(&keys).clone();
        let cfg = &self.nodes[n].config;
        let mut objects: Vec<(String, Option<PeerRole>)> = cfg
            .peers()
            .into_iter()
            .filter(|(p, r)| *r != PeerRole::Parent && k.origin.peer() != Some(p.as_str()))
            .map(|(p, r)| (p, Some(r)))
            .collect();
        // stations assigned by hand never connect (and are named per node)
        for i in 0..2 {
            objects.push((format!("pc-{}-{i}", NODES[n]), None));
        }
        let (object, role) = self.rng.pick(&objects).clone();
        if role.is_none() && self.holds_license(n, &object, &k.key.license) {
            // b02 is about stations that connect; a hand-assigned object
            // given two keys of one license is the administrator's choice
            return Ok(());
        }
        let current = self
            .store(n)
            .grant(&k.key.id, &object)
            .expect("grant")
            .map_or(0, |g| g.seats);
        let (seats, donation_days) = match role {
            None => (1, 0),
            Some(r) => {
                // a server's grant only grows: shrinking one below what it
                // passed on is e06's over-allocation, not a fault
                let more = u32::try_from(self.rng.range(1, 2)).unwrap_or(1);
                let days = if r == PeerRole::Neighbor {
                    u32::try_from(self.rng.range(1, 10)).unwrap_or(1)
                } else {
                    0
                };
                (current + more, days)
            }
        };
        let key_id = k.key.id.clone();
        let _ = self
            .exec(n, |now| Command::Assign {
                key_id,
                object,
                seats,
                kind: None,
                donation_days,
                now,
            })
            .await;
        Ok(())
    }

    fn holds_license(&self, n: usize, object: &str, license: &str) -> bool {
        let store = self.store(n);
        store.all_grants().expect("grants").iter().any(|g| {
            g.object == object
                && store
                    .key(&g.key_id)
                    .expect("key")
                    .is_some_and(|k| k.key.license == license)
        })
    }

    async fn unassign(&mut self) {
        let n = self.rng.index(NODES.len());
        let grants: Vec<Grant> = self.store(n).all_grants().expect("grants");
        if grants.is_empty() {
            return;
        }
        let g = self.rng.pick(&grants).clone();
        let _ = self
            .exec(n, |now| Command::Unassign {
                key_id: g.key_id,
                object: g.object,
                now,
            })
            .await;
    }

    fn terms(&mut self) -> Terms {
        let day = base_time().date_naive();
        let expires = match self.rng.below(4) {
            0 => day,
            1 => day + chrono::Days::new(25),
            _ => day + chrono::Days::new(400),
        };
        Terms {
            seats: u32::try_from(self.rng.range(4, 10)).unwrap_or(4),
            components: if self.rng.chance(50) {
                vec!["antivirus"]
            } else {
                vec!["antivirus", "firewall"]
            },
            expires,
            kind: KeyKind::Term,
        }
    }

    async fn add_key(&mut self) {
        if self.upstream.licenses().len() >= 3 {
            return self.renewal().await;
        }
        let terms = self.terms();
        let now = self.now_of(ROOT);
        let text = self.upstream.issue(&terms, now).render();
        let _ = self.exec(ROOT, |now| Command::AddKey { text, now }).await;
    }

    /// The vendor sells a renewal (compatible or store-only, r05/r06) and
    /// the root runs "check for updates and replace keys".
    async fn renewal(&mut self) {
        let licenses = self.upstream.licenses();
        if licenses.is_empty() {
            return;
        }
        let license = self.rng.pick(&licenses).clone();
        let Some(head) = self.upstream.head(&license) else {
            return;
        };
        let mut components: Vec<&'static str> = vec!["antivirus"];
        if head.components.contains("firewall") {
            components.push("firewall");
        }
        let mut seats = head.seats + u32::try_from(self.rng.range(0, 3)).unwrap_or(0);
        if self.rng.chance(25) {
            // store-only: fewer seats or a missing component (r05)
            if components.len() == 2 && self.rng.chance(50) {
                components.pop();
                seats = head.seats;
            } else {
                seats = head.seats.saturating_sub(1).max(1);
                if seats == head.seats {
                    components = vec!["antispam"];
                }
            }
        } else if self.rng.chance(30) {
            components.push("antispam");
            components.sort_unstable();
            components.dedup();
        }
        let terms = Terms {
            seats,
            components,
            expires: head.expires + chrono::Days::new(365),
            kind: head.kind,
        };
        let now = self.now_of(ROOT);
        if let Some(f) = self.upstream.purchase_renewal(&license, &terms, now) {
            self.log(format!(
                "upstream sells {} serial {} renewing {} ({} seats)",
                f.key.id, f.key.serial, head.id, f.key.seats
            ));
        }
        self.check_for_updates().await;
    }

    async fn check_for_updates(&mut self) {
        self.now_of(ROOT);
        let r = self.nodes[ROOT].engine.check_for_updates(None).await;
        let line = match r {
            Ok(outcomes) => outcomes
                .iter()
                .filter(|o| !o.new_key_id.is_empty() || o.outcome == "error")
                .map(|o| format!("{} {} {}", o.key_id, o.outcome, o.new_key_id))
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => format!("err: {e}"),
        };
        self.log(format!("r check-for-updates -> [{line}]"));
    }

    async fn activate(&mut self) {
        let licenses = self.upstream.licenses();
        if licenses.is_empty() {
            return;
        }
        let license = self.rng.pick(&licenses).clone();
        let Some(head) = self.upstream.head(&license) else {
            return;
        };
        let add = self.rng.chance(50);
        let terms = Terms {
            // extending never lowers the seat count here: a lower one is
            // e06's over-allocation, which the node flags by design
            seats: if add { 2 } else { head.seats + 2 },
            components: head.components.iter().map(component_name).collect(),
            expires: head.expires,
            kind: head.kind,
        };
        let now = self.now_of(ROOT);
        let Some(f) = self.upstream.activation(&license, &terms, now) else {
            return;
        };
        let text = f.render();
        let mode = if add {
            ActivationMode::AddSeats
        } else {
            ActivationMode::Extend
        };
        let _ = self
            .exec(ROOT, |now| Command::ActivateKey { text, mode, now })
            .await;
    }

    /// The administrator deletes a key at the root, or adds an old key file
    /// again (a rollback the root must refuse).
    async fn delete_or_readd(&mut self) {
        if self.rng.chance(50) {
            let keys = self.store(ROOT).keys().expect("keys");
            if keys.is_empty() {
                return;
            }
            let key_id = self.rng.pick(&keys).key.id.clone();
            let _ = self
                .exec(ROOT, |now| Command::DeleteKey { key_id, now })
                .await;
        } else {
            let issued: Vec<String> = self.upstream.issued().into_values().collect();
            if issued.is_empty() {
                return;
            }
            let text = self.rng.pick(&issued).clone();
            let _ = self.exec(ROOT, |now| Command::AddKey { text, now }).await;
        }
    }

    /// Planted: a node counts a seat for a station that holds one elsewhere.
    fn plant_unclaimed_seat(&mut self) {
        for n in 0..NODES.len() {
            for g in self.store(n).all_grants().expect("grants") {
                if g.kind != ObjectKind::Station || !g.object.starts_with("fp-") {
                    continue;
                }
                let Some(k) = self.store(n).key(&g.key_id).expect("key") else {
                    continue;
                };
                for m in (0..NODES.len()).filter(|m| *m != n) {
                    let store = self.store(m);
                    let Some(other) = self
                        .live_keys(m)
                        .into_iter()
                        .find(|o| o.key.license == k.key.license)
                    else {
                        continue;
                    };
                    if store.used(&other.key.id).expect("used") >= other.held
                        || store
                            .grant(&other.key.id, &g.object)
                            .expect("grant")
                            .is_some()
                    {
                        continue;
                    }
                    let bogus = Grant {
                        key_id: other.key.id.clone(),
                        ..g.clone()
                    };
                    store
                        .transact(|tx| tx.put_grant::<keyfed_store::StoreError>(&bogus))
                        .expect("memory store");
                    store.flush().expect("memory store");
                    self.log(format!(
                        "PLANT {} counts {} on {} without a claim",
                        NODES[m], g.object, other.key.id
                    ));
                    return;
                }
            }
        }
    }

    fn stores(&mut self) -> BTreeMap<String, Store> {
        let mut out: BTreeMap<String, Store> = (0..NODES.len())
            .map(|n| (NODES[n].to_owned(), self.store(n)))
            .collect();
        if self.cfg.plant == Plant::CorruptGrant && self.rng.chance(5) {
            // planted: the checker reads one grant inflated past the key
            for (n, name) in NODES.iter().enumerate() {
                let s = self.store(n);
                let Some(g) = s.all_grants().expect("grants").into_iter().next() else {
                    continue;
                };
                let held = s.key(&g.key_id).expect("key").map_or(0, |k| k.held);
                let copy = s.crash().expect("memory store");
                let bad = Grant {
                    seats: held + 1,
                    ..g
                };
                copy.transact(|tx| tx.put_grant::<keyfed_store::StoreError>(&bad))
                    .expect("memory store");
                self.log(format!(
                    "PLANT the checker reads {}'s grant inflated",
                    *name
                ));
                out.insert((*name).to_owned(), copy);
                break;
            }
        }
        out
    }

    fn conservation(&mut self, stores: &BTreeMap<String, Store>) -> Step {
        self.count("conservation");
        self.count("one-seat");
        let found = check::seat_conservation(stores).expect("stores readable");
        if let Some(v) = found.into_iter().next() {
            let inv = if v.rule == "fingerprint" {
                "one-seat"
            } else {
                "conservation"
            };
            return Err(self.fail(inv, v.to_string()));
        }
        Ok(())
    }

    fn check_step(&mut self) -> Step {
        let stores = self.stores();
        self.conservation(&stores)?;
        for (n, name) in NODES.iter().enumerate() {
            self.count("rollback");
            let store = self.store(n);
            let mut mem = std::mem::take(&mut self.nodes[n].serials);
            let found = check::rollback(name, &store, &mut mem).expect("store readable");
            self.nodes[n].serials = mem;
            if let Some(why) = found {
                return Err(self.fail("rollback", why));
            }
        }
        Ok(())
    }

    fn quiet(&self) -> bool {
        self.dirs.values().all(|d| d.flight.is_empty())
            && self
                .dirs
                .keys()
                .all(|&(f, t)| self.store(f).outbox(NODES[t]).expect("outbox").is_empty())
    }

    /// Heals everything and lets the federation drain, faults off.
    async fn quiesce(&mut self) -> Step {
        self.log("quiesce: every link healed, faults off".into());
        for l in 0..LINKS.len() {
            self.heal(l).await;
        }
        for round in 0..40 {
            let dirs: Vec<(usize, usize)> = self.dirs.keys().copied().collect();
            for &(f, t) in &dirs {
                self.dir(f, t).held = 0;
                self.send(f, t);
            }
            while let Some(&(f, t)) = dirs
                .iter()
                .find(|k| !self.dirs[k].flight.is_empty() && !self.dirs[k].stalled)
            {
                self.deliver(f, t, false).await?;
            }
            for l in 0..LINKS.len() {
                self.heal(l).await;
            }
            if round % 4 == 3 {
                for n in 0..NODES.len() {
                    let seed = self.rng.seed32();
                    let _ = self.exec(n, |now| Command::Tick { now, seed }).await;
                }
            }
            if self.quiet() && round >= 4 {
                return Ok(());
            }
        }
        let stuck: Vec<String> = self
            .dirs
            .keys()
            .filter(|&&(f, t)| !self.store(f).outbox(NODES[t]).expect("outbox").is_empty())
            .map(|&(f, t)| format!("{}->{}", NODES[f], NODES[t]))
            .collect();
        Err(self.fail(
            "convergence",
            format!(
                "no quiescence after healing: outboxes {} never drain",
                stuck.join(", ")
            ),
        ))
    }

    fn check_quiescent(&mut self) -> Step {
        self.check_step()?;
        self.count("convergence");
        let stores = self.stores();
        let found = check::convergence(&stores).expect("stores readable");
        if let Some(why) = found.into_iter().next() {
            return Err(self.fail("convergence", why));
        }
        self.log(format!(
            "seed {} quiescent, every invariant held",
            self.seed
        ));
        Ok(())
    }
}

/// Planted: drops every `license-serial:` memory from a store.
fn forget_serials(store: &Store) {
    let names: Vec<String> = store
        .dump()
        .expect("memory store")
        .get("meta")
        .into_iter()
        .flatten()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .filter(|k| k.starts_with("license-serial:"))
        .collect();
    store
        .transact(|tx| {
            for n in &names {
                tx.remove_meta::<keyfed_store::StoreError>(n)?;
            }
            Ok(())
        })
        .expect("memory store");
    store.flush().expect("memory store");
}

fn component_name(c: &str) -> &'static str {
    match c {
        "firewall" => "firewall",
        "antispam" => "antispam",
        _ => "antivirus",
    }
}
