//! The node's state machine around the store: every administrator action and
//! every federation message is one store transaction, flushed before it is
//! acknowledged, whose effects (notifications, outbox wake-ups) are published
//! only after it committed. The decisions are `keyfed-core`'s rules; the
//! modules next to this one read their inputs in the transaction, call the
//! rule and apply its steps (see [`crate::command`] for the typed commands).
use crate::config::EngineConfig;
use crate::error::{EngineError, EngineResult};
use crate::time::ts;
use chrono::{DateTime, Utc};
use keyfed_core::donation::{DonationPolicy, Lending};
use keyfed_core::event::EventKind;
use keyfed_core::lifecycle::{state_on, GracePolicy, KeyState};
use keyfed_core::{KeyFile, SharedClock};
use keyfed_store::{Grant, Notification, OutboxEntry, Store, StoredKey, Synced, Tx, TxResult};
use keyfed_wire::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a committed transaction asks the shell to do afterwards.
#[derive(Default)]
pub struct Effects {
    notifications: Vec<Notification>,
    wake: BTreeSet<String>,
    /// b02: fingerprints whose claim the key's origin answered.
    pub(crate) claim_answers: BTreeSet<String>,
}

impl Effects {
    pub fn notify(
        &mut self,
        tx: &Tx<'_>,
        at: DateTime<Utc>,
        event: EventKind,
        key_id: &str,
        message: String,
        details: &[(&str, String)],
    ) -> TxResult<(), EngineError> {
        let details = details
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        self.notifications
            .push(tx.notify(at, event.as_str(), key_id, message, details)?);
        Ok(())
    }

    pub fn send(
        &mut self,
        tx: &Tx<'_>,
        peer: &str,
        at: DateTime<Utc>,
        key_id: &str,
        body: pb::delivery::Body,
    ) -> TxResult<OutboxEntry, EngineError> {
        let what = body_name(&body);
        let bytes = pb::Delivery {
            seq: 0,
            message_id: String::new(),
            body: Some(body),
        }
        .encode_to_vec();
        self.wake.insert(peer.to_owned());
        tx.enqueue(peer, at, key_id, what, bytes)
    }
}

pub fn body_name(b: &pb::delivery::Body) -> &'static str {
    match b {
        pb::delivery::Body::Grant(_) => "seat-grant",
        pb::delivery::Body::Withdrawn(_) => "grant-withdrawn",
        pb::delivery::Body::Renewed(_) => "key-renewed",
        pb::delivery::Body::Usage(_) => "usage-rollup",
        pb::delivery::Body::Offer(_) => "key-offer",
        pb::delivery::Body::Command(_) => "command",
        pb::delivery::Body::Claim(_) => "station-claim",
    }
}

/// What the node remembers about a peer between links.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerMeta {
    pub protocol_version: u32,
    pub accepts_donations: bool,
    pub online: bool,
    pub since: Option<DateTime<Utc>>,
}

pub struct Inner {
    pub(crate) config: EngineConfig,
    pub(crate) store: Store,
    pub(crate) clock: SharedClock,
    pub(crate) grace: GracePolicy,
    pub(crate) events: broadcast::Sender<Notification>,
    /// Told of every published notification (hooks, metrics), in order.
    sinks: Vec<Arc<dyn EventSink>>,
    /// The vendor upstream and the parent's relay, as the shell reaches them.
    pub(crate) upstream: Arc<dyn UpstreamPort>,
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    peers: Mutex<HashMap<String, PeerMeta>>,
    /// b02: contacts waiting for the key's origin to answer their claim.
    claim_waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Set by any change that may alter the usage rolled up the tree (b05).
    pub(crate) usage_dirty: AtomicBool,
    /// Group commit: the one sync running at a time (the store numbers commits).
    flush_lock: tokio::sync::Mutex<()>,
    /// Station settings as last read or written (o05): read on every contact.
    pub(crate) settings_cache: Mutex<Option<crate::station::Settings>>,
    /// Station contacts that need a write, committed in batches.
    pub(crate) contacts: std::sync::OnceLock<crate::station::ContactQueue>,
    /// Owns the engine's background tasks (the contact batcher) ...
    pub(crate) tasks: TaskTracker,
    /// ... which end when this is cancelled.
    pub(crate) shutdown: CancellationToken,
}

