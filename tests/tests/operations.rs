//! Hooks and notifications (r09), key files (r12), seat donations between
//! neighbors (b01) and usage up the tree (b05), on real clusters.
use chrono::Duration;
use keyfed_node::config::HookConfig;
use keyfed_proto::v1 as pb;
use keyfed_tests::{eventually, has_event, TestCluster, Topology};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio_stream::StreamExt;
use tonic::Code;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r09_every_notification_is_stored_watchable_and_runs_the_hook() {
    let scripts = tempfile::tempdir().unwrap();
    let log = scripts.path().join("hook.log");
    let good = script(scripts.path(), "good.sh", &format!("echo \"$KEYFED_NODE_ID $KEYFED_EVENT $KEYFED_KEY_ID $(test -f \"$KEYFED_KEY_FILE\" && echo file)\" >> {}", log.display()));
    let failing = script(scripts.path(), "fail.sh", "exit 3");
    let hanging = script(scripts.path(), "hang.sh", "sleep 30");
    let topo = Topology::new()
        .root("main")
        .child("child", "main")
        .child("leaf", "child")
        .tweak("main", move |c| {
            c.hook = Some(HookConfig {
                path: good.clone(),
                timeout_secs: 10,
                with_key_file: true,
            })
        })
        .tweak("child", move |c| {
            c.hook = Some(HookConfig {
                path: failing.clone(),
                ..HookConfig::default()
            })
        })
        .tweak("leaf", move |c| {
            c.hook = Some(HookConfig {
                path: hanging.clone(),
                timeout_secs: 1,
                with_key_file: false,
            })
        });
    let c = TestCluster::start(topo).await;
    c.wait_linked().await;
    let mut watch = c
        .admin("leaf")
        .await
        .watch_notifications(pb::ListNotificationsRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let k = c.issue(&["antivirus"], 10, "2027-01-31");
    c.add("main", &k).await;
    c.assign("main", &k.key.id, "child", 4).await.unwrap();
    eventually("child holds K", || c.has_key("child", &k.key.id)).await;
    c.assign("child", &k.key.id, "leaf", 2).await.unwrap();
    let new = c
        .purchase(&k.key.id, &["antivirus"], 10, "2028-01-31")
        .key
        .id;
    c.renew("main", &k.key.id).await;
    // failing and hanging hooks do not stop the procedure
    eventually("the renewal reached the leaf", || c.has_key("leaf", &new)).await;
    eventually("the old key is gone everywhere", || async {
        !c.has_key("child", &k.key.id).await && !c.has_key("main", &k.key.id).await
    })
    .await;
    // the watcher on the leaf saw the key arrive, then renewed
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &String| e == "key-renewed-automatically")
    {
        let n = tokio::time::timeout(std::time::Duration::from_secs(15), watch.next())
            .await
            .expect("watch delivers")
            .unwrap()
            .unwrap();
        seen.push(n.event);
    }
    assert_eq!(seen.first().map(String::as_str), Some("key-received"));
    // the hook ran after each notification on main, with the key file on request
    let expected = format!("main key-renewed-automatically {new} file");
    eventually("the hook logged the renewal", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&expected)
    })
    .await;
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(
        lines.contains(&format!("main key-added {}", k.key.id)),
        "{lines}"
    );
    assert!(has_event(
        &c.notifications("main").await,
        "key-retired",
        &k.key.id
    ));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r12_auto_renewal_writes_no_key_file_and_delete_leaves_key_folder_alone() {
    let mut c = TestCluster::start(Topology::new().root("main").child("child", "main")).await;
    c.wait_linked().await;
    let key_dir = c.nodes["main"].config.key_dir();
    std::fs::create_dir_all(&key_dir).unwrap();
    let k = c.issue(&["antivirus"], 10, "2027-01-31");
    let spare = c.issue(&["firewall"], 3, "2027-01-31");
    std::fs::write(key_dir.join("acme.key"), k.render()).unwrap();
    std::fs::write(key_dir.join("spare.key"), spare.render()).unwrap();
    // key files in the key folder are added at start
    c.stop("main").await;
    c.restart("main").await;
    assert!(c.has_key("main", &k.key.id).await && c.has_key("main", &spare.key.id).await);
    c.assign("main", &k.key.id, "child", 2).await.unwrap();
    let new = c
        .purchase(&k.key.id, &["antivirus"], 10, "2028-01-31")
        .key
        .id;
    c.renew("main", &k.key.id).await;
    eventually("renewed", || c.has_key("child", &new)).await;
    let files = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        files(&key_dir),
        vec!["acme.key", "spare.key"],
        "auto-renewal wrote no key file"
    );
    // export works for the renewed key
    let exported = c
        .admin("main")
        .await
        .export_key(pb::KeyId { id: new.clone() })
        .await
        .unwrap()
        .into_inner()
        .text;
    assert!(exported.contains(&format!("id: {new}")));
    // deleting removes it from the database only, and a restart does not bring it back
    c.admin("main")
        .await
        .delete_key(pb::KeyId {
            id: spare.key.id.clone(),
        })
        .await
        .unwrap();
    assert!(!c.has_key("main", &spare.key.id).await);
    assert!(key_dir.join("spare.key").exists());
    c.stop("main").await;
    c.restart("main").await;
    assert!(
        !c.has_key("main", &spare.key.id).await,
        "a deleted key is not imported again"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b01_donated_seats_renew_while_linked_and_return_when_the_neighbor_vanishes() {
    let topo = Topology::new()
        .root("main")
        .neighbor("neighbor", "main")
        .neighbor("closed", "main")
        .tweak("main", |c| {
            c.donation_days = 10;
            if let Some(n) = c.neighbors.iter_mut().find(|n| n.node_id == "closed") {
                n.allow_send = false;
            }
        });
    let mut c = TestCluster::start(topo).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    let id = k.key.id.clone();
    c.add("main", &k).await;
    // sending needs the lender's leave
    let refused = c.assign("main", &id, "closed", 1).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("allow_send"),
        "{}",
        refused.message()
    );
    let g = c.assign("main", &id, "neighbor", 4).await.unwrap();
    assert!(!g.lent_until.is_empty());
    eventually("the neighbor holds the lent seats", || {
        c.has_key("neighbor", &id)
    })
    .await;
    // while linked, the period is renewed before it ends
    c.advance(Duration::days(6));
    let lent_until = || async {
        let objs = c.objects("main").await;
        objs.iter()
            .find(|o| o.name == "neighbor")
            .map(|o| o.grants[0].lent_until.clone())
    };
    eventually("the lending was renewed", || async {
        lent_until().await.is_some_and(|t| t > g.lent_until)
    })
    .await;
    // the neighbor vanishes: after the period the seats come back to the lender
    c.stop("neighbor").await;
    c.advance(Duration::days(11));
    eventually("the seats came back", || async {
        c.key("main", &id).await.is_some_and(|k| k.seats_free == 10)
    })
    .await;
    assert!(has_event(
        &c.notifications("main").await,
        "donation-returned",
        &id
    ));
    // when it returns, its borrowed seats have lapsed too
    c.restart("neighbor").await;
    eventually("the neighbor no longer holds the key", || async {
        !c.has_key("neighbor", &id).await
    })
    .await;
    c.shutdown().await;
}

