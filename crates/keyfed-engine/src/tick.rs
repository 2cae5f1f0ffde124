//! Periodic work, deciding by the injected clock (the shell calls
//! [`Engine::tick`] on a real-time interval): the scheduled renewal task
//! (r01), the free-seat poll (r11), seat donations (b01), expiry and command
//! sweeps, station retirement (b03), telemetry (t01) and usage rollups (b05).
use crate::engine::{seat_grant, withdrawn, Engine};
use crate::error::{EngineError, EngineResult};
use crate::time::{parse_ts, ts};
use chrono::Duration;
use keyfed_store::{ObjectKind, Origin};

/// How often silent stations are looked for (b03 counts in days).
const STATION_SWEEP_SECS: i64 = 3600;

/// True once `every_secs` passed since the time recorded under `meta`; the
/// first call only starts the period, so a fresh node does not run at once.
fn due(node: &Engine, meta: &str, every_secs: i64) -> EngineResult<bool> {
    let last = node
        .store
        .meta(meta)?
        .and_then(|s| parse_ts(meta, &s).ok().flatten());
    let Some(last) = last else {
        node.store.set_meta(meta, &ts(node.now()))?;
        return Ok(false);
    };
    Ok(node.now() >= last + Duration::seconds(every_secs))
}

impl Engine {
    /// One scheduler tick: everything that is due by the clock runs.
    pub async fn tick(&self) -> EngineResult<()> {
        once(self).await
    }
}

async fn once(node: &Engine) -> EngineResult<()> {
    if node.config.update_license_keys
        && node.config.has_upstream
        && due(
            node,
            "last_renewal_check",
            node.config.renewal_interval_secs,
        )?
    {
        let outcomes = node.check_for_updates(None).await?;
        tracing::info!(node = %node.id(), keys = outcomes.len(), "scheduled renewal task ran");
    }
    if due(node, "last_seat_poll", node.config.seat_poll_secs)? {
        node.fill_waiting().await?;
        node.store.set_meta("last_seat_poll", &ts(node.now()))?;
    }
    donations(node).await?;
    node.lifecycle_sweep().await?;
    node.command_sweep().await?;
    // b03: a station sweep reads every station record, so not every tick
    if due(node, "last_station_sweep", STATION_SWEEP_SECS)? {
        node.retire_silent_stations().await?;
        node.store.set_meta("last_station_sweep", &ts(node.now()))?;
    }
    node.telemetry_tick().await;
    // b05: rollups go up when usage changes, and again every
    // usage_report_secs so the parent's `reported_at` says the node is alive
    if due(node, "last_usage_refresh", node.config.usage_report_secs)? {
        node.refresh_rollups()?;
        node.store.set_meta("last_usage_refresh", &ts(node.now()))?;
    }
    node.roll_up_usage().await
}

/// b01: donated seats are renewed while the neighbor stays linked and come
/// back when the period ends without renewal; borrowed seats lapse likewise.
async fn donations(node: &Engine) -> EngineResult<()> {
    let now = node.now();
    let period = Duration::days(node.config.donation_days);
    // only neighbors hold lent seats: point reads per (key, neighbor), never
    // a scan of every grant (stations hold most of them)
    let keys = node.store.keys()?;
    let mut lent = Vec::new();
    for n in &node.config.neighbors {
        for k in &keys {
            if let Some(g) = node.store.grant(&k.key.id, &n.node_id)? {
                lent.push(g);
            }
        }
    }
    for g in lent {
        let (ObjectKind::Server, Some(until)) = (g.kind, g.lent_until) else {
            continue;
        };
        let online = node.peer_meta(&g.object).is_some_and(|m| m.online);
        if now >= until {
            node.commit(|tx, fx| {
                if tx.remove_grant::<EngineError>(&g.key_id, &g.object)?.is_none() {
                    return Ok(());
                }
                fx.send(tx, &g.object, now, &g.key_id, withdrawn(&g.key_id, "the lending period ended".into()))?;
                fx.notify(tx, now, "donation-returned", &g.key_id, format!("{} seat(s) of key {} lent to {} came back: the period ended without renewal", g.seats, g.key_id, g.object), &[("object", g.object.clone())])
            })
            .await?;
        } else if online && until - now <= period / 2 {
            let renewed_until = now + period;
            node.commit(|tx, fx| {
                let Some(mut mine) = tx.grant::<EngineError>(&g.key_id, &g.object)? else {
                    return Ok(());
                };
                let Some(k) = tx.key::<EngineError>(&g.key_id)? else {
                    return Ok(());
                };
                mine.lent_until = Some(renewed_until);
                tx.put_grant(&mine)?;
                fx.send(
                    tx,
                    &g.object,
                    now,
                    &g.key_id,
                    seat_grant(&k, mine.seats, mine.lent_until),
                )?;
                Ok(())
            })
            .await?;
        }
    }
    for k in keys {
        let (Origin::Peer(peer), Some(until)) = (&k.origin, k.lent_until) else {
            continue;
        };
        if now < until {
            continue;
        }
        let grants = node.store.grants_of_key(&k.key.id)?;
        let peer = peer.clone();
        node.commit(|tx, fx| {
            for g in &grants {
                if tx
                    .remove_grant::<EngineError>(&k.key.id, &g.object)?
                    .is_some()
                    && g.kind == ObjectKind::Server
                {
                    fx.send(
                        tx,
                        &g.object,
                        now,
                        &k.key.id,
                        withdrawn(&k.key.id, "the lender's period ended".into()),
                    )?;
                }
            }
            tx.remove_key::<EngineError>(&k.key.id)?;
            fx.notify(
                tx,
                now,
                "donation-lapsed",
                &k.key.id,
                format!(
                    "seats of key {} lent by {peer} lapsed: not renewed before {}",
                    k.key.id,
                    ts(until)
                ),
                &[("from", peer.clone())],
            )
        })
        .await?;
    }
    Ok(())
}
