//! Store epochs at Hello (issue 15 §3) on in-memory engines: the Hello
//! each side would send is built by hand from its store, as the shell does.
use super::*;
use keyfed_core::reconcile::Plan;

/// The Hello `e` sends `peer` (what keyfed-node's `hello` builds).
fn hello_of(e: &Engine, peer: &str) -> pb::Hello {
    let c = e.store().cursor(peer).unwrap();
    pb::Hello {
        node_id: e.id().into(),
        protocol_version: keyfed_core::PROTOCOL_VERSION,
        last_applied_seq: c.applied,
        store_epoch: e.store().epoch().unwrap(),
        peer_epoch_seen: c.peer_epoch,
        outbox_head: c.last_queued,
        ..pb::Hello::default()
    }
}

/// Both sides reconcile with each other's Hello, as a link coming up does.
async fn hello_both(a: &Engine, b: &Engine) -> (Plan, Plan) {
    let (ha, hb) = (hello_of(a, b.id()), hello_of(b, a.id()));
    let pa = a.reconcile_at(b.id(), &hb, t0()).await.unwrap();
    let pb_ = b.reconcile_at(a.id(), &ha, t0()).await.unwrap();
    (pa, pb_)
}

fn held(e: &Engine, key: &str) -> Option<u32> {
    e.store().key(key).unwrap().map(|k| k.held)
}

fn set_epoch(e: &Engine, epoch: &str) {
    e.store()
        .transact(|tx| tx.put_epoch::<keyfed_store::StoreError>(epoch))
        .unwrap();
}

#[tokio::test]
async fn a_wiped_child_gets_its_grant_again_with_a_fresh_id_and_sequence() {
    let main = engine(EngineConfig {
        children: vec!["kid".into()],
        ..config("main")
    });
    let kid_config = EngineConfig {
        parent: parent("main"),
        ..config("kid")
    };
    let kid = engine(kid_config.clone());
    let (pm, pk) = hello_both(&main, &kid).await;
    assert!(pm.causes.is_empty() && pk.causes.is_empty(), "first sight");
    add(&main, &file(spec("k1", 10)), t0()).await;
    assign(&main, "k1", "kid", 4, t0()).await;
    assert_eq!(pump(&main, &kid, t0()).await, 1);
    assert_eq!(held(&kid, "k1"), Some(4));
    // the same link again: nothing to do
    let (pm, pk) = hello_both(&main, &kid).await;
    assert!(pm.is_empty() && pk.is_empty());

    // wiped: an empty store with an epoch of its own
    let wiped = engine(kid_config);
    set_epoch(&wiped, "memory-wiped");
    let (pm, pw) = hello_both(&main, &wiped).await;
    assert!(pm.reset_applied && pm.resync, "{pm:?}");
    assert!(pw.resync && !pw.reset_applied, "{pw:?}");
    assert_eq!(pump(&main, &wiped, t0()).await, 1);
    assert_eq!(
        held(&wiped, "k1"),
        Some(4),
        "the key and its seats are back"
    );
    assert_eq!(events(&main, "peer-store-replaced").len(), 1);
    assert_eq!(events(&wiped, "peer-store-replaced").len(), 1);
    // and later grants arrive as usual
    assign(&main, "k1", "kid", 7, t0()).await;
    assert_eq!(pump(&main, &wiped, t0()).await, 1);
    assert_eq!(held(&wiped, "k1"), Some(7));
}

#[tokio::test]
async fn a_restored_main_numbers_past_what_the_child_applied_and_shrinks_it_back() {
    let main_config = EngineConfig {
        children: vec!["kid".into()],
        ..config("main")
    };
    let main = engine(main_config.clone());
    let kid = engine(EngineConfig {
        parent: parent("main"),
        ..config("kid")
    });
    hello_both(&main, &kid).await;
    add(&main, &file(spec("k1", 10)), t0()).await;
    assign(&main, "k1", "kid", 1, t0()).await;
    pump(&main, &kid, t0()).await;
    // the backup: a copy of main's store as it is now (what a crash of an
    // in-memory store keeps is everything synced; main goes on by itself)
    let backup = main.store().crash().unwrap();
    for seats in 2..=4 {
        assign(&main, "k1", "kid", seats, t0()).await;
    }
    assert_eq!(pump(&main, &kid, t0()).await, 3);
    assert_eq!(held(&kid, "k1"), Some(4));

    // restored: the copy, with the epoch a restore gives it
    let restored = engine_on(main_config, backup);
    set_epoch(&restored, "memory-restored");
    let (pr, pk) = hello_both(&restored, &kid).await;
    assert_eq!(pr.advance_outbox_to, Some(4), "{pr:?}");
    assert!(pk.reset_applied, "{pk:?}");
    // the Hello's last_applied counts as acked, as the link does
    let done = restored.store().ack("kid", 4).unwrap();
    restored.on_acked("kid", done).await.unwrap();
    assert_eq!(pump(&restored, &kid, t0()).await, 1);
    assert_eq!(held(&kid, "k1"), Some(1), "the restored main's grant holds");
    assign(&restored, "k1", "kid", 7, t0()).await;
    assert_eq!(pump(&restored, &kid, t0()).await, 1);
    assert_eq!(held(&kid, "k1"), Some(7), "the new grant is not a replay");
    assert_eq!(restored.store().outbox_depth("kid").unwrap(), 0);
}
