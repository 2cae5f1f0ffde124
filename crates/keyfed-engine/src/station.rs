//! The Station service: an endpoint takes a seat of a key covering the
//! components it needs. A station is its fingerprint (b02): reconnecting,
//! reinstalling or connecting twice never takes a second seat. Every contact
//! is durable before it is answered; it refreshes the offline validity (o02),
//! brings changed settings (o05) and queued commands (o03), and brings a
//! retired station back (b03). Suspended keys stop licensing their stations
//! at their next contact without deleting anything (e03).
use crate::engine::Engine;
use crate::error::{EngineError, EngineResult};
use crate::time::ts;
use chrono::{DateTime, Utc};
use keyfed_core::lifecycle::KeyState;
use keyfed_store::{
    abort, CommandState, Grant, ObjectKind, StationRecord, StationReport, StoredKey,
};
use keyfed_wire::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Most reports one batch may carry, and the largest report body.
pub const MAX_REPORTS_PER_BATCH: usize = 1000;
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// What a station says when it connects or renews.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    pub fingerprint: String,
    pub station_id: String,
    pub components: Vec<String>,
    pub tenant: String,
    pub settings_version: u64,
}

impl From<pb::ConnectRequest> for Hello {
    fn from(r: pb::ConnectRequest) -> Self {
        Self {
            fingerprint: r.fingerprint,
            station_id: r.station_id,
            components: r.components,
            tenant: r.tenant,
            settings_version: r.settings_version,
        }
    }
}

impl From<pb::RenewRequest> for Hello {
    fn from(r: pb::RenewRequest) -> Self {
        Self {
            fingerprint: r.fingerprint,
            station_id: r.station_id,
            components: r.components,
            tenant: r.tenant,
            settings_version: r.settings_version,
        }
    }
}

/// The settings every station gets (o05), versioned so a station that was
/// offline learns it is behind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub text: String,
    pub version: u64,
}

const SETTINGS: &str = "station_settings";

/// A station's stored last contact is refreshed when it is older than this.
const CONTACT_RESOLUTION: chrono::Duration = chrono::Duration::hours(1);

fn lease_id(key_id: &str, fingerprint: &str) -> String {
    format!("{key_id}/{fingerprint}")
}

/// How a contact ended, decided inside its transaction.
pub(crate) enum Outcome {
    Licensed(StoredKey),
    /// Holds its seat, but the key no longer licenses it (suspended).
    Withdrawn(StoredKey, String),
    Refused(String),
}

impl Engine {
    pub fn settings(&self) -> EngineResult<Settings> {
        if let Some(s) = self.settings_cache.lock().expect("settings lock").clone() {
            return Ok(s);
        }
        let s = self.stored_settings()?;
        *self.settings_cache.lock().expect("settings lock") = Some(s.clone());
        Ok(s)
    }

    fn stored_settings(&self) -> EngineResult<Settings> {
        Ok(match self.store.meta(SETTINGS)? {
            Some(s) => serde_json::from_str(&s).map_err(|e| {
                EngineError::FailedPrecondition(format!("stored station settings unreadable: {e}"))
            })?,
            None => Settings {
                text: self.config.stations.settings.clone(),
                version: 1,
            },
        })
    }

    /// o05: new settings for every station; they reach offline stations when
    /// they come back.
    pub async fn set_settings(&self, text: &str) -> EngineResult<Settings> {
        if text.len() > MAX_REPORT_BYTES {
            return Err(EngineError::InvalidArgument(format!(
                "settings are {} bytes; at most {MAX_REPORT_BYTES} are allowed",
                text.len()
            )));
        }
        let current = self.settings()?;
        if current.text == text {
            return Ok(current);
        }
        let next = Settings {
            text: text.to_owned(),
            version: current.version + 1,
        };
        self.store.set_meta(
            SETTINGS,
            &serde_json::to_string(&next).expect("settings serialize"),
        )?;
        self.durable().await?;
        *self.settings_cache.lock().expect("settings lock") = Some(next.clone());
        let now = self.now();
        let v = next.version;
        self.commit(|tx, fx| {
            fx.notify(
                tx,
                now,
                "settings-changed",
                "",
                format!("station settings changed to version {v}; stations get them at their next contact"),
                &[("version", v.to_string())],
            )
        })
        .await?;
        Ok(next)
    }

