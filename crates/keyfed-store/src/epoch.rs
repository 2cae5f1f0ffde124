//! The store's epoch (issue 15 §3): a random id, kept in `meta` under
//! [`EPOCH_META`], that names this store's history. It is made when the
//! store opens without one: a fresh or wiped data dir, one written by a
//! version before epochs, or one restored from a backup (a backup does not
//! carry it, see [`Store::forget_epoch`]). Peers carry it in their Hello and
//! reconcile when it changes (`keyfed_core::reconcile`). A crash keeps it:
//! it is written and synced at open, before anything else.
use crate::{records, Backend, Store, StoreError, Tx, TxResult};
use sled::IVec;

/// The meta key of the store's epoch.
pub const EPOCH_META: &str = "store-epoch";

/// A new random epoch: 128 bits, hex.
///
/// # Panics
/// When the operating system has no randomness to give (nothing works then).
#[must_use]
pub fn fresh_epoch() -> String {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).expect("the OS gives random bytes");
    hex::encode(bytes)
}

/// The epoch of an in-memory store, and its successors: a simulation must
/// give the same store for the same commands, so it is not random.
pub(crate) const MEMORY_EPOCH: &str = "memory-0";

fn memory_successor(current: &str) -> String {
    let n = current
        .strip_prefix("memory-")
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    format!("memory-{}", n + 1)
}

/// At open: gives the store an epoch if it has none, synced at once.
pub(crate) fn ensure_sled(db: &sled::Db, meta: &sled::Tree) -> Result<(), StoreError> {
    if meta.get(EPOCH_META)?.is_none() {
        meta.insert(EPOCH_META, records::encode(&fresh_epoch()))?;
        db.flush()?;
    }
    Ok(())
}

pub(crate) fn memory_value() -> IVec {
    IVec::from(records::encode(&MEMORY_EPOCH))
}

impl Store {
    /// This store's epoch (empty only for a store opened by hand without
    /// [`Store::open`], which never happens).
    pub fn epoch(&self) -> Result<String, StoreError> {
        Ok(self.meta(EPOCH_META)?.unwrap_or_default())
    }

    /// An epoch to replace `current` with (a rollback was detected): random
    /// on disk, the next one in memory (see [`MEMORY_EPOCH`]).
    #[must_use]
    pub fn next_epoch(&self, current: &str) -> String {
        match &self.backend {
            Backend::Sled(_) => fresh_epoch(),
            Backend::Memory(_) => memory_successor(current),
        }
    }

    /// What a restore does to the store it wrote: drops the epoch, so the
    /// next open takes a new one and every peer learns the history it knew
    /// of this node is gone. Synced before it returns.
    pub fn forget_epoch(&self) -> Result<(), StoreError> {
        self.transact(|tx| tx.remove_meta::<StoreError>(EPOCH_META))?;
        self.flush()?;
        Ok(())
    }
}

impl Tx<'_> {
    /// This store's epoch, read inside the transaction.
    pub fn epoch<E: From<StoreError>>(&self) -> TxResult<String, E> {
        Ok(self.meta::<E>(EPOCH_META)?.unwrap_or_default())
    }

    /// Takes `epoch` as this store's epoch (a rollback was detected).
    pub fn put_epoch<E>(&self, epoch: &str) -> TxResult<(), E> {
        self.put_meta(EPOCH_META, epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_gets_an_epoch_at_open_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let s = Store::open(dir.path()).unwrap();
            let e = s.epoch().unwrap();
            assert_eq!(e.len(), 32, "128 bits in hex: {e}");
            e
        };
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.epoch().unwrap(), first);
        drop(again);
        // another store, another epoch
        let other = tempfile::tempdir().unwrap();
        assert_ne!(Store::open(other.path()).unwrap().epoch().unwrap(), first);
    }

    #[test]
    fn a_forgotten_epoch_is_replaced_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let s = Store::open(dir.path()).unwrap();
            let e = s.epoch().unwrap();
            s.forget_epoch().unwrap();
            assert_eq!(s.epoch().unwrap(), "");
            e
        };
        let s = Store::open(dir.path()).unwrap();
        let second = s.epoch().unwrap();
        assert!(!second.is_empty() && second != first);
    }

    #[test]
    fn an_in_memory_epoch_is_deterministic_and_survives_a_crash() {
        let s = Store::in_memory();
        assert_eq!(s.epoch().unwrap(), MEMORY_EPOCH);
        assert_eq!(s.crash().unwrap().epoch().unwrap(), MEMORY_EPOCH);
        let next = s.next_epoch(MEMORY_EPOCH);
        assert_eq!(next, "memory-1");
        s.transact(|tx| tx.put_epoch::<StoreError>(&next)).unwrap();
        assert_eq!(s.epoch().unwrap(), "memory-1");
        assert_eq!(s.next_epoch("memory-1"), "memory-2");
    }
}
