//! The crash workload (r13, b02): a main with a child and a neighbor as real
//! processes, a workload that keeps changing seats while main and child are
//! SIGKILLed at random moments and started again on the same data.
//!
//! Workload tasks, each sequential, all at once:
//! - administrator grants on main: stations `adm-N` (assign 1-3 seats or
//!   unassign), the child (12-20 seats), the neighbor (a donation, or none);
//! - stations attaching and releasing over the Station API: `m-fp-N` on main,
//!   `c-fp-N` on the child, and `r-fp-N` roaming between the two (b02);
//! - renewals: a renewal bought at the upstream, then CheckForUpdates on main.
//!
//! Every call is recorded with its outcome: acknowledged (the RPC returned
//! OK), refused (the node answered an error that changes nothing), or
//! unknown (the connection died: it may or may not have happened). After the
//! last restart the cluster is left to settle (every link up, every outbox
//! empty), stopped, and its stores are read:
//! - every acknowledged grant is there, with the seats of the last
//!   acknowledged change to it (or of a later unknown one);
//! - every acknowledged renewal is main's key (or an older one than main's);
//! - the child holds the key main holds, and neither still holds a
//!   superseded one (r07);
//! - r13 over all stores ([`crate::check_seat_conservation`]), which includes
//!   "no fingerprint holds two counted seats".
use crate::process::{AddressBook, ProcessCluster};
use crate::Topology;
use chrono::NaiveDate;
use keyfed_core::KeyKind;
use keyfed_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const COMPONENTS: [&str; 2] = ["antivirus", "firewall"];
const FIRST_SEATS: u32 = 400;
const FIRST_EXPIRY: &str = "2030-12-31";
const ADMIN_STATIONS: u64 = 6;
const MAIN_STATIONS: u64 = 10;
/// At most this many stations ever sit on the child (its own and roaming),
/// fewer than the least the child is ever granted.
const CHILD_STATIONS: u64 = 6;
const ROAMING_STATIONS: u64 = 3;
const CHILD_SEATS: (u64, u64) = (12, 20);
/// How long the cluster may take to settle after the last restart.
const SETTLE_DEADLINE: Duration = Duration::from_secs(45);

/// What to run.
#[derive(Debug, Clone)]
pub struct KillPlan {
    pub cycles: usize,
    pub seed: u64,
    /// Print each kill as it happens (stderr).
    pub verbose: bool,
}

/// What happened, and every problem found.
#[derive(Debug, Default)]
pub struct KillReport {
    pub seed: u64,
    pub cycles: usize,
    pub kills: BTreeMap<String, usize>,
    /// Kills that came right after the victim acknowledged a call.
    pub kills_after_ack: usize,
    /// Kills of main within 40 ms of a CheckForUpdates call.
    pub kills_in_renewal: usize,
    pub cuts: usize,
    pub acknowledged: usize,
    pub refused: usize,
    pub unknown: usize,
    pub renewals: usize,
    /// Attaches of roaming stations answered "not licensed": b02, the seat
    /// is held through the other node.
    pub roaming_refused: usize,
    /// Attaches of the other stations answered "not licensed" (there are
    /// always seats), with the first reasons given.
    pub unlicensed: usize,
    pub unlicensed_reasons: Vec<String>,
    pub restarts: Vec<Duration>,
    pub problems: Vec<String>,
    /// The end of main's and the child's logs, kept when there are problems.
    pub logs: Vec<(String, String)>,
    pub elapsed: Duration,
    /// How long the cluster took to settle after the last restart.
    pub settle: Duration,
}