/// Told of each notification after its transaction is durable.
pub trait EventSink: Send + Sync {
    fn published(&self, n: &Notification);
    /// The outcome of one key's renewal check (r03-r06, r10).
    fn renewal_checked(&self, _outcome: &str) {}
}

/// A future the ports return (boxed so the ports can be trait objects).
pub type PortFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = EngineResult<T>> + Send + 'a>>;

/// How the engine reaches the vendor upstream and its parent's Admin
/// service: the shell implements it over gRPC, a simulation in memory.
pub trait UpstreamPort: Send + Sync {
    /// r03 (1): the id of a renewal of `key_id` the upstream holds, if any.
    fn check_renewal<'a>(&'a self, key_id: &'a str) -> PortFuture<'a, Option<String>>;
    /// r03 (2): a key file by id.
    fn download_key<'a>(&'a self, key_id: &'a str) -> PortFuture<'a, String>;
    /// t01: a signed usage report.
    fn submit_telemetry<'a>(&'a self, text: &'a str) -> PortFuture<'a, pb::TelemetryAck>;
    /// t01: an uploaded telemetry file forwarded to the parent.
    fn relay_telemetry<'a>(&'a self, text: &'a str) -> PortFuture<'a, pb::TelemetryReceipt>;
}

/// An upstream port for a node with neither upstream nor parent.
pub struct NoUpstream;

impl UpstreamPort for NoUpstream {
    fn check_renewal<'a>(&'a self, _: &'a str) -> PortFuture<'a, Option<String>> {
        Box::pin(async { Err(no_upstream()) })
    }
    fn download_key<'a>(&'a self, _: &'a str) -> PortFuture<'a, String> {
        Box::pin(async { Err(no_upstream()) })
    }
    fn submit_telemetry<'a>(&'a self, _: &'a str) -> PortFuture<'a, pb::TelemetryAck> {
        Box::pin(async { Err(no_upstream()) })
    }
    fn relay_telemetry<'a>(&'a self, _: &'a str) -> PortFuture<'a, pb::TelemetryReceipt> {
        Box::pin(async { Err(no_upstream()) })
    }
}

fn no_upstream() -> EngineError {
    EngineError::FailedPrecondition(
        "no upstream is configured on this node (set `upstream` in its config)".into(),
    )
}

/// The node's state machine: a cheap handle to shared state.
#[derive(Clone)]
pub struct Engine(Arc<Inner>);

impl std::ops::Deref for Engine {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub(crate) type Tr<T> = TxResult<T, EngineError>;

/// What the shell hands the engine when it starts.
pub struct EngineParts {
    pub config: EngineConfig,
    pub store: Store,
    pub clock: SharedClock,
    pub upstream: Arc<dyn UpstreamPort>,
    pub sinks: Vec<Arc<dyn EventSink>>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Engine {
    pub fn new(parts: EngineParts) -> EngineResult<Self> {
        let EngineParts {
            config,
            store,
            clock,
            upstream,
            sinks,
            tasks,
            shutdown,
        } = parts;
        let (events, _) = broadcast::channel(1024);
        let mut peers = HashMap::new();
        for (id, _) in config.peers() {
            let mut meta: PeerMeta = store
                .meta(&format!("peer:{id}"))?
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default();
            meta.online = false;
            peers.insert(id, meta);
        }
        Ok(Self(Arc::new(Inner {
            grace: config.lifecycle.grace(),
            config,
            store,
            clock,
            flush_lock: tokio::sync::Mutex::new(()),
            settings_cache: Mutex::new(None),
            contacts: std::sync::OnceLock::new(),
            events,
            sinks,
            upstream,
            wakers: Mutex::new(HashMap::new()),
            claim_waiters: Mutex::new(HashMap::new()),
            peers: Mutex::new(peers),
            usage_dirty: AtomicBool::new(true),
            tasks,
            shutdown,
        })))
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self(inner)
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.0)
    }

