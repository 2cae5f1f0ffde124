//! The crash model of the in-memory store: a crash keeps exactly what a
//! flush synced, whole transactions only, and seat counters stay exact.
use keyfed_store::{Store, StoreError};
use std::collections::BTreeMap;

#[macro_use]
mod support;
use support::{assign, assign_for, granted, now, put_key, Node};

fn notify(store: &Store, event: &str) -> u64 {
    store
        .transact(|tx| tx.notify::<StoreError>(now(), event, "k-1", String::new(), BTreeMap::new()))
        .unwrap()
        .seq
}

#[test]
fn a_crash_keeps_what_was_flushed_and_loses_the_rest() {
    let store = Store::in_memory();
    put_key(&store, "k-a", 5);
    assert_eq!(notify(&store, "a"), 1);
    store.flush().unwrap();
    put_key(&store, "k-b", 5);
    assert_eq!(notify(&store, "b"), 2);
    store.set_meta("node-id", "n-1").unwrap();

    let after = store.crash().unwrap();
    assert!(after.key("k-a").unwrap().is_some(), "A was flushed");
    assert_eq!(after.key("k-b").unwrap(), None, "B was not");
    assert_eq!(after.notification_count(), 1);
    assert_eq!(after.meta("node-id").unwrap(), None);
    // counters restart from the synced state, so B's sequence is given again
    assert_eq!(notify(&after, "c"), 2);

    // the crashed handle lives on its own: nothing it writes reaches the new store
    assert!(store.key("k-b").unwrap().is_some());
    put_key(&store, "k-late", 1);
    store.flush().unwrap();
    assert_eq!(after.key("k-late").unwrap(), None);
}

#[test]
fn a_crash_right_after_a_flush_loses_nothing_and_crashes_compose() {
    let store = Store::in_memory();
    put_key(&store, "k-1", 5);
    store.flush().unwrap();
    let once = store.crash().unwrap();
    let twice = once.crash().unwrap();
    assert!(twice.key("k-1").unwrap().is_some());
    // a fresh store is born synced
    let fresh = Store::in_memory().crash().unwrap();
    assert!(fresh.keys().unwrap().is_empty());
    put_key(&fresh, "k-2", 1);
}

#[test]
fn an_aborted_transaction_before_a_flush_is_not_synced_either() {
    let store = Store::in_memory();
    put_key(&store, "k-1", 1);
    assign(&store, "k-1", "a", 1).unwrap();
    assert!(assign(&store, "k-1", "b", 1).is_err(), "no seat left");
    store.flush().unwrap();
    let after = store.crash().unwrap();
    assert_eq!(after.grant("k-1", "b").unwrap(), None);
    assert_eq!(after.used("k-1").unwrap(), 1);
}

#[test]
fn r13_used_seat_counter_stays_exact_after_a_crash() {
    let mut store = Store::in_memory();
    put_key(&store, "k-1", 5);
    assign_for(&store, "k-1", "a", "t-1", 2).unwrap();
    assign_for(&store, "k-1", "b", "t-2", 2).unwrap();
    store.flush().unwrap();
    // unsynced: a grows, c joins, b leaves
    assign_for(&store, "k-1", "a", "t-1", 3).unwrap();
    store
        .transact(|tx| tx.remove_grant::<StoreError>("k-1", "b").map(|_| ()))
        .unwrap();
    assign_for(&store, "k-1", "c", "t-2", 2).unwrap();
    assert_eq!(store.used("k-1").unwrap(), 5);

    store = store.crash().unwrap();
    assert_eq!(store.used("k-1").unwrap(), 4);
    assert_eq!(granted(&store, "k-1"), 4);
    assert_eq!(store.used_by("k-1", "t-1").unwrap(), 2);
    assert_eq!(store.used_by("k-1", "t-2").unwrap(), 2);
    assign(&store, "k-1", "c", 1).unwrap();
    let err = assign(&store, "k-1", "d", 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "key k-1 has 0 free seat(s) of 5; d asked for 1"
    );
}

/// Many rounds of grants, flushes and crashes, picked by a fixed seed: after
/// every crash the counters equal the grants and never exceed the key.
#[test]
fn r13_seat_counters_match_the_grants_through_seeded_crashes() {
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut store = Store::in_memory();
    put_key(&store, "k-1", 7);
    store.flush().unwrap();
    for _ in 0..400 {
        let object = format!("st-{}", next(10));
        let tenant = format!("t-{}", next(3));
        match next(10) {
            0..=4 => {
                let seats = u32::try_from(next(3)).unwrap() + 1;
                let _ = assign_for(&store, "k-1", &object, &tenant, seats);
            }
            5 | 6 => {
                store
                    .transact(|tx| tx.remove_grant::<StoreError>("k-1", &object).map(|_| ()))
                    .unwrap();
            }
            7 | 8 => {
                store.flush().unwrap();
            }
            _ => store = store.crash().unwrap(),
        }
        let grants = store.grants_of_key("k-1").unwrap();
        let used = store.used("k-1").unwrap();
        assert_eq!(used, grants.iter().map(|g| g.seats).sum::<u32>());
        assert!(used <= 7, "{used} seats of 7 handed out");
        for t in ["t-0", "t-1", "t-2"] {
            let by: u32 = grants
                .iter()
                .filter(|g| g.tenant == t)
                .map(|g| g.seats)
                .sum();
            assert_eq!(store.used_by("k-1", t).unwrap(), by, "tenant {t}");
        }
    }
}

#[test]
fn a_sled_store_refuses_a_simulated_crash() {
    let node = Node::sled();
    let err = node.store.crash().unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { .. }), "{err}");
}
