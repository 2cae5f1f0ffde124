//! b05: usage up the tree. Each node rolls up its own and its subtree's usage
//! of the keys it got from a peer and sends it to that peer. A relayed line
//! keeps the time its own node measured it (t03, defect 9): a node that
//! vanished is not kept current by its parent.
use crate::engine::Engine;
use crate::error::EngineResult;
use crate::time::ts;
use chrono::{DateTime, Utc};
use keyfed_wire::v1 as pb;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

impl Engine {
    /// This node's rows, and with `tree` every row its subtree reported.
    pub fn usage_rows(&self, tree: bool) -> EngineResult<Vec<pb::KeyUsage>> {
        self.usage_rows_at(tree, self.now())
    }

    pub(crate) fn usage_rows_at(
        &self,
        tree: bool,
        now: DateTime<Utc>,
    ) -> EngineResult<Vec<pb::KeyUsage>> {
        let now = ts(now);
        let mut rows = Vec::new();
        for k in self.store.keys()? {
            let used = self.store.used(&k.key.id)?;
            rows.push(pb::KeyUsage {
                node_id: self.id().into(),
                key_id: k.key.id.clone(),
                seats: k.held,
                used,
                free: k.held.saturating_sub(used),
                reported_at: now.clone(),
            });
        }
        if tree {
            for l in self.store.usage_lines()? {
                rows.push(pb::KeyUsage {
                    node_id: l.node_id,
                    key_id: l.key_id,
                    seats: l.seats,
                    used: l.used,
                    free: l.seats.saturating_sub(l.used),
                    reported_at: ts(l.reported_at),
                });
            }
        }
        Ok(rows)
    }

    /// Forgets what was last rolled up, so the next tick sends every rollup
    /// again with a fresh `reported_at`: telemetry (t01) counts a subtree
    /// node as reporting only while its line is recent.
    pub fn refresh_rollups(&self) -> EngineResult<()> {
        for k in self.store.keys()? {
            if let Some(peer) = k.origin.peer() {
                self.store.set_meta(&format!("rollup:{peer}"), "")?;
            }
        }
        self.usage_dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Queues a rollup to each peer we hold keys from, when it changed.
    pub(crate) async fn roll_up_usage_at(&self, now: DateTime<Utc>) -> EngineResult<()> {
        if !self.usage_dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let rows = self.usage_rows_at(true, now)?;
        let keys = self.store.keys()?;
        let mut by_peer: BTreeMap<String, Vec<pb::UsageLine>> = BTreeMap::new();
        for k in &keys {
            let Some(peer) = k.origin.peer() else {
                continue;
            };
            let lines = by_peer.entry(peer.to_owned()).or_default();
            for r in rows.iter().filter(|r| r.key_id == k.key.id) {
                // this node's own lines are stamped when sent; a subtree
                // line keeps the time its node measured it
                let own = r.node_id == self.id();
                lines.push(pb::UsageLine {
                    node_id: r.node_id.clone(),
                    key_id: r.key_id.clone(),
                    seats: r.seats,
                    used: r.used,
                    reported_at: if own {
                        String::new()
                    } else {
                        r.reported_at.clone()
                    },
                });
            }
        }
        for (peer, lines) in by_peer {
            let fingerprint = format!("{lines:?}");
            let meta = format!("rollup:{peer}");
            if self.store.meta(&meta)?.as_deref() == Some(fingerprint.as_str()) {
                continue;
            }
            let stamped: Vec<pb::UsageLine> = lines
                .into_iter()
                .map(|mut l| {
                    if l.reported_at.is_empty() {
                        l.reported_at = ts(now);
                    }
                    l
                })
                .collect();
            self.commit(|tx, fx| {
                fx.send(
                    tx,
                    &peer,
                    now,
                    "",
                    pb::delivery::Body::Usage(pb::UsageRollup {
                        keys: vec![],
                        lines: stamped.clone(),
                    }),
                )?;
                Ok(())
            })
            .await?;
            self.store.set_meta(&meta, &fingerprint)?;
        }
        Ok(())
    }
}
