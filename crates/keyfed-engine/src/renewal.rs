//! The renewal engine (r01-r08, r10, r11): ask the upstream whether a renewal
//! of each upstream key exists, download it, then decide
//! (`keyfed_core::decide_entitled`) and store only or distribute it by
//! `keyfed_core::renewal_plan`. Asking the upstream is I/O and stays in
//! [`Engine::check_for_updates`]; what it found is applied by the
//! deterministic [`crate::command::Command::RenewalFound`].
//!
//! r08: a child that never comes back keeps its claim on the old key, which
//! stays here while it is away. After `old_key_notice_days` the
//! administrator is told, once per child, which child still holds it
//! (`old-key-held-by-absent-child`); deleting the old key by hand is allowed
//! (see [`crate::ledger`] for what becomes of that child's grant).
use crate::engine::{renewed, retire_if_free, Effects, Engine};
use crate::error::{EngineError, EngineResult};
use chrono::{DateTime, Duration, Utc};
use keyfed_core::event::{EventKind, RenewalOutcomeKind};
use keyfed_core::renewal_plan::{
    plan, supports_auto_renewal, NewKeySeats, ObjectRole, ObjectStep, OldKeyFate, OldKeyObject,
    PlannedObject,
};
use keyfed_core::{decide_entitled, KeyFile, RenewalDecision};
use keyfed_store::{Grant, ObjectKind, Origin, StoredKey, Tx, Waiting};
use keyfed_wire::v1 as pb;

type Tr<T> = keyfed_store::TxResult<T, EngineError>;

mod taken;

fn outcome(key_id: &str, kind: RenewalOutcomeKind, reason: String) -> pb::RenewalOutcome {
    pb::RenewalOutcome {
        key_id: key_id.into(),
        outcome: kind.as_str().into(),
        reason,
        ..Default::default()
    }
}

impl Engine {
    /// "Check for updates and replace keys" (r01): one key, or every key whose
    /// origin is the upstream (r02). r03: any step may end the procedure for
    /// one key; that key's failure is its own outcome (and notification) and
    /// the run goes on with the next key. The run's time is recorded either
    /// way, so the schedule waits a full period before trying again.
    pub async fn check_for_updates(
        &self,
        key_id: Option<&str>,
    ) -> EngineResult<Vec<pb::RenewalOutcome>> {
        let keys: Vec<StoredKey> = match key_id {
            Some(id) => vec![self.get_key(id)?],
            None => self
                .store
                .keys()?
                .into_iter()
                .filter(|k| k.origin == Origin::Upstream)
                .collect(),
        };
        let mut out = Vec::new();
        for k in keys {
            let o = match self.renew_one(&k).await {
                Ok(o) => o,
                Err(e) => {
                    let cmd = crate::command::Command::RenewalFailed {
                        key_id: k.key.id.clone(),
                        error: e.to_string(),
                        now: self.now(),
                    };
                    let o = self.execute(cmd).await?.renewal()?;
                    if key_id.is_some() {
                        // the one key asked for: its failure is the answer
                        self.renewal_checked(&o.outcome);
                        return Err(EngineError::Remote {
                            code: e.code(),
                            message: format!("the renewal check of key {} failed: {e}", k.key.id),
                        });
                    }
                    o
                }
            };
            self.renewal_checked(&o.outcome);
            out.push(o);
        }
        self.store
            .set_meta("last_renewal_check", &crate::time::ts(self.now()))?;
        Ok(out)
    }

