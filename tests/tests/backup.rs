//! Backup and restore: `Admin.Backup` takes a consistent cut of a running
//! node while it serves writes (r13: nothing acknowledged before the cut is
//! missing from it, and the restored node passes seat conservation), needs
//! the admin role and is audited (b06); `keyfed restore` refuses damaged,
//! truncated and foreign files and non-empty directories, creating nothing.
use keyfed_node::auth::{sha256_hex, AdminToken, Role};
use keyfed_node::backup::{self, Target};
use keyfed_proto::v1 as pb;
use keyfed_store::snapshot::SnapshotError;
use keyfed_tests::{eventually, TestCluster, Topology};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OPS: &str = "ops-s3cret-token";
const VIEWER: &str = "viewer-s3cret-token";

fn tokens(cfg: &mut keyfed_node::NodeConfig) {
    cfg.admin_tokens = vec![
        AdminToken {
            name: "ops".into(),
            token_sha256: Some(sha256_hex(OPS)),
            role: Role::Admin,
            ..AdminToken::default()
        },
        AdminToken {
            name: "viewer".into(),
            token: Some(VIEWER.into()),
            role: Role::ReadOnly,
            ..AdminToken::default()
        },
    ];
}

fn target(c: &TestCluster, id: &str, token: Option<&str>) -> Target {
    Target {
        addr: c.url(id),
        token: token.map(str::to_owned),
        ..Target::default()
    }
}

/// One writer's acknowledged grants, in the order it made them.
type Acks = Arc<Mutex<Vec<(String, Instant, Duration)>>>;

