//! Store epochs at Hello (issue 15 §3): when a peer's store, or this one,
//! is not the store the other side knew (wiped, restored from a backup, or
//! its data dir copied back), `keyfed_core::reconcile` decides and this
//! module applies the plan in one transaction before the link's deliveries
//! start: the peer's epoch recorded, the applied cursor of its outbox reset,
//! this node's outbox numbered past what the peer applied, a new own epoch
//! after a rollback, and a full resync of what this node is authoritative
//! for toward the peer, each as a fresh outbox entry (new sequence, new
//! message id, so neither the sequence check nor `first_sight` drops it):
//!
//! - every seat grant it holds for the peer, absolute, with the key file and
//!   the lending end (re-applying one only sets the seats again);
//! - toward a key's origin: the counted station seats of its keys as claims
//!   (b02; the origin answers `confirmed` again, or `duplicate`), and the
//!   usage rollup (b05), sent again at the next tick.
//!
//! Each cause is told to the administrator as `peer-store-replaced`.
use crate::engine::{seat_grant, Effects, Engine};
use crate::error::{EngineError, EngineResult};
use chrono::{DateTime, Utc};
use keyfed_core::event::EventKind;
use keyfed_core::reconcile::{self, Cause, HelloView, Plan};
use keyfed_store::{Grant, ObjectKind, StoredKey, Tx};
use keyfed_wire::v1 as pb;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

type Tr<T> = keyfed_store::TxResult<T, EngineError>;

/// What this node sends a peer whose store (or its own) was replaced.
#[derive(Default)]
struct Resync {
    /// (key, grant) of every seat grant this node holds for the peer.
    grants: Vec<(StoredKey, Grant)>,
    /// (key, station fingerprint) of every counted station seat of a key
    /// the peer gave this node.
    claims: Vec<(StoredKey, String)>,
}

impl Engine {
    /// Reconciles with `peer` at its Hello, before acks and deliveries; an
    /// empty plan (the usual case, and always with a peer of an older
    /// version) changes nothing.
    pub async fn reconcile_at_hello(&self, peer: &str, hello: &pb::Hello) -> EngineResult<Plan> {
        self.reconcile_at(peer, hello, self.now()).await
    }

    pub(crate) async fn reconcile_at(
        &self,
        peer: &str,
        hello: &pb::Hello,
        now: DateTime<Utc>,
    ) -> EngineResult<Plan> {
        if self.config.protocol_version < keyfed_core::PROTOCOL_VERSION {
            // configured as an older version: it knows no epochs (r08)
            return Ok(Plan::default());
        }
        let my_epoch = self.store.epoch()?;
        let cursor = self.store.cursor(peer)?;
        let plan = reconcile::at_hello(&HelloView {
            my_epoch: &my_epoch,
            recorded_peer_epoch: &cursor.peer_epoch,
            peer_epoch: &hello.store_epoch,
            peer_saw_my_epoch: &hello.peer_epoch_seen,
            peer_applied_mine: hello.last_applied_seq,
            my_outbox_head: cursor.last_queued,
        });
        if plan.is_empty() {
            return Ok(plan);
        }
        let resync = if plan.resync {
            self.resync_of(peer)?
        } else {
            Resync::default()
        };
        let new_epoch = plan.new_own_epoch.then(|| self.store.next_epoch(&my_epoch));
        self.commit(|tx, fx| {
            let mut c = tx.cursor::<EngineError>(peer)?;
            if let Some(e) = &plan.record_peer_epoch {
                c.peer_epoch.clone_from(e);
            }
            if plan.reset_applied {
                c.applied = 0;
            }
            if let Some(n) = plan.advance_outbox_to {
                // the entries up to n go when the Hello's last_applied is
                // counted as acked, right after this
                c.last_queued = c.last_queued.max(n);
            }
            tx.put_cursor(peer, &c)?;
            if let Some(e) = &new_epoch {
                tx.put_epoch::<EngineError>(e)?;
            }
            for cause in &plan.causes {
                let epoch_now = new_epoch.as_deref().unwrap_or(&my_epoch);
                notify_cause(tx, fx, peer, cause, epoch_now, hello, now)?;
            }
            if plan.resync {
                send_resync(tx, fx, peer, &resync, now)?;
            }
            Ok(())
        })
        .await?;
        if plan.resync && self.holds_keys_of(peer)? {
            // b05: the peer may have lost the last rollup: the next tick
            // sends it again (not at once: the peer's resent grants are
            // still on their way, and lines above them would be refused)
            self.store.set_meta(&format!("rollup:{peer}"), "")?;
            self.usage_dirty.store(true, Ordering::Relaxed);
        }
        tracing::warn!(node = %self.id(), %peer, causes = ?plan.causes, "link reconciled after a store was replaced");
        Ok(plan)
    }

