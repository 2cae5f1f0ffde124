//! The seat ledger as the administrator drives it: keys added and deleted
//! (r12), seats assigned and unassigned (r13, b01), and objects waiting for
//! seats served as seats free up (r11, `keyfed_core::waiting`).
//!
//! Deleting a key by hand (r08) removes every grant of it here and tells
//! every server that held it. A child that still held a superseded key (it
//! never came back for the renewal) keeps its grant of the new key: its
//! outbox holds the renewal and then the withdrawal of the old key, so when
//! it returns it takes the new key first and then finds nothing of the old
//! one left to withdraw.
use crate::config::PeerRole;
use crate::engine::{new_grant, retire_if_free, rollback_message, seat_grant, withdrawn, Engine};
use crate::error::{EngineError, EngineResult};
use crate::time::ts;
use chrono::{DateTime, Utc};
use keyfed_core::denial::DenialReason;
use keyfed_core::donation::{before_send, may_donate, BeforeSend, Lending, NeighborLeave};
use keyfed_core::event::EventKind;
use keyfed_core::names::{grant_seats, validate, NameKind};
use keyfed_core::seats::check_assign;
use keyfed_core::waiting::{self, KeySeats, Unassign, WaitingDecision, WaitingRecord};
use keyfed_store::{abort, Grant, ObjectKind, Origin, StoredKey, Tx, Waiting};
use std::collections::BTreeMap;

type Tr<T> = keyfed_store::TxResult<T, EngineError>;

/// What an administrator's unassign removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unassigned {
    Grant,
    /// The object only waited for seats: its wait is cancelled (r11).
    Waiting,
}