    /// r03: a renewal procedure that ended early: the administrator is told
    /// which key and why; the outcome says "error".
    pub(crate) async fn renewal_failed_at(
        &self,
        id: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> EngineResult<pb::RenewalOutcome> {
        tracing::warn!(node = %self.id(), key_id = %id, error = %why, "renewal check failed");
        self.commit(|tx, fx| {
            fx.notify(
                tx,
                now,
                EventKind::RenewalFailed,
                id,
                format!("the renewal check of key {id} failed; tried again at the next run: {why}"),
                &[("error", why.to_owned())],
            )
        })
        .await?;
        Ok(outcome(id, RenewalOutcomeKind::Error, why.to_owned()))
    }

    /// r03 (1) and (2): the I/O of one key's renewal check.
    async fn renew_one(&self, k: &StoredKey) -> EngineResult<pb::RenewalOutcome> {
        let id = &k.key.id;
        if let Origin::Peer(p) = &k.origin {
            let why = format!("key {id} came from {p}; its renewals arrive by propagation (r02)");
            return Ok(outcome(id, RenewalOutcomeKind::Skipped, why));
        }
        if let Some(new) = &k.superseded_by {
            let why = format!("already renewed as {new}; waiting for objects to take it");
            return Ok(outcome(id, RenewalOutcomeKind::Skipped, why));
        }
        let Some(renewal_id) = self.upstream.check_renewal(id).await? else {
            let why = "the upstream holds no renewal for this key (r04)".to_owned();
            return Ok(outcome(id, RenewalOutcomeKind::Nothing, why));
        };
        let text = self.upstream.download_key(&renewal_id).await?;
        let cmd = crate::command::Command::RenewalFound {
            key_id: id.clone(),
            text,
            now: self.now(),
        };
        self.execute(cmd).await?.renewal()
    }

    /// r03 (2) verify and store, (3) hand out: the renewal `text` the
    /// upstream holds for `key_id`.
    pub(crate) async fn renewal_found_at(
        &self,
        key_id: &str,
        text: &str,
        now: DateTime<Utc>,
    ) -> EngineResult<pb::RenewalOutcome> {
        let k = self.get_key(key_id)?;
        let file = KeyFile::parse_trusted(text, &self.config.trusted_vendor_keys)?;
        // the same rollback rule as a key added by hand: a renewal older than
        // a serial this node holds or held (an activation key since) is refused
        self.check_not_rollback(&file.key)?;
        if file.key.renews.as_deref() != Some(key_id) {
            return Err(EngineError::Upstream(format!(
                "the upstream's renewal {} does not name {key_id} as the key it renews",
                file.key.id
            )));
        }
        let new = StoredKey::new(
            file.key.clone(),
            file.render(),
            Origin::Upstream,
            now,
            file.key.seats,
        );
        let already = self.store.key(&new.key.id)?.is_some();
        self.apply_renewal(&k, new, already, now).await
    }

    /// r05/r06/r10: stores `new`, the renewal of `k`, and distributes it if
    /// compatible with what this node is entitled to of `k` (defect 4: after
    /// an add-seats activation that is more than the key file says).
    /// `already`: the administrator added it by hand first.
    pub async fn apply_renewal(
        &self,
        k: &StoredKey,
        new: StoredKey,
        already: bool,
        now: DateTime<Utc>,
    ) -> EngineResult<pb::RenewalOutcome> {
        let id = &k.key.id;
        let mut o = outcome(id, RenewalOutcomeKind::Nothing, String::new());
        o.new_key_id = new.key.id.clone();
        o.old_seats = k.entitlement().seats;
        o.new_seats = new.key.seats;
        match decide_entitled(&k.key, k.entitlement(), &new.key) {
            RenewalDecision::StoreOnly(reasons) => {
                // r05: stored, listed, not distributed; the administrator is told why
                o.outcome = RenewalOutcomeKind::StoreOnly.as_str().into();
                o.reason = reasons.to_string();
                o.missing_components = reasons.missing_components.clone();
                if !already {
                    self.commit(|tx, fx| {
                        tx.put_key(&new)?;
                        fx.notify(
                            tx,
                            now,
                            EventKind::KeyNotRenewedAutomatically,
                            id,
                            format!("key {id} could not be renewed automatically by {}: {reasons}; distribute it by hand", new.key.id),
                            &[
                                ("new_key_id", new.key.id.clone()),
                                ("missing_components", reasons.missing_components.join(",")),
                                ("old_seats", reasons.old_seats.to_string()),
                                ("new_seats", reasons.new_seats.to_string()),
                            ],
                        )
                    })
                    .await?;
                }
            }
            RenewalDecision::Distribute => {
                // (3) r06 (or r10 when it was added by hand first: only propagate)
                let kind = if already {
                    RenewalOutcomeKind::Propagated
                } else {
                    RenewalOutcomeKind::Distributed
                };
                o.outcome = kind.as_str().into();
                let grants = self.store.grants_of_key(id)?;
                o.reason = format!(
                    "{} object(s) of {id} are handed {}",
                    grants.len(),
                    new.key.id
                );
                self.commit(|tx, fx| {
                    fx.notify(
                        tx,
                        now,
                        EventKind::KeyRenewedAutomatically,
                        &new.key.id,
                        format!(
                            "key {id} was renewed automatically as {} ({} seats)",
                            new.key.id, new.key.seats
                        ),
                        &[
                            ("old_key_id", id.clone()),
                            ("new_key_id", new.key.id.clone()),
                        ],
                    )?;
                    self.distribute_tx(tx, fx, id, &grants, &new, now)
                })
                .await?;
                // r07: objects that took a seat of the old key between the
                // read above and the commit are handed the new key too; the
                // key is superseded now, so no later seat lands on it
                let late: Vec<_> = self
                    .store
                    .grants_of_key(id)?
                    .into_iter()
                    .filter(|g| !grants.iter().any(|x| x.object == g.object))
                    .collect();
                if !late.is_empty() {
                    self.commit(|tx, fx| self.distribute_tx(tx, fx, id, &late, &new, now))
                        .await?;
                }
                self.fill_waiting_at(now).await?;
            }
        }
        Ok(o)
    }

    /// r06/r10/r11: in one transaction, store `new` (if not yet held) and hand
    /// it to every object of `old_id` by the plan of
    /// `keyfed_core::renewal_plan`. The old key is retired once no object
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
        let Some((newk, old)) = supersede(tx, old_id, new, now)? else {
            return Ok(());
        };
        let mut held = Vec::new();
        let mut objects = Vec::new();
        for g in grants {
            // re-read: the list was taken before the transaction
            let Some(g) = tx.grant::<EngineError>(old_id, &g.object)? else {
                continue;
            };
            objects.push(OldKeyObject {
                object: g.object.clone(),
                role: self.object_role(&g),
                seats: g.seats,
                auto_renewal: supports_auto_renewal(self.peer_protocol(&g.object)),
                holds_new: tx
                    .grant::<EngineError>(&newk.key.id, &g.object)?
                    .map(|h| h.seats),
                lending: self.lending_of(g.lent_until, g.lent_days),
            });
            held.push(g);
        }
        let seats = NewKeySeats {
            entitled: newk.held,
            used: tx.used::<EngineError>(&newk.key.id)?,
        };
        let p = plan(&objects, seats);
        for step in &p.objects {
            let g = held
                .iter()
                .find(|g| g.object == step.object)
                .expect("planned objects are the old key's");
            self.apply_step(tx, fx, &old, &newk, g, step, seats, now)?;
        }
        // b02: provisional leases are the old key's objects too
        crate::claims::carry_provisional(tx, fx, old_id, &newk, now)?;
        match p.old_key {
            OldKeyFate::RetireNow => retire_if_free(tx, fx, old_id, now),
            OldKeyFate::AfterAcks { .. } | OldKeyFate::KeptForAdministrator { .. } => Ok(()),
        }
    }

