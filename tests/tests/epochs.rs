//! Issue 15 §3, store epochs: a node whose store was wiped, restored from an
//! older backup or copied back at the file level, in a federation that kept
//! running. Links used to count the peer's `last_applied_seq` as acked and
//! drop every delivery at or below it as a replay, so a restored main's new
//! grants never arrived and a wiped child never got its key back. Now each
//! store has an epoch carried in Hello and the link reconciles (r13: seat
//! conservation holds over every store at the end of each test).
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::station_client::StationClient;
use keyfed_tests::{eventually, has_event, TestCluster, Topology};

async fn wait_held(c: &TestCluster, node: &str, key: &str, seats: u32) {
    eventually(
        &format!("{node} holds {seats} seat(s) of {key}"),
        || async { c.held(node, key).await == seats },
    )
    .await;
}

async fn wait_drained(c: &TestCluster, node: &str, peer: &str) {
    eventually(&format!("{node}'s outbox to {peer} drains"), || async {
        c.outbox_depth(node, peer).await == 0
    })
    .await;
}

/// The `cause` of every `peer-store-replaced` notification on `node` about `peer`.
async fn replaced_causes(c: &TestCluster, node: &str, peer: &str) -> Vec<String> {
    c.notifications(node)
        .await
        .into_iter()
        .filter(|n| {
            n.event == "peer-store-replaced"
                && n.details.get("peer").map(String::as_str) == Some(peer)
        })
        .map(|n| n.details.get("cause").cloned().unwrap_or_default())
        .collect()
}