impl KillReport {
    pub fn restart_median(&self) -> Duration {
        let mut v = self.restarts.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    pub fn restart_max(&self) -> Duration {
        self.restarts.iter().max().copied().unwrap_or_default()
    }

    /// The summary table (plain text, one row per measure).
    pub fn table(&self) -> String {
        let kills = self
            .kills
            .iter()
            .map(|(n, k)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        let rows = [
            ("seed", self.seed.to_string()),
            ("kill cycles", self.cycles.to_string()),
            ("SIGKILLs", kills),
            ("  right after an ack", self.kills_after_ack.to_string()),
            ("  during a renewal", self.kills_in_renewal.to_string()),
            ("link cuts (main-child)", self.cuts.to_string()),
            ("acknowledged operations", self.acknowledged.to_string()),
            ("  of which renewals", self.renewals.to_string()),
            ("refused operations", self.refused.to_string()),
            ("unknown outcome (cut by a kill)", self.unknown.to_string()),
            (
                "roaming attaches refused (b02)",
                self.roaming_refused.to_string(),
            ),
            ("other attaches unlicensed", self.unlicensed.to_string()),
            ("restart time, median", ms(self.restart_median())),
            ("restart time, max", ms(self.restart_max())),
            ("settle after the last restart", ms(self.settle)),
            ("wall time", format!("{:.1} s", self.elapsed.as_secs_f64())),
            ("problems found", self.problems.len().to_string()),
        ];
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("| {k:<w$} | {v:>12} |\n"));
        }
        out
    }
}

/// A seeded xorshift64*: the kill moments and the workload's choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so seeds 0, 1, 2… start far apart
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// An independent generator for one task, drawn from this one.
    pub fn fork(&mut self) -> Self {
        Self::new(self.next_u64())
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked,
    Refused,
    Unknown,
}

/// An error the node answered on purpose changed nothing; anything else
/// (the connection died, a timeout) may or may not have been applied.
fn classify(s: &tonic::Status) -> Outcome {
    match s.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::Unauthenticated => Outcome::Refused,
        _ => Outcome::Unknown,
    }
}

/// One recorded change to a grant: the seats it sets (0: none).
#[derive(Debug, Clone)]
struct Change {
    seats: u32,
    outcome: Outcome,
    /// Which kill cycle was running, for the report.
    cycle: usize,
}

/// A grant the workload tracks: (node, object).
type Slot = (String, String);

#[derive(Default)]
struct Ledger {
    slots: BTreeMap<Slot, Vec<Change>>,
    acked: usize,
    refused: usize,
    unknown: usize,
    renewals: Vec<String>,
    roaming_refused: usize,
    unlicensed: usize,
    unlicensed_reasons: Vec<String>,
}

struct Shared {
    book: AddressBook,
    upstream: keyfed_gus::Upstream,
    /// Every key of the license, oldest first, with its seats and expiry.
    chain: Mutex<Vec<(String, u32, NaiveDate)>>,
    /// The key the workload assigns from.
    current: Mutex<String>,
    ledger: Mutex<Ledger>,
    /// Woken whenever a node acknowledged a call (the killer may strike then).
    acks: BTreeMap<String, Notify>,
    /// Woken just before main is asked to check for updates.
    renewing: Notify,
    cycle: std::sync::atomic::AtomicUsize,
    stop: CancellationToken,
}

impl Shared {
    fn current(&self) -> String {
        self.current.lock().expect("current key").clone()
    }

    fn record(&self, node: &str, object: Option<&str>, seats: u32, outcome: Outcome) {
        let cycle = self.cycle.load(std::sync::atomic::Ordering::Relaxed);
        let mut l = self.ledger.lock().expect("ledger");
        match outcome {
            Outcome::Acked => l.acked += 1,
            Outcome::Refused => l.refused += 1,
            Outcome::Unknown => l.unknown += 1,
        }
        if let Some(object) = object {
            if outcome != Outcome::Refused {
                l.slots
                    .entry((node.to_owned(), object.to_owned()))
                    .or_default()
                    .push(Change {
                        seats,
                        outcome,
                        cycle,
                    });
            }
        }
        drop(l);
        if outcome == Outcome::Acked {
            self.acks[node].notify_waiters();
        }
    }

