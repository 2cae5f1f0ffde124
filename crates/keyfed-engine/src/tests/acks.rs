//! r07 across a crash between a peer's ack and its effects.
use super::*;

fn main_config() -> EngineConfig {
    EngineConfig {
        children: vec!["kid".into()],
        ..config("main")
    }
}

/// Applies `from`'s outbox for `to` on `to` without acking it.
async fn deliver(from: &Engine, to: &Engine, now: DateTime<Utc>) -> u64 {
    let mut last = 0;
    for e in from.store().outbox(to.id()).unwrap() {
        let mut d = pb::Delivery::decode(e.body.as_slice()).unwrap();
        d.seq = e.seq;
        d.message_id.clone_from(&e.message_id);
        let cmd = Command::Delivery {
            peer: from.id().into(),
            delivery: d.encode_to_vec(),
            now,
        };
        run(to, cmd).await;
        last = e.seq;
    }
    last
}

/// The kill loop's old key that never retired: the child took the renewal
/// and acked it; main's link recorded the ack (`Store::ack`, made durable
/// by the next flush) and main was killed before the ack's effects
/// (`on_acked`: the child's old grant goes, the old key retires). After the
/// restart the child never acks it again, so the old key stayed forever.
#[tokio::test]
async fn r07_a_renewal_acked_just_before_a_crash_still_retires_the_old_key() {
    let (main, kid) = main_and_kid();
    add(&main, &file(spec("k1", 10)), t0()).await;
    link(&main, "kid", true, t0()).await;
    assign(&main, "k1", "kid", 5, t0()).await;
    pump(&main, &kid, t0()).await;
    renew(&main, "k1", &renewal_of("n1", "k1", 10), t0()).await;
    let seq = deliver(&main, &kid, t0()).await;
    assert!(
        kid.store().key("k1").unwrap().is_none(),
        "the child took n1"
    );
    let acked = main.store().ack("kid", seq).unwrap();
    assert_eq!(acked.len(), 1, "the renewal");
    main.store().flush().unwrap();
    let main = engine_on(main_config(), main.store().crash().unwrap());
    assert!(main.store().outbox("kid").unwrap().is_empty());
    assert!(main.store().grant("k1", "kid").unwrap().is_some());
    link(&main, "kid", true, t0()).await;
    tick(&main, t0()).await;
    assert_eq!(main.store().grant("k1", "kid").unwrap(), None);
    assert!(
        main.store().key("k1").unwrap().is_none(),
        "k1 retired (r07)"
    );
    let g = main.store().grant("n1", "kid").unwrap().unwrap();
    assert!(g.delivered && g.seats == 5, "{g:?}");
    assert_eq!(events(&main, "key-retired").len(), 1);
}

/// A child that has not acked the renewal yet keeps its claim on the old
/// key (r07), however many ticks run, even after a restart.
#[tokio::test]
async fn r07_an_unacked_renewal_keeps_the_old_key_across_ticks() {
    let (main, _kid) = main_and_kid();
    add(&main, &file(spec("k1", 10)), t0()).await;
    link(&main, "kid", true, t0()).await;
    assign(&main, "k1", "kid", 5, t0()).await;
    let seq = main.store().outbox("kid").unwrap().last().unwrap().seq;
    main.store().ack("kid", seq).unwrap();
    renew(&main, "k1", &renewal_of("n1", "k1", 10), t0()).await;
    let main = engine_on(main_config(), main.store().crash().unwrap());
    link(&main, "kid", true, t0()).await;
    for m in 0..3 {
        tick(&main, t0() + Duration::minutes(m)).await;
    }
    assert!(main.store().grant("k1", "kid").unwrap().is_some());
    assert!(main.store().key("k1").unwrap().is_some());
}
