//! b01/r13: a lending whose period ended is held on neither side and comes
//! back to the lender at once, whichever clock sees the end first
//! (`keyfed_core::donation`).
use super::*;

fn outbox_bodies(from: &Engine, to: &str) -> Vec<pb::delivery::Body> {
    from.store()
        .outbox(to)
        .unwrap()
        .into_iter()
        .filter_map(|e| pb::Delivery::decode(e.body.as_slice()).unwrap().body)
        .collect()
}

fn give_backs(from: &Engine, to: &str) -> Vec<pb::GrantWithdrawn> {
    outbox_bodies(from, to)
        .into_iter()
        .filter_map(|b| match b {
            pb::delivery::Body::Withdrawn(w) if !w.lent_until.is_empty() => Some(w),
            _ => None,
        })
        .collect()
}

async fn linked() -> (Engine, Engine) {
    let (main, east) = main_and_east();
    add(&main, &file(spec("k1", 10)), t0()).await;
    link(&main, "east", true, t0()).await;
    link(&east, "main", true, t0()).await;
    (main, east)
}

#[tokio::test]
async fn r13_b01_a_loan_that_arrives_lapsed_is_given_back_and_freed_at_once() {
    let (main, east) = linked().await;
    run(&main, assign_cmd("k1", "east", 1, 1, t0())).await;
    // held up two days (a cut link); the lender has not ticked since
    let late = t0() + Duration::days(2);
    pump(&main, &east, late).await;
    assert!(east.store().key("k1").unwrap().is_none(), "never held");
    assert_eq!(events(&east, "donation-lapsed").len(), 1);
    let back = give_backs(&east, "main");
    assert_eq!(back.len(), 1, "one give-back naming the period");
    assert_eq!(back[0].lent_until, "2026-03-02T00:00:00Z");
    assert_eq!(used(&main, "k1"), 1, "still counted until the give-back");
    pump(&east, &main, late).await;
    assert_eq!(main.store().grant("k1", "east").unwrap(), None);
    assert_eq!(used(&main, "k1"), 0, "free again before the lender's tick");
    assert_eq!(events(&main, "grant-returned").len(), 1);
}

#[tokio::test]
async fn r13_b01_exactly_at_the_end_instant_the_loan_is_lapsed_on_arrival() {
    let (main, east) = linked().await;
    run(&main, assign_cmd("k1", "east", 2, 1, t0())).await;
    pump(&main, &east, t0() + Duration::days(1)).await;
    assert!(east.store().key("k1").unwrap().is_none());
    pump(&east, &main, t0() + Duration::days(1)).await;
    assert_eq!(used(&main, "k1"), 0);
}

#[tokio::test]
async fn r13_b01_a_borrower_ahead_of_the_lender_gives_back_at_its_own_tick() {
    let (main, east) = linked().await;
    run(&main, assign_cmd("k1", "east", 3, 1, t0())).await;
    pump(&main, &east, t0()).await;
    assert_eq!(east.store().key("k1").unwrap().unwrap().held, 3);
    // east's clock passes the end two minutes before main's does
    let end = t0() + Duration::days(1);
    tick(&east, end).await;
    assert!(east.store().key("k1").unwrap().is_none());
    assert_eq!(give_backs(&east, "main").len(), 1);
    pump(&east, &main, end - Duration::minutes(2)).await;
    assert_eq!(
        used(&main, "k1"),
        0,
        "main frees it without waiting for its end"
    );
    // main's own tick later finds nothing to take back
    tick(&main, end).await;
    assert!(events(&main, "donation-returned").is_empty());
}

#[tokio::test]
async fn r13_b01_a_give_back_of_an_earlier_period_leaves_a_renewed_loan_alone() {
    let (main, east) = linked().await;
    run(&main, assign_cmd("k1", "east", 3, 2, t0())).await;
    pump(&main, &east, t0()).await;
    // main (behind) renews at half the period; east (ahead) lapses the old
    // period before the renewal reaches it: the two cross on the link
    tick(&main, t0() + Duration::days(1)).await;
    let renewed_until = main
        .store()
        .grant("k1", "east")
        .unwrap()
        .unwrap()
        .lent_until;
    assert_eq!(renewed_until, Some(t0() + Duration::days(3)));
    tick(&east, t0() + Duration::days(2)).await;
    assert!(east.store().key("k1").unwrap().is_none());
    pump(&east, &main, t0() + Duration::days(1)).await;
    assert_eq!(
        main.store()
            .grant("k1", "east")
            .unwrap()
            .map(|g| g.lent_until),
        Some(renewed_until),
        "the renewal still counts: east will hold it"
    );
    pump(&main, &east, t0() + Duration::days(2)).await;
    assert_eq!(east.store().key("k1").unwrap().unwrap().held, 3);
    assert_eq!(used(&main, "k1"), 3, "counted once on each side");
}

#[tokio::test]
async fn b01_a_waiting_neighbor_whose_period_ended_is_not_sent_a_lapsed_loan() {
    let e = engine(EngineConfig {
        neighbors: vec![neighbor("east"), neighbor("west")],
        ..config("main")
    });
    add(&e, &file(spec("k1", 10)), t0()).await;
    link(&e, "east", true, t0()).await;
    link(&e, "west", true, t0()).await;
    // east's lending ends after one day; it waits for the renewal's seats
    run(&e, assign_cmd("k1", "east", 4, 1, t0())).await;
    let n = renewal_of("n1", "k1", 10);
    add(&e, &n, t0()).await;
    assign(&e, "n1", "station-x", 4, t0()).await;
    run(&e, assign_cmd("n1", "west", 4, 1, t0())).await;
    renew(&e, "k1", &n, t0()).await;
    assert!(e
        .store()
        .waiting()
        .unwrap()
        .iter()
        .any(|w| w.object == "east"));
    tick(&e, t0()).await;
    link(&e, "west", false, t0()).await;
    // west's seats come back, but east's period is over too by then
    let later = t0() + Duration::days(2);
    tick(&e, later).await;
    tick(&e, later + Duration::seconds(e.config().seat_poll_secs + 1)).await;
    assert_eq!(e.store().grant("n1", "east").unwrap(), None, "nothing sent");
    assert!(e
        .store()
        .waiting()
        .unwrap()
        .iter()
        .all(|w| w.object != "east"));
    assert!(outbox_bodies(&e, "east")
        .iter()
        .all(|b| !matches!(b, pb::delivery::Body::Grant(g) if g.key.as_ref().is_some_and(|k| k.text.contains("n1")))));
    assert_eq!(used(&e, "n1"), 4, "only station-x");
    let returned = events(&e, "donation-returned");
    assert!(
        returned
            .iter()
            .any(|n| n.message.contains("east no longer waits")),
        "{returned:?}"
    );
}
