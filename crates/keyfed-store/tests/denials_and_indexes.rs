//! The denial log and the station indexes (issue 12), on both backends.
use keyfed_core::denial::{DenialKind, DenialReason};
use keyfed_store::{NewDenial, StationRecord, StationScan, StationTotals, Store, StoreError};

#[macro_use]
mod support;
use support::{assign, now, put_key};

fn denial(object: &str, reason: DenialReason) -> NewDenial {
    NewDenial {
        at: now(),
        kind: DenialKind::StationConnection,
        object: object.into(),
        key_id: "k-1".into(),
        node_id: "main".into(),
        reason,
        message: format!("{object} refused"),
    }
}

fn station(fp: &str, sid: &str, tenant: &str) -> StationRecord {
    StationRecord {
        fingerprint: fp.into(),
        station_id: sid.into(),
        tenant: tenant.into(),
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

fn put(store: &Store, s: &StationRecord) {
    store
        .transact(|tx| tx.put_station::<StoreError>(s))
        .unwrap();
}

fn fps(store: &Store, scan: StationScan<'_>) -> Vec<String> {
    store
        .station_page(scan, None, 1000)
        .unwrap()
        .into_iter()
        .map(|h| h.fingerprint)
        .collect()
}

on_both_backends! {
    fn the_denial_log_drops_its_oldest_beyond_keep_and_counts_them(node) {
        for i in 0..5 {
            let reason = if i % 2 == 0 { DenialReason::NoFreeSeats } else { DenialReason::KeyExpired };
            node.store.record_denial(denial(&format!("fp-{i}"), reason), 3).unwrap();
        }
        let node = node.restart();
        let kept: Vec<u64> = node.store.denials_after(0, 100, None).unwrap().iter().map(|d| d.seq).collect();
        assert_eq!(kept, [3, 4, 5]);
        assert_eq!(node.store.denial_log().unwrap().dropped, 2);
        let counts = node.store.denial_counts().unwrap();
        // the totals count every denial, dropped ones too
        assert_eq!(counts[&DenialReason::NoFreeSeats], 3);
        assert_eq!(counts[&DenialReason::KeyExpired], 2);
        let expired: Vec<String> = node.store.denials_after(0, 100, Some(DenialReason::KeyExpired)).unwrap().into_iter().map(|d| d.object).collect();
        assert_eq!(expired, ["fp-3"]);
        assert_eq!(node.store.denials_after(3, 1, None).unwrap()[0].seq, 4);
    }

    fn station_indexes_follow_every_write_and_survive_a_restart(node) {
        let store = &node.store;
        put_key(store, "k-1", 5);
        put(store, &station("fp-a", "desk-1", "acme"));
        put(store, &station("fp-b", "desk-2", "acme"));
        put(store, &station("fp-c", "lab-1", "beta"));
        assign(store, "k-1", "fp-a", 1).unwrap();
        assert_eq!(fps(store, StationScan::StationId("desk")), ["fp-a", "fp-b"]);
        assert_eq!(fps(store, StationScan::Tenant("beta")), ["fp-c"]);
        assert_eq!(fps(store, StationScan::Key("k-1")), ["fp-a"]);
        assert_eq!(fps(store, StationScan::Unlicensed), ["fp-b", "fp-c"]);
        // a changed field moves its entry; a retirement moves the station
        let mut b = station("fp-b", "lab-2", "beta");
        b.retired_at = Some(now());
        put(store, &b);
        assert_eq!(fps(store, StationScan::StationId("desk")), ["fp-a"]);
        assert_eq!(fps(store, StationScan::StationId("lab")), ["fp-c", "fp-b"]);
        assert_eq!(fps(store, StationScan::Retired), ["fp-b"]);
        assert_eq!(fps(store, StationScan::Unlicensed), ["fp-c"]);
        store.transact(|tx| tx.remove_grant::<StoreError>("k-1", "fp-a")).unwrap();
        assert_eq!(fps(store, StationScan::Unlicensed), ["fp-a", "fp-c"]);
        assert!(fps(store, StationScan::Key("k-1")).is_empty());
        let node = node.restart();
        let store = &node.store;
        assert_eq!(store.station_totals().unwrap(), StationTotals { all: 3, retired: 1, unlicensed: 2 });
        assert_eq!(store.station_holders("k-1").unwrap(), 0);
        assert_eq!(fps(store, StationScan::Tenant("")), ["fp-a", "fp-b", "fp-c"]);
    }

    fn a_page_goes_on_after_the_position_it_was_given(node) {
        let store = &node.store;
        for i in 0..10 {
            put(store, &station(&format!("fp-{i}"), "", ""));
        }
        let first = store.station_page(StationScan::Fingerprint(""), None, 4).unwrap();
        let after = first.last().unwrap().position.clone();
        let next: Vec<String> = store
            .station_page(StationScan::Fingerprint(""), Some(&after), 100)
            .unwrap()
            .into_iter()
            .map(|h| h.fingerprint)
            .collect();
        assert_eq!(next, ["fp-4", "fp-5", "fp-6", "fp-7", "fp-8", "fp-9"]);
        assert_eq!(fps(store, StationScan::Fingerprint("fp-1")), ["fp-1"]);
    }
}

#[test]
fn a_store_written_before_the_indexes_gets_them_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let store = Store::open(&path).unwrap();
        put_key(&store, "k-1", 5);
        put(&store, &station("fp-a", "desk-1", "acme"));
        put(&store, &station("fp-b", "desk-2", "acme"));
        assign(&store, "k-1", "fp-b", 1).unwrap();
        // as an older release left it: no index, no marker
        store.wipe_station_index_for_tests().unwrap();
        assert!(fps(&store, StationScan::Tenant("")).is_empty());
        store.flush().unwrap();
    }
    // sled's flusher may hold the lock a moment after the drop
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let store = loop {
        match Store::open(&path) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() > deadline => panic!("reopen: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    assert_eq!(fps(&store, StationScan::Tenant("acme")), ["fp-a", "fp-b"]);
    assert_eq!(fps(&store, StationScan::Unlicensed), ["fp-a"]);
    assert_eq!(store.station_holders("k-1").unwrap(), 1);
    assert_eq!(
        store.station_totals().unwrap(),
        StationTotals {
            all: 2,
            retired: 0,
            unlicensed: 1
        }
    );
}