    /// The key and grant through which `fingerprint` holds a seat, if any (b02).
    fn seat_of(&self, keys: &[StoredKey], fingerprint: &str) -> EngineResult<Option<StoredKey>> {
        for k in keys {
            if self.store.grant(&k.key.id, fingerprint)?.is_some() {
                return Ok(Some(k.clone()));
            }
        }
        Ok(None)
    }

    /// Station.Attach and Station.Renew: finds the station's seat or takes
    /// one, records the contact durably, and answers with its lease.
    pub async fn station_contact(&self, hello: Hello) -> EngineResult<pb::Lease> {
        let fp = hello.fingerprint.trim();
        if fp.is_empty() || fp.len() > 128 || fp.contains('/') || fp.contains('\0') {
            return Err(EngineError::InvalidArgument(
                "a station must present a fingerprint of 1 to 128 characters without '/'".into(),
            ));
        }
        let now = self.now();
        // the common case is a renewal: the station's record names its key,
        // so one grant and one key are read instead of every key
        let record = self.store.station(fp)?;
        let known = match record.as_ref().and_then(|s| s.key_id.clone()) {
            Some(id) if self.store.grant(&id, fp)?.is_some() => self.store.key(&id)?,
            _ => None,
        };
        let (held, keys) = match known {
            Some(k) => (Some(k), Vec::new()),
            None => {
                let keys = self.store.keys()?;
                (self.seat_of(&keys, fp)?, keys)
            }
        };
        let settings = self.settings()?;
        let pending: Vec<u64> = self
            .store
            .commands_of(fp)?
            .into_iter()
            .filter(|c| c.state == CommandState::Pending)
            .map(|c| c.id)
            .collect();
        // a renewal that changes nothing but the time is answered from the
        // store: its seat is durable already, and the contact time is written
        // at most once per CONTACT_RESOLUTION (retirement counts in days)
        if let (Some(k), Some(r)) = (&held, &record) {
            let unchanged = pending.is_empty()
                && r.retired_at.is_none()
                && r.elsewhere.is_none()
                && r.settings_version == settings.version
                && r.tenant == hello.tenant
                && (hello.station_id.is_empty() || r.station_id == hello.station_id)
                && (hello.components.is_empty() || r.components == hello.components)
                && now >= r.last_contact
                && now - r.last_contact < CONTACT_RESOLUTION;
            if unchanged {
                let outcome = self.seat_outcome(k);
                return Ok(self.lease(
                    fp,
                    outcome,
                    Vec::new(),
                    settings,
                    hello.settings_version,
                    now,
                ));
            }
        }
        let candidates: Vec<StoredKey> = match &held {
            Some(k) => vec![k.clone()],
            None => keys
                .into_iter()
                .filter(|k| {
                    k.superseded_by.is_none()
                        && k.merged_into.is_none()
                        && k.key.components.covers(&hello.components)
                })
                .collect(),
        };
        let contact = Contact {
            fp: fp.to_owned(),
            hello: hello.clone(),
            held: held.is_some(),
            candidates,
            pending,
            settings_version: settings.version,
            now,
        };
        let (outcome, commands) = self.commit_contact(contact).await?;
        Ok(self.lease(fp, outcome, commands, settings, hello.settings_version, now))
    }

