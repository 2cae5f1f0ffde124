//! Store epochs (issue 15 §3): what a link does at Hello when either side's
//! store is not the one the other side knew.
//!
//! Every store has an epoch, a random id that changes when the store is
//! wiped or restored from a backup. Each side of a link records the epoch
//! of the other and counts the other's `last_applied_seq` as acknowledged;
//! both are only true of the store they were learnt from. When the epoch a
//! peer shows differs from the one recorded, or the peer remembers an epoch
//! of this node other than its current one, or says it applied more of this
//! node's outbox than this node ever queued, the sequence numbers of the
//! two sides no longer describe the same history. The plan says how to
//! make them agree again without dropping anything as a replay.

/// What one side knows at Hello. Empty epochs mean "unknown": a peer of an
/// older protocol sends none, a fresh store has recorded none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloView<'a> {
    /// This node's current epoch.
    pub my_epoch: &'a str,
    /// The peer's epoch as this node recorded it at the last Hello.
    pub recorded_peer_epoch: &'a str,
    /// The peer's epoch as its Hello says.
    pub peer_epoch: &'a str,
    /// The epoch of this node the peer recorded (its Hello).
    pub peer_saw_my_epoch: &'a str,
    /// The highest sequence of this node's outbox the peer says it applied.
    pub peer_applied_mine: u64,
    /// The last sequence this node queued to the peer.
    pub my_outbox_head: u64,
}

/// Why a link reconciled, for the operator's notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The peer's store is not the one this node knew: it was wiped or
    /// restored from a backup.
    PeerReplaced { was: String, now: String },
    /// The peer knew another store of this node (this one was wiped or
    /// restored) and may hold what the old one sent it.
    Replaced { peer_saw: String },
    /// The peer applied more of this node's outbox than this store ever
    /// queued, under the same epoch: the data dir was copied back.
    RolledBack { peer_applied: u64, head: u64 },
}

/// What to do before the link's deliveries start. `Plan::default()` is
/// "nothing": the link works as it always did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Record this as the peer's epoch.
    pub record_peer_epoch: Option<String>,
    /// The peer's outbox numbering restarted or went back: forget how far
    /// this node applied it, so its new deliveries are not taken for replays.
    pub reset_applied: bool,
    /// Move this node's outbox sequence to at least this (counting it
    /// acked): the peer applied up to it, from an older history of this
    /// store, and would drop anything numbered at or below it.
    pub advance_outbox_to: Option<u64>,
    /// Send the peer everything this node is authoritative for toward it.
    pub resync: bool,
    /// This store was rolled back: take (and persist) a new epoch, so every
    /// peer learns at its next Hello that the history it knew is gone.
    pub new_own_epoch: bool,
    /// Each reason the plan is not empty, for one notification each.
    pub causes: Vec<Cause>,
}

impl Plan {
    /// True when the link goes on as before.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !(self.record_peer_epoch.is_some()
            || self.reset_applied
            || self.advance_outbox_to.is_some()
            || self.resync
            || self.new_own_epoch)
    }
}