    fn object_role(&self, g: &Grant) -> ObjectRole {
        match (g.kind, self.config.role_of(&g.object)) {
            (ObjectKind::Station, _) => ObjectRole::Station,
            (ObjectKind::Server, Some(crate::config::PeerRole::Neighbor)) => ObjectRole::Neighbor,
            (ObjectKind::Server, _) => ObjectRole::Child,
        }
    }

    /// One object's step of a renewal plan.
    #[allow(clippy::too_many_arguments)]
    fn apply_step(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        old: &StoredKey,
        newk: &StoredKey,
        g: &Grant,
        step: &PlannedObject,
        seats: NewKeySeats,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let (old_id, new_id) = (old.key.id.as_str(), newk.key.id.as_str());
        let server = g.kind == ObjectKind::Server;
        match &step.step {
            ObjectStep::AlreadyHolds { tell_peer, .. } => {
                // r10: already given the new key by hand; left as it is
                if *tell_peer {
                    let have = tx.grant::<EngineError>(new_id, &g.object)?;
                    let (s, lent) = have.map_or((g.seats, None), |h| (h.seats, h.lent_until));
                    fx.send(tx, &g.object, now, old_id, renewed(old_id, newk, s, lent))?;
                } else {
                    tx.remove_grant::<EngineError>(old_id, &g.object)?;
                }
                Ok(())
            }
            ObjectStep::OfferOnly => self.offer_to_old_peer(tx, fx, old_id, newk, g, now),
            ObjectStep::Wait { seats: want, .. } => {
                let free = seats
                    .entitled
                    .saturating_sub(tx.used::<EngineError>(new_id)?);
                wait_for_new_key(tx, fx, old_id, newk, g, *want, free, now)
            }
            ObjectStep::Deliver { seats, lending } => {
                let mut moved =
                    crate::engine::new_grant(new_id, &g.object, g.kind, *seats, *lending, now);
                moved.tenant.clone_from(&g.tenant);
                tx.put_grant(&moved)?;
                if server {
                    // the old grant stays until the peer acks: it still uses the old key (r07)
                    let body = renewed(old_id, newk, *seats, moved.lent_until);
                    fx.send(tx, &g.object, now, old_id, body)?;
                } else {
                    tx.remove_grant::<EngineError>(old_id, &g.object)?;
                }
                Ok(())
            }
        }
    }

    /// r08: the old peer gets the key file but does not distribute it; the
    /// old key stays here until the administrator deletes it.
    fn offer_to_old_peer(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        old_id: &str,
        newk: &StoredKey,
        g: &Grant,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let new_id = &newk.key.id;
        let offer = pb::delivery::Body::Offer(pb::KeyOffer {
            key: Some(pb::KeyFile {
                text: newk.text.clone(),
            }),
        });
        fx.send(tx, &g.object, now, new_id, offer)?;
        fx.notify(
            tx,
            now,
            EventKind::OldKeyKept,
            old_id,
            format!(
                "key {old_id} kept: {} speaks protocol {} without automatic renewal; it was given {new_id} but does not distribute it. Delete {old_id} by hand when done",
                g.object,
                self.peer_protocol(&g.object)
            ),
            &[("object", g.object.clone()), ("new_key_id", new_id.clone())],
        )
    }