    /// Queues a contact for the next batch and waits until it is durable.
    async fn commit_contact(&self, contact: Contact) -> EngineResult<(Outcome, Vec<String>)> {
        let queue = self.contacts.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.tasks.spawn(run_contact_batches(
                self.downgrade(),
                rx,
                self.shutdown.clone(),
            ));
            ContactQueue(tx)
        });
        let (reply, answer) = oneshot::channel();
        queue
            .0
            .send((contact, reply))
            .map_err(|_| EngineError::ShuttingDown)?;
        answer.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// One station's contact inside a batch's transaction.
    fn contact_tx(
        &self,
        tx: &keyfed_store::Tx<'_>,
        fx: &mut crate::engine::Effects,
        c: &Contact,
        seen: &mut KeyCache,
    ) -> keyfed_store::TxResult<(Outcome, Vec<String>), EngineError> {
        let (fp, hello, now) = (c.fp.as_str(), &c.hello, c.now);
        let mut station = tx.station::<EngineError>(fp)?.unwrap_or(StationRecord {
            fingerprint: fp.to_owned(),
            station_id: hello.station_id.clone(),
            tenant: hello.tenant.clone(),
            components: hello.components.clone(),
            key_id: None,
            first_seen: now,
            last_contact: now,
            retired_at: None,
            settings_version: 0,
            reports: 0,
            elsewhere: None,
        });
        if let Some(when) = station.retired_at.take() {
            fx.notify(
                tx,
                now,
                "station-returned",
                "",
                format!("station {fp} retired on {} is back", ts(when)),
                &[("fingerprint", fp.to_owned())],
            )?;
        }
        if !hello.station_id.is_empty() {
            station.station_id = hello.station_id.clone();
        }
        station.tenant = hello.tenant.clone();
        if !hello.components.is_empty() {
            station.components = hello.components.clone();
        }
        station.last_contact = now;
        station.settings_version = c.settings_version;
        let validity = self.config.stations.policy().offline_validity;
        let outcome = match station.elsewhere.clone() {
            // b02: another node holds its seat; it is not given a second one here
            Some((holder, key, since)) if !c.held && now < since + validity => {
                Outcome::Refused(format!(
                    "station {fp} already holds a seat of {key} through {holder}: one machine, one seat (b02)"
                ))
            }
            _ => {
                station.elsewhere = None;
                self.take_seat(tx, fx, &c.candidates, hello, now, seen)?
            }
        };
        station.key_id = match &outcome {
            Outcome::Licensed(k) | Outcome::Withdrawn(k, _) => Some(k.key.id.clone()),
            Outcome::Refused(_) => None,
        };
        tx.put_station(&station)?;
        let mut delivered = Vec::new();
        for id in &c.pending {
            if let Some(mut c) = tx.command::<EngineError>(fp, *id)? {
                if c.state == CommandState::Pending {
                    c.state = CommandState::Delivered { at: now };
                    tx.put_command(&c)?;
                    delivered.push(c.command);
                }
            }
        }
        if let Outcome::Refused(reason) = &outcome {
            // b04: a connection refused for want of a seat is worth a warning
            fx.notify(
                tx,
                now,
                "connection-refused",
                "",
                format!("station {fp} refused: {reason}"),
                &[("fingerprint", fp.to_owned())],
            )?;
        }
        Ok((outcome, delivered))
    }

    /// The answer to a contact.
    fn lease(
        &self,
        fp: &str,
        outcome: Outcome,
        commands: Vec<String>,
        settings: Settings,
        station_has: u64,
        now: DateTime<Utc>,
    ) -> pb::Lease {
        let valid_until = self.config.stations.policy().valid_until(now);
        let mut lease = pb::Lease {
            valid_until: ts(valid_until),
            settings_version: settings.version,
            commands,
            ..Default::default()
        };
        if station_has < settings.version {
            lease.settings = settings.text;
        }
        match outcome {
            Outcome::Licensed(k) => {
                lease.lease_id = lease_id(&k.key.id, fp);
                lease.key_id = k.key.id.clone();
                lease.licensed = true;
                lease.key_state = self.key_state(&k).label().into();
                lease.key_expires = k.entitlement().expires.to_string();
            }
            Outcome::Withdrawn(k, reason) => {
                lease.lease_id = lease_id(&k.key.id, fp);
                lease.key_id = k.key.id.clone();
                lease.key_state = self.key_state(&k).label().into();
                lease.key_expires = k.entitlement().expires.to_string();
                lease.reason = reason;
                lease.valid_until = String::new();
            }
            // a refused station gets a seat at a later contact once one is free (r11)
            Outcome::Refused(reason) => {
                lease.reason = reason;
                lease.valid_until = String::new();
            }
        }
        lease
    }

    /// The outcome for a station that holds a seat of `k`.
    fn seat_outcome(&self, k: &StoredKey) -> Outcome {
        match self.key_state(k) {
            KeyState::Suspended { since } => Outcome::Withdrawn(
                k.clone(),
                format!(
                    "key {} is suspended since {} (expired, grace over); its seats are withdrawn until a renewal arrives",
                    k.key.id,
                    ts(since)
                ),
            ),
            _ => Outcome::Licensed(k.clone()),
        }
    }

    /// Inside the contact's transaction: the station's seat, or a new one
    /// from the first candidate key with room for its tenant (e07).
    fn take_seat(
        &self,
        tx: &keyfed_store::Tx<'_>,
        fx: &mut crate::engine::Effects,
        candidates: &[StoredKey],
        hello: &Hello,
        now: DateTime<Utc>,
        seen: &mut KeyCache,
    ) -> keyfed_store::TxResult<Outcome, EngineError> {
        let fp = hello.fingerprint.trim();
        let wanted = if hello.components.is_empty() {
            "any component".to_owned()
        } else {
            hello.components.join(",")
        };
        let mut why = Vec::new();
        for k in candidates {
            if tx.grant::<EngineError>(&k.key.id, fp)?.is_some() {
                // its seat: the key read just before is current enough to
                // tell its state (a renewal would have moved the grant)
                return Ok(self.seat_outcome(k));
            }
            // read once per batch: nothing in a contact writes a key
            let k = match seen.get(&k.key.id) {
                Some(cached) => cached.clone(),
                None => {
                    let read = tx.key::<EngineError>(&k.key.id)?;
                    seen.insert(k.key.id.clone(), read.clone());
                    read
                }
            };
            let Some(k) = k else {
                continue;
            };
            let id = &k.key.id;
            let state = self.key_state(&k);
            if let Some(peer) = tx.claim::<EngineError>(&k.key.license, fp)? {
                why.push(format!(
                    "{fp} already holds a seat of {id} through {peer} (b02)"
                ));
                continue;
            }
            if !state.writable() {
                why.push(format!("{id} is {}", state.label()));
                continue;
            }
            let used = tx.used::<EngineError>(id)?;
            if used >= k.held {
                why.push(format!("{id} has all {} seats in use", k.held));
                continue;
            }
            if k.key.kind == keyfed_core::KeyKind::Subscription || k.tenancy != Default::default() {
                let limit = k.tenancy.limit(&k.key.customer, &hello.tenant, k.held);
                let tenant_used = if hello.tenant.is_empty() || hello.tenant == k.owner() {
                    // the owner uses what no other tenant does
                    let others: u32 = k
                        .tenancy
                        .shares
                        .keys()
                        .map(|t| tx.used_by::<EngineError>(id, t))
                        .sum::<Result<u32, _>>()?;
                    used.saturating_sub(others)
                } else {
                    tx.used_by::<EngineError>(id, &hello.tenant)?
                };
                if tenant_used >= limit {
                    let who = if hello.tenant.is_empty() {
                        k.owner()
                    } else {
                        &hello.tenant
                    };
                    why.push(format!(
                        "{id} gives tenant {who} {limit} seat(s), all in use"
                    ));
                    continue;
                }
            }
            let tenant = if hello.tenant == k.owner() {
                String::new()
            } else {
                hello.tenant.clone()
            };
            tx.put_grant(&Grant {
                key_id: id.clone(),
                object: fp.to_owned(),
                kind: ObjectKind::Station,
                seats: 1,
                granted_at: now,
                lent_until: None,
                delivered: true,
                tenant,
            })?;
            crate::lifecycle::meter_tx(tx, &k, used + 1, now)?;
            if let Some(origin) = k.origin.peer() {
                // b02: the key's origin learns of the seat and answers if it is a second one
                fx.send(tx, origin, now, id, claim(&k, fp, false))?;
            }
            return Ok(Outcome::Licensed(k));
        }
        Ok(Outcome::Refused(if candidates.is_empty() {
            format!("no key on {} covers {wanted}", self.id())
        } else {
            format!(
                "no free seat on {} for {wanted}: {}",
                self.id(),
                why.join("; ")
            )
        }))
    }

    pub async fn release_station(&self, lease: &str, fingerprint: &str) -> EngineResult<()> {
        let Some((key_id, fp)) = lease.split_once('/') else {
            return Err(EngineError::InvalidArgument(format!(
                "{lease:?} is not a lease id"
            )));
        };
        if fp != fingerprint {
            return Err(EngineError::InvalidArgument(
                "the lease belongs to another fingerprint".into(),
            ));
        }
        let now = self.now();
        self.commit(|tx, fx| match tx.grant::<EngineError>(key_id, fp)? {
            Some(g) if g.kind == ObjectKind::Station => {
                tx.remove_grant::<EngineError>(key_id, fp)?;
                release_claim(tx, fx, key_id, fp, now)?;
                if let Some(mut s) = tx.station::<EngineError>(fp)? {
                    s.key_id = None;
                    s.last_contact = now;
                    tx.put_station(&s)?;
                }
                Ok(())
            }
            _ => abort(EngineError::not_found("lease", lease)),
        })
        .await?;
        self.fill_waiting().await
    }

    /// Station.Report: keeps each report once by its id (o01, exactly once
    /// across resends), durably before the ack.
    pub async fn station_reports(&self, batch: pb::ReportBatch) -> EngineResult<pb::ReportAck> {
        let fp = batch.fingerprint.trim().to_owned();
        if batch.reports.len() > MAX_REPORTS_PER_BATCH {
            return Err(EngineError::InvalidArgument(format!(
                "{} reports in one batch; send at most {MAX_REPORTS_PER_BATCH}",
                batch.reports.len()
            )));
        }
        for r in &batch.reports {
            if r.report_id.is_empty() || r.body.len() > MAX_REPORT_BYTES {
                return Err(EngineError::InvalidArgument(format!(
                    "report {:?}: a report needs an id and at most {MAX_REPORT_BYTES} bytes of body",
                    r.report_id
                )));
            }
        }
        if self.store.station(&fp)?.is_none() {
            return Err(EngineError::not_found("station", &fp));
        }
        let now = self.now();
        self.commit(|tx, _| {
            let Some(mut s) = tx.station::<EngineError>(&fp)? else {
                return abort(EngineError::not_found("station", &fp));
            };
            let mut ack = pb::ReportAck::default();
            for r in &batch.reports {
                let fresh = tx.put_report::<EngineError>(&StationReport {
                    fingerprint: fp.clone(),
                    report_id: r.report_id.clone(),
                    at: r.at.clone(),
                    body: r.body.clone(),
                    received_at: now,
                })?;
                if fresh {
                    ack.accepted += 1;
                } else {
                    ack.duplicates += 1;
                }
            }
            s.reports += u64::from(ack.accepted);
            s.last_contact = now;
            tx.put_station(&s)?;
            Ok(ack)
        })
        .await
    }

    /// b03: stations silent longer than the retirement period give their
    /// seat back; their record stays, marked retired.
    pub async fn retire_silent_stations(&self) -> EngineResult<usize> {
        let policy = self.config.stations.policy();
        let now = self.now();
        let silent: Vec<StationRecord> = self
            .store
            .stations()?
            .into_iter()
            .filter(|s| s.retired_at.is_none() && policy.retired(s.last_contact, now))
            .collect();
        if silent.is_empty() {
            return Ok(0);
        }
        let keys = self.store.keys()?;
        let mut seats = Vec::new();
        for s in &silent {
            seats.push(self.seat_of(&keys, &s.fingerprint)?.map(|k| k.key.id));
        }
        let count = self
            .commit(|tx, fx| {
                let mut names = Vec::new();
                for (s, key_id) in silent.iter().zip(&seats) {
                    let Some(mut cur) = tx.station::<EngineError>(&s.fingerprint)? else {
                        continue;
                    };
                    if cur.last_contact != s.last_contact {
                        continue; // it came back meanwhile
                    }
                    if let Some(key_id) = key_id {
                        tx.remove_grant::<EngineError>(key_id, &s.fingerprint)?;
                        release_claim(tx, fx, key_id, &s.fingerprint, now)?;
                    }
                    cur.retired_at = Some(now);
                    cur.key_id = None;
                    tx.put_station(&cur)?;
                    names.push(s.fingerprint.clone());
                }
                if !names.is_empty() {
                    let shown: Vec<_> = names.iter().take(10).cloned().collect();
                    fx.notify(
                        tx,
                        now,
                        "stations-retired",
                        "",
                        format!(
                            "{} station(s) silent for {} days gave their seat back: {}{}",
                            names.len(),
                            policy.retire_after.num_days(),
                            shown.join(", "),
                            if names.len() > shown.len() {
                                ", ..."
                            } else {
                                ""
                            }
                        ),
                        &[("count", names.len().to_string())],
                    )?;
                }
                Ok(names.len())
            })
            .await?;
        self.fill_waiting().await?;
        Ok(count)
    }

    pub fn list_stations(&self) -> EngineResult<Vec<pb::StationInfo>> {
        let keys = self.store.keys()?;
        self.store
            .stations()?
            .into_iter()
            .map(|s| {
                let key = match &s.key_id {
                    Some(_) => self.seat_of(&keys, &s.fingerprint)?,
                    None => None,
                };
                let state = match (&s.retired_at, &key) {
                    (Some(_), _) => "retired",
                    (None, Some(k)) if self.key_state(k).seats_work() => "licensed",
                    (None, Some(_)) => "withdrawn",
                    (None, None) => "unlicensed",
                };
                Ok(pb::StationInfo {
                    fingerprint: s.fingerprint,
                    station_id: s.station_id,
                    tenant: s.tenant,
                    key_id: key.map(|k| k.key.id).unwrap_or_default(),
                    last_contact: ts(s.last_contact),
                    state: state.into(),
                    retired_at: s.retired_at.map(ts).unwrap_or_default(),
                    reports: s.reports,
                    settings_version: s.settings_version,
                })
            })
            .collect()
    }
}

