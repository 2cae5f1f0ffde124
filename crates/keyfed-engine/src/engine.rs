//! The node's state machine around the store: every administrator action and
//! every federation message is one store transaction, flushed before it is
//! acknowledged, whose effects (notifications, outbox wake-ups) are published
//! only after it committed.
use crate::config::{EngineConfig, PeerRole};
use crate::error::{EngineError, EngineResult};
use crate::time::ts;
use chrono::{DateTime, Duration, Utc};
use keyfed_core::lifecycle::{state_on, GracePolicy, KeyState};
use keyfed_core::seats::{check_assign, fit};
use keyfed_core::{KeyFile, SharedClock};
use keyfed_store::{
    abort, Grant, Notification, ObjectKind, Origin, OutboxEntry, Store, StoredKey, Synced, Tx,
    TxResult, Waiting,
};
use keyfed_wire::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
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
}

impl Effects {
    pub fn notify(
        &mut self,
        tx: &Tx<'_>,
        at: DateTime<Utc>,
        event: &str,
        key_id: &str,
        message: String,
        details: &[(&str, String)],
    ) -> TxResult<(), EngineError> {
        let details = details
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        self.notifications
            .push(tx.notify(at, event, key_id, message, details)?);
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

type Tr<T> = TxResult<T, EngineError>;

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

    pub fn set_peer_online(
        &self,
        peer: &str,
        online: bool,
        hello: Option<&pb::Hello>,
    ) -> EngineResult<()> {
        let meta = {
            let mut peers = self.peers.lock().expect("peers lock");
            let m = peers.entry(peer.to_owned()).or_default();
            m.online = online;
            m.since = Some(self.now());
            if let Some(h) = hello {
                m.protocol_version = h.protocol_version;
                m.accepts_donations = h.accepts_donations;
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
    fn peer_protocol(&self, peer: &str) -> u32 {
        self.peer_meta(peer)
            .map(|m| m.protocol_version)
            .filter(|v| *v > 0)
            .unwrap_or(keyfed_core::PROTOCOL_VERSION)
    }

    fn parse_key(&self, text: &str) -> EngineResult<KeyFile> {
        Ok(KeyFile::parse_trusted(
            text,
            &self.config.trusted_vendor_keys,
        )?)
    }

    /// e01/e03 by the key's current entitlement (activations, trial extension).
    pub fn key_state(&self, k: &StoredKey) -> KeyState {
        state_on(k.entitlement().expires, k.key.kind, self.now(), &self.grace)
    }

    fn writable(&self, k: &StoredKey) -> EngineResult<()> {
        match self.key_state(k) {
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

    // ---- keys -------------------------------------------------------------

    /// Admin.AddKey: a vendor key file added by hand (origin: upstream).
    pub async fn add_key(&self, text: &str) -> EngineResult<StoredKey> {
        let file = self.parse_key(text)?;
        let key = file.key.clone();
        self.check_not_rollback(&key)?;
        let now = self.now();
        let stored = StoredKey::new(key.clone(), file.render(), Origin::Upstream, now, key.seats);
        self.commit(|tx, fx| {
            if tx.key::<EngineError>(&stored.key.id)?.is_some() {
                return abort(EngineError::DuplicateKey(stored.key.id.clone()));
            }
            tx.put_key(&stored)?;
            let k = &stored.key;
            fx.notify(
                tx,
                now,
                "key-added",
                &k.id,
                format!(
                    "key {} added: {} seats of {} for {}",
                    k.id, k.seats, k.components, k.customer
                ),
                &[
                    ("seats", k.seats.to_string()),
                    ("expires", k.expires.to_string()),
                ],
            )
        })
        .await?;
        // e03: the upstream offers a renewal only until the old key expires;
        // one added by hand for an expired or suspended key restores its
        // objects at once instead of waiting for a renewal run
        if let Some(old) = stored.key.renews.as_deref() {
            if let Some(old) = self.store.key(old)? {
                if old.origin == Origin::Upstream
                    && old.superseded_by.is_none()
                    && !self.key_state(&old).writable()
                {
                    self.apply_renewal(&old, stored.clone(), true).await?;
                }
            }
        }
        Ok(stored)
    }

    /// Refuses a key older (lower serial) than a key of the same license held
    /// here or ever held here, even one deleted since: a rollback.
    pub fn check_not_rollback(&self, key: &keyfed_core::Key) -> EngineResult<()> {
        let held = self
            .store
            .keys()?
            .into_iter()
            .filter(|k| k.key.license == key.license)
            .max_by_key(|k| k.key.serial);
        if let Some(newer) = held.filter(|k| k.key.serial > key.serial) {
            return Err(EngineError::FailedPrecondition(format!(
                "key {} is serial {} of license {}, older than key {} (serial {}) already held: refused as a rollback",
                key.id, key.serial, key.license, newer.key.id, newer.key.serial
            )));
        }
        match self.store.license_serial(&key.license)? {
            Some(seen) if seen > key.serial => {
                Err(EngineError::FailedPrecondition(rollback_message(key, seen)))
            }
            _ => Ok(()),
        }
    }

    pub fn get_key(&self, id: &str) -> EngineResult<StoredKey> {
        self.store
            .key(id)?
            .ok_or_else(|| EngineError::not_found("key", id))
    }

    /// Admin.DeleteKey: the key leaves the database; a key file in the key
    /// folder is left alone (r12) and not imported again.
    pub async fn delete_key(&self, id: &str) -> EngineResult<()> {
        self.get_key(id)?;
        let grants = self.store.grants_of_key(id)?;
        let now = self.now();
        self.commit(|tx, fx| {
            let Some(k) = tx.key::<EngineError>(id)? else {
                return abort(EngineError::not_found("key", id));
            };
            for g in &grants {
                tx.remove_grant::<EngineError>(id, &g.object)?;
                // every server still holding seats of it is told, also of a
                // superseded key (r08: a neighbor that was only offered the
                // renewal, a child that never came back); a child whose
                // renewal is still queued applies that first and then finds
                // nothing left to withdraw
                if g.kind == ObjectKind::Server {
                    let reason = if k.superseded_by.is_some() {
                        "the superseded key was deleted by the administrator".to_owned()
                    } else {
                        "deleted by the administrator".to_owned()
                    };
                    fx.send(tx, &g.object, now, id, withdrawn(id, reason))?;
                }
            }
            tx.remove_key::<EngineError>(id)?;
            // r12: the tombstone keeps the key folder from importing it again;
            // written in the same transaction, so a crash cannot separate them
            tx.put_meta(&format!("deleted:{id}"), &ts(now))?;
            fx.notify(
                tx,
                now,
                "key-deleted",
                id,
                format!("key {id} deleted by the administrator"),
                &[],
            )
        })
        .await
    }

    // ---- seats ------------------------------------------------------------

    pub async fn assign(
        &self,
        key_id: &str,
        object: &str,
        seats: u32,
        kind: Option<ObjectKind>,
        donation_days: u32,
    ) -> EngineResult<Grant> {
        if object.trim().is_empty() {
            return Err(EngineError::InvalidArgument(
                "object must name a station or a peer node".into(),
            ));
        }
        let role = self.config.role_of(object);
        let kind = match (kind, role) {
            (Some(ObjectKind::Server), None) => {
                return Err(EngineError::InvalidArgument(format!(
                    "{object} is not a child or neighbor of this node; add it to the node's config first"
                )))
            }
            (Some(ObjectKind::Station), Some(_)) => {
                return Err(EngineError::InvalidArgument(format!("{object} is a peer node, not a station")))
            }
            (_, Some(_)) => ObjectKind::Server,
            (_, None) => ObjectKind::Station,
        };
        let now = self.now();
        let mut lent_until = None;
        if let Some(role) = role {
            if role == PeerRole::Parent {
                return Err(EngineError::InvalidArgument(format!(
                    "{object} is this node's parent: seats flow to children and neighbors"
                )));
            }
            if role == PeerRole::Neighbor {
                lent_until = Some(now + Duration::days(self.donation_days(donation_days)));
                self.check_donation_allowed(object)?;
            }
        }
        let k = self.get_key(key_id)?;
        self.writable(&k)?;
        if k.origin.peer() == Some(object) {
            return Err(EngineError::InvalidArgument(format!(
                "key {key_id} came from {object}; it cannot be lent back"
            )));
        }
        self.commit(|tx, fx| {
            let Some(k) = tx.key::<EngineError>(key_id)? else { return abort(EngineError::not_found("key", key_id)) };
            if let Some(new) = &k.superseded_by {
                return abort(EngineError::FailedPrecondition(format!(
                    "key {key_id} was renewed as {new}; assign seats of {new} instead"
                )));
            }
            if !k.distributable && kind == ObjectKind::Server {
                return abort(EngineError::FailedPrecondition(format!(
                    "key {key_id} was offered by a peer without automatic renewal and cannot be passed on"
                )));
            }
            let mine = tx.grant::<EngineError>(key_id, object)?.map_or(0, |g| g.seats);
            let used = tx.used::<EngineError>(key_id)?;
            if used > k.held {
                return abort(EngineError::FailedPrecondition(format!(
                    "key {key_id} is over-allocated ({used} seats granted of {}): new grants are refused until fixed",
                    k.held
                )));
            }
            if let Err(e) = check_assign(key_id, object, k.held, used - mine, seats) {
                return abort(e.into());
            }
            let g = Grant {
                key_id: key_id.into(),
                object: object.into(),
                kind,
                seats,
                granted_at: now,
                lent_until,
                delivered: kind == ObjectKind::Station,
                tenant: String::new(),
            };
            tx.put_grant(&g)?;
            crate::lifecycle::meter_tx(tx, &k, used - mine + seats, now)?;
            tx.remove_waiting::<EngineError>(key_id, object)?;
            if kind == ObjectKind::Server {
                fx.send(tx, object, now, key_id, seat_grant(&k, seats, lent_until))?;
            }
            Ok(g)
        })
        .await
    }

    fn donation_days(&self, asked: u32) -> i64 {
        if asked == 0 {
            self.config.donation_days
        } else {
            i64::from(asked)
        }
    }

    /// b01: a donation needs the lender's leave to send and the neighbor's to receive.
    fn check_donation_allowed(&self, neighbor: &str) -> EngineResult<()> {
        if !self.config.neighbor(neighbor).is_some_and(|n| n.allow_send) {
            return Err(EngineError::FailedPrecondition(format!(
                "this node does not allow sending seats to neighbor {neighbor} (allow_send = false)"
            )));
        }
        match self.peer_meta(neighbor) {
            Some(m) if m.protocol_version > 0 && !m.accepts_donations => Err(EngineError::FailedPrecondition(format!(
                "neighbor {neighbor} does not accept donated seats (its allow_receive is off)"
            ))),
            Some(m) if m.protocol_version > 0 => Ok(()),
            _ => Err(EngineError::FailedPrecondition(format!(
                "neighbor {neighbor} has never linked, so it is not known whether it accepts donated seats"
            ))),
        }
    }

    pub async fn unassign(&self, key_id: &str, object: &str) -> EngineResult<()> {
        let now = self.now();
        self.commit(|tx, fx| {
            let Some(g) = tx.remove_grant::<EngineError>(key_id, object)? else {
                return abort(EngineError::not_found(
                    "grant",
                    format!("of key {key_id} to {object}"),
                ));
            };
            if g.kind == ObjectKind::Server {
                fx.send(
                    tx,
                    object,
                    now,
                    key_id,
                    withdrawn(key_id, "unassigned by the administrator".into()),
                )?;
            }
            retire_if_free(tx, fx, key_id, now)?;
            Ok(())
        })
        .await?;
        // r11: a freed seat goes to a waiting object at once
        self.fill_waiting().await
    }

    // ---- renewal ----------------------------------------------------------

    /// r06/r10/r11: in one transaction, store `new` (if not yet held) and hand
    /// it to every object of `old_id`. The old key is retired once no object
    /// still holds it (r07).
    pub fn distribute_tx(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        old_id: &str,
        grants: &[Grant],
        new: &StoredKey,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let new_id = new.key.id.clone();
        let mut newk = match tx.key::<EngineError>(&new_id)? {
            Some(mut existing) => {
                if existing.origin == new.origin {
                    existing.held = new.held;
                    existing.lent_until = new.lent_until;
                }
                existing
            }
            None => new.clone(),
        };
        newk.distributable = true;
        tx.put_key(&newk)?;
        let Some(mut old) = tx.key::<EngineError>(old_id)? else {
            return Ok(());
        };
        old.superseded_by = Some(new_id.clone());
        tx.put_key(&old)?;
        // e07: the renewal keeps who holds the subscription
        if newk.tenancy == Default::default() && old.tenancy != Default::default() {
            newk.tenancy = old.tenancy.clone();
            tx.put_key(&newk)?;
        }
        for g in grants {
            let Some(g) = tx.grant::<EngineError>(old_id, &g.object)? else {
                continue;
            };
            let server = g.kind == ObjectKind::Server;
            if let Some(have) = tx.grant::<EngineError>(&new_id, &g.object)? {
                // r10: already given the new key by hand; left as it is
                if server && self.peer_protocol(&g.object) >= keyfed_core::AUTO_RENEWAL_SINCE {
                    fx.send(
                        tx,
                        &g.object,
                        now,
                        old_id,
                        renewed(old_id, &newk, have.seats, have.lent_until),
                    )?;
                } else {
                    tx.remove_grant::<EngineError>(old_id, &g.object)?;
                }
                continue;
            }
            if server && self.peer_protocol(&g.object) < keyfed_core::AUTO_RENEWAL_SINCE {
                // r08: the old peer gets the key file but does not distribute it;
                // the old key stays here until the administrator deletes it
                fx.send(
                    tx,
                    &g.object,
                    now,
                    &new_id,
                    pb::delivery::Body::Offer(pb::KeyOffer {
                        key: Some(pb::KeyFile {
                            text: newk.text.clone(),
                        }),
                    }),
                )?;
                fx.notify(
                    tx,
                    now,
                    "old-key-kept",
                    old_id,
                    format!(
                        "key {old_id} kept: {} speaks protocol {} without automatic renewal; it was given {new_id} but does not distribute it. Delete {old_id} by hand when done",
                        g.object,
                        self.peer_protocol(&g.object)
                    ),
                    &[("object", g.object.clone()), ("new_key_id", new_id.clone())],
                )?;
                continue;
            }
            let used = tx.used::<EngineError>(&new_id)?;
            if fit(newk.held, used, g.seats) < g.seats {
                // r11: not enough seats: the object waits, unlicensed
                tx.remove_grant::<EngineError>(old_id, &g.object)?;
                if server {
                    let reason = format!("renewed as {new_id}, which has no free seat for you yet");
                    fx.send(tx, &g.object, now, old_id, withdrawn(old_id, reason))?;
                }
                tx.put_waiting(&Waiting {
                    key_id: new_id.clone(),
                    object: g.object.clone(),
                    kind: g.kind,
                    seats: g.seats,
                    since: now,
                    lent_until: g.lent_until,
                    replaces: Some(old_id.to_owned()),
                })?;
                fx.notify(
                    tx,
                    now,
                    "object-unlicensed",
                    &new_id,
                    format!(
                        "{} keeps no seat: key {new_id} has {} free of {} and it needs {}; it waits until seats free up",
                        g.object,
                        newk.held.saturating_sub(used),
                        newk.held,
                        g.seats
                    ),
                    &[("object", g.object.clone()), ("old_key_id", old_id.to_owned())],
                )?;
                continue;
            }
            let moved = Grant {
                key_id: new_id.clone(),
                granted_at: now,
                delivered: !server,
                ..g.clone()
            };
            tx.put_grant(&moved)?;
            if server {
                // the old grant stays until the peer acks: it still uses the old key (r07)
                fx.send(
                    tx,
                    &g.object,
                    now,
                    old_id,
                    renewed(old_id, &newk, g.seats, g.lent_until),
                )?;
            } else {
                tx.remove_grant::<EngineError>(old_id, &g.object)?;
            }
        }
        retire_if_free(tx, fx, old_id, now)
    }

    /// The peer acked `entries`: grants are delivered, renewals taken (r07).
    pub async fn on_acked(&self, peer: &str, entries: Vec<OutboxEntry>) -> EngineResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = self.now();
        self.commit(|tx, fx| {
            for e in &entries {
                let Ok(d) = pb::Delivery::decode(e.body.as_slice()) else {
                    continue;
                };
                match d.body {
                    Some(pb::delivery::Body::Grant(g)) => {
                        if let Some(mut mine) = tx.grant::<EngineError>(&e.key_id, peer)? {
                            if mine.seats == g.seats {
                                mine.delivered = true;
                                tx.put_grant(&mine)?;
                            }
                        }
                    }
                    Some(pb::delivery::Body::Command(c)) => {
                        if let Some(mut cmd) = tx.command::<EngineError>(peer, c.id)? {
                            cmd.state = keyfed_store::CommandState::Delivered { at: now };
                            tx.put_command(&cmd)?;
                        }
                    }
                    Some(pb::delivery::Body::Renewed(r)) => {
                        let new_id = r
                            .new_key
                            .as_ref()
                            .and_then(|k| KeyFile::parse(&k.text).ok())
                            .map(|f| f.key.id);
                        if let Some(mut g) = new_id
                            .and_then(|id| tx.grant::<EngineError>(&id, peer).transpose())
                            .transpose()?
                        {
                            g.delivered = true;
                            tx.put_grant(&g)?;
                        }
                        tx.remove_grant::<EngineError>(&r.old_key_id, peer)?;
                        retire_if_free(tx, fx, &r.old_key_id, now)?;
                    }
                    _ => {}
                }
            }
            Ok(())
        })
        .await
    }

    /// r11: grants seats to objects waiting for them, as far as seats allow.
    pub async fn fill_waiting(&self) -> EngineResult<()> {
        let waiting = self.store.waiting()?;
        if waiting.is_empty() {
            return Ok(());
        }
        let now = self.now();
        self.commit(|tx, fx| {
            for w in &waiting {
                let Some(k) = tx.key::<EngineError>(&w.key_id)? else {
                    tx.remove_waiting::<EngineError>(&w.key_id, &w.object)?;
                    continue;
                };
                let used = tx.used::<EngineError>(&w.key_id)?;
                if tx.grant::<EngineError>(&w.key_id, &w.object)?.is_some()
                    || fit(k.held, used, w.seats) < w.seats
                {
                    continue;
                }
                let server = w.kind == ObjectKind::Server;
                tx.put_grant(&Grant {
                    key_id: w.key_id.clone(),
                    object: w.object.clone(),
                    kind: w.kind,
                    seats: w.seats,
                    granted_at: now,
                    lent_until: w.lent_until,
                    delivered: !server,
                    tenant: String::new(),
                })?;
                tx.remove_waiting::<EngineError>(&w.key_id, &w.object)?;
                if server {
                    let body = match &w.replaces {
                        Some(old) => renewed(old, &k, w.seats, w.lent_until),
                        None => seat_grant(&k, w.seats, w.lent_until),
                    };
                    fx.send(
                        tx,
                        &w.object,
                        now,
                        w.replaces.as_deref().unwrap_or(&w.key_id),
                        body,
                    )?;
                }
                fx.notify(
                    tx,
                    now,
                    "object-licensed",
                    &w.key_id,
                    format!(
                        "{} got {} seat(s) of key {} that freed up",
                        w.object, w.seats, w.key_id
                    ),
                    &[("object", w.object.clone())],
                )?;
            }
            Ok(())
        })
        .await
    }

    // ---- receiving from peers ----------------------------------------------

    /// Applies one delivery from `peer` exactly once (by sequence), durably.
    pub async fn apply_delivery(&self, peer: &str, d: pb::Delivery) -> EngineResult<()> {
        let now = self.now();
        // grants are read outside the transaction; it re-reads each one
        let old_grants = match &d.body {
            Some(pb::delivery::Body::Renewed(r)) => self.store.grants_of_key(&r.old_key_id)?,
            Some(pb::delivery::Body::Withdrawn(w)) => self.store.grants_of_key(&w.key_id)?,
            _ => Vec::new(),
        };
        let parsed = match &d.body {
            Some(pb::delivery::Body::Grant(pb::SeatGrant { key: Some(k), .. }))
            | Some(pb::delivery::Body::Offer(pb::KeyOffer { key: Some(k) }))
            | Some(pb::delivery::Body::Renewed(pb::KeyRenewed {
                new_key: Some(k), ..
            })) => Some(self.parse_key(&k.text)),
            _ => None,
        };
        let role = self.config.role_of(peer);
        // b02: claims name a license; find this node's current key of it
        let claimed = match &d.body {
            Some(pb::delivery::Body::Claim(c)) => self.store.keys()?.into_iter().find(|k| {
                k.key.license == c.license && k.superseded_by.is_none() && k.merged_into.is_none()
            }),
            _ => None,
        };
        // for the rollback check of stores written before serials were kept
        let held_serial = match &parsed {
            Some(Ok(f)) => self
                .store
                .keys()?
                .iter()
                .filter(|k| k.key.license == f.key.license)
                .map(|k| k.key.serial)
                .max(),
            _ => None,
        };
        // b05: a peer's rollup replaces every line its last one carried
        let carried: Vec<(String, String)> = match &d.body {
            Some(pb::delivery::Body::Usage(_)) => self
                .store
                .usage_lines()?
                .into_iter()
                .filter(|l| l.via == peer)
                .map(|l| (l.node_id, l.key_id))
                .collect(),
            _ => Vec::new(),
        };
        // b05: a rollup may name a key by the id the peer still holds, the
        // one our grant's key renewed
        let renewals: HashMap<String, Vec<String>> = match &d.body {
            Some(pb::delivery::Body::Usage(_)) => {
                let mut m: HashMap<String, Vec<String>> = HashMap::new();
                for k in self.store.keys()? {
                    if let Some(old) = &k.key.renews {
                        m.entry(old.clone()).or_default().push(k.key.id.clone());
                    }
                }
                m
            }
            _ => HashMap::new(),
        };
        self.commit(|tx, fx| {
            let mut cursor = tx.cursor::<EngineError>(peer)?;
            if d.seq <= cursor.applied {
                return Ok(()); // a replay: already applied
            }
            cursor.applied = d.seq;
            tx.put_cursor(peer, &cursor)?;
            if !tx.first_sight::<EngineError>(&d.message_id, now)? {
                return Ok(());
            }
            let file = match &parsed {
                Some(Ok(f)) => Some(f),
                Some(Err(e)) => {
                    fx.notify(
                        tx,
                        now,
                        "peer-message-refused",
                        "",
                        format!("a key from {peer} was refused: {e}"),
                        &[("peer", peer.to_owned())],
                    )?;
                    return Ok(());
                }
                None => None,
            };
            if let Some(f) = file {
                if let Some(why) = self.key_refusal(tx, peer, role, &d.body, f, held_serial)? {
                    tracing::warn!(node = %self.id(), %peer, key_id = %f.key.id, reason = %why, "peer message refused");
                    // r13: seats a parent or neighbor granted and this node
                    // refused go back, or the sender counts them forever
                    let carries_seats = matches!(
                        d.body,
                        Some(pb::delivery::Body::Grant(_) | pb::delivery::Body::Renewed(_))
                    );
                    if carries_seats && matches!(role, Some(PeerRole::Parent | PeerRole::Neighbor)) {
                        let back = format!("refused by {}: {why}", self.id());
                        fx.send(tx, peer, now, &f.key.id, withdrawn(&f.key.id, back))?;
                    }
                    fx.notify(
                        tx,
                        now,
                        "peer-message-refused",
                        &f.key.id,
                        why,
                        &[("peer", peer.to_owned())],
                    )?;
                    return Ok(());
                }
            }
            match (&d.body, file) {
                (Some(pb::delivery::Body::Grant(g)), Some(f)) => {
                    let lent = crate::time::parse_ts("lent_until", &g.lent_until)
                        .ok()
                        .flatten();
                    self.receive_key_tx(tx, fx, peer, f, g.seats, lent, true, now)?;
                }
                (Some(pb::delivery::Body::Offer(_)), Some(f)) => {
                    self.receive_key_tx(tx, fx, peer, f, 0, None, false, now)?;
                }
                (Some(pb::delivery::Body::Renewed(r)), Some(f)) => {
                    let lent = crate::time::parse_ts("lent_until", &r.lent_until)
                        .ok()
                        .flatten();
                    if self.config.protocol_version < keyfed_core::AUTO_RENEWAL_SINCE {
                        return self.receive_key_tx(tx, fx, peer, f, r.seats, lent, false, now);
                    }
                    let new = StoredKey {
                        lent_until: lent,
                        ..StoredKey::new(
                            f.key.clone(),
                            f.render(),
                            Origin::Peer(peer.to_owned()),
                            now,
                            r.seats,
                        )
                    };
                    let old_here = tx
                        .key::<EngineError>(&r.old_key_id)?
                        .filter(|k| k.origin.peer() == Some(peer));
                    fx.notify(
                        tx,
                        now,
                        "key-renewed-automatically",
                        &f.key.id,
                        format!(
                            "key {} was renewed automatically as {} ({} seats) by {peer}",
                            r.old_key_id, f.key.id, r.seats
                        ),
                        &[
                            ("old_key_id", r.old_key_id.clone()),
                            ("new_key_id", f.key.id.clone()),
                            ("from", peer.to_owned()),
                        ],
                    )?;
                    if old_here.is_some() {
                        self.distribute_tx(tx, fx, &r.old_key_id, &old_grants, &new, now)?;
                    } else if tx.key::<EngineError>(&new.key.id)?.is_none() {
                        tx.put_key(&new)?;
                    }
                }
                (Some(pb::delivery::Body::Claim(c)), _) => {
                    self.claim_tx(tx, fx, peer, c, claimed.as_ref(), now)?;
                }
                (Some(pb::delivery::Body::Command(c)), _) if role != Some(PeerRole::Parent) => {
                    tracing::warn!(node = %self.id(), %peer, "command from a peer that is not the parent refused");
                    fx.notify(
                        tx,
                        now,
                        "peer-message-refused",
                        "",
                        format!("{peer} is not this node's parent; its command {:?} was refused", c.command),
                        &[("peer", peer.to_owned())],
                    )?;
                }
                (Some(pb::delivery::Body::Command(c)), _) => {
                    // o03: a command from the parent's administrator
                    fx.notify(
                        tx,
                        now,
                        "command-received",
                        "",
                        format!("command from {peer}: {}", c.command),
                        &[
                            ("from", peer.to_owned()),
                            ("command_id", c.id.to_string()),
                            ("command", c.command.clone()),
                        ],
                    )?;
                }
                (Some(pb::delivery::Body::Withdrawn(w)), _) => {
                    self.withdraw_tx(tx, fx, peer, &w.key_id, &w.reason, &old_grants, now)?;
                }
                (Some(pb::delivery::Body::Usage(u)), _) => {
                    for (node_id, key_id) in &carried {
                        if !u.lines.iter().any(|l| &l.node_id == node_id && &l.key_id == key_id) {
                            tx.remove_usage::<EngineError>(node_id, key_id)?;
                        }
                    }
                    let mut refused = BTreeSet::new();
                    for line in &u.lines {
                        // only keys this node granted to the peer, within the grant
                        let granted = match tx.grant::<EngineError>(&line.key_id, peer)? {
                            Some(g) => line.seats <= g.seats,
                            None => {
                                let mut renewed = false;
                                for new in renewals.get(&line.key_id).into_iter().flatten() {
                                    renewed |= tx.grant::<EngineError>(new, peer)?.is_some();
                                }
                                renewed
                            }
                        };
                        if !granted {
                            refused.insert(line.key_id.clone());
                            continue;
                        }
                        tx.put_usage(&keyfed_store::UsageLine {
                            node_id: line.node_id.clone(),
                            key_id: line.key_id.clone(),
                            seats: line.seats,
                            used: line.used,
                            reported_at: crate::time::parse_ts("reported_at", &line.reported_at)
                                .ok()
                                .flatten()
                                .unwrap_or(now),
                            via: peer.to_owned(),
                        })?;
                    }
                    if !refused.is_empty() {
                        let keys = refused.into_iter().collect::<Vec<_>>().join(", ");
                        tracing::warn!(node = %self.id(), %peer, %keys, "usage lines refused");
                        fx.notify(
                            tx,
                            now,
                            "peer-message-refused",
                            "",
                            format!("{peer} reported usage of key(s) {keys}, whose seats this node did not grant it (or fewer than it claims); those lines were refused"),
                            &[("peer", peer.to_owned()), ("keys", keys.clone())],
                        )?;
                    }
                }
                _ => {
                    fx.notify(
                        tx,
                        now,
                        "peer-message-refused",
                        "",
                        format!(
                            "an empty or malformed delivery {} from {peer} was ignored",
                            d.seq
                        ),
                        &[("peer", peer.to_owned())],
                    )?;
                }
            }
            Ok(())
        })
        .await?;
        self.fill_waiting().await
    }

    /// Why a key-bearing delivery (grant, offer, renewal) from `peer` is
    /// refused, if it is: seats flow down and to neighbors that accept them,
    /// never up; a key older than one of its license seen here is a rollback.
    fn key_refusal(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        role: Option<PeerRole>,
        body: &Option<pb::delivery::Body>,
        f: &KeyFile,
        held_serial: Option<u64>,
    ) -> Tr<Option<String>> {
        let what = body.as_ref().map_or("delivery", body_name);
        let id = &f.key.id;
        match role {
            Some(PeerRole::Child) => {
                return Ok(Some(format!(
                    "child {peer} tried to grant seats upward ({what} of key {id}); refused"
                )))
            }
            Some(PeerRole::Neighbor)
                if !matches!(body, Some(pb::delivery::Body::Offer(_)))
                    && !self.config.neighbor(peer).is_some_and(|n| n.allow_receive) =>
            {
                return Ok(Some(format!(
                    "neighbor {peer} lent seats ({what} of key {id}) but allow_receive is off; refused"
                )))
            }
            None => {
                return Ok(Some(format!(
                    "{peer} is not a configured peer of this node; its {what} of key {id} was refused"
                )))
            }
            _ => {}
        }
        if tx.key::<EngineError>(id)?.is_none() {
            let seen = tx
                .license_serial::<EngineError>(&f.key.license)?
                .max(held_serial);
            if let Some(seen) = seen.filter(|s| *s > f.key.serial) {
                return Ok(Some(format!(
                    "{peer} sent a {what}: {}",
                    rollback_message(&f.key, seen)
                )));
            }
        }
        if let Some(pb::delivery::Body::Renewed(r)) = body {
            if let Some(old) = tx.key::<EngineError>(&r.old_key_id)? {
                if old.key.license != f.key.license {
                    return Ok(Some(format!(
                        "{peer} sent key {id} of license {} as the renewal of key {} of license {}; refused",
                        f.key.license, old.key.id, old.key.license
                    )));
                }
            }
        }
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    fn receive_key_tx(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        f: &KeyFile,
        seats: u32,
        lent_until: Option<DateTime<Utc>>,
        distributable: bool,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let id = &f.key.id;
        let existing = tx.key::<EngineError>(id)?;
        if let Some(e) = &existing {
            if e.origin != Origin::Peer(peer.to_owned()) {
                return fx.notify(tx, now, "peer-message-refused", id, format!("{peer} sent key {id}, which this node already holds from elsewhere; ignored"), &[("peer", peer.to_owned())]);
            }
        }
        let k = StoredKey {
            superseded_by: existing.as_ref().and_then(|e| e.superseded_by.clone()),
            lent_until,
            distributable,
            ..StoredKey::new(
                f.key.clone(),
                f.render(),
                Origin::Peer(peer.to_owned()),
                existing.as_ref().map_or(now, |e| e.added_at),
                seats,
            )
        };
        // e06: fewer seats than granted is flagged by the lifecycle sweep
        tx.put_key(&k)?;
        if existing.is_none() {
            let event = if distributable {
                "key-received"
            } else {
                "key-offered"
            };
            fx.notify(
                tx,
                now,
                event,
                id,
                format!("key {id} received from {peer} with {seats} seat(s)"),
                &[("from", peer.to_owned()), ("seats", seats.to_string())],
            )?;
        }
        Ok(())
    }

    /// A peer took back the seats of a key it gave us: everything below goes too.
    /// r13: a server this node granted seats to refused them (or gave them
    /// back): its grant is removed, so the seats are free here again.
    fn grant_returned_tx(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        key_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let Some(g) = tx.grant::<EngineError>(key_id, peer)? else {
            return Ok(());
        };
        if g.kind != ObjectKind::Server {
            return Ok(());
        }
        tx.remove_grant::<EngineError>(key_id, peer)?;
        fx.notify(
            tx,
            now,
            "grant-returned",
            key_id,
            format!(
                "{peer} gave back its {} seat(s) of key {key_id}: {reason}",
                g.seats
            ),
            &[("peer", peer.to_owned()), ("seats", g.seats.to_string())],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn withdraw_tx(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        key_id: &str,
        reason: &str,
        grants: &[Grant],
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let Some(k) = tx.key::<EngineError>(key_id)? else {
            return Ok(());
        };
        if k.origin.peer() != Some(peer) {
            return self.grant_returned_tx(tx, fx, peer, key_id, reason, now);
        }
        for g in grants {
            if tx.remove_grant::<EngineError>(key_id, &g.object)?.is_some()
                && g.kind == ObjectKind::Server
            {
                fx.send(
                    tx,
                    &g.object,
                    now,
                    key_id,
                    withdrawn(key_id, format!("withdrawn upstream: {reason}")),
                )?;
            }
        }
        tx.remove_key::<EngineError>(key_id)?;
        fx.notify(
            tx,
            now,
            "key-withdrawn",
            key_id,
            format!("{peer} withdrew key {key_id}: {reason}"),
            &[("from", peer.to_owned())],
        )
    }

    /// b02 across nodes: a peer says one of its stations took (or gave back)
    /// a seat of a license; or our origin answers that it is a second seat.
    fn claim_tx(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        c: &pb::StationClaim,
        key: Option<&StoredKey>,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let (license, fp) = (c.license.as_str(), c.fingerprint.as_str());
        let Some(k) = key else {
            return Ok(()); // the license is gone here: nothing to arbitrate
        };
        let origin = k.origin.peer().map(str::to_owned);
        if c.duplicate {
            if origin.as_deref() != Some(peer) {
                return fx.notify(
                    tx,
                    now,
                    "peer-message-refused",
                    &k.key.id,
                    format!(
                        "{peer} answered a station claim for a key it did not give us; ignored"
                    ),
                    &[("peer", peer.to_owned())],
                );
            }
            if let Some(below) = tx.claim::<EngineError>(license, fp)? {
                // forwarded for a node below us: pass the answer down
                tx.remove_claim::<EngineError>(license, fp)?;
                return fx
                    .send(
                        tx,
                        &below,
                        now,
                        &k.key.id,
                        pb::delivery::Body::Claim(c.clone()),
                    )
                    .map(|_| ());
            }
            if tx.remove_grant::<EngineError>(&k.key.id, fp)?.is_some() {
                if let Some(mut s) = tx.station::<EngineError>(fp)? {
                    s.key_id = None;
                    s.elsewhere = Some((c.holder.clone(), k.key.id.clone(), now));
                    tx.put_station(&s)?;
                }
                fx.notify(tx, now, "duplicate-station", &k.key.id, format!("station {fp} already holds a seat of {} through {}: the seat it took here was given back (b02)", k.key.id, c.holder), &[("fingerprint", fp.to_owned()), ("holder", c.holder.clone())])?;
            }
            return Ok(());
        }
        if tx.grant::<EngineError>(&k.key.id, peer)?.is_none() {
            return fx.notify(
                tx,
                now,
                "peer-message-refused",
                &k.key.id,
                format!(
                    "{peer} claims a station seat of {} but was never granted seats of it; refused",
                    k.key.id
                ),
                &[("peer", peer.to_owned())],
            );
        }
        if c.released {
            if tx.claim::<EngineError>(license, fp)?.as_deref() == Some(peer) {
                tx.remove_claim::<EngineError>(license, fp)?;
                if let Some(up) = &origin {
                    fx.send(tx, up, now, &k.key.id, crate::station::claim(k, fp, true))?;
                }
            }
            return Ok(());
        }
        let here = tx
            .grant::<EngineError>(&k.key.id, fp)?
            .filter(|g| g.kind == ObjectKind::Station)
            .map(|_| self.id().to_owned());
        let elsewhere = tx.claim::<EngineError>(license, fp)?.filter(|p| p != peer);
        if let Some(holder) = here.or(elsewhere) {
            let answer = pb::StationClaim {
                duplicate: true,
                holder: holder.clone(),
                ..c.clone()
            };
            fx.send(tx, peer, now, &k.key.id, pb::delivery::Body::Claim(answer))?;
            return fx.notify(tx, now, "duplicate-station", &k.key.id, format!("station {fp} reached {peer} but already holds a seat of {} through {holder}; {peer} gives its seat back (b02)", k.key.id), &[("fingerprint", fp.to_owned()), ("holder", holder)]);
        }
        tx.put_claim(license, fp, peer)?;
        if let Some(up) = &origin {
            fx.send(tx, up, now, &k.key.id, crate::station::claim(k, fp, false))?;
        }
        Ok(())
    }

    pub fn notifications_after(&self, seq: u64) -> EngineResult<Vec<Notification>> {
        Ok(self.store.notifications_after(seq)?)
    }
}

fn rollback_message(key: &keyfed_core::Key, seen: u64) -> String {
    format!(
        "key {} is serial {} of license {}, older than serial {seen} this node already had (perhaps deleted since): refused as a rollback",
        key.id, key.serial, key.license
    )
}

/// r07: a superseded key leaves once no object still holds it.
fn retire_if_free(tx: &Tx<'_>, fx: &mut Effects, key_id: &str, now: DateTime<Utc>) -> Tr<()> {
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
        "key-retired",
        key_id,
        format!("key {key_id} retired: every object now holds {new}"),
        &[("new_key_id", new.clone())],
    )
}

pub fn seat_grant(
    k: &StoredKey,
    seats: u32,
    lent_until: Option<DateTime<Utc>>,
) -> pb::delivery::Body {
    pb::delivery::Body::Grant(pb::SeatGrant {
        key: Some(pb::KeyFile {
            text: k.text.clone(),
        }),
        seats,
        lent_until: crate::time::opt_ts(lent_until),
    })
}

pub fn renewed(
    old_id: &str,
    new: &StoredKey,
    seats: u32,
    lent_until: Option<DateTime<Utc>>,
) -> pb::delivery::Body {
    pb::delivery::Body::Renewed(pb::KeyRenewed {
        old_key_id: old_id.to_owned(),
        new_key: Some(pb::KeyFile {
            text: new.text.clone(),
        }),
        seats,
        lent_until: crate::time::opt_ts(lent_until),
    })
}

pub fn withdrawn(key_id: &str, reason: String) -> pb::delivery::Body {
    pb::delivery::Body::Withdrawn(pb::GrantWithdrawn {
        key_id: key_id.to_owned(),
        reason,
    })
}
