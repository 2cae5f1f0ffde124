//! Usage history (issue 12): the tick samples seats held, used and free per
//! key, for this node and every subtree row of the b05 roll-up, folds each
//! sample into the hour and day points and drops what each tier no longer
//! keeps (`keyfed_core::usage_history`); `UsageHistory` reads it back.
use crate::engine::Engine;
use crate::error::{EngineError, EngineResult};
use crate::time::{parse_ts, ts};
use chrono::{DateTime, Duration, Utc};
use keyfed_core::names::{self, NameKind};
use keyfed_core::usage_history::{fold, Seats, Tier, Tiers};
use keyfed_store::{HistoryPoint, StoreError};
use keyfed_wire::v1 as pb;

/// The meta entry holding the time of the last sample.
const LAST_SAMPLE: &str = "last_usage_sample";
/// Most points one answer carries; a wider request is refused.
pub const MAX_POINTS: usize = 100_000;
/// Stale points removed per series and tier in one pass (a node that was
/// off for months catches up over a few ticks, not in one huge transaction).
const PRUNE_BATCH: usize = 5_000;

/// A checked `UsageHistoryRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub key_id: Option<String>,
    /// None: every node (`*`).
    pub node_id: Option<String>,
    pub tier: Tier,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl HistoryQuery {
    /// Checks `r` at `now` for a node `self_id` sampling with `tiers`; the
    /// error names the field that was wrong.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] for a bad key or node id, time,
    /// range or resolution.
    pub fn parse(
        r: &pb::UsageHistoryRequest,
        self_id: &str,
        tiers: Tiers,
        now: DateTime<Utc>,
    ) -> EngineResult<Self> {
        let invalid = EngineError::InvalidArgument;
        let key_id = (!r.key_id.is_empty()).then(|| r.key_id.clone());
        if let Some(k) = &key_id {
            names::validate(NameKind::KeyId, k).map_err(|e| invalid(format!("key_id: {e}")))?;
        }
        let node_id = match r.node_id.as_str() {
            "" => Some(self_id.to_owned()),
            "*" => None,
            n => {
                names::validate(NameKind::NodeId, n).map_err(|e| {
                    invalid(format!(
                        "node_id: {e} (or empty: this node, \"*\": every node)"
                    ))
                })?;
                Some(n.to_owned())
            }
        };
        let time = |field: &str, s: &str| {
            parse_ts(field, s)
                .map_err(|e| invalid(format!("{e} (give RFC 3339, e.g. 2026-03-01T00:00:00Z)")))
        };
        let from = time("from", &r.from)?;
        let given_to = time("to", &r.to)?;
        // empty `to` is now, with the sample taken at now included
        let to = given_to.unwrap_or(now + Duration::seconds(1));
        let named = tiers
            .tier_named(&r.resolution)
            .map_err(|e| invalid(e.to_string()))?;
        // without `from`, the range reaches back as far as the tier keeps,
        // so pick the tier that still holds the span before `to`
        let oldest = from.or(given_to.map(|t| t - Duration::seconds(1)));
        let tier =
            named.unwrap_or_else(|| oldest.map_or(Tier::Sample, |f| tiers.finest_keeping(f, now)));
        // the point whose span holds `from` covers part of the range
        let from_given = from.is_some();
        let from = from.map_or(tiers.cutoff(tier, now), |f| tiers.bucket(tier, f));
        if from >= to {
            let why = if from_given {
                "the range is empty".to_owned()
            } else {
                format!(
                    "resolution {} keeps points since {} only: ask for a coarser one",
                    tiers.label(tier),
                    ts(from)
                )
            };
            return Err(invalid(format!(
                "from {} is not before to {}: {why}",
                ts(from),
                ts(to)
            )));
        }
        Ok(Self {
            key_id,
            node_id,
            tier,
            from,
            to,
        })
    }
}

