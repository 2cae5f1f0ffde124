//! Automatic renewal across a tree (SPEC r01-r13), each on a real cluster:
//! main → child → leaf, and neighbor ↔ main, over gRPC on ephemeral ports.
use chrono::Duration;
use keyfed_proto::v1 as pb;
use keyfed_tests::{eventually, has_event, TestCluster, Topology};
use tonic::Code;

const EXPIRES: &str = "2027-01-31";

fn tree() -> Topology {
    Topology::new()
        .root("main")
        .child("child", "main")
        .child("leaf", "child")
        .neighbor("neighbor", "main")
}

/// K: 20 seats of antivirus+firewall added on main; child 5 (leaf 2 of those),
/// neighbor 4 (a donation), station-1 2.
async fn seeded(topology: Topology) -> (TestCluster, String) {
    let c = TestCluster::start(topology).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus", "firewall"], 20, EXPIRES);
    let id = k.key.id.clone();
    c.add("main", &k).await;
    c.assign("main", &id, "child", 5).await.unwrap();
    c.assign("main", &id, "neighbor", 4).await.unwrap();
    c.assign("main", &id, "station-1", 2).await.unwrap();
    eventually("child holds K", || c.has_key("child", &id)).await;
    c.assign("child", &id, "leaf", 2).await.unwrap();
    eventually("leaf and neighbor hold K", || async {
        c.has_key("leaf", &id).await && c.has_key("neighbor", &id).await
    })
    .await;
    (c, id)
}

