//! b02 provisional leases across a crash and a renewal: the seat a child
//! acknowledged while its claim to the key's origin was unsettled is still
//! there once the claim settles.
use super::*;

/// main (origin of k1) and its child kid, linked, kid holding 5 seats of k1.
async fn kid_with_k1() -> (Engine, Engine) {
    let (main, kid) = main_and_kid();
    add(&main, &file(spec("k1", 10)), t0()).await;
    link(&main, "kid", true, t0()).await;
    link(&kid, "main", true, t0()).await;
    assign(&main, "k1", "kid", 5, t0()).await;
    pump(&main, &kid, t0()).await;
    (main, kid)
}

/// kid restarted on what its store had made durable (a SIGKILL).
fn crashed_kid(kid: &Engine) -> Engine {
    engine_on(
        EngineConfig {
            parent: parent("main"),
            ..config("kid")
        },
        kid.store().crash().unwrap(),
    )
}

/// The kill loop's lost seat: a station attaches at the child while its
/// claim to main is unsettled (provisional lease, acknowledged as
/// licensed), the child is killed and restarts, main renews the key, and
/// the renewal reaches the child before main's answer to the claim. The
/// renewal moved every grant to the new key but left the lease on the old
/// one, so the answer ("confirmed") found no lease on the current key and
/// the acknowledged seat was gone.
#[tokio::test]
async fn b02_r07_a_provisional_seat_survives_a_restart_and_a_renewal_before_the_answer() {
    let (main, kid) = kid_with_k1().await;
    let lease = contact(&kid, "pc-1", t0()).await;
    assert!(
        lease.licensed && lease.reason.contains("provisional"),
        "{lease:?}"
    );
    let kid = crashed_kid(&kid);
    link(&kid, "main", true, t0()).await;
    renew(&main, "k1", &renewal_of("n1", "k1", 10), t0()).await;
    pump(&kid, &main, t0()).await; // the claim: main confirms it
    pump(&main, &kid, t0()).await; // the renewal, then the answer
    assert!(kid.store().key("k1").unwrap().is_none(), "k1 retired (r07)");
    let seat = kid.store().grant("n1", "pc-1").unwrap();
    assert!(
        seat.is_some_and(|g| g.kind == ObjectKind::Station && g.seats == 1),
        "the acknowledged seat of pc-1 is on n1; leases: {:?} / {:?}",
        kid.store().meta("provisional:k1").unwrap(),
        kid.store().meta("provisional:n1").unwrap()
    );
    assert_eq!(kid.store().meta("provisional:k1").unwrap(), None);
    assert_eq!(kid.store().meta("provisional:n1").unwrap(), None);
    let again = contact(&kid, "pc-1", t0()).await;
    assert!(again.licensed && again.reason.is_empty(), "{again:?}");
    assert_eq!(again.key_id, "n1");
}

/// The lease moved by a renewal still reserves its seat on the new key: a
/// station attaching before the answer cannot take it.
#[tokio::test]
async fn b02_r07_a_provisional_lease_moved_by_a_renewal_still_reserves_its_seat() {
    let (main, kid) = kid_with_k1().await;
    assign(&main, "k1", "kid", 1, t0()).await;
    pump(&main, &kid, t0()).await;
    assert!(contact(&kid, "pc-1", t0()).await.licensed);
    renew(&main, "k1", &renewal_of("n1", "k1", 10), t0()).await;
    pump(&main, &kid, t0()).await; // the renewal only
    assert_eq!(kid.store().key("n1").unwrap().unwrap().held, 1);
    let other = contact(&kid, "pc-2", t0()).await;
    assert!(!other.licensed, "n1's one seat is pc-1's: {other:?}");
    pump(&kid, &main, t0()).await; // both claims
    pump(&main, &kid, t0()).await;
    assert!(kid.store().grant("n1", "pc-1").unwrap().is_some());
    assert_eq!(used(&kid, "n1"), 1);
}
