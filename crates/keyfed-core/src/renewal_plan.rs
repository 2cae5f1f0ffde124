//! The per-object plan of a compatible renewal (r06, r07, r08, r10, r11):
//! what each object of the old key gets, and whether the old key can go now.
//!
//! The engine fills the input from the transaction that distributes the
//! renewal (the old key's grants, the new key's grants to the same objects,
//! peers' protocol versions, the new key's held and used seats) and applies
//! the steps in the order given.
use crate::donation::Lending;
use crate::AUTO_RENEWAL_SINCE;
use serde::{Deserialize, Serialize};

/// What an object of a key is to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectRole {
    Station,
    Child,
    Neighbor,
}

impl ObjectRole {
    #[must_use]
    pub fn is_server(self) -> bool {
        !matches!(self, Self::Station)
    }
}

/// r08: a peer takes part in automatic renewal from [`AUTO_RENEWAL_SINCE`];
/// a peer whose version is not known yet (0) is assumed current, as today.
#[must_use]
pub fn supports_auto_renewal(protocol_version: u32) -> bool {
    protocol_version == 0 || protocol_version >= AUTO_RENEWAL_SINCE
}

/// One object holding seats of the old key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldKeyObject {
    pub object: String,
    pub role: ObjectRole,
    /// Seats of the old key it holds.
    pub seats: u32,
    /// Servers: the peer's protocol takes part in automatic renewal
    /// ([`supports_auto_renewal`]); ignored for stations.
    pub auto_renewal: bool,
    /// r10: seats of the new key it already holds (given by hand first).
    pub holds_new: Option<u32>,
    /// b01: the old grant's lending, carried to the new grant (defect 7).
    pub lending: Option<Lending>,
}

/// The new key's seats on this node before the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewKeySeats {
    /// Seats this node may hand out of the new key (its `held`).
    pub entitled: u32,
    /// Seats of it already granted (objects given it by hand, r10).
    pub used: u32,
}