    fn holds_keys_of(&self, peer: &str) -> EngineResult<bool> {
        Ok(self
            .store
            .keys()?
            .iter()
            .any(|k| k.origin.peer() == Some(peer)))
    }

    /// Reads what a full resync to `peer` sends.
    fn resync_of(&self, peer: &str) -> EngineResult<Resync> {
        let keys: HashMap<String, StoredKey> = self
            .store
            .keys()?
            .into_iter()
            .map(|k| (k.key.id.clone(), k))
            .collect();
        let grants = self.store.all_grants()?;
        let mut out = Resync::default();
        for g in grants {
            let Some(k) = keys.get(&g.key_id) else {
                continue;
            };
            if g.object == peer && g.kind == ObjectKind::Server {
                // a superseded key goes only while the peer holds no seat of
                // its renewal (the renewal's grant is sent instead)
                let renewed = k
                    .superseded_by
                    .as_ref()
                    .and_then(|new| self.store.grant(new, peer).ok().flatten())
                    .is_some();
                if !renewed {
                    out.grants.push((k.clone(), g));
                }
            } else if g.kind == ObjectKind::Station && k.origin.peer() == Some(peer) {
                out.claims.push((k.clone(), g.object.clone()));
            }
        }
        Ok(out)
    }
}

fn send_resync(
    tx: &Tx<'_>,
    fx: &mut Effects,
    peer: &str,
    r: &Resync,
    now: DateTime<Utc>,
) -> Tr<()> {
    for (k, g) in &r.grants {
        // re-read: the grant may have changed since it was listed
        let Some(g) = tx.grant::<EngineError>(&k.key.id, &g.object)? else {
            continue;
        };
        fx.send(
            tx,
            peer,
            now,
            &k.key.id,
            seat_grant(k, g.seats, g.lent_until),
        )?;
    }
    for (k, fp) in &r.claims {
        fx.send(tx, peer, now, &k.key.id, crate::claims::claim(k, fp, false))?;
    }
    Ok(())
}

fn notify_cause(
    tx: &Tx<'_>,
    fx: &mut Effects,
    peer: &str,
    cause: &Cause,
    my_epoch: &str,
    hello: &pb::Hello,
    now: DateTime<Utc>,
) -> Tr<()> {
    let (kind, message) = match cause {
        Cause::PeerReplaced { was, now: is } => (
            "peer-replaced",
            format!(
                "the store of {peer} is not the one this node knew (epoch {was}, now {is}): it was wiped or restored from a backup; its deliveries are counted anew and everything this node is authoritative for toward {peer} was sent to it again"
            ),
        ),
        Cause::Replaced { peer_saw } => (
            "this-store-replaced",
            format!(
                "{peer} knew another store of this node (epoch {peer_saw}, now {my_epoch}): this store was wiped or restored from a backup; this node numbers its deliveries to {peer} past the {} it applied and sent it everything it is authoritative for again",
                hello.last_applied_seq
            ),
        ),
        Cause::RolledBack { peer_applied, head } => (
            "this-store-rolled-back",
            format!(
                "{peer} applied delivery {peer_applied} from this node, whose outbox to it only reached {head}: this store was rolled back (its data dir copied back); it took a new epoch {my_epoch}, numbers its deliveries to {peer} past {peer_applied} and sent it everything it is authoritative for again"
            ),
        ),
    };
    fx.notify(
        tx,
        now,
        EventKind::PeerStoreReplaced,
        "",
        message,
        &[
            ("peer", peer.to_owned()),
            ("cause", kind.to_owned()),
            ("peer_epoch", hello.store_epoch.clone()),
            ("peer_outbox_head", hello.outbox_head.to_string()),
        ],
    )
}
