//! The usage history tree (issue 12): one point per (tier, key, node, time),
//! keyed `tier | key_id 0 node_id 0 | start (big-endian seconds)`, so one
//! series of one tier is a prefix and a time range within it a range scan.
use crate::{Store, StoreError, Tx, TxResult, USAGE_HISTORY};
use chrono::{DateTime, Utc};
use keyfed_core::usage_history::{Seats, Tier};
use serde::{Deserialize, Serialize};

/// One stored point: seats of `key_id` on `node_id` in the span of `tier`
/// starting at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPoint {
    pub tier: Tier,
    pub at: DateTime<Utc>,
    pub key_id: String,
    pub node_id: String,
    pub seats: Seats,
}

/// The prefix of one series of one tier.
fn series(tier: Tier, key_id: &str, node_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key_id.len() + node_id.len() + 3);
    k.push(tier.index());
    k.extend_from_slice(key_id.as_bytes());
    k.push(0);
    k.extend_from_slice(node_id.as_bytes());
    k.push(0);
    k
}

/// Big-endian seconds sort in time order; times before 1970 are never kept.
fn time_key(mut prefix: Vec<u8>, at: DateTime<Utc>) -> Vec<u8> {
    prefix.extend_from_slice(&u64::try_from(at.timestamp()).unwrap_or(0).to_be_bytes());
    prefix
}

fn point_key(p: &HistoryPoint) -> Vec<u8> {
    time_key(series(p.tier, &p.key_id, &p.node_id), p.at)
}

impl Store {
    /// Every (key, node) with points in `tier`: one seek per series, not a
    /// read of every point.
    pub fn history_series(&self, tier: Tier) -> Result<Vec<(String, String)>, StoreError> {
        let end = [tier.index() + 1];
        let mut from = vec![tier.index()];
        let mut out = Vec::new();
        while let Some(p) = self
            .range::<HistoryPoint>(USAGE_HISTORY, &from, Some(&end), 1)?
            .pop()
        {
            // past every time of this series: its terminating 0 becomes 1
            from = series(tier, &p.key_id, &p.node_id);
            if let Some(last) = from.last_mut() {
                *last = 1;
            }
            out.push((p.key_id, p.node_id));
        }
        Ok(out)
    }

    /// At most `limit` points of one series in `[from, to)`, oldest first.
    pub fn history_points(
        &self,
        tier: Tier,
        key_id: &str,
        node_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<HistoryPoint>, StoreError> {
        let prefix = series(tier, key_id, node_id);
        let lo = time_key(prefix.clone(), from);
        let hi = time_key(prefix, to);
        if lo >= hi {
            return Ok(Vec::new());
        }
        self.range(USAGE_HISTORY, &lo, Some(&hi), limit)
    }

    /// How many points the history holds in all (for tests and metrics).
    #[must_use]
    pub fn history_len(&self) -> usize {
        self.len(USAGE_HISTORY)
    }
}

impl Tx<'_> {
    /// The point of a series at `at`, to fold a new sample into.
    pub fn history_point<E: From<StoreError>>(
        &self,
        tier: Tier,
        key_id: &str,
        node_id: &str,
        at: DateTime<Utc>,
    ) -> TxResult<Option<HistoryPoint>, E> {
        self.read(USAGE_HISTORY, &time_key(series(tier, key_id, node_id), at))
    }

    pub fn put_history_point<E>(&self, p: &HistoryPoint) -> TxResult<(), E> {
        self.write(USAGE_HISTORY, &point_key(p), p)
    }

    pub fn remove_history_point<E>(&self, p: &HistoryPoint) -> TxResult<(), E> {
        self.remove(USAGE_HISTORY, &point_key(p))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::HistoryPoint;
    use crate::{Store, StoreError};
    use chrono::{DateTime, Duration, Utc};
    use keyfed_core::usage_history::{Seats, Tier};

    fn t0() -> DateTime<Utc> {
        "2026-03-01T00:00:00Z".parse().unwrap()
    }

    fn point(tier: Tier, key: &str, node: &str, minutes: i64, used: u32) -> HistoryPoint {
        HistoryPoint {
            tier,
            at: t0() + Duration::minutes(minutes),
            key_id: key.into(),
            node_id: node.into(),
            seats: Seats { held: 10, used },
        }
    }

    #[test]
    fn a_series_time_range_is_one_range_scan_on_both_backends() {
        let dir = tempfile::tempdir().unwrap();
        for store in [Store::open(dir.path()).unwrap(), Store::in_memory()] {
            let points = [
                point(Tier::Sample, "k1", "main", 0, 1),
                point(Tier::Sample, "k1", "main", 5, 2),
                point(Tier::Sample, "k1", "main", 10, 3),
                // a node whose id extends another's stays its own series
                point(Tier::Sample, "k1", "mainx", 5, 9),
                point(Tier::Sample, "k2", "main", 5, 4),
                point(Tier::Hour, "k1", "main", 0, 3),
            ];
            store
                .transact(|tx| {
                    for p in &points {
                        tx.put_history_point::<StoreError>(p)?;
                    }
                    Ok(())
                })
                .unwrap();
            let got = store
                .history_points(
                    Tier::Sample,
                    "k1",
                    "main",
                    t0() + Duration::minutes(5),
                    t0() + Duration::hours(1),
                    100,
                )
                .unwrap();
            assert_eq!(got, points[1..3].to_vec(), "from inclusive, in time order");
            let series = store.history_series(Tier::Sample).unwrap();
            let names: Vec<(&str, &str)> = series
                .iter()
                .map(|(k, n)| (k.as_str(), n.as_str()))
                .collect();
            assert_eq!(names, [("k1", "main"), ("k1", "mainx"), ("k2", "main")]);
            assert_eq!(store.history_series(Tier::Hour).unwrap().len(), 1);
            assert!(store.history_series(Tier::Day).unwrap().is_empty());
            let read = store
                .transact(|tx| {
                    tx.remove_history_point::<StoreError>(&points[0])?;
                    tx.history_point::<StoreError>(Tier::Hour, "k1", "main", t0())
                })
                .unwrap();
            assert_eq!(read, Some(points[5].clone()));
            assert_eq!(store.history_len(), points.len() - 1);
        }
    }
}