    #[must_use]
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The store, for reads the shell serves (lists, metrics).
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    #[must_use]
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Notifications as they are published (Admin.WatchNotifications).
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.events.subscribe()
    }

    /// Whether usage may have changed since the flag was last taken (b05).
    /// A notification the shell raises itself (a refused link), stored and
    /// published like every other.
    pub async fn raise(
        &self,
        event: &str,
        key_id: &str,
        message: String,
        details: &[(&str, String)],
    ) -> EngineResult<()> {
        let event =
            EventKind::from_str(event).map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        let now = self.now();
        self.commit(|tx, fx| fx.notify(tx, now, event, key_id, message.clone(), details))
            .await
    }

    /// b06: one audit record, durable before this returns.
    pub async fn record_audit(
        &self,
        actor: &str,
        action: &str,
        detail: &str,
        outcome: &str,
    ) -> EngineResult<()> {
        let at = self.now();
        self.store
            .transact(|tx| tx.audit::<EngineError>(at, actor, action, detail, outcome))?;
        self.durable().await?;
        Ok(())
    }

    pub(crate) fn renewal_checked(&self, outcome: &str) {
        for sink in &self.sinks {
            sink.renewal_checked(outcome);
        }
    }

    pub fn take_usage_dirty(&self) -> bool {
        self.usage_dirty.swap(false, Ordering::Relaxed)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn id(&self) -> &str {
        &self.config.node_id
    }

    /// Runs one transaction, makes it durable, then publishes its effects.
    pub async fn commit<T>(&self, f: impl Fn(&Tx<'_>, &mut Effects) -> Tr<T>) -> EngineResult<T> {
        let (value, fx) = self.store.transact(|tx| {
            let mut fx = Effects::default();
            let v = f(tx, &mut fx)?;
            Ok((v, fx))
        })?;
        let synced = self.durable().await?;
        self.publish(fx, synced);
        Ok(value)
    }

    /// After a commit is durable (`_synced` proves it): notifications out,
    /// peers' outboxes woken.
    pub fn publish(&self, fx: Effects, _synced: Synced) {
        self.usage_dirty.store(true, Ordering::Relaxed);
        for n in fx.notifications {
            tracing::info!(node = %self.id(), event = %n.event, key_id = %n.key_id, "{}", n.message);
            for sink in &self.sinks {
                sink.published(&n);
            }
            let _ = self.events.send(n);
        }
        for peer in fx.wake {
            self.waker(&peer).notify_one();
        }
        for fp in fx.claim_answers {
            self.claim_waiter(&fp).notify_waiters();
        }
    }

    /// b02: woken when the key's origin answers a claim for `fingerprint`.
    pub(crate) fn claim_waiter(&self, fingerprint: &str) -> Arc<Notify> {
        self.claim_waiters
            .lock()
            .expect("claim waiters lock")
            .entry(fingerprint.to_owned())
            .or_default()
            .clone()
    }

    /// Waits until every transaction committed before the call is on disk
    /// and returns the store's proof of it. Group commit: one sync covers
    /// every commit before it, so concurrent callers share syncs instead of
    /// queueing one each. (sled's flush_async was seen to stall under many
    /// concurrent flushers; a blocking sync on the blocking pool does not.)
    pub async fn durable(&self) -> EngineResult<Synced> {
        let want = self.store.committed();
        if let Some(done) = self.store.synced_through(want) {
            return Ok(done);
        }
        let _leader = self.flush_lock.lock().await;
        if let Some(done) = self.store.synced_through(want) {
            return Ok(done);
        }
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| EngineError::Internal(format!("flush task failed: {e}")))??)
    }

    /// A backup's consistent cut of the store, durable here before it is
    /// returned. The copy runs on the blocking pool while commits go on
    /// (`Store::cut` holds them back only to re-read what they wrote
    /// meanwhile); the sync after it (shared with commits, as
    /// [`Self::durable`] does) makes everything in the cut durable on this
    /// node too, so a backup never holds a commit this node could still lose.
    pub async fn cut(&self) -> EngineResult<keyfed_store::snapshot::Cut> {
        let store = self.store.clone();
        let cut = tokio::task::spawn_blocking(move || store.cut())
            .await
            .map_err(|e| EngineError::Internal(format!("backup cut task failed: {e}")))??;
        let synced = self.durable().await?;
        debug_assert!(synced.commit() >= cut.commit);
        Ok(cut)
    }