/// A station contact waiting for its batch (the reads were done before).
pub(crate) struct Contact {
    fp: String,
    hello: Hello,
    held: bool,
    candidates: Vec<StoredKey>,
    pending: Vec<u64>,
    settings_version: u64,
    now: DateTime<Utc>,
}

/// Keys read by one batch's transaction, by id.
type KeyCache = std::collections::HashMap<String, Option<StoredKey>>;

type ContactReply = oneshot::Sender<EngineResult<(Outcome, Vec<String>)>>;

pub(crate) struct ContactQueue(mpsc::UnboundedSender<(Contact, ContactReply)>);

/// Most contacts committed in one transaction.
const CONTACT_BATCH: usize = 256;

/// Commits waiting contacts many to a transaction: sled runs a transaction
/// under one global lock, so one transaction for 256 stations costs far less
/// than 256. The flush is awaited on its own task, so the next batch's
/// transaction overlaps the previous batch's flush (group commit).
async fn run_contact_batches(
    node: std::sync::Weak<crate::engine::Inner>,
    mut rx: mpsc::UnboundedReceiver<(Contact, ContactReply)>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            c = rx.recv() => match c { Some(c) => c, None => return },
        };
        // a transaction's fixed cost outweighs a contact's, and contacts
        // arrive one by one: gather for up to a millisecond
        let mut batch = vec![first];
        let gather = tokio::time::Instant::now() + std::time::Duration::from_millis(1);
        while batch.len() < CONTACT_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => match tokio::time::timeout_at(gather, rx.recv()).await {
                    Ok(Some(c)) => batch.push(c),
                    _ => break,
                },
            }
        }
        let Some(inner) = node.upgrade() else { return };
        let node = Engine::from_inner(inner);
        let started = std::time::Instant::now();
        let result = node.store.transact(|tx| {
            let mut fx = crate::engine::Effects::default();
            let mut seen = KeyCache::new();
            let mut outs = Vec::with_capacity(batch.len());
            for (c, _) in &batch {
                outs.push(node.contact_tx(tx, &mut fx, c, &mut seen)?);
            }
            Ok((outs, fx))
        });
        tracing::debug!(
            contacts = batch.len(),
            micros = started.elapsed().as_micros() as u64,
            "contact batch committed"
        );
        match result {
            Ok((outs, fx)) => {
                let tasks = node.tasks.clone();
                tasks.spawn(async move {
                    let flushed = node.durable().await;
                    match flushed {
                        Ok(synced) => {
                            node.publish(fx, synced);
                            for ((_, reply), out) in batch.into_iter().zip(outs) {
                                let _ = reply.send(Ok(out));
                            }
                        }
                        Err(e) => {
                            let why = e.to_string();
                            for (_, reply) in batch {
                                // a store error keeps its code (a full disk)
                                let _ = reply.send(Err(match &e {
                                    EngineError::Store(s) => EngineError::Store(s.clone()),
                                    _ => EngineError::FailedPrecondition(why.clone()),
                                }));
                            }
                        }
                    }
                });
            }
            Err(e) => {
                let e: EngineError = e;
                let why = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(match &e {
                        EngineError::Store(s) if s.is_poisoned() => EngineError::Store(s.clone()),
                        _ => EngineError::FailedPrecondition(format!(
                            "station contact not recorded: {why}"
                        )),
                    }));
                }
            }
        }
    }
}

/// b02: the claim a node sends the origin of a key when one of its stations
/// takes (or gives back) a seat of it.
pub fn claim(k: &StoredKey, fingerprint: &str, released: bool) -> pb::delivery::Body {
    pb::delivery::Body::Claim(pb::StationClaim {
        key_id: k.key.id.clone(),
        fingerprint: fingerprint.to_owned(),
        released,
        duplicate: false,
        holder: String::new(),
        license: k.key.license.clone(),
    })
}

/// A station seat of `key_id` was given back: its origin forgets the claim.
fn release_claim(
    tx: &keyfed_store::Tx<'_>,
    fx: &mut crate::engine::Effects,
    key_id: &str,
    fingerprint: &str,
    now: DateTime<Utc>,
) -> keyfed_store::TxResult<(), EngineError> {
    if let Some(k) = tx.key::<EngineError>(key_id)? {
        if let Some(origin) = k.origin.peer() {
            fx.send(tx, origin, now, key_id, claim(&k, fingerprint, true))?;
        }
    }
    Ok(())
}
