//! r13 seat conservation over a whole stopped cluster: every node's store is
//! opened after the node stopped and checked with the store's definition
//! (`keyfed_store::conservation`, which says what is checked), strictly:
//! only a sender's own queued deliveries count as in flight.
pub use keyfed_store::conservation::SeatViolation;
use keyfed_store::conservation::{seat_conservation, InFlight};
use keyfed_store::{Store, StoreError};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Checks `nodes` (node id, store directory), all stopped. Stores that do
/// not exist (a node that never started) are skipped.
pub fn check_seat_conservation(
    nodes: &[(String, PathBuf)],
) -> Result<Vec<SeatViolation>, StoreError> {
    let mut stores = BTreeMap::new();
    for (id, dir) in nodes {
        if dir.exists() {
            stores.insert(id.clone(), open_once_released(dir)?);
        }
    }
    seat_conservation(&stores, InFlight::default())
}

/// Opens a stopped node's store. The node's run has returned, but a
/// connection task tonic spawned for a client still closing (seen under load
/// with mutual TLS) can hold the node, and so sled's file lock, a moment
/// longer; wait for it with a deadline instead of failing the check.
fn open_once_released(dir: &std::path::Path) -> Result<Store, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match Store::open(dir) {
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}