    /// After an unknown outcome: wait until the node answers again (the
    /// killer restarts it) or the run stops.
    async fn wait_up(&self, node: &str) {
        while !self.stop.is_cancelled() {
            let mut admin = self.book.admin(node);
            if admin.status(pb::Empty {}).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Main's newest key of the chain that is not superseded.
    async fn refresh_key(&self) {
        let Ok(keys) = self.book.admin("main").list_keys(pb::Empty {}).await else {
            return;
        };
        let live: Vec<String> = keys
            .into_inner()
            .keys
            .into_iter()
            .filter(|k| k.state != "superseded")
            .filter_map(|k| k.key.map(|k| k.id))
            .collect();
        let chain = self.chain.lock().expect("chain").clone();
        if let Some((id, _, _)) = chain.iter().rev().find(|(id, _, _)| live.contains(id)) {
            *self.current.lock().expect("current key") = id.clone();
        }
    }

    async fn after_error(&self, node: &str, s: &tonic::Status) {
        match classify(s) {
            Outcome::Unknown => self.wait_up(node).await,
            // a renewal moved the seats to the next key (or retired this one)
            _ if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                self.refresh_key().await;
            }
            _ => {}
        }
    }

    async fn assign(&self, node: &str, object: &str, seats: u32) {
        let req = pb::AssignSeatsRequest {
            key_id: self.current(),
            object: object.into(),
            seats,
            ..Default::default()
        };
        match self.book.admin(node).assign_seats(req).await {
            Ok(_) => self.record(node, Some(object), seats, Outcome::Acked),
            Err(s) => {
                self.record(node, Some(object), seats, classify(&s));
                self.after_error(node, &s).await;
            }
        }
    }

    async fn unassign(&self, node: &str, object: &str) {
        let req = pb::UnassignSeatsRequest {
            key_id: self.current(),
            object: object.into(),
        };
        match self.book.admin(node).unassign_seats(req).await {
            Ok(_) => self.record(node, Some(object), 0, Outcome::Acked),
            Err(s) => {
                self.record(node, Some(object), 0, classify(&s));
                self.after_error(node, &s).await;
            }
        }
    }

    /// Station.Attach; `tracked`: the seat is checked at the end. Returns
    /// the lease id if licensed.
    async fn attach(&self, node: &str, fp: &str, tracked: bool) -> Option<String> {
        let req = pb::ConnectRequest {
            station_id: format!("host-{fp}"),
            fingerprint: fp.into(),
            components: vec!["antivirus".into()],
            ..Default::default()
        };
        let slot = tracked.then_some(fp);
        match self.book.station(node).attach(req).await {
            Ok(lease) => {
                let lease = lease.into_inner();
                self.record(node, slot, u32::from(lease.licensed), Outcome::Acked);
                if lease.licensed {
                    return Some(lease.lease_id);
                }
                let mut l = self.ledger.lock().expect("ledger");
                if tracked {
                    l.unlicensed += 1;
                    if l.unlicensed_reasons.len() < 5 {
                        l.unlicensed_reasons
                            .push(format!("{node}/{fp}: {}", lease.reason));
                    }
                } else {
                    l.roaming_refused += 1;
                }
                None
            }
            Err(s) => {
                self.record(node, slot, 1, classify(&s));
                self.after_error(node, &s).await;
                None
            }
        }
    }

    /// Station.Release of the lease the station holds now (attaching first
    /// finds it: a renewal changes the lease id).
    async fn release(&self, node: &str, fp: &str, tracked: bool) {
        let Some(lease_id) = self.attach(node, fp, tracked).await else {
            return;
        };
        let req = pb::ReleaseRequest {
            lease_id,
            fingerprint: fp.into(),
        };
        let slot = tracked.then_some(fp);
        match self.book.station(node).release(req).await {
            Ok(_) => self.record(node, slot, 0, Outcome::Acked),
            Err(s) => {
                self.record(node, slot, 0, classify(&s));
                self.after_error(node, &s).await;
            }
        }
    }

    /// Buys a renewal of the current key if none is held upstream, then asks
    /// main to check for updates.
    async fn renew(&self, rng: &mut Rng) {
        let cur = self.current();
        let held = self.upstream.renewal_of(&cur).expect("upstream answers");
        if held.is_none() {
            let (seats, expires) = {
                let chain = self.chain.lock().expect("chain");
                let (_, s, e) = chain
                    .iter()
                    .find(|(id, _, _)| *id == cur)
                    .expect("in chain");
                (*s, *e)
            };
            let seats = seats + u32::try_from(rng.below(4)).expect("small");
            let expires = expires + chrono::Duration::days(30);
            let comps = COMPONENTS.iter().map(|c| (*c).to_owned()).collect();
            let f = self
                .upstream
                .purchase_renewal(&cur, comps, seats, expires)
                .expect("renewal sold");
            self.chain
                .lock()
                .expect("chain")
                .push((f.key.id, seats, expires));
        }
        let req = pb::CheckForUpdatesRequest {
            key_id: cur.clone(),
        };
        self.renewing.notify_waiters();
        match self.book.admin("main").check_for_updates(req).await {
            Ok(r) => {
                self.record("main", None, 0, Outcome::Acked);
                let renewed = r.into_inner().outcomes.into_iter().find(|o| {
                    o.key_id == cur && matches!(o.outcome.as_str(), "distributed" | "propagated")
                });
                if let Some(o) = renewed {
                    self.ledger
                        .lock()
                        .expect("ledger")
                        .renewals
                        .push(o.new_key_id.clone());
                    *self.current.lock().expect("current key") = o.new_key_id;
                } else {
                    self.refresh_key().await;
                }
            }
            Err(s) => {
                self.record("main", None, 0, classify(&s));
                self.after_error("main", &s).await;
                self.refresh_key().await;
            }
        }
    }

    /// A pause between two calls of one task: the workload's pace, not a wait.
    async fn pace(&self, rng: &mut Rng, lo: u64, hi: u64) {
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = tokio::time::sleep(rng.millis(lo, hi)) => {}
        }
    }
}

