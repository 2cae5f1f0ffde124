//! The life of a key on this node after it arrives: expiry warnings and
//! suspension (e02, e03), trial extension and subscription metering (e04),
//! activation on a held license (e05), over-allocation (e06), tenants (e07),
//! low-seat warnings (b04), and commands for offline objects (o03). The
//! rules are keyfed-core functions; this is where they meet the store.
use crate::config::PeerRole;
use crate::engine::Engine;
use crate::error::{EngineError, EngineResult};
use crate::time::ts;
use chrono::Duration;
use keyfed_core::entitlement::{activate, extend_trial, over_limit, ActivationMode, Holder};
use keyfed_core::lifecycle::{milestones_reached, KeyState, Milestone};
use keyfed_core::{KeyFile, KeyKind};
use keyfed_store::{abort, Command, CommandState, ObjectKind, Origin, StoredKey};
use keyfed_wire::v1 as pb;

/// Longest command text an administrator may queue.
pub const MAX_COMMAND_BYTES: usize = 4096;

fn flag(what: &str, key_id: &str) -> String {
    format!("flag:{what}:{key_id}")
}

impl Engine {
    /// e05: activates a new key of a license already held, adding seats or
    /// extending the term; the new key is kept as part of the held one.
    pub async fn activate_key(&self, text: &str, mode: ActivationMode) -> EngineResult<StoredKey> {
        let file = KeyFile::parse_trusted(text, &self.config.trusted_vendor_keys)?;
        let new = file.key.clone();
        let keys = self.store.keys()?;
        let Some(held) = keys.iter().find(|k| {
            k.key.license == new.license
                && k.key.id != new.id
                && k.origin == Origin::Upstream
                && k.superseded_by.is_none()
                && k.merged_into.is_none()
        }) else {
            return Err(EngineError::FailedPrecondition(format!(
                "no key of license {} is held here to activate {} on; add it without an activation mode",
                new.license, new.id
            )));
        };
        self.check_not_rollback(&new)?;
        let now = self.now();
        let before = held.entitlement();
        let after = activate(before, &held.key.license, &new, mode, now.date_naive())?;
        let held_id = held.key.id.clone();
        let mut merged = StoredKey::new(new.clone(), file.render(), Origin::Upstream, now, 0);
        merged.merged_into = Some(held_id.clone());
        merged.distributable = false;
        let how = match mode {
            ActivationMode::AddSeats => "added its seats",
            ActivationMode::Extend => "extended the term",
        };
        self.commit(|tx, fx| {
            if tx.key::<EngineError>(&new.id)?.is_some() {
                return abort(EngineError::DuplicateKey(new.id.clone()));
            }
            let Some(mut k) = tx.key::<EngineError>(&held_id)? else {
                return abort(EngineError::not_found("key", &held_id));
            };
            k.entitlement = Some(after);
            k.held = after.seats;
            tx.put_key(&k)?;
            tx.put_key(&merged)?;
            fx.notify(
                tx,
                now,
                "key-activated",
                &held_id,
                format!(
                    "key {} activated on {held_id}: {how}; {} seats until {} (was {} until {})",
                    new.id, after.seats, after.expires, before.seats, before.expires
                ),
                &[
                    ("activated_key_id", new.id.clone()),
                    ("seats", after.seats.to_string()),
                    ("expires", after.expires.to_string()),
                ],
            )
        })
        .await?;
        self.lifecycle_sweep().await?;
        self.get_key(&held_id)
    }

    /// e04: extends a trial once by 30 days.
    pub async fn extend_trial(&self, key_id: &str) -> EngineResult<StoredKey> {
        let now = self.now();
        self.commit(|tx, fx| {
            let Some(mut k) = tx.key::<EngineError>(key_id)? else {
                return abort(EngineError::not_found("key", key_id));
            };
            let e = match extend_trial(&k.key, k.entitlement(), k.trial_extended) {
                Ok(e) => e,
                Err(e) => return abort(e.into()),
            };
            k.entitlement = Some(e);
            k.trial_extended = true;
            tx.put_key(&k)?;
            fx.notify(
                tx,
                now,
                "trial-extended",
                key_id,
                format!("trial key {key_id} extended once, to {}", e.expires),
                &[("expires", e.expires.to_string())],
            )?;
            Ok(k)
        })
        .await
    }

