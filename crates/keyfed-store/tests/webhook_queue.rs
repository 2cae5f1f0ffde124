//! What a webhook's queue reads from the store: notification pages past a
//! cursor, the newest seq, and a cursor in meta that survives a crash once
//! flushed (sled and memory alike).
use keyfed_store::{Store, StoreError};
use std::collections::BTreeMap;

mod support;
use support::now;

fn notify(store: &Store, event: &str) -> u64 {
    store
        .transact(|tx| tx.notify::<StoreError>(now(), event, "k-1", String::new(), BTreeMap::new()))
        .unwrap()
        .seq
}

fn pages_and_the_newest_seq(store: &Store) {
    assert_eq!(store.last_notification_seq().unwrap(), 0);
    assert!(store.notifications_page(0, 10).unwrap().is_empty());
    for e in ["a", "b", "c", "d", "e"] {
        notify(store, e);
    }
    assert_eq!(store.last_notification_seq().unwrap(), 5);
    let seqs = |after, limit| -> Vec<u64> {
        store
            .notifications_page(after, limit)
            .unwrap()
            .iter()
            .map(|n| n.seq)
            .collect()
    };
    assert_eq!(seqs(0, 2), [1, 2]);
    assert_eq!(seqs(2, 2), [3, 4]);
    assert_eq!(seqs(4, 10), [5]);
    assert!(seqs(5, 10).is_empty());
}

#[test]
fn notification_pages_follow_the_cursor_in_memory_and_on_disk() {
    pages_and_the_newest_seq(&Store::in_memory());
    let dir = tempfile::tempdir().unwrap();
    pages_and_the_newest_seq(&Store::open(dir.path()).unwrap());
}

#[test]
fn a_flushed_cursor_survives_a_crash_and_the_newest_seq_with_it() {
    let store = Store::in_memory();
    notify(&store, "a");
    store
        .set_meta("webhook:ops", r#"{"seq":1,"delivered":1}"#)
        .unwrap();
    store.flush().unwrap();
    notify(&store, "b");
    let after = store.crash().unwrap();
    assert_eq!(
        after.meta("webhook:ops").unwrap().as_deref(),
        Some(r#"{"seq":1,"delivered":1}"#)
    );
    assert_eq!(
        after.last_notification_seq().unwrap(),
        1,
        "b was never synced"
    );
}