/// Administrator grants on main: stations `adm-{first}..adm-{first+n}`, and
/// `peer` (the child: 12-20 seats; the neighbor: a donation of 1-4, or none).
async fn admin_grants(sh: Arc<Shared>, first: u64, n: u64, peer: &'static str, mut rng: Rng) {
    while !sh.stop.is_cancelled() {
        if rng.chance(70) {
            let obj = format!("adm-{}", first + rng.below(n));
            if rng.chance(70) {
                let seats = u32::try_from(rng.range(1, 3)).expect("small");
                sh.assign("main", &obj, seats).await;
            } else {
                sh.unassign("main", &obj).await;
            }
        } else if peer == "child" {
            let seats = rng.range(CHILD_SEATS.0, CHILD_SEATS.1);
            sh.assign("main", "child", u32::try_from(seats).expect("small"))
                .await;
        } else if rng.chance(60) {
            let seats = u32::try_from(rng.range(1, 4)).expect("small");
            sh.assign("main", peer, seats).await;
        } else {
            sh.unassign("main", peer).await;
        }
        sh.pace(&mut rng, 2, 20).await;
    }
}

/// Stations `{prefix}-{first}..{prefix}-{first+n}` attaching to and
/// releasing seats on `node`.
async fn stations(
    sh: Arc<Shared>,
    node: &'static str,
    prefix: &'static str,
    (first, n): (u64, u64),
    mut rng: Rng,
) {
    while !sh.stop.is_cancelled() {
        let fp = format!("{prefix}-{}", first + rng.below(n));
        if rng.chance(60) {
            sh.attach(node, &fp, true).await;
        } else {
            sh.release(node, &fp, true).await;
        }
        sh.pace(&mut rng, 2, 20).await;
    }
}

/// b02: the same fingerprints on main and on the child. Not tracked one by
/// one (which node keeps the seat is up to the claims); the conservation
/// check at the end sees that none holds two.
async fn roaming(sh: Arc<Shared>, mut rng: Rng) {
    while !sh.stop.is_cancelled() {
        let fp = format!("r-fp-{}", rng.below(ROAMING_STATIONS));
        let node = if rng.chance(50) { "main" } else { "child" };
        if rng.chance(60) {
            sh.attach(node, &fp, false).await;
        } else {
            sh.release(node, &fp, false).await;
        }
        sh.pace(&mut rng, 10, 40).await;
    }
}

async fn renewals(sh: Arc<Shared>, mut rng: Rng) {
    while !sh.stop.is_cancelled() {
        sh.pace(&mut rng, 600, 1800).await;
        if sh.stop.is_cancelled() {
            return;
        }
        sh.renew(&mut rng).await;
    }
}