/// Assigns one seat of `key` to `prefix-0`, `prefix-1`, ... one after the
/// other until `stop`, recording each grant when it is acknowledged.
fn writer(
    c: &TestCluster,
    key: &str,
    prefix: &str,
    stop: Arc<AtomicBool>,
) -> (Acks, tokio::task::JoinHandle<()>) {
    let acks: Acks = Arc::default();
    let ep = c.endpoint(&c.url("main"), None);
    let (key, prefix, log) = (key.to_owned(), prefix.to_owned(), acks.clone());
    let task = tokio::spawn(async move {
        let mut admin = pb::admin_client::AdminClient::new(ep.connect_lazy());
        for i in 0.. {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let object = format!("{prefix}-{i:04}");
            let asked = Instant::now();
            admin
                .assign_seats(pb::AssignSeatsRequest {
                    key_id: key.clone(),
                    object: object.clone(),
                    seats: 1,
                    ..Default::default()
                })
                .await
                .expect("the node grants while the backup runs");
            let at = Instant::now();
            log.lock().unwrap().push((object, at, at - asked));
        }
    });
    (acks, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_a_backup_taken_under_writes_restores_every_grant_acknowledged_before_it() {
    let mut c = TestCluster::start(Topology::new().root("main").child("child", "main")).await;
    c.wait_healthy("main").await;
    c.wait_healthy("child").await;
    c.wait_linked().await;
    let key = c.issue(&["antivirus"], 5000, "2027-11-30");
    let id = c.add("main", &key).await.key.unwrap().id;
    c.assign("main", &id, "child", 10)
        .await
        .expect("granted to the child");
    eventually("the child holds the key", || c.has_key("child", &id)).await;
    // the child is cut off: a second grant waits in main's outbox
    c.cut("main", "child").await;
    let key2 = c.issue(&["firewall"], 50, "2027-11-30");
    let id2 = c.add("main", &key2).await.key.unwrap().id;
    c.assign("main", &id2, "child", 7)
        .await
        .expect("queued for the child");
    let queued = c.outbox_depth("main", "child").await;
    assert!(queued >= 1, "a delivery waits for the child");

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = ["a", "b"]
        .iter()
        .map(|p| {
            (
                p.to_string(),
                writer(&c, &id, &format!("st-{p}"), stop.clone()),
            )
        })
        .collect();
    let acked = |w: &Acks| w.lock().unwrap().len();
    eventually("each writer has 20 grants acknowledged", || async {
        writers.iter().all(|(_, (a, _))| acked(a) >= 20)
    })
    .await;
    let keys_before = c.keys("main").await;
    let notes_before = c.notifications("main").await;

    let dir = c.dir.path().join("backups");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("main.kfbk");
    let started = Instant::now();
    let fetched = backup::fetch(&target(&c, "main", None), &file)
        .await
        .expect("backup taken");
    let took = started.elapsed();
    let at_end: Vec<usize> = writers.iter().map(|(_, (a, _))| acked(a)).collect();
    eventually("the writers keep going after the backup", || async {
        writers
            .iter()
            .zip(&at_end)
            .all(|((_, (a, _)), n)| acked(a) >= n + 20)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut acks = BTreeMap::new();
    for (p, (a, task)) in writers {
        task.await.unwrap();
        acks.insert(p, a.lock().unwrap().clone());
    }
    let during: Vec<Duration> = acks
        .values()
        .flatten()
        .filter(|(_, at, lat)| *at >= started && *at - *lat <= started + took)
        .map(|(_, _, lat)| *lat)
        .collect();
    eprintln!(
        "backup: {} bytes, {} entries, commit {}, writes held {:?}, fetch took {took:?}; {} grants acknowledged meanwhile, slowest {:?}",
        fetched.bytes,
        fetched.header.entries,
        fetched.header.commit,
        fetched.barrier,
        during.len(),
        during.iter().max()
    );
    assert_eq!(fetched.header.node_id, "main");
    assert!(
        !during.is_empty(),
        "writes were served while the backup ran"
    );

    // restore into a new data dir and run main on it
    let data = c.dir.path().join("main-restored");
    let (header, restored) = backup::restore(&file, &data).expect("restored");
    assert_eq!(header.commit, fetched.header.commit);
    assert_eq!(restored.store, data.join("store"));
    c.stop("main").await;
    c.nodes.get_mut("main").unwrap().config.data_dir = data;
    c.restart("main").await;

    let objects: BTreeSet<String> = c
        .objects("main")
        .await
        .into_iter()
        .map(|o| o.name)
        .collect();
    for (p, log) in &acks {
        let mut held = 0;
        for (i, (object, at, _)) in log.iter().enumerate() {
            if *at < started {
                assert!(objects.contains(object), "{object} was acknowledged before the backup started, and the restored node lacks it");
            }
            if objects.contains(object) {
                assert_eq!(held, i, "writer {p}: the restored grants are not a prefix (the cut split the sequence at {object})");
                held += 1;
            }
        }
        eprintln!("writer {p}: {held} of {} grants in the backup", log.len());
    }
    assert!(objects.contains("child"));
    // the keys, with what they had before the backup (seats only grew since)
    let keys_after = c.keys("main").await;
    for k in &keys_before {
        let kid = &k.key.as_ref().unwrap().id;
        let after = keys_after
            .iter()
            .find(|x| &x.key.as_ref().unwrap().id == kid)
            .expect("key restored");
        assert_eq!(after.key, k.key);
        assert!(after.seats_assigned >= k.seats_assigned, "{kid}");
    }
    assert_eq!(keys_after.len(), keys_before.len());
    // every notification published before the backup, as it was
    let notes_after = c.notifications("main").await;
    for n in &notes_before {
        assert!(
            notes_after.contains(n),
            "notification {} ({}) lost",
            n.seq,
            n.event
        );
    }
    // the outbox to the child, delivered once the link heals
    assert_eq!(c.outbox_depth("main", "child").await, queued);
    c.heal("main", "child").await;
    eventually(
        "the child gets the queued grant from the restored node",
        || c.has_key("child", &id2),
    )
    .await;
    eventually("the outbox drains", || async {
        c.outbox_depth("main", "child").await == 0
    })
    .await;
    // shutdown checks r13 seat conservation over the restored main and the child
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_a_read_only_token_cannot_take_a_backup_and_nothing_is_written() {
    let c = TestCluster::start(Topology::new().root("main").tweak("main", tokens)).await;
    c.wait_healthy("main").await;
    let dir = c.dir.path().join("backups");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("main.kfbk");
    let e = backup::fetch(&target(&c, "main", Some(VIEWER)), &file)
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("PERMISSION_DENIED") && text.contains("admin role"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written"
    );
    let e = backup::fetch(&target(&c, "main", None), &file)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("UNAUTHENTICATED"), "{e:#}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written"
    );

    let ok = backup::fetch(&target(&c, "main", Some(OPS)), &file)
        .await
        .expect("the admin backs up");
    assert_eq!(ok.path, file);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "only the backup, no partial file"
    );
    // audited like every admin call, refusals too
    let ep = c.endpoint(&c.url("main"), None);
    let mut admin = pb::admin_client::AdminClient::with_interceptor(
        ep.connect_lazy(),
        move |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {OPS}").parse().unwrap());
            Ok(r)
        },
    );
    let trail = admin
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let backups: Vec<(&str, &str)> = trail
        .iter()
        .filter(|a| a.action == "Backup")
        .map(|a| (a.actor.as_str(), a.outcome.as_str()))
        .collect();
    assert!(
        backups.contains(&("viewer", "PERMISSION_DENIED")),
        "{backups:?}"
    );
    assert!(backups.contains(&("ops", "ok")), "{backups:?}");
    c.shutdown().await;
}

fn refused(file: &Path, data: &Path) -> (SnapshotError, String) {
    let e = backup::restore(file, data).expect_err("refused");
    let text = format!("{e:#}");
    let inner = e
        .chain()
        .find_map(|c| c.downcast_ref::<SnapshotError>())
        .unwrap_or_else(|| panic!("a backup error: {text}"));
    (inner.clone(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_a_damaged_truncated_or_foreign_backup_is_refused_and_creates_nothing() {
    let c = TestCluster::start(Topology::new().root("main")).await;
    c.wait_healthy("main").await;
    let key = c.issue(&["antivirus"], 100, "2027-11-30");
    let id = c.add("main", &key).await.key.unwrap().id;
    for i in 0..30 {
        c.assign("main", &id, &format!("station-{i}"), 1)
            .await
            .unwrap();
    }
    let dir = c.dir.path().join("backups");
    std::fs::create_dir(&dir).unwrap();
    let good = dir.join("main.kfbk");
    backup::fetch(&target(&c, "main", None), &good)
        .await
        .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let data = c.dir.path().join("restored");

    let write = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let mut flipped = bytes.clone();
    let at = bytes.len() * 2 / 3;
    flipped[at] ^= 0x04;
    let (e, text) = refused(&write("flipped", &flipped), &data);
    assert!(matches!(e, SnapshotError::Damaged(_)), "{text}");
    assert!(
        text.contains("damaged") && text.contains("checksum"),
        "{text}"
    );
    assert!(!data.exists(), "nothing created");

    let (e, text) = refused(&write("truncated", &bytes[..bytes.len() - 100]), &data);
    assert!(matches!(e, SnapshotError::Truncated { .. }), "{text}");
    assert!(text.contains("truncated"), "{text}");
    assert!(!data.exists(), "nothing created");

    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (name, b) in [("noise", noise), ("a.key", key.render().into_bytes())] {
        let (e, text) = refused(&write(name, &b), &data);
        assert!(matches!(e, SnapshotError::Foreign(_)), "{text}");
        assert!(text.contains("not a keyfed backup"), "{text}");
        assert!(!data.exists(), "nothing created");
    }
    // an empty existing directory stays empty on a refusal
    std::fs::create_dir(&data).unwrap();
    refused(&write("truncated2", &bytes[..40]), &data);
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "left empty");
    // a directory holding anything is never written into
    std::fs::write(data.join("old-notes"), "keep me").unwrap();
    let (e, text) = refused(&good, &data);
    assert!(matches!(e, SnapshotError::NotEmpty(_)), "{text}");
    assert!(text.contains("not empty"), "{text}");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1);
    // nothing staged beside it either
    let beside: Vec<_> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
    c.shutdown().await;
}

/// The two commands as an operator runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyfed_backup_and_restore_commands() {
    let c = TestCluster::start(Topology::new().root("main").tweak("main", tokens)).await;
    c.wait_healthy("main").await;
    let bin = keyfed_tests::process::node_binary();
    let dir = c.dir.path().join("cli");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("main.kfbk");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .env_remove("KEYFED_TOKEN")
            .env_remove("KEYFED_ADDR")
            .output()
            .expect("keyfed runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let url = c.url("main");
    let os = |s: &str| std::ffi::OsString::from(s);
    let (ok, text) = run(&[
        &os("backup"),
        &os("--addr"),
        &os(&url),
        &os("-o"),
        file.as_os_str(),
        &os("--token"),
        &os(VIEWER),
    ]);
    assert!(!ok && text.contains("PERMISSION_DENIED"), "{text}");
    let (ok, text) = run(&[
        &os("backup"),
        &os("--addr"),
        &os(&url),
        &os("-o"),
        file.as_os_str(),
        &os("--token"),
        &os(OPS),
    ]);
    assert!(ok && text.contains("backup of node main"), "{text}");
    let data = dir.join("data");
    let (ok, text) = run(&[
        &os("restore"),
        file.as_os_str(),
        &os("--data-dir"),
        data.as_os_str(),
    ]);
    assert!(
        ok && text.contains("restored the backup of node main"),
        "{text}"
    );
    keyfed_store::Store::open(&data.join("store")).expect("the restored store opens");
    let (ok, text) = run(&[
        &os("restore"),
        file.as_os_str(),
        &os("--data-dir"),
        data.as_os_str(),
    ]);
    assert!(!ok && text.contains("not empty"), "{text}");
    c.shutdown().await;
}
