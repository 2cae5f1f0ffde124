//! The store's behaviour, proved against both backends: every test here runs
//! once on sled and once on the in-memory store (`name::sled`, `name::memory`).
use keyfed_store::{abort, ObjectKind, StationRecord, StationReport, StoreError, Tx};
use std::collections::BTreeMap;
use std::sync::Arc;

#[macro_use]
mod support;
use support::{assign, granted, now, put_key, stored};

on_both_backends! {
    fn r13_concurrent_assignments_never_overcommit_a_key(node) {
        let store = Arc::new(node.store);
        put_key(&store, "k-1", 10);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..10)
                        .filter(|i| assign(&store, "k-1", &format!("st-{t}-{i}"), 1).is_ok())
                        .count()
                })
            })
            .collect();
        let granted_now: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(granted_now, 10, "exactly the key's seats are granted");
        assert_eq!(store.used("k-1").unwrap(), 10);
        assert_eq!(granted(&store, "k-1"), 10, "the counter matches the grants");
    }

    fn over_limit_assignment_is_refused_and_changes_nothing(node) {
        let store = &node.store;
        put_key(store, "k-1", 5);
        assign(store, "k-1", "a", 3).unwrap();
        let err = assign(store, "k-1", "b", 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key k-1 has 2 free seat(s) of 5; b asked for 3"
        );
        assert_eq!(store.used("k-1").unwrap(), 3);
        assert_eq!(store.grants_of_key("k-1").unwrap().len(), 1);
        // re-assigning the same object replaces its grant instead of adding to it
        assign(store, "k-1", "a", 5).unwrap();
        assert_eq!(store.used("k-1").unwrap(), 5);
    }

    fn everything_survives_a_reopen_and_values_carry_a_format_version(node) {
        put_key(&node.store, "k-1", 5);
        assign(&node.store, "k-1", "a", 2).unwrap();
        node.store
            .transact(|tx| {
                tx.notify::<StoreError>(
                    now(),
                    "key-added",
                    "k-1",
                    "added".into(),
                    BTreeMap::new(),
                )?;
                tx.enqueue::<StoreError>("child", now(), "k-1", "grant", vec![1, 2, 3])
            })
            .unwrap();
        node.store.set_meta("node-id", "n-1").unwrap();
        let node = node.restart();
        let store = &node.store;
        assert_eq!(store.key("k-1").unwrap().unwrap(), stored("k-1", 5));
        assert_eq!(store.used("k-1").unwrap(), 2);
        assert_eq!(store.notifications_after(0).unwrap()[0].event, "key-added");
        assert_eq!(store.meta("node-id").unwrap().as_deref(), Some("n-1"));
        let out = store.outbox("child").unwrap();
        assert_eq!(
            (out.len(), out[0].seq, out[0].body.clone()),
            (1, 1, vec![1, 2, 3])
        );
        store.ack("child", 1).unwrap();
        assert!(store.outbox("child").unwrap().is_empty());
        assert_eq!(store.outbox_depth("child").unwrap(), 0);
        // duplicate and stale acks change nothing
        store.ack("child", 1).unwrap();
        assert_eq!(store.cursor("child").unwrap().acked, 1);
    }

    fn idempotency_record_sees_a_message_once(node) {
        let first = node
            .store
            .transact(|tx| tx.first_sight::<StoreError>("m-1", now()))
            .unwrap();
        let again = node
            .store
            .transact(|tx| tx.first_sight::<StoreError>("m-1", now()))
            .unwrap();
        assert!(first && !again);
    }

    fn an_aborted_transaction_leaves_nothing(node) {
        put_key(&node.store, "k-1", 5);
        let write_then_fail = |tx: &Tx<'_>| {
            tx.put_key::<StoreError>(&stored("k-2", 5))?;
            assign_in(tx, "k-1", "a")?;
            tx.notify::<StoreError>(now(), "e", "k-1", "m".into(), BTreeMap::new())?;
            tx.put_meta::<StoreError>("x", "y")?;
            abort::<(), _>(StoreError::Corrupt {
                tree: "-",
                why: "the test aborts".into(),
            })
        };
        let err = node.store.transact(write_then_fail).unwrap_err();
        assert!(err.to_string().contains("the test aborts"), "{err}");
        let node = node.restart();
        let store = &node.store;
        assert_eq!(store.key("k-2").unwrap(), None);
        assert_eq!(store.used("k-1").unwrap(), 0);
        assert!(store.grants_of_key("k-1").unwrap().is_empty());
        assert_eq!(store.notification_count(), 0);
        assert_eq!(store.meta("x").unwrap(), None);
    }

    fn a_transaction_reads_its_own_writes(node) {
        let seen = node
            .store
            .transact(|tx| {
                put_key_in(tx, "k-1")?;
                let before = tx.key::<StoreError>("k-1")?.is_some();
                tx.remove_key::<StoreError>("k-1")?;
                let after = tx.key::<StoreError>("k-1")?.is_some();
                put_key_in(tx, "k-3")?;
                Ok::<_, _>((before, after))
            })
            .unwrap();
        assert_eq!(seen, (true, false));
        assert_eq!(node.store.key("k-1").unwrap(), None);
        assert!(node.store.key("k-3").unwrap().is_some());
    }

    /// Prefix scans and ranges must cut at the same keys on both backends.
    fn scans_and_ranges_stop_at_their_bounds(node) {
        let store = &node.store;
        store
            .transact(|tx| {
                for peer in ["child", "child2", "chil"] {
                    for _ in 0..3 {
                        tx.enqueue::<StoreError>(peer, now(), "k-1", "grant", vec![])?;
                    }
                }
                for i in 0..5 {
                    tx.audit::<StoreError>(now(), "admin", "act", &i.to_string(), "ok")?;
                    tx.notify::<StoreError>(now(), "e", "k-1", i.to_string(), BTreeMap::new())?;
                }
                for (fp, id) in [("st", "r-1"), ("st", "r-2"), ("st2", "r-1")] {
                    tx.put_report::<StoreError>(&StationReport {
                        fingerprint: fp.into(),
                        report_id: id.into(),
                        at: String::new(),
                        body: String::new(),
                        received_at: now(),
                    })?;
                }
                tx.put_station::<StoreError>(&station("st"))?;
                tx.put_station::<StoreError>(&station("st2"))?;
                for object in ["obj", "obj", "obj2"] {
                    tx.add_command::<StoreError>(object, ObjectKind::Station, "c", now())?;
                }
                Ok::<_, _>(())
            })
            .unwrap();
        store.ack("child", 1).unwrap();
        let seqs = |peer: &str| -> Vec<u64> {
            store.outbox(peer).unwrap().iter().map(|e| e.seq).collect()
        };
        assert_eq!(seqs("child"), [2, 3]);
        assert_eq!(seqs("child2"), [1, 2, 3]);
        assert_eq!(store.outbox_depth("chil").unwrap(), 3);
        let audit: Vec<u64> = store.audit_after(1, 2).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(audit, [2, 3]);
        assert_eq!(store.audit_after(4, 10).unwrap().len(), 1);
        assert_eq!(store.notifications_after(3).unwrap().len(), 2);
        assert_eq!(store.notification_count(), 5);
        assert_eq!(store.reports_of("st").unwrap().len(), 2);
        assert_eq!(store.station_count(), 2);
        assert_eq!(store.stations().unwrap().len(), 2);
        let ids: Vec<u64> = store.commands_of("obj").unwrap().iter().map(|c| c.id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(store.commands().unwrap().len(), 3);
    }
}

fn put_key_in(tx: &Tx<'_>, id: &str) -> keyfed_store::TxResult<(), StoreError> {
    tx.put_key(&stored(id, 5))
}

fn assign_in(tx: &Tx<'_>, key_id: &str, object: &str) -> keyfed_store::TxResult<(), StoreError> {
    tx.put_grant(&keyfed_store::Grant {
        key_id: key_id.into(),
        object: object.into(),
        kind: ObjectKind::Station,
        seats: 1,
        granted_at: now(),
        lent_until: None,
        lent_days: None,
        delivered: true,
        tenant: "t-1".into(),
    })
}

fn station(fp: &str) -> StationRecord {
    StationRecord {
        fingerprint: fp.into(),
        station_id: fp.into(),
        tenant: String::new(),
        components: Vec::new(),
        key_id: None,
        first_seen: now(),
        last_contact: now(),
        retired_at: None,
        settings_version: 0,
        reports: 0,
        elsewhere: None,
    }
}
