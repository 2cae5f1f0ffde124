//! r07 after a crash: renewals a server acked whose effects were lost.
//!
//! A peer's ack is recorded in one transaction (the link's
//! `Store::ack` removes the acked outbox entries) and its effects in a
//! second (`Engine::on_acked`: for a renewal, the server's grant of the old
//! key goes and the old key retires once free). A node killed between the
//! two kept the old grant forever and the old key never retired; the
//! server had taken the renewal and never acks it again. The kill loop
//! found it (`main still holds k-… (superseded by k-…), granted to:
//! [neighbor=3]`, and the neighbor no longer holding it). Every tick (the
//! first right after a start) looks for such grants by
//! `keyfed_core::renewal_plan::renewal_was_taken` and applies the effects.
use crate::engine::{retire_if_free, Engine};
use crate::error::{EngineError, EngineResult};
use chrono::{DateTime, Utc};
use keyfed_core::renewal_plan::{renewal_was_taken, supports_auto_renewal, OldServerGrant};
use keyfed_store::{ObjectKind, StoredKey};

/// One server grant of a superseded key whose renewal was taken.
struct Taken {
    old: String,
    /// The key that superseded `old`, if the server holds a grant of it.
    successor: Option<String>,
    peer: String,
    /// The peer's outbox sequence when read: anything queued since (a new
    /// renewal) makes the transaction leave the grant to a later tick.
    queued: u64,
}

impl Engine {
    /// The newest key after `k` in its renewal chain that `peer` holds a
    /// grant of, and whether that is `k`'s direct successor.
    fn newer_grant(
        &self,
        keys: &[StoredKey],
        k: &StoredKey,
        peer: &str,
    ) -> EngineResult<Option<bool>> {
        let mut next = k.superseded_by.clone();
        let mut found = None;
        for hop in 0..32 {
            let Some(id) = next else { break };
            if self.store.grant(&id, peer)?.is_some() {
                found = Some(hop == 0);
            }
            next = keys
                .iter()
                .find(|o| o.key.id == id)
                .and_then(|o| o.superseded_by.clone());
        }
        Ok(found)
    }

    pub(crate) async fn renewals_taken(&self, now: DateTime<Utc>) -> EngineResult<()> {
        let keys = self.store.keys()?;
        let mut due = Vec::new();
        for k in keys.iter().filter(|k| k.superseded_by.is_some()) {
            for g in self.store.grants_of_key(&k.key.id)? {
                if g.kind != ObjectKind::Server {
                    continue;
                }
                let queued = self.store.cursor(&g.object)?.last_queued;
                let newer = self.newer_grant(&keys, k, &g.object)?;
                let pending = self
                    .store
                    .outbox(&g.object)?
                    .iter()
                    .any(|e| e.key_id == k.key.id);
                let held = OldServerGrant {
                    auto_renewal: supports_auto_renewal(self.peer_protocol(&g.object)),
                    holds_newer: newer.is_some(),
                    pending,
                };
                if renewal_was_taken(held) {
                    due.push(Taken {
                        old: k.key.id.clone(),
                        successor: newer.filter(|d| *d).and(k.superseded_by.clone()),
                        peer: g.object,
                        queued,
                    });
                }
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        self.commit(|tx, fx| {
            for t in &due {
                if tx.cursor::<EngineError>(&t.peer)?.last_queued != t.queued {
                    continue;
                }
                if tx.remove_grant::<EngineError>(&t.old, &t.peer)?.is_none() {
                    continue;
                }
                // what the lost ack would have done (delivery.rs `renewal_taken`)
                if let Some(id) = &t.successor {
                    if let Some(mut g) = tx.grant::<EngineError>(id, &t.peer)? {
                        g.delivered = true;
                        tx.put_grant(&g)?;
                    }
                }
                tracing::info!(node = %self.id(), peer = %t.peer, key_id = %t.old, "a renewal the peer acked before a crash is taken: its old grant goes (r07)");
                retire_if_free(tx, fx, &t.old, now)?;
            }
            Ok(())
        })
        .await
    }
}
