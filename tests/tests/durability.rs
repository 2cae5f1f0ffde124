//! r13 at the node: a node whose store lost acknowledged commits (a torn
//! log) or holds garbage refuses to start with the store's error, naming the
//! file and saying to restore from a backup; it never serves a half-read
//! ledger.
use keyfed_core::SharedClock;
use keyfed_store::StoreError;
use keyfed_tests::{TestCluster, Topology};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs the stopped node `id` of `c` on a copy of its data dir that `damage`
/// spoiled, and returns how it ended (the cluster's own copy stays whole).
async fn run_on_damaged_copy(
    c: &TestCluster,
    id: &str,
    damage: impl FnOnce(&Path),
) -> anyhow::Result<()> {
    let mut config = c.nodes[id].config.clone();
    let copy = c.dir.path().join(format!("{id}-damaged"));
    keyfed_tests::copy_dir(&config.data_dir, &copy);
    damage(&copy.join("store"));
    config.data_dir = copy;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.listen = listener.local_addr().unwrap();
    let clock: SharedClock = c.clock.clone();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(keyfed_node::run(config, listener, clock, shutdown.clone()));
    // a node that started would serve until told to stop: bound the wait
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), run).await;
    shutdown.cancel();
    ended
        .expect("the node ends by itself on a damaged store")
        .expect("the node returns an error, it does not panic")
}

fn assert_refused(ended: anyhow::Result<()>, store: &Path) {
    let e = ended.expect_err("the node refuses to start on a damaged store");
    let text = format!("{e:#}");
    let refused = e.downcast_ref::<StoreError>();
    assert!(
        matches!(
            refused,
            Some(StoreError::LostCommits { .. } | StoreError::Damaged { .. })
        ),
        "{text}"
    );
    assert!(text.contains(&store.display().to_string()), "{text}");
    assert!(
        text.contains("restore the store directory from a backup"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_a_node_refuses_to_start_on_a_damaged_store() {
    let mut c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let key = c.issue(&["antivirus"], 100, "2027-11-30");
    let id = c.add("main", &key).await.key.unwrap().id;
    for i in 0..40 {
        c.assign("main", &id, &format!("station-{i}"), 1)
            .await
            .expect("acknowledged grant");
    }
    c.stop("main").await;

    // a torn tail: the end of the log never reached the disk
    let torn = run_on_damaged_copy(&c, "main", |dir| {
        let log = dir.join("db");
        let len = std::fs::metadata(&log).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(len - 64).unwrap();
    })
    .await;
    let damaged_store = c.dir.path().join("main-damaged").join("store");
    assert_refused(torn, &damaged_store);
    std::fs::remove_dir_all(c.dir.path().join("main-damaged")).unwrap();

    // a garbled middle: sled would drop everything after it silently
    let garbled = run_on_damaged_copy(&c, "main", |dir| {
        let log = dir.join("db");
        let len = std::fs::metadata(&log).unwrap().len();
        let mut f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        f.write_all(&[0xA5; 512]).unwrap();
    })
    .await;
    assert_refused(garbled, &damaged_store);

    // the whole store still starts and holds every acknowledged grant
    c.restart("main").await;
    let objects = c.objects("main").await;
    assert_eq!(
        objects
            .iter()
            .filter(|o| o.name.starts_with("station-"))
            .count(),
        40
    );
    c.shutdown().await;
}
