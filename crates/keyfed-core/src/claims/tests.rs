use super::*;
use proptest::prelude::*;

fn t0() -> DateTime<Utc> {
    "2026-05-01T00:00:00Z".parse().unwrap()
}

fn ask<'a>(
    origin: &'a KeyOrigin,
    own: &'a OwnClaim,
    claimed_by_peer: Option<&'a str>,
) -> SeatAsk<'a> {
    SeatAsk {
        fingerprint: "pc-1",
        key_id: "k1",
        origin,
        claimed_by_peer,
        own_claim: own,
        free: 5,
    }
}

fn registry<'a>(
    origin: &'a KeyOrigin,
    local: bool,
    claimed_by: Option<&'a str>,
) -> ClaimRegistry<'a> {
    ClaimRegistry {
        this_node: "main",
        key_id: "k1",
        origin,
        peer_was_granted: true,
        local_station_grant: local,
        claimed_by,
    }
}

fn claim(peer: &str, released: bool) -> ClaimArrival<'_> {
    ClaimArrival {
        peer,
        fingerprint: "pc-1",
        released,
    }
}

#[test]
fn b02_at_the_origin_a_seat_is_counted_unless_a_peer_claimed_the_station() {
    let p = ClaimPolicy::default();
    let up = KeyOrigin::Upstream;
    assert_eq!(
        station_seat(&ask(&up, &OwnClaim::None, None), p, t0()),
        StationSeat::Counted
    );
    let StationSeat::Refused(why) = station_seat(&ask(&up, &OwnClaim::None, Some("nb")), p, t0())
    else {
        panic!("claimed through nb")
    };
    assert!(why.contains("through nb"), "{why}");
    let full = SeatAsk {
        free: 0,
        ..ask(&up, &OwnClaim::None, None)
    };
    assert!(matches!(
        station_seat(&full, p, t0()),
        StationSeat::Refused(_)
    ));
}

#[test]
fn b02_second_neighbor_never_grants_a_second_counted_seat() {
    // defect 8: main lent seats of k1 to nb1 and nb2; pc-1 reaches both
    let p = ClaimPolicy::default();
    let from_main = KeyOrigin::Peer("main".into());
    let none = OwnClaim::None;
    for nb in ["nb1", "nb2"] {
        let seat = station_seat(&ask(&from_main, &none, None), p, t0());
        assert_eq!(
            seat,
            StationSeat::Provisional {
                until: t0() + Duration::minutes(15),
                claim_to: Some("main".into())
            },
            "{nb} gives a provisional lease only"
        );
    }
    // main arbitrates the claims in arrival order
    let up = KeyOrigin::Upstream;
    assert_eq!(
        arbitrate(claim("nb1", false), &registry(&up, false, None)),
        ClaimVerdict::RecordAndConfirm
    );
    let second = arbitrate(claim("nb2", false), &registry(&up, false, Some("nb1")));
    assert_eq!(
        second,
        ClaimVerdict::Duplicate {
            holder: "nb1".into()
        }
    );
    // the answers: nb1 counts the seat, nb2 ends its provisional lease
    assert_eq!(
        on_answer(
            "main",
            &from_main,
            None,
            LocalHold::Provisional,
            &ClaimAnswer::Confirmed
        ),
        AnswerStep::Confirm
    );
    let dup = ClaimAnswer::Duplicate {
        holder: "nb1".into(),
    };
    assert_eq!(
        on_answer("main", &from_main, None, LocalHold::Provisional, &dup),
        AnswerStep::GiveBack {
            holder: "nb1".into()
        }
    );
    // and nb2 refuses pc-1 from then on
    let told = OwnClaim::Duplicate {
        holder: "nb1".into(),
    };
    assert!(matches!(
        station_seat(&ask(&from_main, &told, None), p, t0()),
        StationSeat::Refused(_)
    ));
}

#[test]
fn b02_origin_unreachable_gives_short_provisional_leases_until_the_pending_limit() {
    let p = ClaimPolicy {
        provisional_lease: Duration::minutes(5),
        pending_limit: Duration::days(2),
    };
    let from_main = KeyOrigin::Peer("main".into());
    let pending = OwnClaim::Pending { since: t0() };
    let later = t0() + Duration::hours(30);
    // the claim is in the outbox already: no second claim, another short lease
    assert_eq!(
        station_seat(&ask(&from_main, &pending, None), p, later),
        StationSeat::Provisional {
            until: later + Duration::minutes(5),
            claim_to: None
        }
    );
    let StationSeat::Refused(why) = station_seat(
        &ask(&from_main, &pending, None),
        p,
        t0() + Duration::days(2),
    ) else {
        panic!("pending past the limit")
    };
    assert!(why.contains("has not confirmed"), "{why}");
    let ok = OwnClaim::Confirmed;
    assert_eq!(
        station_seat(&ask(&from_main, &ok, None), p, t0() + Duration::days(9)),
        StationSeat::Counted
    );
}