/// The reconcile decision at Hello.
#[must_use]
pub fn at_hello(v: &HelloView<'_>) -> Plan {
    let mut plan = Plan::default();
    if v.peer_epoch.is_empty() {
        // a peer of an older protocol: sequences as they always were
        return plan;
    }
    if v.recorded_peer_epoch != v.peer_epoch {
        plan.record_peer_epoch = Some(v.peer_epoch.to_owned());
    }
    if !v.recorded_peer_epoch.is_empty() && v.recorded_peer_epoch != v.peer_epoch {
        plan.reset_applied = true;
        plan.resync = true;
        plan.causes.push(Cause::PeerReplaced {
            was: v.recorded_peer_epoch.to_owned(),
            now: v.peer_epoch.to_owned(),
        });
    }
    let ahead = v.peer_applied_mine > v.my_outbox_head;
    if !v.peer_saw_my_epoch.is_empty() && v.peer_saw_my_epoch != v.my_epoch {
        plan.resync = true;
        plan.causes.push(Cause::Replaced {
            peer_saw: v.peer_saw_my_epoch.to_owned(),
        });
    } else if ahead {
        // same epoch in the peer's eyes (or none recorded yet), yet it has
        // more of this outbox than was ever queued: copied back
        plan.resync = true;
        plan.new_own_epoch = true;
        plan.causes.push(Cause::RolledBack {
            peer_applied: v.peer_applied_mine,
            head: v.my_outbox_head,
        });
    }
    if ahead {
        plan.advance_outbox_to = Some(v.peer_applied_mine);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>() -> HelloView<'a> {
        HelloView {
            my_epoch: "m1",
            recorded_peer_epoch: "c1",
            peer_epoch: "c1",
            peer_saw_my_epoch: "m1",
            peer_applied_mine: 4,
            my_outbox_head: 4,
        }
    }

    #[test]
    fn nothing_changes_when_both_stores_are_the_ones_known() {
        assert!(at_hello(&view()).is_empty());
        // the peer applied less than was queued: the outbox replays the rest
        let v = HelloView {
            peer_applied_mine: 2,
            ..view()
        };
        assert_eq!(at_hello(&v), Plan::default());
    }

    #[test]
    fn r08_an_old_protocol_peer_sends_no_epoch_and_nothing_changes() {
        let v = HelloView {
            peer_epoch: "",
            peer_saw_my_epoch: "",
            recorded_peer_epoch: "",
            peer_applied_mine: 9,
            ..view()
        };
        assert_eq!(at_hello(&v), Plan::default());
        // even after it was seen with an epoch once (a downgrade)
        let v = HelloView {
            peer_epoch: "",
            ..view()
        };
        assert_eq!(at_hello(&v), Plan::default());
    }

    #[test]
    fn first_sight_only_records_the_peer_epoch() {
        let v = HelloView {
            recorded_peer_epoch: "",
            peer_saw_my_epoch: "",
            ..view()
        };
        let plan = at_hello(&v);
        assert!(!plan.is_empty() && plan.causes.is_empty());
        assert_eq!(
            plan,
            Plan {
                record_peer_epoch: Some("c1".into()),
                ..Plan::default()
            }
        );
    }

    #[test]
    fn a_wiped_or_restored_peer_is_resynced_and_its_numbering_restarts() {
        // a wiped child: new epoch, it knows nothing of this node
        let v = HelloView {
            peer_epoch: "c2",
            peer_saw_my_epoch: "",
            peer_applied_mine: 0,
            ..view()
        };
        let plan = at_hello(&v);
        assert_eq!(plan.record_peer_epoch.as_deref(), Some("c2"));
        assert!(plan.reset_applied && plan.resync && !plan.new_own_epoch);
        assert_eq!(plan.advance_outbox_to, None);
        assert_eq!(
            plan.causes,
            vec![Cause::PeerReplaced {
                was: "c1".into(),
                now: "c2".into()
            }]
        );
    }

    #[test]
    fn a_peer_that_knew_another_store_of_this_node_is_resynced_past_what_it_applied() {
        // this node (main) was restored from a backup: the child applied 4
        // grants, the backup had queued 1
        let v = HelloView {
            my_epoch: "m2",
            peer_applied_mine: 4,
            my_outbox_head: 1,
            ..view()
        };
        let plan = at_hello(&v);
        assert!(plan.resync && !plan.reset_applied && !plan.new_own_epoch);
        assert_eq!(plan.advance_outbox_to, Some(4));
        assert_eq!(plan.record_peer_epoch, None);
        assert_eq!(
            plan.causes,
            vec![Cause::Replaced {
                peer_saw: "m1".into()
            }]
        );
        // wiped instead: the peer applied less than... nothing to advance
        let v = HelloView {
            my_epoch: "m2",
            peer_applied_mine: 0,
            my_outbox_head: 0,
            ..view()
        };
        assert_eq!(at_hello(&v).advance_outbox_to, None);
        assert!(at_hello(&v).resync);
    }

    #[test]
    fn a_store_copied_back_with_its_epoch_takes_a_new_one() {
        let v = HelloView {
            peer_applied_mine: 4,
            my_outbox_head: 1,
            ..view()
        };
        let plan = at_hello(&v);
        assert!(plan.new_own_epoch && plan.resync && !plan.reset_applied);
        assert_eq!(plan.advance_outbox_to, Some(4));
        assert_eq!(
            plan.causes,
            vec![Cause::RolledBack {
                peer_applied: 4,
                head: 1
            }]
        );
        // a peer that recorded no epoch of this node yet (it was upgraded
        // meanwhile) still shows the rollback by its sequence
        let v = HelloView {
            peer_saw_my_epoch: "",
            ..v
        };
        assert!(at_hello(&v).new_own_epoch);
    }

    #[test]
    fn both_replaced_at_once_does_both() {
        let v = HelloView {
            my_epoch: "m2",
            peer_epoch: "c2",
            peer_applied_mine: 7,
            my_outbox_head: 3,
            ..view()
        };
        let plan = at_hello(&v);
        assert!(plan.reset_applied && plan.resync && !plan.new_own_epoch);
        assert_eq!(plan.advance_outbox_to, Some(7));
        assert_eq!(plan.causes.len(), 2);
    }
}