    pub fn waker(&self, peer: &str) -> Arc<Notify> {
        self.wakers
            .lock()
            .expect("wakers lock")
            .entry(peer.to_owned())
            .or_default()
            .clone()
    }

    pub fn peer_meta(&self, peer: &str) -> Option<PeerMeta> {
        self.peers.lock().expect("peers lock").get(peer).cloned()
    }

    /// Records a link going up (with the peer's Hello) or down.
    pub fn set_peer_online(
        &self,
        peer: &str,
        online: bool,
        hello: Option<&pb::Hello>,
    ) -> EngineResult<()> {
        self.peer_link(
            peer,
            online,
            hello.map(|h| (h.protocol_version, h.accepts_donations)),
            self.now(),
        )
    }

    pub(crate) fn peer_link(
        &self,
        peer: &str,
        online: bool,
        hello: Option<(u32, bool)>,
        now: DateTime<Utc>,
    ) -> EngineResult<()> {
        let meta = {
            let mut peers = self.peers.lock().expect("peers lock");
            let m = peers.entry(peer.to_owned()).or_default();
            m.online = online;
            m.since = Some(now);
            if let Some((protocol_version, accepts_donations)) = hello {
                m.protocol_version = protocol_version;
                m.accepts_donations = accepts_donations;
            }
            m.clone()
        };
        self.store.set_meta(
            &format!("peer:{peer}"),
            &serde_json::to_string(&meta).expect("meta serializes"),
        )?;
        Ok(())
    }

    /// Protocol version of a peer as of its last Hello; unknown peers are
    /// assumed current until they say otherwise.
    pub(crate) fn peer_protocol(&self, peer: &str) -> u32 {
        self.peer_meta(peer)
            .map(|m| m.protocol_version)
            .filter(|v| *v > 0)
            .unwrap_or(keyfed_core::PROTOCOL_VERSION)
    }

    pub(crate) fn parse_key(&self, text: &str) -> EngineResult<KeyFile> {
        Ok(KeyFile::parse_trusted(
            text,
            &self.config.trusted_vendor_keys,
        )?)
    }

    /// e01/e03 by the key's current entitlement (activations, trial
    /// extension), by the node's clock (what the shell shows).
    pub fn key_state(&self, k: &StoredKey) -> KeyState {
        self.state_at(k, self.now())
    }

    /// e01/e03 at `now`, the time of the command being applied.
    pub fn state_at(&self, k: &StoredKey, now: DateTime<Utc>) -> KeyState {
        state_on(k.entitlement().expires, k.key.kind, now, &self.grace)
    }

    /// e03: assigning, transferring or distributing needs an active key.
    pub(crate) fn writable_at(&self, k: &StoredKey, now: DateTime<Utc>) -> EngineResult<()> {
        match self.state_at(k, now) {
            KeyState::Active => Ok(()),
            KeyState::Grace { until } => Err(EngineError::ReadOnly {
                key_id: k.key.id.clone(),
                state: "in grace after expiry",
                until: ts(until),
            }),
            KeyState::Suspended { since } => Err(EngineError::ReadOnly {
                key_id: k.key.id.clone(),
                state: "suspended",
                until: format!("a renewal arrives (suspended since {})", ts(since)),
            }),
        }
    }

    /// b01: lending periods when the administrator names none.
    pub(crate) fn donation_policy(&self) -> DonationPolicy {
        DonationPolicy {
            default_days: u32::try_from(self.config.donation_days.max(1)).unwrap_or(u32::MAX),
        }
    }

    /// b01: a stored grant's lending, with its own period (defect 7).
    pub(crate) fn lending_of(
        &self,
        until: Option<DateTime<Utc>>,
        days: Option<u32>,
    ) -> Option<Lending> {
        until.map(|u| Lending::stored(u, days, self.donation_policy()))
    }