#[test]
fn b02_a_middle_node_forwards_claims_and_passes_answers_down() {
    let from_main = KeyOrigin::Peer("main".into());
    assert_eq!(
        arbitrate(claim("kid", false), &registry(&from_main, false, None)),
        ClaimVerdict::RecordAndForward {
            origin: "main".into()
        }
    );
    let dup = ClaimAnswer::Duplicate {
        holder: "nb".into(),
    };
    assert_eq!(
        on_answer("main", &from_main, Some("kid"), LocalHold::Nothing, &dup),
        AnswerStep::PassDown {
            to: "kid".into(),
            forget_claim: true
        }
    );
    assert_eq!(
        on_answer(
            "main",
            &from_main,
            Some("kid"),
            LocalHold::Nothing,
            &ClaimAnswer::Confirmed
        ),
        AnswerStep::PassDown {
            to: "kid".into(),
            forget_claim: false
        }
    );
    let AnswerStep::Refuse(why) = on_answer("nb", &from_main, None, LocalHold::Counted, &dup)
    else {
        panic!("only the origin answers")
    };
    assert!(why.contains("did not give us"), "{why}");
}

#[test]
fn b02_released_claims_are_forgotten_and_strangers_refused() {
    let up = KeyOrigin::Upstream;
    assert_eq!(
        arbitrate(claim("nb", true), &registry(&up, false, Some("nb"))),
        ClaimVerdict::Forget { origin: None }
    );
    assert_eq!(
        arbitrate(claim("nb", true), &registry(&up, false, Some("nb2"))),
        ClaimVerdict::Ignore
    );
    // a repeated claim by the holder itself is no duplicate (idempotent retry)
    assert_eq!(
        arbitrate(claim("nb", false), &registry(&up, false, Some("nb"))),
        ClaimVerdict::RecordAndConfirm
    );
    assert_eq!(
        arbitrate(claim("nb", false), &registry(&up, true, None)),
        ClaimVerdict::Duplicate {
            holder: "main".into()
        }
    );
    let stranger = ClaimRegistry {
        peer_was_granted: false,
        ..registry(&up, false, None)
    };
    assert!(matches!(
        arbitrate(claim("x", false), &stranger),
        ClaimVerdict::Refuse(_)
    ));
}

/// One origin ("main", index 0) and three neighbors it lent seats to.
#[derive(Default)]
struct Federation {
    origin_grant: bool,
    claimed_by: Option<String>,
    hold: [Option<LocalHold>; 4],
    own: [Option<OwnClaim>; 4],
    queue: Vec<usize>,
}

impl Federation {
    fn counted(&self) -> usize {
        usize::from(self.origin_grant)
            + self
                .hold
                .iter()
                .filter(|h| **h == Some(LocalHold::Counted))
                .count()
    }

    fn attach(&mut self, n: usize) {
        let p = ClaimPolicy::default();
        if n == 0 {
            let a = SeatAsk {
                claimed_by_peer: self.claimed_by.as_deref(),
                ..ask(&KeyOrigin::Upstream, &OwnClaim::None, None)
            };
            if !self.origin_grant && station_seat(&a, p, t0()) == StationSeat::Counted {
                self.origin_grant = true;
            }
            return;
        }
        if self.hold[n].is_some() {
            return;
        }
        let from_main = KeyOrigin::Peer("main".into());
        let own = self.own[n].clone().unwrap_or(OwnClaim::None);
        match station_seat(&ask(&from_main, &own, None), p, t0()) {
            StationSeat::Counted => self.hold[n] = Some(LocalHold::Counted),
            StationSeat::Provisional { claim_to, .. } => {
                self.hold[n] = Some(LocalHold::Provisional);
                if claim_to.is_some() {
                    self.own[n] = Some(OwnClaim::Pending { since: t0() });
                    self.queue.push(n);
                }
            }
            StationSeat::Refused(_) => {}
        }
    }

