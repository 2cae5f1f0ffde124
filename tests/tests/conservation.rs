//! r13: the harness's whole-cluster seat conservation check, and proof that
//! it catches a corrupted ledger.
use keyfed_store::{Store, StoreError};
use keyfed_tests::{eventually, TestCluster, Topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_conservation_check_reports_a_corrupted_grant() {
    let mut c = TestCluster::start(Topology::new().root("main").child("child", "main")).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    let id = k.key.id.clone();
    c.add("main", &k).await;
    c.assign("main", &id, "child", 5).await.unwrap();
    eventually("the child holds 5 seats", || async {
        c.key("child", &id)
            .await
            .is_some_and(|k| k.seats_assigned + k.seats_free == 5)
    })
    .await;
    eventually("main's grant is acked", || async {
        c.objects("main")
            .await
            .iter()
            .any(|o| o.name == "child" && o.grants.iter().any(|g| g.delivered))
    })
    .await;
    c.stop("child").await;
    c.stop("main").await;
    assert!(c.seat_violations().is_empty(), "{:?}", c.seat_violations());

    // main's store now says it granted the child 6 (its counter follows)
    let set_child_seats = |seats: u32| {
        let store = Store::open(&c.store_dir("main")).unwrap();
        store
            .transact(|tx| {
                let mut g = tx.grant::<StoreError>(&id, "child")?.expect("grant");
                g.seats = seats;
                tx.put_grant::<StoreError>(&g)
            })
            .unwrap();
        store.flush().unwrap();
    };
    set_child_seats(6);
    let bad = c.seat_violations();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(
        (bad[0].rule, bad[0].node.as_str(), bad[0].key_id.as_str()),
        ("grant-vs-held", "main", id.as_str())
    );
    assert!(
        bad[0].detail.contains("granted child 6 seat(s)") && bad[0].detail.contains("holds 5"),
        "{}",
        bad[0].detail
    );
    // put it back so the shutdown check passes
    set_child_seats(5);
    c.shutdown().await;
}