/// b01/r13: a loan that reaches the neighbor after its period ended (it was
/// down) is not held there; the neighbor gives it back and the lender's free
/// seats go back up at once. The lender's own tick is turned off after the
/// first, so only the give-back can free them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_b01_a_loan_that_arrives_lapsed_is_given_back_and_the_lender_frees_it() {
    let topo = Topology::new()
        .root("main")
        .neighbor("neighbor", "main")
        .tweak("main", |c| c.tick_millis = 3_600_000);
    let mut c = TestCluster::start(topo).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    let id = k.key.id.clone();
    c.add("main", &k).await;
    c.stop("neighbor").await;
    // lent for one day while the neighbor is down: it waits in main's outbox
    c.admin("main")
        .await
        .assign_seats(pb::AssignSeatsRequest {
            key_id: id.clone(),
            object: "neighbor".into(),
            seats: 3,
            donation_days: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(c.key("main", &id).await.unwrap().seats_free, 7);
    c.advance(Duration::days(2));
    c.restart("neighbor").await;
    eventually("main's seats came back", || async {
        c.key("main", &id).await.is_some_and(|k| k.seats_free == 10)
    })
    .await;
    assert!(
        !c.has_key("neighbor", &id).await,
        "the lapsed loan is not held"
    );
    assert!(has_event(
        &c.notifications("neighbor").await,
        "donation-lapsed",
        &id
    ));
    assert!(has_event(
        &c.notifications("main").await,
        "grant-returned",
        &id
    ));
    assert!(
        !has_event(&c.notifications("main").await, "donation-returned", &id),
        "freed by the give-back, not by main's own tick"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b01_a_neighbor_that_refuses_donations_is_never_sent_seats() {
    let topo = Topology::new()
        .root("main")
        .neighbor("picky", "main")
        .tweak("picky", |c| {
            for n in &mut c.neighbors {
                n.allow_receive = false;
            }
        });
    let c = TestCluster::start(topo).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    c.add("main", &k).await;
    let refused = c.assign("main", &k.key.id, "picky", 2).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("does not accept"),
        "{}",
        refused.message()
    );
    assert_eq!(c.key("main", &k.key.id).await.unwrap().seats_free, 10);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b05_usage_of_the_whole_subtree_reaches_the_root() {
    let c = TestCluster::start(
        Topology::new()
            .root("main")
            .child("child", "main")
            .child("leaf", "child"),
    )
    .await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 30, "2027-12-31");
    let id = k.key.id.clone();
    c.add("main", &k).await;
    c.assign("main", &id, "child", 10).await.unwrap();
    eventually("child holds K", || c.has_key("child", &id)).await;
    c.assign("child", &id, "leaf", 4).await.unwrap();
    eventually("leaf holds K", || c.has_key("leaf", &id)).await;
    c.assign("leaf", &id, "station-9", 3).await.unwrap();
    let usage = || async {
        let rows = c
            .admin("main")
            .await
            .usage(pb::UsageRequest {
                key_id: id.clone(),
                tree: true,
            })
            .await
            .unwrap()
            .into_inner()
            .rows;
        rows.into_iter()
            .map(|r| (r.node_id, r.seats, r.used))
            .collect::<Vec<_>>()
    };
    eventually("the leaf's usage reached main", || async {
        usage().await.contains(&("leaf".into(), 4, 3))
    })
    .await;
    let rows = usage().await;
    assert!(rows.contains(&("main".into(), 30, 10)), "{rows:?}");
    assert!(rows.contains(&("child".into(), 10, 4)), "{rows:?}");
    // without --tree only the node's own row
    let own = c
        .admin("main")
        .await
        .usage(pb::UsageRequest {
            key_id: id.clone(),
            tree: false,
        })
        .await
        .unwrap()
        .into_inner()
        .rows;
    assert_eq!(own.len(), 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b05_usage_tree_drops_keys_the_subtree_no_longer_holds() {
    let c = TestCluster::start(Topology::new().root("main").child("child", "main")).await;
    c.wait_linked().await;
    let k1 = c.issue(&["antivirus"], 20, "2027-06-30");
    c.add("main", &k1).await;
    c.assign("main", &k1.key.id, "child", 5).await.unwrap();
    let tree = || async {
        c.admin("main")
            .await
            .usage(pb::UsageRequest {
                key_id: String::new(),
                tree: true,
            })
            .await
            .unwrap()
            .into_inner()
            .rows
            .into_iter()
            .filter(|r| r.node_id == "child")
            .map(|r| r.key_id)
            .collect::<Vec<_>>()
    };
    eventually("main sees the child's K1", || async {
        tree().await == vec![k1.key.id.clone()]
    })
    .await;
    let k2 = c.purchase(&k1.key.id, &["antivirus"], 20, "2027-12-31");
    c.renew("main", &k1.key.id).await;
    eventually(
        "the child holds K2 and main's tree shows only K2 for it",
        || async {
            c.has_key("child", &k2.key.id).await && tree().await == vec![k2.key.id.clone()]
        },
    )
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b05_usage_is_reported_again_every_usage_report_period() {
    let c = TestCluster::start(Topology::new().root("main").child("child", "main")).await;
    c.wait_linked().await;
    let k = c.issue(&["antivirus"], 20, "2027-06-30");
    c.add("main", &k).await;
    c.assign("main", &k.key.id, "child", 5).await.unwrap();
    let reported = || async {
        c.admin("main")
            .await
            .usage(pb::UsageRequest {
                key_id: k.key.id.clone(),
                tree: true,
            })
            .await
            .unwrap()
            .into_inner()
            .rows
            .into_iter()
            .find(|r| r.node_id == "child")
            .map(|r| r.reported_at)
    };
    eventually("main has the child's line", || async {
        reported().await.is_some()
    })
    .await;
    let first = reported().await.unwrap();
    // nothing changes at the child; only time passes
    let later = c.advance(chrono::Duration::seconds(120));
    eventually("the child reported again", || async {
        reported()
            .await
            .is_some_and(|r| r != first && r.as_str() >= later.to_rfc3339().get(..19).unwrap_or(""))
    })
    .await;
    c.shutdown().await;
}
