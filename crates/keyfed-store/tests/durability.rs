//! r13 on disk: what a sync proves, a damaged store refused at open (a torn
//! log tail, a garbled middle, a wiped directory), a failed sync poisoning
//! the store.
use keyfed_store::{Store, StoreError};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[macro_use]
mod support;
use support::{assign, granted, put_key};

/// A sled store in `store/` of a temp dir (its mark lands beside it, in the
/// temp dir too).
fn store_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    (dir, store)
}

/// Opens a store just dropped, retrying while sled's flusher thread still
/// holds the file lock (spacejam/sled#1234); a refusal is answered at once.
fn reopen(dir: &Path) -> Result<Store, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(dir) {
            Err(StoreError::Sled(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// A store holding `n` acknowledged grants of one key (each flushed, as the
/// node acknowledges them), then closed.
fn acknowledged_grants(dir: &Path, n: u32) {
    let store = Store::open(dir).unwrap();
    put_key(&store, "k-1", n);
    store.flush().unwrap();
    for i in 0..n {
        assign(&store, "k-1", &format!("station-{i}"), 1).unwrap();
        let synced = store.flush().unwrap();
        assert!(synced.commit() >= store.committed());
    }
}

fn assert_refused(e: &StoreError, dir: &Path) {
    let text = e.to_string();
    eprintln!("refused: {text}");
    assert!(
        matches!(
            e,
            StoreError::LostCommits { .. } | StoreError::Damaged { .. }
        ),
        "{e:?}"
    );
    assert!(text.contains(&dir.display().to_string()), "{text}");
    assert!(
        text.contains("restore the store directory from a backup"),
        "{text}"
    );
}

#[test]
fn r13_a_sync_covers_every_commit_before_it_and_reopens_without_a_false_alarm() {
    let (_tmp, dir) = store_dir();
    acknowledged_grants(&dir, 20);
    let store = reopen(&dir).unwrap();
    assert_eq!(store.used("k-1").unwrap(), 20);
    // commit numbers go on from the last sync, so the mark never runs ahead
    let before = store.committed();
    assign(&store, "k-1", "station-x", 1).unwrap_err();
    put_key(&store, "k-2", 3);
    assert!(store.committed() > before);
    assert!(store.synced_through(store.committed()).is_none());
    let synced = store.flush().unwrap();
    assert_eq!(synced.commit(), store.committed());
    // nothing new: the same proof, no sync
    assert_eq!(store.flush().unwrap(), synced);
    drop(store);
    let store = reopen(&dir).unwrap();
    assert!(store.key("k-2").unwrap().is_some());
    assert!(dir.with_file_name("store.acked").exists());
}

#[test]
fn r13_a_torn_log_tail_refuses_to_open() {
    let (_tmp, dir) = store_dir();
    acknowledged_grants(&dir, 50);
    let log = dir.join("db");
    let len = std::fs::metadata(&log).unwrap().len();
    // the last write torn by a power cut: its end never reached the disk
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 64)
        .unwrap();
    let e = reopen(&dir).expect_err("a store that lost acknowledged commits is refused");
    assert_refused(&e, &dir);
    assert!(
        matches!(e, StoreError::LostCommits { ledger, acked, .. } if ledger < acked),
        "{e:?}"
    );
}

#[test]
fn r13_a_garbled_middle_refuses_to_open() {
    let (_tmp, dir) = store_dir();
    acknowledged_grants(&dir, 50);
    let log = dir.join("db");
    let len = std::fs::metadata(&log).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&[0xA5; 512]).unwrap();
    drop(f);
    let e = reopen(&dir).expect_err("a garbled store is refused");
    assert_refused(&e, &dir);
}

#[test]
fn r13_a_wiped_store_directory_beside_its_mark_refuses_to_open() {
    let (_tmp, dir) = store_dir();
    acknowledged_grants(&dir, 3);
    std::fs::remove_dir_all(&dir).unwrap();
    let e = reopen(&dir).expect_err("an empty store where one was acknowledged is refused");
    assert_refused(&e, &dir);
    assert!(e.to_string().contains("store.acked"), "{e}");
}

#[test]
fn r13_a_garbled_mark_refuses_to_open_and_names_it() {
    let (_tmp, dir) = store_dir();
    acknowledged_grants(&dir, 3);
    let mark = dir.with_file_name("store.acked");
    std::fs::write(&mark, [0xFF; 64]).unwrap();
    let e = reopen(&dir).expect_err("a garbled mark is refused");
    assert!(
        matches!(e, StoreError::Damaged { ref file, .. } if file.ends_with("store.acked")),
        "{e:?}"
    );
    assert_refused(&e, &dir);
}

on_both_backends! {
    /// A full disk: the sync that fails answers a clear error, and from then
    /// on nothing is served, not even what sled still holds in memory.
    fn r13_a_failed_sync_poisons_the_store(node) {
        let store = node.store.clone();
        put_key(&store, "k-1", 5);
        assign(&store, "k-1", "a", 1).unwrap();
        let acked = store.flush().unwrap();
        let hooked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = hooked.clone();
        store.on_poison(move || seen.store(true, std::sync::atomic::Ordering::SeqCst));
        assign(&store, "k-1", "b", 1).unwrap();
        let e = match store.fail_next_sync(std::io::ErrorKind::StorageFull) {
            Ok(()) => store.flush().expect_err("the sync fails"),
            // sled: there is no disk to fill here; the poison path is the
            // same code, proven by the node's full-disk test
            Err(StoreError::Unsupported { .. }) => return,
            Err(e) => panic!("{e}"),
        };
        assert!(e.is_out_of_space() && e.is_poisoned(), "{e:?}");
        assert!(e.to_string().contains("free disk space"), "{e}");
        assert!(hooked.load(std::sync::atomic::Ordering::SeqCst));
        // b's grant is in memory but never served
        assert!(store.grant("k-1", "b").unwrap_err().is_poisoned());
        assert!(store.keys().unwrap_err().is_poisoned());
        assert!(assign(&store, "k-1", "c", 1).is_err());
        assert!(store.flush().unwrap_err().is_poisoned());
        assert_eq!(store.synced_through(acked.commit()), Some(acked));
        // after a restart: what was acknowledged, not what was refused
        let after = store.crash().unwrap();
        assert!(after.grant("k-1", "a").unwrap().is_some());
        assert_eq!(after.grant("k-1", "b").unwrap(), None);
        assert_eq!(granted(&after, "k-1"), 1);
        assert!(after.poisoned().is_none());
    }
}