    fn deliver(&mut self) {
        for n in std::mem::take(&mut self.queue) {
            let peer = format!("nb{n}");
            let reg = ClaimRegistry {
                claimed_by: self.claimed_by.as_deref(),
                ..registry(&KeyOrigin::Upstream, self.origin_grant, None)
            };
            let answer = match arbitrate(claim(&peer, false), &reg) {
                ClaimVerdict::RecordAndConfirm => {
                    self.claimed_by = Some(peer.clone());
                    ClaimAnswer::Confirmed
                }
                ClaimVerdict::Duplicate { holder } => ClaimAnswer::Duplicate { holder },
                other => panic!("{other:?}"),
            };
            let local = self.hold[n].unwrap_or(LocalHold::Nothing);
            match on_answer(
                "main",
                &KeyOrigin::Peer("main".into()),
                None,
                local,
                &answer,
            ) {
                AnswerStep::Confirm => {
                    self.hold[n] = Some(LocalHold::Counted);
                    self.own[n] = Some(OwnClaim::Confirmed);
                }
                AnswerStep::GiveBack { holder } => {
                    self.hold[n] = None;
                    self.own[n] = Some(OwnClaim::Duplicate { holder });
                }
                _ => {}
            }
        }
    }
}

proptest! {
    #[test]
    fn b02_a_station_never_holds_two_counted_seats(ops in proptest::collection::vec((0usize..4, any::<bool>()), 1..20)) {
        let mut f = Federation::default();
        for (n, deliver_now) in ops {
            f.attach(n);
            prop_assert!(f.counted() <= 1);
            if deliver_now {
                f.deliver();
                prop_assert!(f.counted() <= 1);
            }
        }
        f.deliver();
        prop_assert!(f.counted() <= 1);
        // once every claim is answered, no provisional seat is left over
        // beside a counted one
        let provisional = f.hold.iter().filter(|h| **h == Some(LocalHold::Provisional)).count();
        prop_assert!(provisional == 0);
    }
}

fn leases(items: &[(&str, i64)]) -> BTreeMap<String, DateTime<Utc>> {
    items
        .iter()
        .map(|(f, min)| ((*f).to_owned(), t0() + Duration::minutes(*min)))
        .collect()
}

#[test]
fn b02_r07_a_renewal_carries_live_provisional_leases_to_the_new_key() {
    let old = leases(&[("pc-1", 10), ("pc-2", 5), ("gone", -1)]);
    let c = carry_leases(&old, &BTreeMap::new(), 5, t0());
    assert_eq!(
        c.leases,
        leases(&[("pc-1", 10), ("pc-2", 5)]),
        "expired ones stay behind"
    );
    assert!(c.ended.is_empty());
}

#[test]
fn b02_r07_leases_without_room_on_the_new_key_end_soonest_first_carried() {
    let old = leases(&[("pc-1", 10), ("pc-2", 5), ("pc-3", 12)]);
    let c = carry_leases(&old, &BTreeMap::new(), 2, t0());
    assert_eq!(c.leases, leases(&[("pc-2", 5), ("pc-1", 10)]));
    assert_eq!(c.ended, vec!["pc-3".to_owned()]);
    let none = carry_leases(&old, &BTreeMap::new(), 0, t0());
    assert!(none.leases.is_empty());
    assert_eq!(none.ended.len(), 3);
}

#[test]
fn b02_r07_a_fingerprint_leased_on_both_keys_keeps_one_lease_without_room() {
    let old = leases(&[("pc-1", 10)]);
    let new = leases(&[("pc-1", 4), ("pc-9", 3)]);
    let c = carry_leases(&old, &new, 0, t0());
    assert_eq!(c.leases, leases(&[("pc-1", 10), ("pc-9", 3)]));
    assert!(c.ended.is_empty());
}

proptest! {
    /// The new key never gets more carried leases than it has room for,
    /// and every live old lease is either carried or ended.
    #[test]
    fn b02_r13_carried_leases_fit_the_room(
        old in proptest::collection::btree_map("[a-e]", -5i64..20, 0..6),
        new in proptest::collection::btree_map("[c-h]", -5i64..20, 0..6),
        free in 0u32..6,
    ) {
        let at = |m: &BTreeMap<String, i64>| -> BTreeMap<String, DateTime<Utc>> {
            m.iter().map(|(f, n)| (f.clone(), t0() + Duration::minutes(*n))).collect()
        };
        let (old, new) = (at(&old), at(&new));
        let c = carry_leases(&old, &new, free, t0());
        let live_new = new.values().filter(|u| **u > t0()).count();
        prop_assert!(c.leases.len() <= live_new + free as usize);
        for (fp, until) in old.iter().filter(|(_, u)| **u > t0()) {
            let carried = c.leases.get(fp).is_some_and(|u| u >= until);
            prop_assert!(carried != c.ended.contains(fp), "{fp}: {c:?}");
        }
    }
}