    /// r08 (defect 13): once a key has been superseded for
    /// `old_key_notice_days`, names each child (or neighbor) that still holds
    /// it, once. Peers without automatic renewal were told of already
    /// (`old-key-kept`).
    pub(crate) async fn old_key_notices(&self, now: DateTime<Utc>) -> EngineResult<()> {
        let after = Duration::days(self.config.old_key_notice_days);
        let mut due = Vec::new();
        for k in self.store.keys()? {
            let Some(new) = &k.superseded_by else {
                continue;
            };
            let since = k.superseded_at.unwrap_or(k.added_at);
            if now < since + after {
                continue;
            }
            for g in self.store.grants_of_key(&k.key.id)? {
                let flag = format!("flag:old-key-held:{}:{}", k.key.id, g.object);
                if g.kind == ObjectKind::Server
                    && supports_auto_renewal(self.peer_protocol(&g.object))
                    && self.store.meta(&flag)?.is_none()
                {
                    due.push((k.key.id.clone(), new.clone(), since, g.object, flag));
                }
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        self.commit(|tx, fx| {
            for (old, new, since, object, flag) in &due {
                tx.put_meta(flag, &crate::time::ts(now))?;
                fx.notify(
                    tx,
                    now,
                    EventKind::OldKeyHeldByAbsentChild,
                    old,
                    format!(
                        "{object} still holds key {old}, renewed as {new} on {}: it has not come back to take the renewal. The old key stays while it is away; delete {old} by hand if {object} is gone for good",
                        crate::time::ts(*since)
                    ),
                    &[("object", object.clone()), ("new_key_id", new.clone())],
                )?;
            }
            Ok(())
        })
        .await
    }
}

/// Stores the new key (taking over the old key's tenancy, e07) and marks the
/// old one superseded; `None` if the old key is gone.
fn supersede(
    tx: &Tx<'_>,
    old_id: &str,
    new: &StoredKey,
    now: DateTime<Utc>,
) -> Tr<Option<(StoredKey, StoredKey)>> {
    let mut newk = match tx.key::<EngineError>(&new.key.id)? {
        Some(mut existing) => {
            if existing.origin == new.origin {
                existing.held = new.held;
                existing.lent_until = new.lent_until;
                existing.entitlement = new.entitlement.or(existing.entitlement);
            }
            existing
        }
        None => new.clone(),
    };
    newk.distributable = true;
    let Some(mut old) = tx.key::<EngineError>(old_id)? else {
        tx.put_key(&newk)?;
        return Ok(None);
    };
    if old.superseded_by.is_none() {
        old.superseded_at = Some(now);
    }
    old.superseded_by = Some(newk.key.id.clone());
    tx.put_key(&old)?;
    if newk.tenancy == Default::default() && old.tenancy != Default::default() {
        newk.tenancy = old.tenancy.clone();
    }
    tx.put_key(&newk)?;
    Ok(Some((newk, old)))
}

/// r11: not enough seats of the new key: the object waits, unlicensed.
#[allow(clippy::too_many_arguments)]
fn wait_for_new_key(
    tx: &Tx<'_>,
    fx: &mut Effects,
    old_id: &str,
    newk: &StoredKey,
    g: &Grant,
    seats: u32,
    free: u32,
    now: DateTime<Utc>,
) -> Tr<()> {
    let new_id = &newk.key.id;
    tx.remove_grant::<EngineError>(old_id, &g.object)?;
    if g.kind == ObjectKind::Server {
        let reason = format!("renewed as {new_id}, which has no free seat for you yet");
        fx.send(
            tx,
            &g.object,
            now,
            old_id,
            crate::engine::withdrawn(old_id, reason),
        )?;
    }
    tx.put_waiting(&Waiting {
        key_id: new_id.clone(),
        object: g.object.clone(),
        kind: g.kind,
        seats,
        since: now,
        lent_until: g.lent_until,
        lent_days: g.lent_days,
        replaces: Some(old_id.to_owned()),
    })?;
    fx.notify(
        tx,
        now,
        EventKind::ObjectUnlicensed,
        new_id,
        format!(
            "{} keeps no seat: key {new_id} has {free} free of {} and it needs {seats}; it waits until seats free up",
            g.object, newk.held,
        ),
        &[("object", g.object.clone()), ("old_key_id", old_id.to_owned())],
    )
}
