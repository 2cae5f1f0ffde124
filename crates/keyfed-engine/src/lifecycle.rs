//! The life of a key on this node after it arrives: expiry warnings and
//! suspension (e02, e03), trial extension and subscription metering (e04),
//! activation on a held license (e05), over-allocation (e06), tenants (e07),
//! low-seat warnings (b04), and commands for offline objects (o03). The
//! rules are keyfed-core functions; this is where they meet the store.
use crate::config::PeerRole;
use crate::engine::{seat_grant, Effects, Engine};
use crate::error::{EngineError, EngineResult};
use crate::time::ts;
use chrono::{DateTime, Duration, Utc};
use keyfed_core::entitlement::{activate, extend_trial, ActivationMode, Holder};
use keyfed_core::event::EventKind;
use keyfed_core::lifecycle::{milestones_reached, KeyState, Milestone};
use keyfed_core::tenant_quota::{
    available_seats, change_tenancy, over_allocation, QuotaError, Subscription, TenancyChange,
    TenantUse,
};
use keyfed_core::{KeyFile, KeyKind};
use keyfed_store::{abort, Command, CommandState, Grant, ObjectKind, Origin, StoredKey, Tx};

type Tr<T> = keyfed_store::TxResult<T, EngineError>;
use keyfed_wire::v1 as pb;

/// Longest command text an administrator may queue.
pub const MAX_COMMAND_BYTES: usize = 4096;

fn flag(what: &str, key_id: &str) -> String {
    format!("flag:{what}:{key_id}")
}

