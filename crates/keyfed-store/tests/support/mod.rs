//! What the store tests share: fixtures, a key, a seat assignment, and a
//! macro that runs one test body against sled and against the memory store.
#![allow(dead_code)] // each test crate uses its own part of this

use chrono::{DateTime, Utc};
use keyfed_core::seats::{check_assign, SeatError};
use keyfed_core::{Components, Key, KeyKind};
use keyfed_store::{abort, Grant, ObjectKind, Origin, Store, StoreError, StoredKey};

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seat(#[from] SeatError),
}

pub fn now() -> DateTime<Utc> {
    "2026-11-23T00:00:00Z".parse().unwrap()
}

pub fn stored(id: &str, seats: u32) -> StoredKey {
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

pub fn put_key(store: &Store, id: &str, seats: u32) {
    store
        .transact(|tx| tx.put_key::<StoreError>(&stored(id, seats)))
        .unwrap();
}

/// Gives `object` `seats` of `key_id` (replacing its grant) if the key has
/// them free, as the node does.
pub fn assign(store: &Store, key_id: &str, object: &str, seats: u32) -> Result<(), TestError> {
    assign_for(store, key_id, object, "", seats)
}

pub fn assign_for(
    store: &Store,
    key_id: &str,
    object: &str,
    tenant: &str,
    seats: u32,
) -> Result<(), TestError> {
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
            lent_days: None,
            delivered: true,
            tenant: tenant.into(),
        })
    })
}

/// Seats the grants of `key_id` add up to.
pub fn granted(store: &Store, key_id: &str) -> u32 {
    store
        .grants_of_key(key_id)
        .unwrap()
        .iter()
        .map(|g| g.seats)
        .sum()
}

/// A store under test and what restarting it means for its backend.
pub struct Node {
    pub store: Store,
    dir: Option<tempfile::TempDir>,
}

impl Node {
    pub fn sled() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            // in a directory of its own: the high-water mark goes beside it
            store: Store::open(&dir.path().join("store")).unwrap(),
            dir: Some(dir),
        }
    }

    pub fn memory() -> Self {
        Self {
            store: Store::in_memory(),
            dir: None,
        }
    }

    /// Stops the node cleanly (a flush, then gone) and starts it again on
    /// the same data: sled reopens its directory, memory crashes after the
    /// flush.
    pub fn restart(self) -> Self {
        self.store.flush().unwrap();
        match self.dir {
            Some(dir) => {
                drop(self.store);
                Self {
                    store: reopen(&dir.path().join("store")),
                    dir: Some(dir),
                }
            }
            None => Self {
                store: self.store.crash().unwrap(),
                dir: None,
            },
        }
    }
}

/// Opens a sled store just dropped. sled's flusher thread can hold the file
/// lock a moment past the last handle's drop (spacejam/sled#1234), so the
/// open is retried until a deadline.
fn reopen(dir: &std::path::Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(dir) {
            Ok(store) => return store,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("store at {} did not reopen: {e}", dir.display()),
        }
    }
}

/// `on_both_backends! { fn name(node) { body } ... }` makes a module `name`
/// with the tests `name::sled` and `name::memory`, each running the body
/// with `node` bound to a fresh [`Node`] of that backend.
#[allow(unused_macros)] // crash.rs has no test for both backends
macro_rules! on_both_backends {
    ($( $(#[$meta:meta])* fn $name:ident($node:ident) $body:block )*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[allow(unused_mut)]
            fn body(mut $node: $crate::support::Node) $body

            #[test]
            fn sled() {
                body($crate::support::Node::sled());
            }

            #[test]
            fn memory() {
                body($crate::support::Node::memory());
            }
        }
    )*};
}
