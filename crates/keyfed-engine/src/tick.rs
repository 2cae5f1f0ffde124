//! Periodic work, deciding by the time the tick carries (the shell calls
//! [`Engine::tick`] on a real-time interval): the free-seat poll (r11), seat
//! donations (b01, `keyfed_core::donation`), expiry and command sweeps,
//! station retirement (b03), the r08 old-key notices, telemetry state (t01)
//! and usage rollups (b05). The deterministic part is
//! [`crate::command::Command::Tick`]; what it finds due that needs the
//! upstream (the scheduled renewal task, r01, and sending the usage report)
//! the wrapper runs after it.
//!
//! r11: seats freed by a sweep (a donation whose period ended, a borrowed
//! key that lapsed) are deliberately not handed to waiting objects in the
//! sweep's own transaction: the seat poll, every `seat_poll_secs`, serves
//! them, as the rule says a neighbor without a seat is checked every minute.
use crate::engine::{seat_grant, withdrawn, Engine};
use crate::error::{EngineError, EngineResult};
use crate::lending::{borrowed_lapsed_tx, Lapsed};
use crate::time::{parse_ts, ts};
use chrono::{DateTime, Duration, Utc};
use keyfed_core::donation::{borrowed_lapsed, review, LendingStep};
use keyfed_core::event::EventKind;
use keyfed_store::{Grant, ObjectKind, Origin, StoredKey};

/// How often silent stations are looked for (b03 counts in days).
const STATION_SWEEP_SECS: i64 = 3600;

/// What a tick found due that needs the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TickDue {
    /// r01: the scheduled renewal task.
    pub renewal: bool,
    /// t01: the usage report is to be sent.
    pub telemetry: bool,
}

/// True once `every_secs` passed since the time recorded under `meta`; the
/// first call only starts the period, so a fresh node does not run at once.
fn due(node: &Engine, meta: &str, every_secs: i64, now: DateTime<Utc>) -> EngineResult<bool> {
    let last = node
        .store
        .meta(meta)?
        .and_then(|s| parse_ts(meta, &s).ok().flatten());
    let Some(last) = last else {
        node.store.set_meta(meta, &ts(now))?;
        return Ok(false);
    };
    Ok(now >= last + Duration::seconds(every_secs))
}

/// Entropy for the node's telemetry identity, made once (t01).
pub(crate) fn random_seed() -> EngineResult<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| {
        EngineError::FailedPrecondition(format!("no randomness for the node identity: {e}"))
    })?;
    Ok(seed)
}

impl Engine {
    /// One scheduler tick: everything that is due by the clock runs.
    pub async fn tick(&self) -> EngineResult<()> {
        let cmd = crate::command::Command::Tick {
            now: self.now(),
            seed: random_seed()?,
        };
        let due = self.execute(cmd).await?.ticked()?;
        if due.renewal {
            let outcomes = self.check_for_updates(None).await?;
            tracing::info!(node = %self.id(), keys = outcomes.len(), "scheduled renewal task ran");
        }
        if due.telemetry {
            // the outcome is recorded in the state and shown by `telemetry status`
            let _ = self.send_telemetry().await;
        }
        Ok(())
    }

    /// The deterministic part of a tick at `now`.
    pub(crate) async fn tick_at(
        &self,
        now: DateTime<Utc>,
        seed: [u8; 32],
    ) -> EngineResult<TickDue> {
        let renewal = self.config.update_license_keys
            && self.config.has_upstream
            && due(
                self,
                "last_renewal_check",
                self.config.renewal_interval_secs,
                now,
            )?;
        if due(self, "last_seat_poll", self.config.seat_poll_secs, now)? {
            self.fill_waiting_at(now).await?;
            self.store.set_meta("last_seat_poll", &ts(now))?;
        }
        self.donations(now).await?;
        self.lifecycle_sweep_at(now).await?;
        self.old_key_notices(now).await?;
        // r07: renewals acked just before a crash (see renewal/taken.rs)
        self.renewals_taken(now).await?;
        self.command_sweep_at(now).await?;
        // b03: a station sweep reads every station record, so not every tick
        if due(self, "last_station_sweep", STATION_SWEEP_SECS, now)? {
            self.retire_silent_stations_at(now).await?;
            self.store.set_meta("last_station_sweep", &ts(now))?;
        }
        let telemetry = self.telemetry_tick(now, seed).await;
        // b05: rollups go up when usage changes, and again every
        // usage_report_secs so the parent's `reported_at` says the node is alive
        if due(
            self,
            "last_usage_refresh",
            self.config.usage_report_secs,
            now,
        )? {
            self.refresh_rollups()?;
            self.store.set_meta("last_usage_refresh", &ts(now))?;
        }
        self.roll_up_usage_at(now).await?;
        self.sample_usage_at(now).await?;
        Ok(TickDue { renewal, telemetry })
    }