/// What one object gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStep {
    /// r06: grant `seats` of the new key with the old grant's `lending`. A
    /// station's old grant goes now; a server is sent the renewal and its
    /// old grant goes when it acks (r07).
    Deliver {
        seats: u32,
        lending: Option<Lending>,
    },
    /// r10: it already holds `seats` of the new key and is left alone. With
    /// `tell_peer` (a server that renews automatically) it is sent the
    /// renewal with those seats and its old grant goes on ack; otherwise
    /// its old grant goes now.
    AlreadyHolds { seats: u32, tell_peer: bool },
    /// r08: a peer without automatic renewal is offered the new key but does
    /// not distribute it; its old grant and the old key stay.
    OfferOnly,
    /// r11: not enough free seats (`free` of them): the old grant goes now
    /// (a server is told it is withdrawn), the object waits for `seats` of
    /// the new key, unlicensed, with its lending kept for when it gets them.
    Wait {
        seats: u32,
        free: u32,
        lending: Option<Lending>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedObject {
    pub object: String,
    pub role: ObjectRole,
    pub step: ObjectStep,
}

impl PlannedObject {
    /// Does this object keep its old grant after the plan is applied?
    #[must_use]
    pub fn keeps_old_grant(&self) -> bool {
        match self.step {
            ObjectStep::Deliver { .. } => self.role.is_server(),
            ObjectStep::AlreadyHolds { tell_peer, .. } => tell_peer,
            ObjectStep::OfferOnly => true,
            ObjectStep::Wait { .. } => false,
        }
    }
}

/// r07/r08: what becomes of the old key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldKeyFate {
    /// No object holds it any more: delete it now.
    RetireNow,
    /// Delete it once these servers ack the renewal (r07: an offline child
    /// keeps it until it returns).
    AfterAcks { from: Vec<String> },
    /// r08: these peers cannot renew automatically; the administrator
    /// deletes the old key by hand.
    KeptForAdministrator { old_peers: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalPlan {
    /// Sorted by object name: the order the seats are handed out in.
    pub objects: Vec<PlannedObject>,
    pub old_key: OldKeyFate,
    /// Seats of the new key granted once the plan is applied.
    pub new_used: u32,
}

/// r06/r08/r10/r11: the plan for handing a compatible renewal to every
/// object of the old key. Objects are served in name order; an object that
/// does not fit waits while a later, smaller one may still fit.
#[must_use]
pub fn plan(objects: &[OldKeyObject], new: NewKeySeats) -> RenewalPlan {
    let mut sorted: Vec<&OldKeyObject> = objects.iter().collect();
    sorted.sort_by(|a, b| a.object.cmp(&b.object));
    let mut used = new.used;
    let planned: Vec<PlannedObject> = sorted
        .into_iter()
        .map(|o| PlannedObject {
            object: o.object.clone(),
            role: o.role,
            step: step_for(o, new.entitled, &mut used),
        })
        .collect();
    RenewalPlan {
        old_key: fate(&planned),
        objects: planned,
        new_used: used,
    }
}

fn step_for(o: &OldKeyObject, entitled: u32, used: &mut u32) -> ObjectStep {
    let renews_itself = !o.role.is_server() || o.auto_renewal;
    if let Some(seats) = o.holds_new {
        return ObjectStep::AlreadyHolds {
            seats,
            tell_peer: o.role.is_server() && o.auto_renewal,
        };
    }
    if !renews_itself {
        return ObjectStep::OfferOnly;
    }
    let free = entitled.saturating_sub(*used);
    if o.seats > free {
        return ObjectStep::Wait {
            seats: o.seats,
            free,
            lending: o.lending,
        };
    }
    *used += o.seats;
    ObjectStep::Deliver {
        seats: o.seats,
        lending: o.lending,
    }
}

fn fate(planned: &[PlannedObject]) -> OldKeyFate {
    let names = |f: fn(&PlannedObject) -> bool| -> Vec<String> {
        planned
            .iter()
            .filter(|p| f(p))
            .map(|p| p.object.clone())
            .collect()
    };
    let old_peers = names(|p| p.step == ObjectStep::OfferOnly);
    if !old_peers.is_empty() {
        return OldKeyFate::KeptForAdministrator { old_peers };
    }
    let from = names(PlannedObject::keeps_old_grant);
    if from.is_empty() {
        OldKeyFate::RetireNow
    } else {
        OldKeyFate::AfterAcks { from }
    }
}

/// What a node knows of one server's grant of a superseded key, outside
/// the renewal that superseded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldServerGrant {
    /// The server takes renewals automatically (else r08 keeps the old
    /// key for the administrator).
    pub auto_renewal: bool,
    /// It holds a grant of a key that superseded this one (directly or
    /// through later renewals): the renewal reached its plan.
    pub holds_newer: bool,
    /// A message about the old key to it is still unacked (the renewal,
    /// or anything after it).
    pub pending: bool,
}

/// r07 after a crash: has the server taken the renewal, so its grant of
/// the old key should go (and the old key with it once free)? A peer's ack
/// is recorded (the outbox entry removed) before its effects are applied
/// in a second transaction; a node killed between the two kept the old
/// grant forever. A server that holds the newer key, speaks auto-renewal
/// and has nothing of the old key left unacked did ack the renewal: the
/// renewal's transaction queues the message and the newer grant together,
/// and an r08 peer is only offered the key (no newer grant).
#[must_use]
pub fn renewal_was_taken(g: OldServerGrant) -> bool {
    g.auto_renewal && g.holds_newer && !g.pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::donation::{DonationPolicy, Lending};
    use proptest::prelude::*;

    fn obj(object: &str, role: ObjectRole, seats: u32) -> OldKeyObject {
        OldKeyObject {
            object: object.into(),
            role,
            seats,
            auto_renewal: true,
            holds_new: None,
            lending: None,
        }
    }

    fn step_of<'a>(p: &'a RenewalPlan, object: &str) -> &'a ObjectStep {
        &p.objects.iter().find(|o| o.object == object).unwrap().step
    }

    #[test]
    fn r06_compatible_renewal_reaches_stations_children_and_neighbors() {
        let objs = [
            obj("pc-1", ObjectRole::Station, 1),
            obj("kid", ObjectRole::Child, 5),
            obj("nb", ObjectRole::Neighbor, 3),
        ];
        let p = plan(
            &objs,
            NewKeySeats {
                entitled: 9,
                used: 0,
            },
        );
        for o in &p.objects {
            assert!(matches!(o.step, ObjectStep::Deliver { .. }), "{o:?}");
        }
        assert_eq!(p.new_used, 9);
        // r07: the servers still use the old key until they ack
        assert_eq!(
            p.old_key,
            OldKeyFate::AfterAcks {
                from: vec!["kid".into(), "nb".into()]
            }
        );
    }

    #[test]
    fn r07_old_key_retires_at_once_when_only_stations_held_it() {
        let objs = [
            obj("pc-1", ObjectRole::Station, 1),
            obj("pc-2", ObjectRole::Station, 1),
        ];
        let p = plan(
            &objs,
            NewKeySeats {
                entitled: 2,
                used: 0,
            },
        );
        assert_eq!(p.old_key, OldKeyFate::RetireNow);
    }

    #[test]
    fn r08_old_protocol_neighbor_is_offered_the_key_and_the_old_key_is_kept() {
        let old_nb = OldKeyObject {
            auto_renewal: supports_auto_renewal(1),
            ..obj("nb", ObjectRole::Neighbor, 3)
        };
        let objs = [old_nb, obj("pc-1", ObjectRole::Station, 1)];
        let p = plan(
            &objs,
            NewKeySeats {
                entitled: 10,
                used: 0,
            },
        );
        assert_eq!(step_of(&p, "nb"), &ObjectStep::OfferOnly);
        assert!(matches!(
            step_of(&p, "pc-1"),
            ObjectStep::Deliver { seats: 1, .. }
        ));
        assert_eq!(
            p.old_key,
            OldKeyFate::KeptForAdministrator {
                old_peers: vec!["nb".into()]
            }
        );
        assert_eq!(p.new_used, 1, "an offer takes no seat");
        assert!(supports_auto_renewal(0) && supports_auto_renewal(2));
    }

    #[test]
    fn r10_objects_given_the_new_key_by_hand_are_left_alone() {
        let by_hand = OldKeyObject {
            holds_new: Some(4),
            ..obj("kid", ObjectRole::Child, 5)
        };
        let st = OldKeyObject {
            holds_new: Some(1),
            ..obj("pc-1", ObjectRole::Station, 1)
        };
        let p = plan(
            &[by_hand, st, obj("pc-2", ObjectRole::Station, 1)],
            NewKeySeats {
                entitled: 6,
                used: 5,
            },
        );
        assert_eq!(
            step_of(&p, "kid"),
            &ObjectStep::AlreadyHolds {
                seats: 4,
                tell_peer: true
            }
        );
        assert_eq!(
            step_of(&p, "pc-1"),
            &ObjectStep::AlreadyHolds {
                seats: 1,
                tell_peer: false
            }
        );
        assert!(matches!(
            step_of(&p, "pc-2"),
            ObjectStep::Deliver { seats: 1, .. }
        ));
        assert_eq!(p.new_used, 6);
        assert_eq!(
            p.old_key,
            OldKeyFate::AfterAcks {
                from: vec!["kid".into()]
            }
        );
    }

    #[test]
    fn r11_objects_without_a_seat_wait_and_the_old_key_still_goes() {
        let objs = [
            obj("a", ObjectRole::Station, 1),
            obj("big", ObjectRole::Child, 5),
            obj("c", ObjectRole::Station, 1),
        ];
        // 3 of the new key's 5 seats were assigned elsewhere by hand
        let p = plan(
            &objs,
            NewKeySeats {
                entitled: 5,
                used: 3,
            },
        );
        assert!(matches!(
            step_of(&p, "a"),
            ObjectStep::Deliver { seats: 1, .. }
        ));
        assert_eq!(
            step_of(&p, "big"),
            &ObjectStep::Wait {
                seats: 5,
                free: 1,
                lending: None
            }
        );
        assert!(matches!(
            step_of(&p, "c"),
            ObjectStep::Deliver { seats: 1, .. }
        ));
        assert_eq!(p.new_used, 5);
        assert_eq!(p.old_key, OldKeyFate::RetireNow);
    }

    #[test]
    fn b01_renewal_carries_the_grants_own_lending_period() {
        let t = "2026-03-01T00:00:00Z".parse().unwrap();
        let lent = Lending::begin(DonationPolicy { default_days: 30 }, 9, t);
        let nb = OldKeyObject {
            lending: Some(lent),
            ..obj("nb", ObjectRole::Neighbor, 2)
        };
        let p = plan(
            std::slice::from_ref(&nb),
            NewKeySeats {
                entitled: 2,
                used: 0,
            },
        );
        assert_eq!(
            step_of(&p, "nb"),
            &ObjectStep::Deliver {
                seats: 2,
                lending: Some(lent)
            }
        );
        let p = plan(
            &[nb],
            NewKeySeats {
                entitled: 1,
                used: 0,
            },
        );
        assert!(
            matches!(step_of(&p, "nb"), ObjectStep::Wait { lending: Some(l), .. } if l.period_days == 9)
        );
    }

    fn role() -> impl Strategy<Value = ObjectRole> {
        proptest::sample::select(vec![
            ObjectRole::Station,
            ObjectRole::Child,
            ObjectRole::Neighbor,
        ])
    }

    fn objects() -> impl Strategy<Value = Vec<OldKeyObject>> {
        proptest::collection::btree_map(
            "[a-z]{1,6}",
            (
                role(),
                1u32..20,
                any::<bool>(),
                proptest::option::of(1u32..5),
            ),
            0..12,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(object, (role, seats, auto, holds))| OldKeyObject {
                    object,
                    role,
                    seats: if role == ObjectRole::Station {
                        1
                    } else {
                        seats
                    },
                    auto_renewal: auto,
                    holds_new: holds,
                    lending: None,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn r13_a_plan_never_hands_out_more_than_the_new_key_holds(objs in objects(), entitled in 0u32..60, used in 0u32..60) {
            let used = used.min(entitled);
            let p = plan(&objs, NewKeySeats { entitled, used });
            prop_assert_eq!(p.objects.len(), objs.len());
            let delivered: u32 = p.objects.iter().map(|o| match o.step { ObjectStep::Deliver { seats, .. } => seats, _ => 0 }).sum();
            prop_assert_eq!(p.new_used, used + delivered);
            prop_assert!(p.new_used <= entitled);
            for o in &p.objects {
                let src = objs.iter().find(|s| s.object == o.object).unwrap();
                if let ObjectStep::Wait { seats, free, .. } = o.step {
                    prop_assert!(seats > free && src.holds_new.is_none());
                }
                if o.step == ObjectStep::OfferOnly {
                    prop_assert!(src.role.is_server() && !src.auto_renewal);
                }
            }
            let kept = p.objects.iter().any(PlannedObject::keeps_old_grant);
            prop_assert_eq!(p.old_key == OldKeyFate::RetireNow, !kept);
        }
    }

    #[test]
    fn r07_a_renewal_was_taken_only_when_acked_by_an_auto_renewal_peer_holding_the_new_key() {
        let taken = OldServerGrant {
            auto_renewal: true,
            holds_newer: true,
            pending: false,
        };
        assert!(renewal_was_taken(taken));
        // still on its way (an offline child keeps its claim, r07)
        assert!(!renewal_was_taken(OldServerGrant {
            pending: true,
            ..taken
        }));
        // r08: an old peer was only offered the key
        assert!(!renewal_was_taken(OldServerGrant {
            auto_renewal: false,
            ..taken
        }));
        // r11: no seat of the new key for it (its old grant went already)
        assert!(!renewal_was_taken(OldServerGrant {
            holds_newer: false,
            ..taken
        }));
    }
}