impl Engine {
    /// Admin.AddKey: a vendor key file added by hand (origin: upstream).
    pub(crate) async fn add_key_at(
        &self,
        text: &str,
        now: DateTime<Utc>,
    ) -> EngineResult<StoredKey> {
        let file = self.parse_key(text)?;
        let key = file.key.clone();
        self.check_not_rollback(&key)?;
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
                EventKind::KeyAdded,
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
                    && !self.state_at(&old, now).writable()
                {
                    self.apply_renewal(&old, stored.clone(), true, now).await?;
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

    /// Admin.DeleteKey: the key leaves the database with its grants; a key
    /// file in the key folder is left alone (r12) and, by the tombstone
    /// written in the same transaction, not imported again.
    pub(crate) async fn delete_key_at(&self, id: &str, now: DateTime<Utc>) -> EngineResult<()> {
        self.get_key(id)?;
        let grants = self.store.grants_of_key(id)?;
        self.commit(|tx, fx| {
            let Some(k) = tx.key::<EngineError>(id)? else {
                return abort(EngineError::not_found("key", id));
            };
            for g in &grants {
                tx.remove_grant::<EngineError>(id, &g.object)?;
                // every server still holding seats of it is told, also of a
                // superseded key (r08: a neighbor only offered the renewal, a
                // child that never came back)
                if g.kind == ObjectKind::Server {
                    let reason = if k.superseded_by.is_some() {
                        "the superseded key was deleted by the administrator"
                    } else {
                        "deleted by the administrator"
                    };
                    fx.send(tx, &g.object, now, id, withdrawn(id, reason.to_owned()))?;
                }
            }
            tx.remove_key::<EngineError>(id)?;
            tx.put_meta(&format!("deleted:{id}"), &ts(now))?;
            fx.notify(
                tx,
                now,
                EventKind::KeyDeleted,
                id,
                format!("key {id} deleted by the administrator"),
                &[],
            )
        })
        .await
    }

    /// What kind of object `object` is, from the config and what was asked.
    fn object_kind(
        object: &str,
        kind: Option<ObjectKind>,
        role: Option<PeerRole>,
    ) -> EngineResult<ObjectKind> {
        match (kind, role) {
            (Some(ObjectKind::Server), None) => Err(EngineError::InvalidArgument(format!(
                "{object} is not a child or neighbor of this node; add it to the node's config first"
            ))),
            (Some(ObjectKind::Station), Some(_)) => Err(EngineError::InvalidArgument(format!(
                "{object} is a peer node, not a station"
            ))),
            (_, Some(PeerRole::Parent)) => Err(EngineError::InvalidArgument(format!(
                "{object} is this node's parent: seats flow to children and neighbors"
            ))),
            (_, Some(_)) => Ok(ObjectKind::Server),
            (_, None) => Ok(ObjectKind::Station),
        }
    }

    /// Admin.AssignSeats: sets `object`'s grant of `key_id` to `seats`; a
    /// neighbor's seats are lent for `donation_days` (0: the default, b01),
    /// a period every later renewal of the donation keeps.
    pub(crate) async fn assign_at(
        &self,
        key_id: &str,
        object: &str,
        seats: u32,
        kind: Option<ObjectKind>,
        donation_days: u32,
        now: DateTime<Utc>,
    ) -> EngineResult<Grant> {
        let done = self
            .assign_checked(key_id, object, seats, kind, donation_days, now)
            .await;
        if let Err(e) = &done {
            self.deny_assignment(key_id, object, e, now).await;
        }
        done
    }

    async fn assign_checked(
        &self,
        key_id: &str,
        object: &str,
        seats: u32,
        kind: Option<ObjectKind>,
        donation_days: u32,
        now: DateTime<Utc>,
    ) -> EngineResult<Grant> {
        validate(NameKind::Object, object)
            .and_then(|()| grant_seats(object, seats).map(|_| ()))
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        let role = self.config.role_of(object);
        let kind = Self::object_kind(object, kind, role).map_err(|e| EngineError::Refused {
            reason: DenialReason::ObjectNotAllowed,
            code: e.code(),
            message: e.to_string(),
        })?;
        let lending = if role == Some(PeerRole::Neighbor) {
            self.check_donation_allowed(object).map_err(|e| {
                EngineError::refused(DenialReason::DonationNotAllowed, e.to_string())
            })?;
            Some(Lending::begin(self.donation_policy(), donation_days, now))
        } else {
            None
        };
        let k = self.get_key(key_id)?;
        self.writable_at(&k, now)?;
        if k.origin.peer() == Some(object) {
            return Err(EngineError::Refused {
                reason: DenialReason::ObjectNotAllowed,
                code: crate::error::ErrorCode::InvalidArgument,
                message: format!("key {key_id} came from {object}; it cannot be lent back"),
            });
        }
        self.commit(|tx, fx| {
            let k = assignable(tx, key_id, kind)?;
            let mine = tx.grant::<EngineError>(key_id, object)?.map_or(0, |g| g.seats);
            let used = tx.used::<EngineError>(key_id)?;
            if used > k.held {
                return abort(EngineError::refused(DenialReason::OverAllocated, format!(
                    "key {key_id} is over-allocated ({used} seats granted of {}): new grants are refused until fixed",
                    k.held
                )));
            }
            if let Err(e) = check_assign(key_id, object, k.held, used - mine, seats) {
                return abort(e.into());
            }
            let g = new_grant(key_id, object, kind, seats, lending, now);
            tx.put_grant(&g)?;
            crate::lifecycle::meter_tx(tx, &k, used - mine + seats, now)?;
            tx.remove_waiting::<EngineError>(key_id, object)?;
            if kind == ObjectKind::Server {
                fx.send(tx, object, now, key_id, seat_grant(&k, seats, g.lent_until))?;
            }
            Ok(g)
        })
        .await
    }

    /// b01: a donation needs the lender's leave to send and the neighbor's to receive.
    fn check_donation_allowed(&self, neighbor: &str) -> EngineResult<()> {
        let meta = self.peer_meta(neighbor).unwrap_or_default();
        let leave = NeighborLeave {
            allow_send: self.config.neighbor(neighbor).is_some_and(|n| n.allow_send),
            protocol_version: meta.protocol_version,
            accepts_donations: meta.accepts_donations,
        };
        may_donate(neighbor, leave).map_err(|e| EngineError::FailedPrecondition(e.to_string()))
    }

    /// Admin.UnassignSeats: takes a grant back, or cancels a wait (r11).
    pub(crate) async fn unassign_at(
        &self,
        key_id: &str,
        object: &str,
        now: DateTime<Utc>,
    ) -> EngineResult<Unassigned> {
        let done = self
            .commit(|tx, fx| {
                let grant = tx.grant::<EngineError>(key_id, object)?;
                let waits = tx.waiting::<EngineError>(key_id, object)?.is_some();
                let server = grant.as_ref().map(|g| g.kind == ObjectKind::Server);
                match waiting::unassign(key_id, object, server, waits) {
                    Err(e) => abort(EngineError::not_found(
                        "seat or waiting record",
                        e.to_string(),
                    )),
                    Ok(Unassign::CancelWaiting) => {
                        tx.remove_waiting::<EngineError>(key_id, object)?;
                        Ok(Unassigned::Waiting)
                    }
                    Ok(Unassign::Grant {
                        server,
                        also_waiting,
                    }) => {
                        tx.remove_grant::<EngineError>(key_id, object)?;
                        if also_waiting {
                            tx.remove_waiting::<EngineError>(key_id, object)?;
                        }
                        if server {
                            let why = "unassigned by the administrator".to_owned();
                            fx.send(tx, object, now, key_id, withdrawn(key_id, why))?;
                        }
                        retire_if_free(tx, fx, key_id, now)?;
                        Ok(Unassigned::Grant)
                    }
                }
            })
            .await?;
        // r11: a freed seat goes to a waiting object at once
        self.fill_waiting_at(now).await?;
        Ok(done)
    }

    /// r11: grants seats to objects waiting for them, as far as seats allow
    /// (`keyfed_core::waiting::fill`); stale records go (defect 1).
    pub(crate) async fn fill_waiting_at(&self, now: DateTime<Utc>) -> EngineResult<()> {
        let listed = self.store.waiting()?;
        if listed.is_empty() {
            return Ok(());
        }
        self.commit(|tx, fx| {
            let mut records = Vec::new();
            let mut current = BTreeMap::new();
            for w in &listed {
                // re-read: it may have been granted or cancelled meanwhile
                let Some(w) = tx.waiting::<EngineError>(&w.key_id, &w.object)? else {
                    continue;
                };
                records.push(self.waiting_record(tx, &w)?);
                current.insert((w.key_id.clone(), w.object.clone()), w);
            }
            let mut keys = BTreeMap::new();
            for r in &records {
                if let Some(k) = tx.key::<EngineError>(&r.key_id)? {
                    let used = tx.used::<EngineError>(&r.key_id)?;
                    keys.insert(r.key_id.clone(), (KeySeats { held: k.held, used }, k));
                }
            }
            let seats: BTreeMap<String, KeySeats> =
                keys.iter().map(|(id, (s, _))| (id.clone(), *s)).collect();
            for step in waiting::fill(&records, &seats) {
                let w = &current[&(step.key_id.clone(), step.object.clone())];
                match step.decision {
                    WaitingDecision::StillWaiting { .. } => {}
                    WaitingDecision::Remove(_) => {
                        tx.remove_waiting::<EngineError>(&w.key_id, &w.object)?;
                    }
                    WaitingDecision::Grant {
                        seats,
                        replaces,
                        lending,
                    } => {
                        let k = &keys[&w.key_id].1;
                        grant_waiting(tx, fx, w, k, seats, replaces, lending, now)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// A waiting record as `keyfed_core::waiting` reads it. A station holds
    /// one seat at most (b02): one that took a seat of any key here no longer
    /// waits.
    fn waiting_record(&self, tx: &Tx<'_>, w: &Waiting) -> Tr<WaitingRecord> {
        let mut already_granted = tx.grant::<EngineError>(&w.key_id, &w.object)?.is_some();
        if w.kind == ObjectKind::Station && !already_granted {
            if let Some(held) = tx.station::<EngineError>(&w.object)?.and_then(|s| s.key_id) {
                already_granted = tx.grant::<EngineError>(&held, &w.object)?.is_some();
            }
        }
        Ok(WaitingRecord {
            key_id: w.key_id.clone(),
            object: w.object.clone(),
            seats: w.seats,
            replaces: w.replaces.clone(),
            lending: self.lending_of(w.lent_until, w.lent_days),
            already_granted,
        })
    }
}

/// The key `key_id` as a grant of `kind` may be made of it, in the transaction.
fn assignable(tx: &Tx<'_>, key_id: &str, kind: ObjectKind) -> Tr<StoredKey> {
    let Some(k) = tx.key::<EngineError>(key_id)? else {
        return abort(EngineError::not_found("key", key_id));
    };
    if let Some(new) = &k.superseded_by {
        return abort(EngineError::refused(
            DenialReason::KeySuperseded,
            format!("key {key_id} was renewed as {new}; assign seats of {new} instead"),
        ));
    }
    if !k.distributable && kind == ObjectKind::Server {
        return abort(EngineError::refused(
            DenialReason::ObjectNotAllowed,
            format!(
            "key {key_id} was offered by a peer without automatic renewal and cannot be passed on"
        ),
        ));
    }
    Ok(k)
}

/// r11: a waiting object gets its seats; a server is sent the renewal it
/// waited for (or a plain grant), with the lending it had.
#[allow(clippy::too_many_arguments)]
fn grant_waiting(
    tx: &Tx<'_>,
    fx: &mut crate::engine::Effects,
    w: &Waiting,
    k: &StoredKey,
    seats: u32,
    replaces: Option<String>,
    lending: Option<Lending>,
    now: DateTime<Utc>,
) -> Tr<()> {
    if let Some(l) = lending {
        if before_send(l, now) == BeforeSend::TakeBack {
            // b01: the period it waited under is over; nothing is owed now
            tx.remove_waiting::<EngineError>(&w.key_id, &w.object)?;
            return fx.notify(
                tx,
                now,
                EventKind::DonationReturned,
                &w.key_id,
                format!(
                    "{} no longer waits for {} seat(s) of key {}: the lending period ended at {} before seats freed up",
                    w.object, seats, w.key_id, crate::time::ts(l.until)
                ),
                &[("object", w.object.clone())],
            );
        }
    }
    let server = w.kind == ObjectKind::Server;
    let mut g = new_grant(&w.key_id, &w.object, w.kind, seats, lending, now);
    g.delivered = !server;
    tx.put_grant(&g)?;
    tx.remove_waiting::<EngineError>(&w.key_id, &w.object)?;
    if server {
        let body = match &replaces {
            Some(old) => crate::engine::renewed(old, k, seats, g.lent_until),
            None => seat_grant(k, seats, g.lent_until),
        };
        fx.send(
            tx,
            &w.object,
            now,
            replaces.as_deref().unwrap_or(&w.key_id),
            body,
        )?;
    }
    fx.notify(
        tx,
        now,
        EventKind::ObjectLicensed,
        &w.key_id,
        format!(
            "{} got {} seat(s) of key {} that freed up",
            w.object, seats, w.key_id
        ),
        &[("object", w.object.clone())],
    )
}