    pub fn notifications_after(&self, seq: u64) -> EngineResult<Vec<Notification>> {
        Ok(self.store.notifications_after(seq)?)
    }
}

pub(crate) fn rollback_message(key: &keyfed_core::Key, seen: u64) -> String {
    format!(
        "key {} is serial {} of license {}, older than serial {seen} this node already had (perhaps deleted since): refused as a rollback",
        key.id, key.serial, key.license
    )
}

/// r07: a superseded key leaves once no object still holds it.
pub(crate) fn retire_if_free(
    tx: &Tx<'_>,
    fx: &mut Effects,
    key_id: &str,
    now: DateTime<Utc>,
) -> Tr<()> {
    let Some(k) = tx.key::<EngineError>(key_id)? else {
        return Ok(());
    };
    let Some(new) = &k.superseded_by else {
        return Ok(());
    };
    if tx.used::<EngineError>(key_id)? > 0 {
        return Ok(());
    }
    tx.remove_key::<EngineError>(key_id)?;
    fx.notify(
        tx,
        now,
        EventKind::KeyRetired,
        key_id,
        format!("key {key_id} retired: every object now holds {new}"),
        &[("new_key_id", new.clone())],
    )
}

/// e04/e05: the entitlement a delivery of `k` carries (defect 3).
fn entitled(k: &StoredKey) -> (u32, String) {
    let e = k.entitlement();
    (e.seats, e.expires.to_string())
}

/// A grant of `seats` of `k` to a peer, with the key's entitlement.
pub fn seat_grant(
    k: &StoredKey,
    seats: u32,
    lent_until: Option<DateTime<Utc>>,
) -> pb::delivery::Body {
    let (entitled_seats, entitled_until) = entitled(k);
    pb::delivery::Body::Grant(pb::SeatGrant {
        key: Some(pb::KeyFile {
            text: k.text.clone(),
        }),
        seats,
        lent_until: crate::time::opt_ts(lent_until),
        entitled_seats,
        entitled_until,
    })
}

/// r06: the renewal of `old_id` as `new`, with the seats granted of it.
pub fn renewed(
    old_id: &str,
    new: &StoredKey,
    seats: u32,
    lent_until: Option<DateTime<Utc>>,
) -> pb::delivery::Body {
    let (entitled_seats, entitled_until) = entitled(new);
    pb::delivery::Body::Renewed(pb::KeyRenewed {
        old_key_id: old_id.to_owned(),
        new_key: Some(pb::KeyFile {
            text: new.text.clone(),
        }),
        seats,
        lent_until: crate::time::opt_ts(lent_until),
        entitled_seats,
        entitled_until,
    })
}

pub fn withdrawn(key_id: &str, reason: String) -> pb::delivery::Body {
    pb::delivery::Body::Withdrawn(pb::GrantWithdrawn {
        key_id: key_id.to_owned(),
        reason,
        lent_until: String::new(),
    })
}

/// b01/r13: a borrower gives back the lending of `key_id` that ran until
/// `until` (`keyfed_core::donation::give_back_frees` on the lender).
pub fn given_back(key_id: &str, reason: String, until: DateTime<Utc>) -> pb::delivery::Body {
    pb::delivery::Body::Withdrawn(pb::GrantWithdrawn {
        key_id: key_id.to_owned(),
        reason,
        lent_until: crate::time::ts(until),
    })
}

/// The grant a server or station gets of `key_id`.
pub(crate) fn new_grant(
    key_id: &str,
    object: &str,
    kind: keyfed_store::ObjectKind,
    seats: u32,
    lending: Option<Lending>,
    now: DateTime<Utc>,
) -> Grant {
    Grant {
        key_id: key_id.to_owned(),
        object: object.to_owned(),
        kind,
        seats,
        granted_at: now,
        lent_until: lending.map(|l| l.until),
        lent_days: lending.map(|l| l.period_days),
        delivered: kind == keyfed_store::ObjectKind::Station,
        tenant: String::new(),
    }
}