/// Runs the whole thing: start, workload with `plan.cycles` kill cycles,
/// settle, stop, check. Panics only on harness failures (a node that cannot
/// start at all); everything the nodes got wrong is in `problems`.
pub async fn run(plan: KillPlan) -> KillReport {
    let t0 = Instant::now();
    let mut report = KillReport {
        seed: plan.seed,
        cycles: plan.cycles,
        ..KillReport::default()
    };
    let mut cluster = ProcessCluster::start(
        Topology::new()
            .root("main")
            .child("child", "main")
            .neighbor("neighbor", "main"),
    )
    .await;
    let book = cluster.addresses();
    crate::eventually("main sees child and neighbor online", || async {
        cluster.quiet().await
            && cluster
                .peers("main")
                .await
                .is_ok_and(|p| p.iter().filter(|p| p.online).count() == 2)
    })
    .await;
    let expiry: NaiveDate = FIRST_EXPIRY.parse().expect("date");
    let k = cluster
        .upstream
        .issue(keyfed_gus::IssueRequest {
            customer: "acme".into(),
            product: "endpoint".into(),
            components: COMPONENTS.iter().map(|c| (*c).to_owned()).collect(),
            seats: FIRST_SEATS,
            kind: KeyKind::Term,
            expires: expiry,
        })
        .expect("key issued");
    let id = k.key.id.clone();
    cluster
        .admin("main")
        .add_key(pb::AddKeyRequest {
            key_file: k.render(),
            ..Default::default()
        })
        .await
        .expect("key added on main");
    let sh = Arc::new(Shared {
        book: book.clone(),
        upstream: cluster.upstream.clone(),
        chain: Mutex::new(vec![(id.clone(), FIRST_SEATS, expiry)]),
        current: Mutex::new(id.clone()),
        ledger: Mutex::new(Ledger::default()),
        acks: ["main", "child", "neighbor"]
            .into_iter()
            .map(|n| (n.to_owned(), Notify::new()))
            .collect(),
        renewing: Notify::new(),
        cycle: 0.into(),
        stop: CancellationToken::new(),
    });
    // the child needs its key before its stations can attach
    sh.assign("main", "child", 16).await;
    crate::eventually("the child holds the key", || async {
        book.admin("child")
            .get_key(pb::KeyId { id: id.clone() })
            .await
            .is_ok()
    })
    .await;

    let mut rng = Rng::new(plan.seed);
    let mut tasks = tokio::task::JoinSet::new();
    // two of each on main, so concurrent calls share group-committed flushes
    let half = ADMIN_STATIONS / 2;
    tasks.spawn(admin_grants(sh.clone(), 0, half, "child", rng.fork()));
    tasks.spawn(admin_grants(sh.clone(), half, half, "neighbor", rng.fork()));
    let half = MAIN_STATIONS / 2;
    for first in [0, half] {
        tasks.spawn(stations(
            sh.clone(),
            "main",
            "m-fp",
            (first, half),
            rng.fork(),
        ));
    }
    let own = (0, CHILD_STATIONS - ROAMING_STATIONS);
    tasks.spawn(stations(sh.clone(), "child", "c-fp", own, rng.fork()));
    tasks.spawn(roaming(sh.clone(), rng.fork()));
    tasks.spawn(renewals(sh.clone(), rng.fork()));

    for cycle in 0..plan.cycles {
        sh.cycle.store(cycle, std::sync::atomic::Ordering::Relaxed);
        if rng.chance(15) {
            // a partition between the two, healed before the kill
            cluster.cut("main", "child");
            report.cuts += 1;
            tokio::time::sleep(rng.millis(50, 400)).await;
            cluster.heal("main", "child");
        }
        let victims: &[&str] = match rng.below(10) {
            0..=3 => &["main"],
            4..=6 => &["child"],
            7 | 8 => &["main", "child"],
            _ => &["main", "neighbor"],
        };
        // the kill moment: right after the victim acknowledged a call (is
        // it durable?), while main renews, or at a random point
        let moment = rng.below(100);
        let after_ack = moment < 35;
        if after_ack {
            let acked = sh.acks[victims[0]].notified();
            if tokio::time::timeout(Duration::from_secs(2), acked)
                .await
                .is_ok()
            {
                report.kills_after_ack += 1;
            }
        } else if moment < 45 && victims[0] == "main" {
            let renewing = sh.renewing.notified();
            if tokio::time::timeout(Duration::from_secs(2), renewing)
                .await
                .is_ok()
            {
                report.kills_in_renewal += 1;
                tokio::time::sleep(rng.millis(0, 40)).await;
            }
        } else {
            tokio::time::sleep(rng.millis(20, 400)).await;
        }
        for v in victims {
            cluster.kill(v);
            *report.kills.entry((*v).to_owned()).or_default() += 1;
        }
        if plan.verbose {
            eprintln!(
                "cycle {cycle}: killed {} ({})",
                victims.join(" and "),
                if after_ack {
                    "after an ack"
                } else {
                    "at random"
                }
            );
        }
        if rng.chance(30) {
            // down for a while: callers see it unreachable
            tokio::time::sleep(rng.millis(10, 300)).await;
        }
        for v in victims {
            match cluster.restart(v).await {
                Ok(took) => report.restarts.push(took),
                Err(e) => {
                    report
                        .problems
                        .push(format!("cycle {cycle}: {v} did not come back: {e}"));
                    sh.stop.cancel();
                    return finish(report, cluster, &sh, tasks, t0).await;
                }
            }
        }
    }
    sh.stop.cancel();
    finish(report, cluster, &sh, tasks, t0).await
}