async fn held(c: &TestCluster, node: &str, id: &str) -> Option<(u32, u32)> {
    c.key(node, id)
        .await
        .map(|k| (k.seats_assigned + k.seats_free, k.seats_assigned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r06_compatible_renewal_reaches_children_and_neighbors() {
    let (c, old) = seeded(tree()).await;
    let new = c
        .purchase(
            &old,
            &["antispam", "antivirus", "firewall"],
            25,
            "2028-01-31",
        )
        .key
        .id;
    let outcomes = c.renew("main", &old).await;
    assert_eq!(outcomes[0].outcome, "distributed", "{outcomes:?}");
    assert_eq!(outcomes[0].new_key_id, new);
    for node in ["main", "child", "leaf", "neighbor"] {
        eventually(
            &format!("{node} holds the new key and not the old"),
            || async { c.has_key(node, &new).await && !c.has_key(node, &old).await },
        )
        .await;
    }
    // the seats moved with the key, object by object
    assert_eq!(held(&c, "child", &new).await, Some((5, 2)));
    assert_eq!(held(&c, "leaf", &new).await, Some((2, 0)));
    assert_eq!(held(&c, "neighbor", &new).await, Some((4, 0)));
    assert_eq!(held(&c, "main", &new).await, Some((25, 11)));
    // every server that received it told its own administrator
    for node in ["child", "leaf", "neighbor"] {
        assert!(
            has_event(
                &c.notifications(node).await,
                "key-renewed-automatically",
                &new
            ),
            "{node} notified"
        );
    }
    assert!(has_event(
        &c.notifications("main").await,
        "key-retired",
        &old
    ));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r05_incompatible_renewal_is_stored_but_not_distributed() {
    let (c, old) = seeded(tree()).await;
    let new = c.purchase(&old, &["antivirus"], 15, "2028-01-31").key.id;
    let o = &c.renew("main", &old).await[0];
    assert_eq!(o.outcome, "store-only");
    assert_eq!(o.missing_components, vec!["firewall".to_owned()]);
    assert_eq!((o.old_seats, o.new_seats), (20, 15));
    assert!(
        c.has_key("main", &new).await && c.has_key("main", &old).await,
        "both keys listed on main"
    );
    let ns = c.notifications("main").await;
    let n = ns
        .iter()
        .find(|n| n.event == "key-not-renewed-automatically")
        .expect("administrator notified");
    assert_eq!(n.details["missing_components"], "firewall");
    assert_eq!(
        (
            n.details["old_seats"].as_str(),
            n.details["new_seats"].as_str()
        ),
        ("20", "15")
    );
    assert!(
        n.message.contains("firewall") && n.message.contains("15") && n.message.contains("20"),
        "{}",
        n.message
    );
    // nothing travelled: the child still has only the old key
    c.renew("main", &old).await; // asking again notifies nothing new
    assert_eq!(
        c.notifications("main")
            .await
            .iter()
            .filter(|n| n.event == "key-not-renewed-automatically")
            .count(),
        1
    );
    assert!(!c.has_key("child", &new).await);
    assert_eq!(held(&c, "child", &old).await, Some((5, 2)));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r04_no_renewal_upstream_changes_nothing() {
    let (c, old) = seeded(tree()).await;
    let before = c.keys("main").await;
    let notes = c.notifications("main").await.len();
    let o = &c.renew("main", "").await[0];
    assert_eq!(
        (o.key_id.as_str(), o.outcome.as_str()),
        (old.as_str(), "nothing")
    );
    assert_eq!(c.keys("main").await, before);
    assert_eq!(c.notifications("main").await.len(), notes);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r02_keys_from_a_peer_never_start_renewal() {
    let (c, old) = seeded(tree()).await;
    c.purchase(&old, &["antivirus", "firewall"], 20, "2028-01-31");
    let o = &c.renew("child", &old).await[0];
    assert_eq!(o.outcome, "skipped");
    assert!(o.reason.contains("came from main"), "{}", o.reason);
    // a full check on the child covers only upstream keys: it has none
    assert!(c.renew("child", "").await.is_empty());
    assert_eq!(
        c.keys("child").await.len(),
        1,
        "the child stored nothing new"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r01_scheduled_task_renews_only_when_the_option_is_on() {
    let topo = Topology::new()
        .root("main")
        .child("child", "main")
        .root("other")
        .tweak("main", |cfg| {
            cfg.update_license_keys = true;
            cfg.renewal_interval_secs = 3600;
        });
    let c = TestCluster::start(topo).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, EXPIRES);
    let k2 = c.issue(&["antivirus"], 10, EXPIRES);
    c.add("main", &k).await;
    c.add("other", &k2).await;
    c.assign("main", &k.key.id, "child", 3).await.unwrap();
    let new = c
        .purchase(&k.key.id, &["antivirus"], 10, "2028-01-31")
        .key
        .id;
    let new2 = c
        .purchase(&k2.key.id, &["antivirus"], 10, "2028-01-31")
        .key
        .id;
    c.advance(Duration::seconds(3601));
    eventually(
        "the schedule renews main's key and the child gets it",
        || c.has_key("child", &new),
    )
    .await;
    assert!(
        !c.has_key("other", &new2).await,
        "a node with update_license_keys off does not renew on its own"
    );
    // the administrator's button still works there
    assert_eq!(c.renew("other", "").await[0].outcome, "distributed");
    assert!(c.has_key("other", &new2).await);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r07_old_key_kept_until_offline_child_returns() {
    let (mut c, old) = seeded(tree()).await;
    let new = c
        .purchase(&old, &["antivirus", "firewall"], 20, "2028-01-31")
        .key
        .id;
    c.stop("child").await;
    c.renew("main", &old).await;
    eventually("the neighbor took the new key", || {
        c.has_key("neighbor", &new)
    })
    .await;
    // the child was offline: main keeps the old key for it
    let k = c
        .key("main", &old)
        .await
        .expect("old key kept while the child is offline");
    assert_eq!((k.state.as_str(), k.seats_assigned), ("superseded", 5));
    let peers = c
        .admin("main")
        .await
        .list_peers(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .peers;
    let child = peers.iter().find(|p| p.node_id == "child").unwrap();
    assert!(!child.online && child.outbox_depth >= 1, "{child:?}");
    // the child comes back, takes the new key, and the old key is retired
    c.restart("child").await;
    eventually("main retires the old key", || async {
        !c.has_key("main", &old).await
    })
    .await;
    eventually("child and leaf hold only the new key", || async {
        c.has_key("child", &new).await
            && !c.has_key("child", &old).await
            && c.has_key("leaf", &new).await
            && !c.has_key("leaf", &old).await
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_old_protocol_neighbor_gets_the_key_but_old_key_waits_for_the_administrator() {
    let (c, old) = seeded(tree().tweak("neighbor", |cfg| cfg.protocol_version = 1)).await;
    let new = c
        .purchase(&old, &["antivirus", "firewall"], 20, "2028-01-31")
        .key
        .id;
    c.renew("main", &old).await;
    eventually("the old neighbor was given the new key", || {
        c.has_key("neighbor", &new)
    })
    .await;
    eventually("the child took the new key", || c.has_key("child", &new)).await;
    // not distributed there: no seats of the new key, the old key stays in use
    assert_eq!(held(&c, "neighbor", &new).await, Some((0, 0)));
    assert_eq!(held(&c, "neighbor", &old).await, Some((4, 0)));
    // main keeps the old key and says why
    eventually("the child's claim on the old key is released", || async {
        c.key("main", &old)
            .await
            .is_some_and(|k| k.seats_assigned == 4)
    })
    .await;
    let ns = c.notifications("main").await;
    let kept = ns
        .iter()
        .find(|n| n.event == "old-key-kept")
        .expect("administrator told the old key is kept");
    assert!(
        kept.message.contains("neighbor") && kept.message.contains("protocol 1"),
        "{}",
        kept.message
    );
    // until the administrator deletes it
    c.admin("main")
        .await
        .delete_key(pb::KeyId { id: old.clone() })
        .await
        .unwrap();
    assert!(!c.has_key("main", &old).await);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r10_renewal_added_by_hand_first_is_only_propagated() {
    let (c, old) = seeded(tree()).await;
    let newfile = c.purchase(&old, &["antivirus", "firewall"], 25, "2028-01-31");
    let new = newfile.key.id.clone();
    c.add("main", &newfile).await;
    // station-1 was on K's list and got the new key by hand with 3 seats;
    // station-hand never was on K's list
    c.assign("main", &new, "station-1", 3).await.unwrap();
    c.assign("main", &new, "station-hand", 1).await.unwrap();
    let o = &c.renew("main", &old).await[0];
    assert_eq!(o.outcome, "propagated");
    eventually("the child got the new key", || c.has_key("child", &new)).await;
    eventually("the old key is retired", || async {
        !c.has_key("main", &old).await
    })
    .await;
    let objects = c.objects("main").await;
    let seats = |name: &str| {
        objects.iter().find(|o| o.name == name).map(|o| {
            o.grants
                .iter()
                .map(|g| (g.key_id.clone(), g.seats))
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(
        seats("station-1"),
        Some(vec![(new.clone(), 3)]),
        "left alone with what it was given by hand"
    );
    assert_eq!(seats("station-hand"), Some(vec![(new.clone(), 1)]), "kept");
    assert_eq!(seats("child"), Some(vec![(new.clone(), 5)]));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_objects_without_a_seat_wait_and_get_one_as_soon_as_it_frees() {
    let (c, old) = seeded(tree()).await;
    let newfile = c.purchase(&old, &["antivirus", "firewall"], 20, "2028-01-31");
    let new = newfile.key.id.clone();
    c.add("main", &newfile).await;
    // 12 of the 20 new seats go elsewhere by hand: 8 left for 11 needed
    c.assign("main", &new, "station-x", 12).await.unwrap();
    c.renew("main", &old).await;
    eventually("the old key is still deleted", || async {
        !c.has_key("main", &old).await
    })
    .await;
    // in object order: child (5) fits, neighbor (4) does not, station-1 (2) does
    let ns = c.notifications("main").await;
    let waiting: Vec<_> = ns
        .iter()
        .filter(|n| n.event == "object-unlicensed")
        .map(|n| n.details["object"].clone())
        .collect();
    assert_eq!(waiting, vec!["neighbor".to_owned()], "{ns:?}");
    eventually("the neighbor lost the old key", || async {
        !c.has_key("neighbor", &old).await
    })
    .await;
    assert!(
        !c.has_key("neighbor", &new).await,
        "unlicensed until seats free up"
    );
    // freeing seats reaches the waiting neighbor through its link at once
    c.unassign("main", &new, "station-x").await;
    eventually("the neighbor gets its seats", || async {
        held(&c, "neighbor", &new).await == Some((4, 0))
    })
    .await;
    assert!(has_event(
        &c.notifications("main").await,
        "object-licensed",
        &new
    ));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_seats_are_conserved_across_the_tree_through_restarts_and_replays() {
    let (mut c, id) = seeded(tree()).await;
    // the child can hand out at most what it received
    c.assign("child", &id, "station-a", 3).await.unwrap();
    let over = c.assign("child", &id, "station-b", 1).await.unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition);
    assert!(
        over.message().contains("0 free seat(s) of 5"),
        "{}",
        over.message()
    );
    // grants made while the child is offline wait durably in main's outbox,
    // survive a restart of main, and apply once
    c.stop("child").await;
    c.assign("main", &id, "child", 7).await.unwrap();
    c.stop("main").await;
    c.restart("main").await;
    c.restart("child").await;
    eventually("child holds 7", || async {
        held(&c, "child", &id).await == Some((7, 5))
    })
    .await;
    // restart both again: replays change nothing
    c.stop("child").await;
    c.restart("child").await;
    c.wait_linked().await;
    assert_eq!(held(&c, "child", &id).await, Some((7, 5)));
    assert_eq!(held(&c, "main", &id).await, Some((20, 13)));
    // walk the tree: no node hands out more than it holds, and what each
    // server holds equals what its sender granted it
    for node in ["main", "child", "leaf", "neighbor"] {
        let (total, used) = held(&c, node, &id).await.unwrap();
        assert!(used <= total, "{node} over-allocated");
    }
    let granted = |objs: Vec<pb::ObjectInfo>, name: &str| {
        objs.iter().find(|o| o.name == name).unwrap().grants[0].seats
    };
    let main_objs = c.objects("main").await;
    let child_objs = c.objects("child").await;
    assert_eq!(
        granted(main_objs.clone(), "child"),
        held(&c, "child", &id).await.unwrap().0
    );
    assert_eq!(
        granted(main_objs, "neighbor"),
        held(&c, "neighbor", &id).await.unwrap().0
    );
    assert_eq!(
        granted(child_objs, "leaf"),
        held(&c, "leaf", &id).await.unwrap().0
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r03_each_step_can_end_the_procedure_and_a_full_run_stores_then_hands_out() {
    // step 1 fails: the upstream cannot be reached; nothing changes
    let topo = tree().tweak("neighbor", |cfg| {
        cfg.upstream = Some("http://127.0.0.1:9".into())
    });
    let (c, old) = seeded(topo).await;
    let mine = c.issue(&["antivirus"], 3, EXPIRES);
    c.add("neighbor", &mine).await;
    c.purchase(&mine.key.id, &["antivirus"], 3, "2028-01-31");
    let before = c.keys("neighbor").await;
    let err = c
        .admin("neighbor")
        .await
        .check_for_updates(pb::CheckForUpdatesRequest {
            key_id: mine.key.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains(&mine.key.id), "{}", err.message());
    assert_eq!(c.keys("neighbor").await, before);
    // all three steps: asked, downloaded and stored with its origin, handed to K's objects
    let new = c
        .purchase(&old, &["antivirus", "firewall"], 20, "2028-01-31")
        .key
        .id;
    let o = &c.renew("main", &old).await[0];
    assert_eq!(
        (o.outcome.as_str(), o.new_key_id.as_str()),
        ("distributed", new.as_str())
    );
    let stored = c.key("main", &new).await.expect("stored");
    assert_eq!(
        stored.origin.unwrap().from,
        Some(pb::origin::From::Upstream(true))
    );
    assert_eq!(stored.key.unwrap().renews, old);
    eventually("handed to the child", || c.has_key("child", &new)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r07_child_cut_off_during_renewal_keeps_its_claim_until_the_link_heals() {
    let (c, old) = seeded(tree()).await;
    let new = c
        .purchase(&old, &["antivirus", "firewall"], 20, "2028-01-31")
        .key
        .id;
    // both nodes keep running; only the link between them is down
    c.cut("child", "main").await;
    c.renew("main", &old).await;
    eventually("the neighbor took the new key", || {
        c.has_key("neighbor", &new)
    })
    .await;
    let k = c
        .key("main", &old)
        .await
        .expect("old key kept while the child is cut off");
    assert_eq!((k.state.as_str(), k.seats_assigned), ("superseded", 5));
    // the child, alive behind the cut, still holds and uses the old key
    assert_eq!(held(&c, "child", &old).await, Some((5, 2)));
    assert!(!c.has_key("child", &new).await, "nothing crossed the cut");
    let peers = c
        .admin("main")
        .await
        .list_peers(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .peers;
    let child = peers.iter().find(|p| p.node_id == "child").unwrap();
    assert!(!child.online && child.outbox_depth >= 1, "{child:?}");
    c.heal("child", "main").await;
    eventually("main retires the old key", || async {
        !c.has_key("main", &old).await
    })
    .await;
    eventually("child and leaf hold only the new key", || async {
        c.has_key("child", &new).await
            && !c.has_key("child", &old).await
            && c.has_key("leaf", &new).await
            && !c.has_key("leaf", &old).await
    })
    .await;
    assert_eq!(held(&c, "child", &new).await, Some((5, 2)));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r07_cut_works_on_a_tls_tree_too() {
    let (c, old) = seeded(tree().tls()).await;
    let new = c
        .purchase(&old, &["antivirus", "firewall"], 20, "2028-01-31")
        .key
        .id;
    c.cut("main", "child").await;
    c.renew("main", &old).await;
    assert!(c.has_key("main", &old).await, "kept for the cut-off child");
    c.heal("main", "child").await;
    eventually("the child takes the new key over TLS", || async {
        c.has_key("child", &new).await && !c.has_key("main", &old).await
    })
    .await;
    c.shutdown().await;
}
