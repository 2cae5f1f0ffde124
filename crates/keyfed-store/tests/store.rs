use chrono::{DateTime, Utc};
use keyfed_core::seats::{check_assign, SeatError};
use keyfed_core::{Components, Key, KeyKind};
use keyfed_store::{abort, Grant, ObjectKind, Origin, Store, StoreError, StoredKey};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seat(#[from] SeatError),
}

fn now() -> DateTime<Utc> {
    "2026-11-23T00:00:00Z".parse().unwrap()
}

fn stored(id: &str, seats: u32) -> StoredKey {
    let key = Key {
        id: id.into(),
        license: "l-1".into(),
        serial: 1,
        customer: "acme".into(),
        product: "endpoint".into(),
        components: Components::new(["antivirus"]).unwrap(),
        seats,
        kind: KeyKind::Term,
        issued_at: now(),
        expires: "2027-11-23".parse().unwrap(),
        renews: None,
    };
    StoredKey::new(key, String::new(), Origin::Upstream, now(), seats)
}

fn assign(store: &Store, key_id: &str, object: &str, seats: u32) -> Result<(), TestError> {
    store.transact(|tx| {
        let k = tx.key::<TestError>(key_id)?.expect("key exists");
        let mine = tx
            .grant::<TestError>(key_id, object)?
            .map_or(0, |g| g.seats);
        let others = tx.used::<TestError>(key_id)? - mine;
        if let Err(e) = check_assign(key_id, object, k.held, others, seats) {
            return abort(e.into());
        }
        tx.put_grant(&Grant {
            key_id: key_id.into(),
            object: object.into(),
            kind: ObjectKind::Station,
            seats,
            granted_at: now(),
            lent_until: None,
            delivered: true,
            tenant: String::new(),
        })
    })
}

#[test]
fn r13_concurrent_assignments_never_overcommit_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    store
        .transact(|tx| tx.put_key::<StoreError>(&stored("k-1", 10)))
        .unwrap();
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
    let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(granted, 10, "exactly the key's seats are granted");
    assert_eq!(store.used("k-1").unwrap(), 10);
    let sum: u32 = store
        .grants_of_key("k-1")
        .unwrap()
        .iter()
        .map(|g| g.seats)
        .sum();
    assert_eq!(sum, 10, "the counter matches the grants");
}

#[test]
fn over_limit_assignment_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .transact(|tx| tx.put_key::<StoreError>(&stored("k-1", 5)))
        .unwrap();
    assign(&store, "k-1", "a", 3).unwrap();
    let err = assign(&store, "k-1", "b", 3).unwrap_err();
    assert_eq!(
        err.to_string(),
        "key k-1 has 2 free seat(s) of 5; b asked for 3"
    );
    assert_eq!(store.used("k-1").unwrap(), 3);
    assert_eq!(store.grants_of_key("k-1").unwrap().len(), 1);
    // re-assigning the same object replaces its grant instead of adding to it
    assign(&store, "k-1", "a", 5).unwrap();
    assert_eq!(store.used("k-1").unwrap(), 5);
}

#[test]
fn everything_survives_a_reopen_and_values_carry_a_format_version() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .transact(|tx| tx.put_key::<StoreError>(&stored("k-1", 5)))
            .unwrap();
        assign(&store, "k-1", "a", 2).unwrap();
        store
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
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.key("k-1").unwrap().unwrap(), stored("k-1", 5));
    assert_eq!(store.used("k-1").unwrap(), 2);
    assert_eq!(store.notifications_after(0).unwrap()[0].event, "key-added");
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

#[test]
fn idempotency_record_sees_a_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let first = store
        .transact(|tx| tx.first_sight::<StoreError>("m-1", now()))
        .unwrap();
    let again = store
        .transact(|tx| tx.first_sight::<StoreError>("m-1", now()))
        .unwrap();
    assert!(first && !again);
}