    /// b01: donated seats are renewed for their own period while the
    /// neighbor stays linked and come back when the period ends without
    /// renewal; borrowed seats lapse likewise.
    async fn donations(&self, now: DateTime<Utc>) -> EngineResult<()> {
        // only neighbors hold lent seats: point reads per (key, neighbor),
        // never a scan of every grant (stations hold most of them)
        let keys = self.store.keys()?;
        for n in &self.config.neighbors {
            for k in &keys {
                if let Some(g) = self.store.grant(&k.key.id, &n.node_id)? {
                    self.review_lending(g, now).await?;
                }
            }
        }
        for k in keys {
            if let (Origin::Peer(_), Some(until)) = (&k.origin, k.lent_until) {
                if borrowed_lapsed(until, now) {
                    self.borrowed_lapsed(&k, until, now).await?;
                }
            }
        }
        Ok(())
    }

    async fn review_lending(&self, g: Grant, now: DateTime<Utc>) -> EngineResult<()> {
        let Some(lending) = self.lending_of(g.lent_until, g.lent_days) else {
            return Ok(());
        };
        if g.kind != ObjectKind::Server {
            return Ok(());
        }
        let online = self.peer_meta(&g.object).is_some_and(|m| m.online);
        match review(lending, online, now) {
            LendingStep::Keep => Ok(()),
            LendingStep::Return => {
                self.commit(|tx, fx| {
                    if tx.remove_grant::<EngineError>(&g.key_id, &g.object)?.is_none() {
                        return Ok(());
                    }
                    crate::engine::retire_if_free(tx, fx, &g.key_id, now)?;
                    let why = "the lending period ended".to_owned();
                    fx.send(tx, &g.object, now, &g.key_id, withdrawn(&g.key_id, why))?;
                    fx.notify(tx, now, EventKind::DonationReturned, &g.key_id, format!("{} seat(s) of key {} lent to {} came back: the period ended without renewal", g.seats, g.key_id, g.object), &[("object", g.object.clone())])
                })
                .await
            }
            LendingStep::Renew(next) => {
                self.commit(|tx, fx| {
                    let Some(mut mine) = tx.grant::<EngineError>(&g.key_id, &g.object)? else {
                        return Ok(());
                    };
                    let Some(k) = tx.key::<EngineError>(&g.key_id)? else {
                        return Ok(());
                    };
                    mine.lent_until = Some(next.until);
                    mine.lent_days = Some(next.period_days);
                    tx.put_grant(&mine)?;
                    let body = seat_grant(&k, mine.seats, mine.lent_until);
                    fx.send(tx, &g.object, now, &g.key_id, body)?;
                    Ok(())
                })
                .await
            }
        }
    }

    /// b01, the borrower's side: the lender did not renew in time. The
    /// seats go back to the lender by message (r13), so it need not wait
    /// for its own clock to free them.
    async fn borrowed_lapsed(
        &self,
        k: &StoredKey,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> EngineResult<()> {
        let grants = self.store.grants_of_key(&k.key.id)?;
        let Some(lender) = k.origin.peer() else {
            return Ok(());
        };
        self.commit(|tx, fx| {
            // re-read: a delivery may have renewed or withdrawn it meanwhile
            let Some(now_held) = tx.key::<EngineError>(&k.key.id)? else {
                return Ok(());
            };
            if now_held.lent_until != Some(until) {
                return Ok(());
            }
            let lapsed = Lapsed {
                lender,
                key_id: &k.key.id,
                until,
                held: true,
                grants: &grants,
                why: format!("not renewed before {}", ts(until)),
            };
            borrowed_lapsed_tx(tx, fx, &lapsed, now)
        })
        .await
    }
}