impl Engine {
    /// e05: activates a new key of a license already held, adding seats or
    /// extending the term; the new key is kept as part of the held one. The
    /// new entitlement reaches every server holding seats of it (defect 3).
    pub(crate) async fn activate_key_at(
        &self,
        text: &str,
        mode: ActivationMode,
        now: DateTime<Utc>,
    ) -> EngineResult<StoredKey> {
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
        let grants = self.store.grants_of_key(&held_id)?;
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
            pass_on_entitlement(tx, fx, &k, &grants, now)?;
            fx.notify(
                tx,
                now,
                EventKind::KeyActivated,
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
        self.lifecycle_sweep_at(now).await?;
        self.get_key(&held_id)
    }

    /// e04: extends a trial once by 30 days; the servers holding seats of it
    /// are told (defect 3).
    pub(crate) async fn extend_trial_at(
        &self,
        key_id: &str,
        now: DateTime<Utc>,
    ) -> EngineResult<StoredKey> {
        let grants = self.store.grants_of_key(key_id)?;
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
            pass_on_entitlement(tx, fx, &k, &grants, now)?;
            fx.notify(
                tx,
                now,
                EventKind::TrialExtended,
                key_id,
                format!("trial key {key_id} extended once, to {}", e.expires),
                &[("expires", e.expires.to_string())],
            )?;
            Ok(k)
        })
        .await
    }

    /// e07: shares a subscription with another tenant, or moves it whole,
    /// by `keyfed_core::tenant_quota`: never beyond the total, never while
    /// the subscription is read-only in grace or suspended (defect 5).
    pub(crate) async fn share_subscription_at(
        &self,
        key_id: &str,
        tenant: &str,
        seats: u32,
        move_it: bool,
        now: DateTime<Utc>,
    ) -> EngineResult<StoredKey> {
        let change = if move_it {
            TenancyChange::Move { tenant }
        } else {
            TenancyChange::Share { tenant, seats }
        };
        self.commit(|tx, fx| {
            let Some(mut k) = tx.key::<EngineError>(key_id)? else {
                return abort(EngineError::not_found("key", key_id));
            };
            let sub = Subscription {
                key_id,
                kind: k.key.kind,
                customer: &k.key.customer,
                total: k.held,
                state: self.state_at(&k, now),
                tenancy: &k.tenancy,
            };
            let mut uses = TenantUse {
                total: tx.used::<EngineError>(key_id)?,
                ..TenantUse::default()
            };
            for t in k.tenancy.shares.keys().map(String::as_str).chain([tenant]) {
                uses.by_tenant
                    .insert(t.to_owned(), tx.used_by::<EngineError>(key_id, t)?);
            }
            let next = match change_tenancy(&sub, change, &uses) {
                Ok(next) => next,
                Err(e) => return abort(quota_error(e)),
            };
            let what = if move_it {
                format!("subscription {key_id} moved from {} to {tenant}", k.owner())
            } else if seats == 0 {
                format!("subscription {key_id}: share of {tenant} taken back")
            } else {
                format!("subscription {key_id}: {seats} seat(s) shared with {tenant}")
            };
            k.tenancy = next;
            tx.put_key(&k)?;
            fx.notify(
                tx,
                now,
                EventKind::SubscriptionChanged,
                key_id,
                what,
                &[("tenant", tenant.to_owned())],
            )?;
            Ok(k)
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

    /// e06: the holders beyond the seats available of a key (none once it
    /// is suspended, defect 5).
    pub fn over_limit(&self, k: &StoredKey) -> EngineResult<Vec<String>> {
        self.over_limit_at(k, self.now())
    }

    pub(crate) fn over_limit_at(
        &self,
        k: &StoredKey,
        now: DateTime<Utc>,
    ) -> EngineResult<Vec<String>> {
        let state = self.state_at(k, now);
        if self.store.used(&k.key.id)? <= available_seats(k.held, state) {
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
        Ok(over_allocation(k.held, state, &holders)
            .map(|o| o.over_limit)
            .unwrap_or_default())
    }

    /// Runs on every scheduler tick: e02 warnings (each once), e06 and b04
    /// flags (once per episode), e04 monthly metering of subscriptions.
    pub(crate) async fn lifecycle_sweep_at(&self, now: DateTime<Utc>) -> EngineResult<()> {
        for k in self.store.keys()? {
            if k.superseded_by.is_some() || k.merged_into.is_some() {
                continue;
            }
            if let Some(sweep) = self.sweep_of(k, now)? {
                self.commit(|tx, fx| sweep.apply(tx, fx, now)).await?;
            }
        }
        Ok(())
    }

    /// What the sweep has to do for one key, if anything.
    fn sweep_of(&self, k: StoredKey, now: DateTime<Utc>) -> EngineResult<Option<KeySweep>> {
        let id = k.key.id.clone();
        let ent = k.entitlement();
        let state = self.state_at(&k, now);
        let used = self.store.used(&id)?;
        let mut due = Vec::new();
        for m in milestones_reached(ent.expires, k.key.kind, now, &self.grace) {
            if self.store.meta(&flag(m.event(), &id))?.is_none() {
                due.push(m);
            }
        }
        // e06 (defect 5): after suspension no seat is available
        let available = available_seats(k.held, state);
        let over = used > available;
        let over_flagged = self.store.meta(&flag("over-allocated", &id))?.is_some();
        let low = self.config.lifecycle.low_seats();
        let is_low = state.writable() && low.is_low(k.held, used);
        let low_flagged = self.store.meta(&flag("seats-low", &id))?.is_some();
        let peak: u32 = self
            .store
            .meta(&meter_key(&id, now))?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let meter = k.key.kind == KeyKind::Subscription && used > peak;
        if due.is_empty() && over == over_flagged && is_low == low_flagged && !meter {
            return Ok(None);
        }
        let holders = if over && !over_flagged {
            self.over_limit_at(&k, now)?
        } else {
            Vec::new()
        };
        Ok(Some(KeySweep {
            k,
            state,
            used,
            available,
            due,
            over: (over, over_flagged),
            low: (is_low, low_flagged),
            meter,
            holders,
        }))
    }

    // ---- commands (o03) ---------------------------------------------------

    /// o03: queues a command for a station (by fingerprint) or a child.
    pub(crate) async fn queue_command_at(
        &self,
        object: &str,
        command: &str,
        now: DateTime<Utc>,
    ) -> EngineResult<Command> {
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
        let c = self
            .commit(|tx, _| tx.add_command::<EngineError>(object, kind, command, now))
            .await?;
        self.command_sweep_at(now).await?;
        Ok(c)
    }

    /// o03: sends pending commands to children that are linked, and drops
    /// what waited longer than the keep period, saying so.
    pub(crate) async fn command_sweep_at(&self, now: DateTime<Utc>) -> EngineResult<()> {
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
                        EventKind::CommandDropped,
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

/// One key's lifecycle sweep, decided before its transaction.
struct KeySweep {
    k: StoredKey,
    state: KeyState,
    used: u32,
    available: u32,
    due: Vec<Milestone>,
    /// (is, was flagged)
    over: (bool, bool),
    low: (bool, bool),
    meter: bool,
    holders: Vec<String>,
}

impl KeySweep {
    fn apply(&self, tx: &Tx<'_>, fx: &mut Effects, now: DateTime<Utc>) -> Tr<()> {
        let (k, id, used) = (&self.k, self.k.key.id.as_str(), self.used);
        let ent = k.entitlement();
        for m in &self.due {
            tx.put_meta(&flag(m.event(), id), &ts(now))?;
            let message = milestone_message(*m, self.state, id, ent.expires, used, now);
            let event = m.event().parse().unwrap_or(EventKind::KeyExpired);
            fx.notify(
                tx,
                now,
                event,
                id,
                message,
                &[("expires", ent.expires.to_string())],
            )?;
        }
        match self.over {
            (true, false) => {
                tx.put_meta(&flag("over-allocated", id), &ts(now))?;
                let names = self.holders.join(", ");
                fx.notify(
                    tx,
                    now,
                    EventKind::OverAllocated,
                    id,
                    format!(
                        "key {id} is over-allocated: {used} seats granted of {} available; over the limit: {names}; new grants are refused until fixed",
                        self.available
                    ),
                    &[("used", used.to_string()), ("held", k.held.to_string()), ("over_limit", self.holders.join(","))],
                )?;
            }
            (false, true) => {
                tx.remove_meta(&flag("over-allocated", id))?;
                fx.notify(
                    tx,
                    now,
                    EventKind::OverAllocationResolved,
                    id,
                    format!("key {id} is within its {} seats again", k.held),
                    &[],
                )?;
            }
            _ => {}
        }
        let free = k.held.saturating_sub(used);
        match self.low {
            (true, false) => {
                tx.put_meta(&flag("seats-low", id), &ts(now))?;
                fx.notify(
                    tx,
                    now,
                    EventKind::SeatsLow,
                    id,
                    format!(
                        "key {id} is nearly used up: {free} of {} seats free",
                        k.held
                    ),
                    &[("free", free.to_string()), ("held", k.held.to_string())],
                )?;
            }
            (false, true) => tx.remove_meta(&flag("seats-low", id))?,
            _ => {}
        }
        if self.meter {
            meter_tx(tx, k, used, now)?;
        }
        Ok(())
    }
}

/// e02: what the administrator is told at each milestone.
fn milestone_message(
    m: Milestone,
    state: KeyState,
    id: &str,
    expires: chrono::NaiveDate,
    used: u32,
    now: DateTime<Utc>,
) -> String {
    match (m, state) {
        (Milestone::ExpiresSoon, _) => format!(
            "key {id} expires at the end of {expires} ({} days left); renew it before then",
            (keyfed_core::key::expiry_instant(expires) - now).num_days()
        ),
        (Milestone::Expired, KeyState::Grace { until }) => format!(
            "key {id} expired at the end of {expires}: in grace until {}, its seats keep working but it cannot be assigned or distributed",
            ts(until)
        ),
        (Milestone::Expired, _) => format!("key {id} expired at the end of {expires}"),
        (Milestone::Suspended, _) => format!(
            "key {id} is suspended: grace is over, its {used} seat(s) are withdrawn; nothing is deleted and a renewal restores them"
        ),
    }
}

/// e04/e05 (defect 3): a changed entitlement (an activation, a trial
/// extension) reaches every server holding seats of the key, which passes
/// it on to its own.
fn pass_on_entitlement(
    tx: &Tx<'_>,
    fx: &mut Effects,
    k: &StoredKey,
    grants: &[Grant],
    now: DateTime<Utc>,
) -> Tr<()> {
    for g in grants {
        let Some(g) = tx.grant::<EngineError>(&k.key.id, &g.object)? else {
            continue;
        };
        if g.kind == ObjectKind::Server {
            let body = seat_grant(k, g.seats, g.lent_until);
            fx.send(tx, &g.object, now, &k.key.id, body)?;
        }
    }
    Ok(())
}

/// e07: a tenancy change refused, as the engine reports it.
fn quota_error(e: QuotaError) -> EngineError {
    match e {
        QuotaError::NoTenant => EngineError::InvalidArgument(e.to_string()),
        QuotaError::License(l) => EngineError::License(l),
        QuotaError::NotASubscription { .. } | QuotaError::ReadOnly { .. } => {
            EngineError::FailedPrecondition(e.to_string())
        }
    }
}