async fn wait_cause(c: &TestCluster, node: &str, peer: &str, cause: &str) {
    eventually(&format!("{node} notes `{cause}` about {peer}"), || async {
        replaced_causes(c, node, peer)
            .await
            .iter()
            .any(|x| x == cause)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_a_wiped_child_gets_its_key_and_seats_back_and_new_grants_arrive() {
    let mut c = TestCluster::start(Topology::new().root("main").child("child", "main")).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    let id = k.key.id.clone();
    c.add("main", &k).await;
    c.assign("main", &id, "child", 4).await.expect("assigned");
    wait_held(&c, "child", &id, 4).await;
    wait_drained(&c, "main", "child").await;

    c.stop("child").await;
    let data = c.nodes["child"].config.data_dir.clone();
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    c.restart("child").await;

    // main is authoritative for what it granted: the key and its 4 seats
    wait_held(&c, "child", &id, 4).await;
    wait_cause(&c, "main", "child", "peer-replaced").await;
    // the wiped child knew nothing, but main remembered its old epoch
    wait_cause(&c, "child", "main", "this-store-replaced").await;
    c.assign("main", &id, "child", 7).await.expect("assigned");
    wait_held(&c, "child", &id, 7).await;
    wait_drained(&c, "main", "child").await;
    wait_drained(&c, "child", "main").await;
    c.shutdown().await;
}

/// The sandbox run of issue 15: main is restored from a copy taken when the
/// child had 1 seat, after three more grants took the child to 4.
async fn main_restored_while_the_child_runs(forget_epoch: bool) -> TestCluster {
    let mut c = TestCluster::start(Topology::new().root("main").child("child", "main")).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    let id = k.key.id.clone();
    c.add("main", &k).await;
    c.assign("main", &id, "child", 1).await.expect("assigned");
    wait_held(&c, "child", &id, 1).await;
    wait_drained(&c, "main", "child").await;

    c.stop("main").await;
    let data = c.nodes["main"].config.data_dir.clone();
    let backup = c.dir.path().join("main-backup");
    keyfed_tests::copy_dir(&data, &backup);
    c.restart("main").await;
    c.wait_linked().await;
    for seats in 2..=4 {
        c.assign("main", &id, "child", seats)
            .await
            .expect("assigned");
        wait_held(&c, "child", &id, seats).await;
    }
    wait_drained(&c, "main", "child").await;

    c.stop("main").await;
    std::fs::remove_dir_all(&data).unwrap();
    keyfed_tests::copy_dir(&backup, &data);
    if forget_epoch {
        // what a restore does: the restored store takes a new epoch
        keyfed_store::Store::open(&c.store_dir("main"))
            .unwrap()
            .forget_epoch()
            .unwrap();
    }
    c.restart("main").await;

    // the restored main is authoritative for what it granted: 1 seat
    wait_held(&c, "child", &id, 1).await;
    let cause = if forget_epoch {
        "this-store-replaced"
    } else {
        "this-store-rolled-back"
    };
    wait_cause(&c, "main", "child", cause).await;
    // the grant the sandbox lost
    c.assign("main", &id, "child", 7).await.expect("assigned");
    wait_held(&c, "child", &id, 7).await;
    wait_drained(&c, "main", "child").await;
    assert_eq!(c.held("main", &id).await, 10);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_main_restored_from_an_older_backup_resyncs_the_running_child() {
    let c = main_restored_while_the_child_runs(true).await;
    // the child saw main's new epoch: it counts main's deliveries anew
    wait_cause(&c, "child", "main", "peer-replaced").await;
    wait_drained(&c, "child", "main").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_main_copied_back_with_its_epoch_detects_the_rollback() {
    let mut c = main_restored_while_the_child_runs(false).await;
    let ns = c.notifications("main").await;
    let n = ns
        .iter()
        .find(|n| {
            n.event == "peer-store-replaced"
                && n.details.get("cause").map(String::as_str) == Some("this-store-rolled-back")
        })
        .expect("main tells its administrator it was rolled back");
    assert!(
        n.message.contains("child") && n.message.contains("rolled back"),
        "{}",
        n.message
    );
    // the new epoch reaches the child at its next Hello; nothing is lost
    c.stop("child").await;
    c.restart("child").await;
    wait_cause(&c, "child", "main", "peer-replaced").await;
    let id = c.keys("main").await[0].key.clone().unwrap().id;
    c.assign("main", &id, "child", 6).await.expect("assigned");
    wait_held(&c, "child", &id, 6).await;
    wait_drained(&c, "main", "child").await;
    wait_drained(&c, "child", "main").await;
    c.shutdown().await;
}

async fn connect(c: &TestCluster, node: &str, fp: &str) -> pb::Lease {
    StationClient::new(
        tonic::transport::Endpoint::from_shared(c.url(node))
            .unwrap()
            .connect_lazy(),
    )
    .attach(pb::ConnectRequest {
        station_id: fp.into(),
        fingerprint: fp.into(),
        components: vec!["antivirus".into()],
        ..Default::default()
    })
    .await
    .expect("station rpc")
    .into_inner()
}

async fn release(c: &TestCluster, node: &str, lease: &pb::Lease, fp: &str) {
    StationClient::new(
        tonic::transport::Endpoint::from_shared(c.url(node))
            .unwrap()
            .connect_lazy(),
    )
    .release(pb::ReleaseRequest {
        lease_id: lease.lease_id.clone(),
        fingerprint: fp.into(),
    })
    .await
    .expect("release");
}

/// The restored main is authoritative for its grant even when the child's
/// stations use more of it: the child gets the smaller grant and the
/// existing e06 handling flags it (nothing revoked silently); the child's
/// own claims reach the restored main again (b02); once the administrator
/// gives seats back, seats are conserved over both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e06_a_restored_main_shrinks_a_child_whose_stations_use_more_and_it_is_flagged() {
    let mut c = TestCluster::start(Topology::new().root("main").child("child", "main")).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    let id = k.key.id.clone();
    c.add("main", &k).await;
    c.assign("main", &id, "child", 1).await.expect("assigned");
    wait_held(&c, "child", &id, 1).await;
    wait_drained(&c, "main", "child").await;
    c.stop("main").await;
    let data = c.nodes["main"].config.data_dir.clone();
    let backup = c.dir.path().join("main-backup");
    keyfed_tests::copy_dir(&data, &backup);
    c.restart("main").await;
    c.wait_linked().await;
    c.assign("main", &id, "child", 4).await.expect("assigned");
    wait_held(&c, "child", &id, 4).await;
    let mut leases = Vec::new();
    for fp in ["pc-1", "pc-2", "pc-3"] {
        let l = connect(&c, "child", fp).await;
        assert!(l.licensed, "{fp} gets a seat on the child");
        leases.push(l);
    }
    wait_drained(&c, "child", "main").await;
    wait_drained(&c, "main", "child").await;

    c.stop("main").await;
    std::fs::remove_dir_all(&data).unwrap();
    keyfed_tests::copy_dir(&backup, &data);
    keyfed_store::Store::open(&c.store_dir("main"))
        .unwrap()
        .forget_epoch()
        .unwrap();
    c.restart("main").await;
    // 3 seats used of the 1 main sent again (free + assigned would say 3)
    eventually("the child flags the over-allocation", || async {
        c.notifications("child").await.iter().any(|n| {
            n.event == "over-allocated"
                && n.key_id == id
                && n.details.get("held").map(String::as_str) == Some("1")
        })
    })
    .await;
    // the stations keep their seats until the administrator acts
    assert_eq!(c.key("child", &id).await.unwrap().seats_assigned, 3);
    release(&c, "child", &leases[2], "pc-3").await;
    release(&c, "child", &leases[1], "pc-2").await;
    eventually("the flag clears", || async {
        has_event(
            &c.notifications("child").await,
            "over-allocation-resolved",
            &id,
        )
    })
    .await;
    c.assign("main", &id, "child", 7).await.expect("assigned");
    wait_held(&c, "child", &id, 7).await;
    wait_drained(&c, "main", "child").await;
    wait_drained(&c, "child", "main").await;
    c.shutdown().await;
}
