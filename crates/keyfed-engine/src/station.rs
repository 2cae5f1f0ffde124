//! The Station service: an endpoint takes a seat of a key covering the
//! components it needs. A station is its fingerprint (b02): reconnecting,
//! reinstalling or connecting twice never takes a second seat. Every contact
//! is durable before it is answered; it refreshes the offline validity (o02),
//! brings changed settings (o05) and queued commands (o03), and brings a
//! retired station back (b03). Suspended keys stop licensing their stations
//! at their next contact without deleting anything (e03). A seat of a key
//! from a peer is counted only once the key's origin agreed (b02, see
//! [`crate::claims`]).
use crate::claims::{claim, own_claim, provisional, put_provisional, release_claim, set_own_claim};
use crate::denials::Refusal;
use crate::engine::Engine;
use crate::error::{EngineError, EngineResult};
use crate::time::ts;
use chrono::{DateTime, Utc};
use keyfed_core::claims::{station_seat, ClaimPolicy, OwnClaim, SeatAsk, StationSeat};
use keyfed_core::denial::{station_seat_reason, DenialKind, DenialReason};
use keyfed_core::event::EventKind;
use keyfed_core::lifecycle::KeyState;
use keyfed_core::names::{validate, NameKind};
use keyfed_core::tenant_quota::{station_room, Subscription, TenantUse};
use keyfed_store::{abort, CommandState, ObjectKind, StationRecord, StationReport, StoredKey};
use keyfed_wire::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Most reports one batch may carry, and the largest report body.
pub const MAX_REPORTS_PER_BATCH: usize = 1000;
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// What a station says when it connects or renews.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// b02: a provisional lease until then, while the key's origin (named)
    /// has not confirmed the seat; no seat is counted.
    Provisional(StoredKey, DateTime<Utc>, String),
    /// Holds its seat, but the key no longer licenses it (suspended).
    Withdrawn(StoredKey, String),
    Refused(Refusal),
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
    /// they come back. One durable transaction: the settings and their
    /// notification are kept together or not at all.
    pub(crate) async fn set_settings_at(
        &self,
        text: &str,
        now: DateTime<Utc>,
    ) -> EngineResult<Settings> {
        if text.len() > MAX_REPORT_BYTES {
            return Err(EngineError::InvalidArgument(format!(
                "settings are {} bytes; at most {MAX_REPORT_BYTES} are allowed",
                text.len()
            )));
        }
        let default = self.stored_settings()?;
        let next = self
            .commit(|tx, fx| {
                let current = match tx.meta::<EngineError>(SETTINGS)? {
                    Some(s) => serde_json::from_str(&s).unwrap_or_else(|_| default.clone()),
                    None => default.clone(),
                };
                if current.text == text {
                    return Ok(current);
                }
                let next = Settings {
                    text: text.to_owned(),
                    version: current.version + 1,
                };
                let json = serde_json::to_string(&next).expect("settings serialize");
                tx.put_meta(SETTINGS, &json)?;
                let v = next.version;
                fx.notify(
                    tx,
                    now,
                    EventKind::SettingsChanged,
                    "",
                    format!("station settings changed to version {v}; stations get them at their next contact"),
                    &[("version", v.to_string())],
                )?;
                Ok(next)
            })
            .await?;
        *self.settings_cache.lock().expect("settings lock") = Some(next.clone());
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
    /// one, records the contact durably, and answers with its lease. A seat
    /// the key's origin must confirm (b02) waits for its answer while the
    /// link to it is up, at most [`crate::claims::CLAIM_WAIT`].
    pub async fn station_contact(&self, hello: Hello) -> EngineResult<pb::Lease> {
        let waiter = self.claim_waiter(hello.fingerprint.trim());
        let answered = waiter.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        let cmd = crate::command::Command::StationContact {
            hello: hello.clone(),
            now: self.now(),
        };
        let (lease, awaiting) = self.execute(cmd).await?.lease()?;
        let Some(origin) = awaiting else {
            return Ok(lease);
        };
        if !self.peer_meta(&origin).is_some_and(|m| m.online) {
            return Ok(lease);
        }
        if tokio::time::timeout(crate::claims::CLAIM_WAIT, answered)
            .await
            .is_err()
        {
            return Ok(lease); // the origin did not answer in time: provisional
        }
        let cmd = crate::command::Command::StationContact {
            hello,
            now: self.now(),
        };
        Ok(self.execute(cmd).await?.lease()?.0)
    }

    /// The key the station holds a seat of, and (when it holds none) every
    /// key. The common case is a renewal: the station's record names its
    /// key, so one grant and one key are read instead of every key.
    fn held_seat(
        &self,
        record: Option<&StationRecord>,
        fp: &str,
    ) -> EngineResult<(Option<StoredKey>, Vec<StoredKey>)> {
        let known = match record.and_then(|s| s.key_id.clone()) {
            Some(id) if self.store.grant(&id, fp)?.is_some() => self.store.key(&id)?,
            _ => None,
        };
        Ok(match known {
            Some(k) => (Some(k), Vec::new()),
            None => {
                let keys = self.store.keys()?;
                (self.seat_of(&keys, fp)?, keys)
            }
        })
    }

    /// The keys `fp` waits for seats of (r11).
    fn waits_of(&self, fp: &str) -> EngineResult<Vec<String>> {
        Ok(self
            .store
            .waiting()?
            .into_iter()
            .filter(|w| w.object == fp)
            .map(|w| w.key_id)
            .collect())
    }

    /// One contact at `now`; with the origin to wait for when the seat is
    /// provisional.
    pub(crate) async fn station_contact_at(
        &self,
        hello: Hello,
        now: DateTime<Utc>,
    ) -> EngineResult<(pb::Lease, Option<String>)> {
        let fp = hello.fingerprint.trim();
        validate(NameKind::Fingerprint, fp).map_err(|e| {
            EngineError::InvalidArgument(format!("a station must present a valid fingerprint: {e}"))
        })?;
        let record = self.store.station(fp)?;
        let (held, keys) = self.held_seat(record.as_ref(), fp)?;
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
                let outcome = self.seat_outcome(k, now);
                return Ok((
                    self.lease(
                        fp,
                        outcome,
                        Vec::new(),
                        settings,
                        hello.settings_version,
                        now,
                    ),
                    None,
                ));
            }
        }
        let candidates: Vec<StoredKey> = match &held {
            Some(k) => vec![k.clone()],
            None => covering(keys, &hello),
        };
        // r11 (defect 1): a station that takes a seat itself waits no more
        let waiting = match &held {
            Some(_) => Vec::new(),
            None => self.waits_of(fp)?,
        };
        let contact = Contact {
            fp: fp.to_owned(),
            hello: hello.clone(),
            held: held.is_some(),
            candidates,
            pending,
            waiting,
            settings_version: settings.version,
            now,
        };
        // kept for a retry without copying the candidate keys (the hot path)
        let mut contact = contact;
        let candidates = std::mem::take(&mut contact.candidates);
        let candidate_ids: Vec<String> = candidates.iter().map(|k| k.key.id.clone()).collect();
        let retry = contact.clone();
        contact.candidates = candidates;
        let (mut outcome, mut commands) = self.commit_contact(contact).await?;
        // r07: a renewal retired a candidate key between the read above and
        // the batch's transaction: read the keys again and try once more
        if matches!(outcome, Outcome::Refused(_)) && self.any_retired(&candidate_ids)? {
            let retry = Contact {
                candidates: covering(self.store.keys()?, &hello),
                ..retry
            };
            (outcome, commands) = self.commit_contact(retry).await?;
        }
        let awaiting = match &outcome {
            Outcome::Provisional(_, _, origin) => Some(origin.clone()),
            _ => None,
        };
        Ok((
            self.lease(fp, outcome, commands, settings, hello.settings_version, now),
            awaiting,
        ))
    }

    /// Whether a key read before a contact's transaction is gone since.
    fn any_retired(&self, candidate_ids: &[String]) -> EngineResult<bool> {
        for id in candidate_ids {
            if self.store.key(id)?.is_none() {
                return Ok(true);
            }
        }
        Ok(false)
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
                EventKind::StationReturned,
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
                Outcome::Refused(Refusal::new(DenialReason::SeatHeldElsewhere, &key, format!(
                    "station {fp} already holds a seat of {key} through {holder}: one machine, one seat (b02)"
                )))
            }
            _ => {
                station.elsewhere = None;
                self.take_seat(tx, fx, &c.candidates, hello, now, seen)?
            }
        };
        station.key_id = match &outcome {
            Outcome::Licensed(k) | Outcome::Withdrawn(k, _) => Some(k.key.id.clone()),
            Outcome::Refused(_) | Outcome::Provisional(..) => None,
        };
        if matches!(outcome, Outcome::Licensed(_)) {
            for key_id in &c.waiting {
                tx.remove_waiting::<EngineError>(key_id, fp)?;
            }
        }
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
        if let Outcome::Refused(r) = &outcome {
            self.refused_tx(tx, fx, fp, r, now)?;
        }
        Ok((outcome, delivered))
    }

    /// b04: a connection refused for want of a seat is worth a warning; and
    /// it is a denial (issue 12), in the same transaction.
    fn refused_tx(
        &self,
        tx: &keyfed_store::Tx<'_>,
        fx: &mut crate::engine::Effects,
        fp: &str,
        r: &Refusal,
        now: DateTime<Utc>,
    ) -> keyfed_store::TxResult<(), EngineError> {
        let message = format!("station {fp} refused: {}", r.message);
        let details = [("fingerprint", fp.to_owned())];
        fx.notify(tx, now, EventKind::ConnectionRefused, "", message, &details)?;
        self.deny_tx(tx, DenialKind::StationConnection, fp, r, now)
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
                lease.key_state = self.state_at(&k, now).label().into();
                lease.key_expires = k.entitlement().expires.to_string();
            }
            Outcome::Provisional(k, until, origin) => {
                lease.lease_id = lease_id(&k.key.id, fp);
                lease.key_id = k.key.id.clone();
                lease.licensed = true;
                lease.key_state = self.state_at(&k, now).label().into();
                lease.key_expires = k.entitlement().expires.to_string();
                lease.valid_until = ts(until);
                lease.reason = format!(
                    "provisional until {}: {origin}, the origin of key {}, has not confirmed the seat yet (b02)",
                    ts(until),
                    k.key.id
                );
            }
            Outcome::Withdrawn(k, reason) => {
                lease.lease_id = lease_id(&k.key.id, fp);
                lease.key_id = k.key.id.clone();
                lease.key_state = self.state_at(&k, now).label().into();
                lease.key_expires = k.entitlement().expires.to_string();
                lease.reason = reason;
                lease.valid_until = String::new();
            }
            // a refused station gets a seat at a later contact once one is free (r11)
            Outcome::Refused(r) => {
                lease.reason = r.message;
                lease.valid_until = String::new();
            }
        }
        lease
    }

    /// The outcome for a station that holds a seat of `k`.
    fn seat_outcome(&self, k: &StoredKey, now: DateTime<Utc>) -> Outcome {
        match self.state_at(k, now) {
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
                return Ok(self.seat_outcome(k, now));
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
            // r07: a renewal moved this key's objects since the contact read
            // it: a new seat goes on the key that replaced it
            let Some(k) = current_key(tx, k, seen)? else {
                continue;
            };
            match self.seat_of_key(tx, fx, &k, hello, now)? {
                Ok(outcome) => return Ok(outcome),
                Err(reason) => why.push(reason),
            }
        }
        let Some(first) = why.first() else {
            return Ok(Outcome::Refused(Refusal {
                reason: DenialReason::NoCoveringKey,
                key_id: String::new(),
                message: format!("no key on {} covers {wanted}", self.id()),
            }));
        };
        Ok(Outcome::Refused(Refusal {
            reason: first.reason,
            key_id: first.key_id.clone(),
            message: format!(
                "no free seat on {} for {wanted}: {}",
                self.id(),
                why.iter()
                    .map(|r| r.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }))
    }

    /// A new seat of `k` for the station, or why not: e03 state, free seats
    /// (less provisional leases), the tenant's share (e07), and b02 by
    /// `keyfed_core::claims::station_seat`.
    fn seat_of_key(
        &self,
        tx: &keyfed_store::Tx<'_>,
        fx: &mut crate::engine::Effects,
        k: &StoredKey,
        hello: &Hello,
        now: DateTime<Utc>,
    ) -> keyfed_store::TxResult<Result<Outcome, Refusal>, EngineError> {
        let fp = hello.fingerprint.trim();
        let id = &k.key.id;
        let state = self.state_at(k, now);
        let refused = |reason, message| Refusal::new(reason, id, message);
        if !state.writable() {
            let reason = DenialReason::of_key_state(&state).unwrap_or(DenialReason::KeyExpired);
            return Ok(Err(refused(reason, format!("{id} is {}", state.label()))));
        }
        let used = tx.used::<EngineError>(id)?;
        let mut leases = provisional(tx, id, now)?;
        let others = u32::try_from(leases.keys().filter(|f| *f != fp).count()).unwrap_or(u32::MAX);
        if used.saturating_add(others) >= k.held {
            let full = format!("{id} has all {} seats in use", k.held);
            return Ok(Err(refused(DenialReason::NoFreeSeats, full)));
        }
        if k.key.kind == keyfed_core::KeyKind::Subscription || k.tenancy != Default::default() {
            let sub = Subscription {
                key_id: id,
                kind: k.key.kind,
                customer: &k.key.customer,
                total: k.held,
                state,
                tenancy: &k.tenancy,
            };
            let mut uses = TenantUse {
                total: used,
                ..TenantUse::default()
            };
            for t in k
                .tenancy
                .shares
                .keys()
                .chain(std::iter::once(&hello.tenant))
            {
                uses.by_tenant
                    .insert(t.clone(), tx.used_by::<EngineError>(id, t)?);
            }
            if let Err(why) = station_room(&sub, &hello.tenant, &uses) {
                return Ok(Err(refused(DenialReason::TenantQuota, why)));
            }
        }
        let origin = crate::claims::origin_of(k);
        let claimed = tx.claim::<EngineError>(&k.key.license, fp)?;
        let own = own_claim(tx, &k.key.license, fp)?;
        let ask = SeatAsk {
            fingerprint: fp,
            key_id: id,
            origin: &origin,
            claimed_by_peer: claimed.as_deref(),
            own_claim: &own,
            free: k.held.saturating_sub(used.saturating_add(others)),
        };
        match station_seat(&ask, ClaimPolicy::default(), now) {
            StationSeat::Refused(why) => Ok(Err(refused(station_seat_reason(&ask), why))),
            StationSeat::Counted => {
                let tenant = if hello.tenant == k.owner() {
                    String::new()
                } else {
                    hello.tenant.clone()
                };
                let mut g = crate::engine::new_grant(id, fp, ObjectKind::Station, 1, None, now);
                g.tenant = tenant;
                tx.put_grant(&g)?;
                if leases.remove(fp).is_some() {
                    put_provisional(tx, id, &leases)?;
                }
                crate::lifecycle::meter_tx(tx, k, used + 1, now)?;
                Ok(Ok(Outcome::Licensed(k.clone())))
            }
            StationSeat::Provisional { until, claim_to } => {
                leases.insert(fp.to_owned(), until);
                put_provisional(tx, id, &leases)?;
                let origin = k.origin.peer().unwrap_or_default().to_owned();
                if let Some(to) = claim_to {
                    set_own_claim(tx, &k.key.license, fp, &OwnClaim::Pending { since: now })?;
                    fx.send(tx, &to, now, id, claim(k, fp, false))?;
                }
                Ok(Ok(Outcome::Provisional(k.clone(), until, origin)))
            }
        }
    }

    /// Station.Release: the station gives its seat back (or its provisional
    /// lease, b02).
    pub(crate) async fn release_station_at(
        &self,
        lease: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
    ) -> EngineResult<()> {
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
        self.commit(|tx, fx| {
            let mut leases = provisional(tx, key_id, now)?;
            match tx.grant::<EngineError>(key_id, fp)? {
                Some(g) if g.kind == ObjectKind::Station => {
                    tx.remove_grant::<EngineError>(key_id, fp)?;
                    // r07: a superseded key goes with its last seat
                    crate::engine::retire_if_free(tx, fx, key_id, now)?;
                }
                _ if leases.remove(fp).is_some() => put_provisional(tx, key_id, &leases)?,
                _ => return abort(EngineError::not_found("lease", lease)),
            }
            release_claim(tx, fx, key_id, fp, now)?;
            if let Some(mut s) = tx.station::<EngineError>(fp)? {
                s.key_id = None;
                s.last_contact = now;
                tx.put_station(&s)?;
            }
            Ok(())
        })
        .await?;
        self.fill_waiting_at(now).await
    }

    /// Station.Report: keeps each report once by its id (o01, exactly once
    /// across resends), durably before the ack.
    pub(crate) async fn station_reports_at(
        &self,
        fingerprint: &str,
        reports: &[crate::command::StationReportIn],
        now: DateTime<Utc>,
    ) -> EngineResult<pb::ReportAck> {
        let fp = fingerprint.trim().to_owned();
        if reports.len() > MAX_REPORTS_PER_BATCH {
            return Err(EngineError::InvalidArgument(format!(
                "{} reports in one batch; send at most {MAX_REPORTS_PER_BATCH}",
                reports.len()
            )));
        }
        for r in reports {
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
        self.commit(|tx, _| {
            let Some(mut s) = tx.station::<EngineError>(&fp)? else {
                return abort(EngineError::not_found("station", &fp));
            };
            let mut ack = pb::ReportAck::default();
            for r in reports {
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
    pub(crate) async fn retire_silent_stations_at(
        &self,
        now: DateTime<Utc>,
    ) -> EngineResult<usize> {
        let policy = self.config.stations.policy();
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
                        crate::engine::retire_if_free(tx, fx, key_id, now)?;
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
                        EventKind::StationsRetired,
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
        self.fill_waiting_at(now).await?;
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
#[derive(Clone)]
pub(crate) struct Contact {
    fp: String,
    hello: Hello,
    held: bool,
    candidates: Vec<StoredKey>,
    pending: Vec<u64>,
    /// Keys it waits for (r11): the records go once it holds a seat.
    waiting: Vec<String>,
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

/// The keys a station asking for `hello`'s components may take a seat of.
fn covering(keys: Vec<StoredKey>, hello: &Hello) -> Vec<StoredKey> {
    keys.into_iter()
        .filter(|k| {
            k.superseded_by.is_none()
                && k.merged_into.is_none()
                && k.key.components.covers(&hello.components)
        })
        .collect()
}

/// `k`, or the key that superseded it (followed a few hops), as the
/// transaction sees it; `None` if that one is gone too.
fn current_key(
    tx: &keyfed_store::Tx<'_>,
    mut k: StoredKey,
    seen: &mut KeyCache,
) -> keyfed_store::TxResult<Option<StoredKey>, EngineError> {
    for _ in 0..4 {
        let Some(next) = k.superseded_by.clone().or_else(|| k.merged_into.clone()) else {
            return Ok(Some(k));
        };
        let read = match seen.get(&next) {
            Some(cached) => cached.clone(),
            None => {
                let read = tx.key::<EngineError>(&next)?;
                seen.insert(next.clone(), read.clone());
                read
            }
        };
        match read {
            Some(n) => k = n,
            None => return Ok(None),
        }
    }
    Ok(None)
}