    /// e07: shares a subscription with another tenant, or moves it whole.
    pub async fn share_subscription(
        &self,
        key_id: &str,
        tenant: &str,
        seats: u32,
        move_it: bool,
    ) -> EngineResult<StoredKey> {
        if tenant.trim().is_empty() {
            return Err(EngineError::InvalidArgument(
                "name the tenant to share with or move to".into(),
            ));
        }
        let k = self.get_key(key_id)?;
        if k.key.kind != KeyKind::Subscription {
            return Err(EngineError::FailedPrecondition(format!(
                "key {key_id} is a {} key; only subscriptions are shared between tenants",
                k.key.kind
            )));
        }
        let mut uses = std::collections::BTreeMap::new();
        let used = self.store.used(key_id)?;
        let mut others = 0;
        for t in k
            .tenancy
            .shares
            .keys()
            .chain(std::iter::once(&tenant.to_owned()))
        {
            let n = self.store.used_by(key_id, t)?;
            if k.tenancy.shares.contains_key(t) {
                others += n;
            }
            uses.insert(t.clone(), n);
        }
        uses.insert(k.owner().to_owned(), used.saturating_sub(others));
        let next = if move_it {
            k.tenancy.move_to(key_id, &k.key.customer, tenant)?
        } else {
            k.tenancy
                .share(key_id, &k.key.customer, k.held, tenant, seats, |t| {
                    uses.get(t).copied().unwrap_or(0)
                })?
        };
        let now = self.now();
        let what = if move_it {
            format!("subscription {key_id} moved from {} to {tenant}", k.owner())
        } else if seats == 0 {
            format!("subscription {key_id}: share of {tenant} taken back")
        } else {
            format!("subscription {key_id}: {seats} seat(s) shared with {tenant}")
        };
        self.commit(|tx, fx| {
            let Some(mut cur) = tx.key::<EngineError>(key_id)? else {
                return abort(EngineError::not_found("key", key_id));
            };
            if cur.tenancy != k.tenancy {
                return abort(EngineError::FailedPrecondition(format!(
                    "subscription {key_id} changed meanwhile; try again"
                )));
            }
            cur.tenancy = next.clone();
            tx.put_key(&cur)?;
            fx.notify(
                tx,
                now,
                "subscription-changed",
                key_id,
                what.clone(),
                &[("tenant", tenant.to_owned())],
            )?;
            Ok(cur)
        })
        .await
    }

    /// e07: every subscription per tenant, with start, end, state and use.
    pub fn subscriptions(&self) -> EngineResult<Vec<pb::SubscriptionInfo>> {
        let now = self.now();
        let month = now.format("%Y-%m").to_string();
        let mut out = Vec::new();
        for k in self.store.keys()? {
            if k.key.kind != KeyKind::Subscription
                || k.superseded_by.is_some()
                || k.merged_into.is_some()
            {
                continue;
            }
            let id = &k.key.id;
            let used = self.store.used(id)?;
            let peak = self
                .store
                .meta(&meter_key(id, now))?
                .and_then(|s| s.parse().ok())
                .unwrap_or(used);
            let row = |tenant: &str, seats: u32, used: u32, role: &str| pb::SubscriptionInfo {
                customer: tenant.to_owned(),
                key_id: id.clone(),
                start: k.key.issued_at.date_naive().to_string(),
                end: k.entitlement().expires.to_string(),
                state: self.key_state(&k).label().into(),
                seats,
                used,
                role: role.into(),
                total_seats: k.held,
                month_peak: peak,
                month: month.clone(),
            };
            let mut shared_use = 0;
            let mut shared = Vec::new();
            for (t, seats) in &k.tenancy.shares {
                let u = self.store.used_by(id, t)?;
                shared_use += u;
                shared.push(row(t, *seats, u, "shared"));
            }
            let owner = k.owner().to_owned();
            out.push(row(
                &owner,
                k.tenancy.limit(&k.key.customer, &owner, k.held),
                used.saturating_sub(shared_use),
                "owner",
            ));
            out.extend(shared);
        }
        out.sort_by(|a, b| (&a.customer, &a.key_id).cmp(&(&b.customer, &b.key_id)));
        Ok(out)
    }

    /// e06: the holders beyond the seats this node holds of a key.
    pub fn over_limit(&self, k: &StoredKey) -> EngineResult<Vec<String>> {
        let available = if self.key_state(k).seats_work() {
            k.held
        } else {
            0
        };
        if self.store.used(&k.key.id)? <= available {
            return Ok(Vec::new());
        }
        let holders: Vec<Holder> = self
            .store
            .grants_of_key(&k.key.id)?
            .into_iter()
            .map(|g| Holder {
                object: g.object,
                seats: g.seats,
                granted_at: g.granted_at,
            })
            .collect();
        Ok(over_limit(k.held, &holders))
    }

