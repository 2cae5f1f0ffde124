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
            stores.insert(id.clone(), Store::open(dir)?);
        }
    }
    seat_conservation(&stores, InFlight::default())
}