fn point(tiers: Tiers, p: HistoryPoint) -> pb::UsagePoint {
    pb::UsagePoint {
        at: ts(p.at),
        node_id: p.node_id,
        key_id: p.key_id,
        held: p.seats.held,
        used: p.seats.used,
        free: p.seats.free(),
        resolution: tiers.label(p.tier),
    }
}

impl Engine {
    fn tiers(&self) -> Tiers {
        self.config.usage_history.interval
    }

    /// `UsageHistory`: the points of the query, by key, node and time.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] for a bad request or one whose range
    /// holds more than [`MAX_POINTS`].
    pub fn usage_history(
        &self,
        r: &pb::UsageHistoryRequest,
    ) -> EngineResult<pb::UsageHistoryReply> {
        let tiers = self.tiers();
        let q = HistoryQuery::parse(r, self.id(), tiers, self.now())?;
        let mut points = Vec::new();
        for (key_id, node_id) in self.store.history_series(q.tier)? {
            let wanted = q.key_id.as_ref().is_none_or(|k| *k == key_id)
                && q.node_id.as_ref().is_none_or(|n| *n == node_id);
            if !wanted {
                continue;
            }
            let left = MAX_POINTS + 1 - points.len();
            let got = self
                .store
                .history_points(q.tier, &key_id, &node_id, q.from, q.to, left)?;
            points.extend(got.into_iter().map(|p| point(tiers, p)));
            if points.len() > MAX_POINTS {
                return Err(EngineError::InvalidArgument(format!(
                    "the range holds more than {MAX_POINTS} points: narrow it with key_id, node_id, from and to, or ask for a coarser resolution (1h, 1d)"
                )));
            }
        }
        Ok(pb::UsageHistoryReply {
            points,
            resolution: tiers.label(q.tier),
        })
    }

    /// From the tick: a sample when one is due, then the pruning, then one
    /// sync for both (once per interval), so a restart finds exactly the
    /// history the node answered with.
    pub(crate) async fn sample_usage_at(&self, now: DateTime<Utc>) -> EngineResult<()> {
        let tiers = self.tiers();
        let last = self
            .store
            .meta(LAST_SAMPLE)?
            .and_then(|s| parse_ts(LAST_SAMPLE, &s).ok().flatten());
        if !tiers.sample_due(last, now) {
            return Ok(());
        }
        let rows = self.usage_rows_at(true, now)?;
        self.store.transact(|tx| {
            for r in &rows {
                let sample = Seats {
                    held: r.seats,
                    used: r.used,
                };
                for tier in Tier::ALL {
                    let at = tiers.bucket(tier, now);
                    let seats = match tier {
                        Tier::Sample => sample,
                        _ => fold(
                            tx.history_point::<EngineError>(tier, &r.key_id, &r.node_id, at)?
                                .map(|p| p.seats),
                            sample,
                        ),
                    };
                    tx.put_history_point::<EngineError>(&HistoryPoint {
                        tier,
                        at,
                        key_id: r.key_id.clone(),
                        node_id: r.node_id.clone(),
                        seats,
                    })?;
                }
            }
            tx.put_meta::<EngineError>(LAST_SAMPLE, &ts(now))
        })?;
        self.prune_history_at(now)?;
        self.durable().await?;
        Ok(())
    }

    /// Drops the points each tier no longer keeps (the coarser tier holds
    /// their peak already), series by series.
    fn prune_history_at(&self, now: DateTime<Utc>) -> EngineResult<()> {
        let tiers = self.tiers();
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        for tier in Tier::ALL {
            let cutoff = tiers.cutoff(tier, now);
            for (key_id, node_id) in self.store.history_series(tier)? {
                let stale = self.store.history_points(
                    tier,
                    &key_id,
                    &node_id,
                    epoch,
                    cutoff,
                    PRUNE_BATCH,
                )?;
                if stale.is_empty() {
                    continue;
                }
                self.store.transact::<(), StoreError, _>(|tx| {
                    for p in &stale {
                        tx.remove_history_point(p)?;
                    }
                    Ok(())
                })?;
            }
        }
        Ok(())
    }
}
