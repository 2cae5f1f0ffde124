//! Objects waiting for seats (r11): which get seats now that some are free,
//! which records are stale, and an administrator cancelling one.
//!
//! A record whose object already holds a grant of the key (a station that
//! took a seat itself on a later contact) is removed, not skipped (defect 1):
//! left in place, it was granted a second time once that seat was released.
use crate::donation::Lending;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// One waiting record, as the engine reads it in the transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingRecord {
    pub key_id: String,
    pub object: String,
    pub seats: u32,
    /// The key the object held before the renewal that left it waiting.
    pub replaces: Option<String>,
    pub lending: Option<Lending>,
    /// The object holds a grant of `key_id` already (`tx.grant(key, object)`).
    pub already_granted: bool,
}

/// Seats of a key this node holds and has granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySeats {
    pub held: u32,
    pub used: u32,
}

/// Why a waiting record is dropped without a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// The key is gone from this node.
    KeyGone,
    /// The object took a seat of the key on its own (defect 1).
    AlreadyGranted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitingDecision {
    /// Grant `seats` now and remove the record; a server is sent the
    /// renewal of `replaces` if set, else a plain seat grant.
    Grant {
        seats: u32,
        replaces: Option<String>,
        lending: Option<Lending>,
    },
    /// Remove the record, grant nothing.
    Remove(Stale),
    /// Not enough free seats yet (`free` of them): keep waiting.
    StillWaiting { free: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingStep {
    pub key_id: String,
    pub object: String,
    pub decision: WaitingDecision,
}

/// r11: decides every waiting record in a stable order (key, then object:
/// the store's order today). Grants are counted as they are decided, so a
/// large request that does not fit lets a later smaller one in. `keys`
/// holds the keys that still exist; a record of any other key is stale.
#[must_use]
pub fn fill(records: &[WaitingRecord], keys: &BTreeMap<String, KeySeats>) -> Vec<WaitingStep> {
    let mut sorted: Vec<&WaitingRecord> = records.iter().collect();
    sorted.sort_by(|a, b| (&a.key_id, &a.object).cmp(&(&b.key_id, &b.object)));
    let mut used: BTreeMap<&str, u32> = keys.iter().map(|(k, s)| (k.as_str(), s.used)).collect();
    sorted
        .into_iter()
        .map(|w| WaitingStep {
            key_id: w.key_id.clone(),
            object: w.object.clone(),
            decision: decide(w, keys.get(&w.key_id), used.get_mut(w.key_id.as_str())),
        })
        .collect()
}

fn decide(w: &WaitingRecord, key: Option<&KeySeats>, used: Option<&mut u32>) -> WaitingDecision {
    let (Some(key), Some(used)) = (key, used) else {
        return WaitingDecision::Remove(Stale::KeyGone);
    };
    if w.already_granted {
        return WaitingDecision::Remove(Stale::AlreadyGranted);
    }
    let free = key.held.saturating_sub(*used);
    if w.seats > free {
        return WaitingDecision::StillWaiting { free };
    }
    *used += w.seats;
    WaitingDecision::Grant {
        seats: w.seats,
        replaces: w.replaces.clone(),
        lending: w.lending,
    }
}

/// What an administrator's unassign of (key, object) removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unassign {
    /// Remove the grant (a server is told it is withdrawn); a waiting
    /// record of the same pair goes too.
    Grant { server: bool, also_waiting: bool },
    /// The object only waits for seats: cancel the wait, nothing to withdraw.
    CancelWaiting,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{object} holds no seat of key {key_id} and is not waiting for one")]
pub struct NothingToUnassign {
    pub key_id: String,
    pub object: String,
}

/// r11: unassign also cancels a waiting record (today a waiting-only object
/// answered NOT_FOUND and kept waiting). `grant_is_server`: the pair's
/// grant, if any, and whether it is a server's.
pub fn unassign(
    key_id: &str,
    object: &str,
    grant_is_server: Option<bool>,
    waiting: bool,
) -> Result<Unassign, NothingToUnassign> {
    match (grant_is_server, waiting) {
        (Some(server), also_waiting) => Ok(Unassign::Grant {
            server,
            also_waiting,
        }),
        (None, true) => Ok(Unassign::CancelWaiting),
        (None, false) => Err(NothingToUnassign {
            key_id: key_id.to_owned(),
            object: object.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(key: &str, object: &str, seats: u32) -> WaitingRecord {
        WaitingRecord {
            key_id: key.into(),
            object: object.into(),
            seats,
            replaces: Some("k1".into()),
            lending: None,
            already_granted: false,
        }
    }

    fn keys(list: &[(&str, u32, u32)]) -> BTreeMap<String, KeySeats> {
        list.iter()
            .map(|(k, held, used)| {
                (
                    (*k).to_owned(),
                    KeySeats {
                        held: *held,
                        used: *used,
                    },
                )
            })
            .collect()
    }

    fn decision<'a>(steps: &'a [WaitingStep], object: &str) -> &'a WaitingDecision {
        &steps.iter().find(|s| s.object == object).unwrap().decision
    }

    #[test]
    fn r11_waiting_objects_get_freed_seats_in_a_stable_order() {
        let recs = [
            rec("k2", "pc-2", 1),
            rec("k2", "big", 4),
            rec("k2", "pc-1", 1),
        ];
        let steps = fill(&recs, &keys(&[("k2", 10, 8)]));
        let order: Vec<&str> = steps.iter().map(|s| s.object.as_str()).collect();
        assert_eq!(order, ["big", "pc-1", "pc-2"]);
        assert_eq!(
            decision(&steps, "big"),
            &WaitingDecision::StillWaiting { free: 2 }
        );
        assert!(
            matches!(decision(&steps, "pc-1"), WaitingDecision::Grant { seats: 1, replaces: Some(r), .. } if r == "k1")
        );
        assert!(matches!(
            decision(&steps, "pc-2"),
            WaitingDecision::Grant { seats: 1, .. }
        ));
    }

    #[test]
    fn r11_stale_waiting_record_is_removed_when_object_holds_a_seat() {
        // the station attached later and took a seat itself
        let st = WaitingRecord {
            already_granted: true,
            ..rec("k2", "pc-1", 1)
        };
        let steps = fill(&[st], &keys(&[("k2", 10, 1)]));
        assert_eq!(
            decision(&steps, "pc-1"),
            &WaitingDecision::Remove(Stale::AlreadyGranted)
        );
    }

    #[test]
    fn r11_waiting_record_of_a_deleted_key_is_removed() {
        let steps = fill(&[rec("gone", "nb", 2)], &keys(&[]));
        assert_eq!(
            decision(&steps, "nb"),
            &WaitingDecision::Remove(Stale::KeyGone)
        );
    }

    #[test]
    fn r11_administrator_can_cancel_a_waiting_record() {
        assert_eq!(
            unassign("k2", "nb", None, true),
            Ok(Unassign::CancelWaiting)
        );
        assert_eq!(
            unassign("k2", "nb", Some(true), true),
            Ok(Unassign::Grant {
                server: true,
                also_waiting: true
            })
        );
        let err = unassign("k2", "nb", None, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "nb holds no seat of key k2 and is not waiting for one"
        );
    }

    proptest! {
        #[test]
        fn r13_filling_never_exceeds_a_keys_seats(
            recs in proptest::collection::btree_map(("[ab]", "[a-z]{1,4}"), (1u32..6, any::<bool>()), 0..16),
            held in 0u32..20, used in 0u32..20,
        ) {
            let recs: Vec<WaitingRecord> = recs.into_iter().map(|((k, o), (seats, g))| WaitingRecord { already_granted: g, ..rec(&k, &o, seats) }).collect();
            let ks = keys(&[("a", held, used.min(held))]);
            let steps = fill(&recs, &ks);
            prop_assert_eq!(steps.len(), recs.len());
            let granted: u32 = steps.iter().filter(|s| s.key_id == "a").map(|s| match s.decision { WaitingDecision::Grant { seats, .. } => seats, _ => 0 }).sum();
            prop_assert!(used.min(held) + granted <= held);
            for (s, r) in steps.iter().zip({ let mut v = recs.clone(); v.sort_by(|a, b| (&a.key_id, &a.object).cmp(&(&b.key_id, &b.object))); v }) {
                if r.key_id == "b" { prop_assert_eq!(&s.decision, &WaitingDecision::Remove(Stale::KeyGone)); }
                else if r.already_granted { prop_assert_eq!(&s.decision, &WaitingDecision::Remove(Stale::AlreadyGranted)); }
            }
        }
    }
}