async fn finish(
    mut report: KillReport,
    mut cluster: ProcessCluster,
    sh: &Shared,
    mut tasks: tokio::task::JoinSet<()>,
    t0: Instant,
) -> KillReport {
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            report.problems.push(format!("a workload task failed: {e}"));
        }
    }
    // settle: every link up, every delivery acked, twice in a row
    let t = Instant::now();
    let mut quiet_twice = false;
    while t.elapsed() < SETTLE_DEADLINE {
        if cluster.quiet().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if cluster.quiet().await {
                quiet_twice = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.settle = t.elapsed();
    if !quiet_twice {
        let mut peers = String::new();
        for id in ["main", "child", "neighbor"] {
            peers.push_str(&format!("\n  {id}: {:?}", cluster.peers(id).await));
        }
        report.problems.push(format!(
            "the cluster did not settle within {SETTLE_DEADLINE:?} (links up, outboxes empty):{peers}"
        ));
    }
    cluster.stop_all().await;
    {
        let l = sh.ledger.lock().expect("ledger");
        report.acknowledged = l.acked;
        report.refused = l.refused;
        report.unknown = l.unknown;
        report.renewals = l.renewals.len();
        report.roaming_refused = l.roaming_refused;
        report.unlicensed = l.unlicensed;
        report.unlicensed_reasons.clone_from(&l.unlicensed_reasons);
    }
    check_grants(&mut report, &cluster, sh);
    for v in cluster.seat_violations() {
        report.problems.push(format!("r13: {v}"));
    }
    if !report.problems.is_empty() {
        for id in ["main", "child"] {
            report.logs.push((id.to_owned(), cluster.log_tail(id)));
        }
    }
    report.elapsed = t0.elapsed();
    report
}

/// Reads every store (all nodes stopped) against the ledger.
fn check_grants(report: &mut KillReport, cluster: &ProcessCluster, sh: &Shared) {
    let chain: Vec<String> = sh
        .chain
        .lock()
        .expect("chain")
        .iter()
        .map(|(id, _, _)| id.clone())
        .collect();
    let pos = |id: &str| chain.iter().position(|c| c == id);
    let mut live = BTreeMap::new();
    let mut stores = BTreeMap::new();
    for id in ["main", "child"] {
        let store = match keyfed_store::Store::open(&cluster.store_dir(id)) {
            Ok(s) => s,
            Err(e) => {
                report
                    .problems
                    .push(format!("{id}'s store does not open: {e}"));
                return;
            }
        };
        let keys = store.keys().expect("keys");
        let newest = keys
            .iter()
            .filter(|k| k.superseded_by.is_none())
            .filter_map(|k| pos(&k.key.id))
            .max()
            .map(|i| chain[i].clone());
        let Some(newest) = newest else {
            report
                .problems
                .push(format!("{id} holds no live key of the license"));
            return;
        };
        // r07: once every child has the new key, the old one is retired
        for k in keys.iter().filter(|k| k.superseded_by.is_some()) {
            let grants = store.grants_of_key(&k.key.id).expect("grants");
            let list = grants
                .iter()
                .map(|g| format!("{}={}", g.object, g.seats))
                .collect::<Vec<_>>()
                .join(", ");
            report.problems.push(format!(
                "r07: {id} still holds {} (superseded by {}) after settling, granted to: [{list}]",
                k.key.id,
                k.superseded_by.as_deref().unwrap_or_default()
            ));
        }
        live.insert(id, newest);
        stores.insert(id, store);
    }
    let ledger = sh.ledger.lock().expect("ledger");
    // acknowledged renewals are main's key, or older than it
    if let Some(last) = ledger.renewals.last() {
        if pos(last) > pos(&live["main"]) {
            report.problems.push(format!(
                "r13: main acknowledged the renewal to {last}, but after the restarts holds {}",
                live["main"]
            ));
        }
    }
    if live["child"] != live["main"] {
        report.problems.push(format!(
            "r06: main holds {} but the child {} after settling",
            live["main"], live["child"]
        ));
    }
    for ((node, object), changes) in &ledger.slots {
        let store = &stores[node.as_str()];
        let key = &live[node.as_str()];
        let found = store
            .grant(key, object)
            .expect("grant")
            .map_or(0, |g| g.seats);
        // the last acknowledged change, or any unknown one after it
        let last_ack = changes.iter().rposition(|c| c.outcome == Outcome::Acked);
        let mut allowed: Vec<u32> = match last_ack {
            Some(i) => vec![changes[i].seats],
            None => vec![0],
        };
        let from = last_ack.map_or(0, |i| i + 1);
        allowed.extend(changes[from..].iter().map(|c| c.seats));
        if allowed.contains(&found) {
            continue;
        }
        let stranded: Vec<String> = chain
            .iter()
            .filter(|k| *k != key)
            .filter_map(|k| {
                let g = store.grant(k, object).ok().flatten()?;
                Some(format!("{} seat(s) on {k}", g.seats))
            })
            .collect();
        let what = match last_ack {
            Some(i) => format!(
                "acknowledged {} seat(s) (change {} of {}, during kill cycle {})",
                changes[i].seats,
                i + 1,
                changes.len(),
                changes[i].cycle
            ),
            None => "never acknowledged a grant".into(),
        };
        report.problems.push(format!(
            "r13: {node}'s grant of {key} to {object}: {what}; unknown after it: {:?}; found {found}{}; {}",
            &changes[from..].iter().map(|c| c.seats).collect::<Vec<_>>(),
            if stranded.is_empty() {
                String::new()
            } else {
                format!(" (and {})", stranded.join(", "))
            },
            seat_context(&stores, node, &chain, object)
        ));
    }
}

/// What the stores say about `object` besides its grant: the provisional
/// leases (b02) and claim states naming it, and its station record, so a
/// lost seat's report shows where it went.
fn seat_context(
    stores: &BTreeMap<&str, keyfed_store::Store>,
    node: &str,
    chain: &[String],
    object: &str,
) -> String {
    let mut out = Vec::new();
    for (id, store) in stores {
        for k in chain {
            if let Ok(Some(m)) = store.meta(&format!("provisional:{k}")) {
                if m.contains(object) {
                    out.push(format!("{id} provisional:{k}={m}"));
                }
            }
        }
        let license = chain.first().and_then(|k| store.key(k).ok().flatten());
        if let Some(k) = license {
            let name = format!("own-claim:{}:{object}", k.key.license);
            if let Ok(Some(m)) = store.meta(&name) {
                out.push(format!("{id} {name}={m}"));
            }
        }
        if *id == node {
            if let Ok(st) = store.station(object) {
                out.push(format!("{id} station={st:?}"));
            }
        }
    }
    out.join("; ")
}