    /// Runs on every scheduler tick: e02 warnings (each once), e06 and b04
    /// flags (once per episode), e04 monthly metering of subscriptions.
    pub async fn lifecycle_sweep(&self) -> EngineResult<()> {
        let now = self.now();
        let low = self.config.lifecycle.low_seats();
        for k in self.store.keys()? {
            if k.superseded_by.is_some() || k.merged_into.is_some() {
                continue;
            }
            let id = k.key.id.clone();
            let ent = k.entitlement();
            let state = self.key_state(&k);
            let used = self.store.used(&id)?;
            let mut due = Vec::new();
            for m in milestones_reached(ent.expires, k.key.kind, now, &self.grace) {
                if self.store.meta(&flag(m.event(), &id))?.is_none() {
                    due.push(m);
                }
            }
            let over = used > k.held;
            let over_flagged = self.store.meta(&flag("over-allocated", &id))?.is_some();
            let is_low = state.writable() && low.is_low(k.held, used);
            let low_flagged = self.store.meta(&flag("seats-low", &id))?.is_some();
            let peak: u32 = self
                .store
                .meta(&meter_key(&id, now))?
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let meter = k.key.kind == KeyKind::Subscription && used > peak;
            if due.is_empty() && over == over_flagged && is_low == low_flagged && !meter {
                continue;
            }
            let holders = if over && !over_flagged {
                self.over_limit(&k)?
            } else {
                Vec::new()
            };
            self.commit(|tx, fx| {
                for m in &due {
                    tx.put_meta(&flag(m.event(), &id), &ts(now))?;
                    let message = match (m, state) {
                        (Milestone::ExpiresSoon, _) => format!(
                            "key {id} expires at the end of {} ({} days left); renew it before then",
                            ent.expires,
                            (keyfed_core::key::expiry_instant(ent.expires) - now).num_days()
                        ),
                        (Milestone::Expired, KeyState::Grace { until }) => format!(
                            "key {id} expired at the end of {}: in grace until {}, its seats keep working but it cannot be assigned or distributed",
                            ent.expires,
                            ts(until)
                        ),
                        (Milestone::Expired, _) => format!("key {id} expired at the end of {}", ent.expires),
                        (Milestone::Suspended, _) => format!(
                            "key {id} is suspended: grace is over, its {used} seat(s) are withdrawn; nothing is deleted and a renewal restores them"
                        ),
                    };
                    fx.notify(tx, now, m.event(), &id, message, &[("expires", ent.expires.to_string())])?;
                }
                if over && !over_flagged {
                    tx.put_meta(&flag("over-allocated", &id), &ts(now))?;
                    fx.notify(
                        tx,
                        now,
                        "over-allocated",
                        &id,
                        format!(
                            "key {id} is over-allocated: {used} seats granted of {} available; over the limit: {}; new grants are refused until fixed",
                            k.held,
                            holders.join(", ")
                        ),
                        &[("used", used.to_string()), ("held", k.held.to_string()), ("over_limit", holders.join(","))],
                    )?;
                } else if !over && over_flagged {
                    tx.remove_meta(&flag("over-allocated", &id))?;
                    fx.notify(tx, now, "over-allocation-resolved", &id, format!("key {id} is within its {} seats again", k.held), &[])?;
                }
                if is_low && !low_flagged {
                    tx.put_meta(&flag("seats-low", &id), &ts(now))?;
                    fx.notify(
                        tx,
                        now,
                        "seats-low",
                        &id,
                        format!("key {id} is nearly used up: {} of {} seats free", k.held.saturating_sub(used), k.held),
                        &[("free", k.held.saturating_sub(used).to_string()), ("held", k.held.to_string())],
                    )?;
                } else if !is_low && low_flagged {
                    tx.remove_meta(&flag("seats-low", &id))?;
                }
                if meter {
                    meter_tx(tx, &k, used, now)?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    // ---- commands (o03) ---------------------------------------------------

    /// o03: queues a command for a station (by fingerprint) or a child.
    pub async fn queue_command(&self, object: &str, command: &str) -> EngineResult<Command> {
        let command = command.trim();
        if command.is_empty() || command.len() > MAX_COMMAND_BYTES {
            return Err(EngineError::InvalidArgument(format!(
                "a command is 1 to {MAX_COMMAND_BYTES} bytes of text"
            )));
        }
        let kind = match self.config.role_of(object) {
            Some(PeerRole::Child) => ObjectKind::Server,
            Some(role) => {
                return Err(EngineError::InvalidArgument(format!(
                    "{object} is this node's {}; commands go to stations and children",
                    role.as_str()
                )))
            }
            None if self.store.station(object)?.is_some() => ObjectKind::Station,
            None => {
                return Err(EngineError::not_found(
                    "station or child",
                    format!("{object} (no station with this fingerprint has connected and no child has this id)"),
                ))
            }
        };
        let now = self.now();
        let c = self
            .commit(|tx, _| tx.add_command::<EngineError>(object, kind, command, now))
            .await?;
        self.command_sweep().await?;
        Ok(c)
    }

    /// o03: sends pending commands to children that are linked, and drops
    /// what waited longer than the keep period, saying so.
    pub async fn command_sweep(&self) -> EngineResult<()> {
        let now = self.now();
        let keep = Duration::days(self.config.stations.command_keep_days);
        let work: Vec<Command> = self
            .store
            .commands()?
            .into_iter()
            .filter(|c| c.state == CommandState::Pending)
            .filter(|c| {
                now >= c.queued_at + keep
                    || (c.kind == ObjectKind::Server
                        && self.peer_meta(&c.object).is_some_and(|m| m.online))
            })
            .collect();
        if work.is_empty() {
            return Ok(());
        }
        self.commit(|tx, fx| {
            for c in &work {
                let Some(mut cur) = tx.command::<EngineError>(&c.object, c.id)? else {
                    continue;
                };
                if cur.state != CommandState::Pending {
                    continue;
                }
                if now >= cur.queued_at + keep {
                    cur.state = CommandState::Dropped { at: now };
                    fx.notify(
                        tx,
                        now,
                        "command-dropped",
                        "",
                        format!(
                            "command {} ({:?}) for {} was dropped: not delivered within {} days",
                            cur.id,
                            cur.command,
                            cur.object,
                            keep.num_days()
                        ),
                        &[
                            ("object", cur.object.clone()),
                            ("command_id", cur.id.to_string()),
                        ],
                    )?;
                } else {
                    let body = pb::delivery::Body::Command(pb::RemoteCommand {
                        id: cur.id,
                        command: cur.command.clone(),
                        queued_at: ts(cur.queued_at),
                    });
                    fx.send(tx, &cur.object, now, "", body)?;
                    cur.state = CommandState::Sent { at: now };
                }
                tx.put_command(&cur)?;
            }
            Ok(())
        })
        .await
    }
}

/// e04: where this calendar month's (UTC) peak of a subscription is kept.
fn meter_key(key_id: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    format!("meter:{key_id}:{}", now.format("%Y-%m"))
}

/// e04: raises this month's metered peak of a subscription to `used`, in
/// the transaction that took the seat (a tick could miss a short peak).
pub fn meter_tx(
    tx: &keyfed_store::Tx<'_>,
    k: &StoredKey,
    used: u32,
    now: chrono::DateTime<chrono::Utc>,
) -> keyfed_store::TxResult<(), EngineError> {
    if k.key.kind != KeyKind::Subscription {
        return Ok(());
    }
    let month = meter_key(&k.key.id, now);
    let peak: u32 = tx
        .meta::<EngineError>(&month)?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if used > peak {
        tx.put_meta(&month, &used.to_string())?;
    }
    Ok(())
}

/// What an administrator sees of a command.
pub fn command_info(c: &Command, keep_days: i64) -> pb::CommandInfo {
    let changed = match c.state {
        CommandState::Pending => None,
        CommandState::Sent { at }
        | CommandState::Delivered { at }
        | CommandState::Dropped { at } => Some(at),
    };
    pb::CommandInfo {
        id: c.id.to_string(),
        object: c.object.clone(),
        command: c.command.clone(),
        queued_at: ts(c.queued_at),
        state: c.state.label().into(),
        changed_at: changed.map(ts).unwrap_or_default(),
        kind: match c.kind {
            ObjectKind::Station => pb::ObjectKind::Station,
            ObjectKind::Server => pb::ObjectKind::Server,
        } as i32,
        expires_at: ts(c.queued_at + Duration::days(keep_days)),
    }
}
