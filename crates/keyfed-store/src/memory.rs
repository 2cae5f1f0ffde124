//! The in-memory backend: what was committed and what was synced by a flush
//! are kept apart, so a simulation can crash a node without sled's threads.
use sled::IVec;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

type Tree = BTreeMap<Vec<u8>, IVec>;

/// One write of a committed transaction; `None` removes the key.
type Write = (usize, Vec<u8>, Option<IVec>);

pub(crate) struct Memory {
    /// Held for a whole transaction (and a plain write), as sled holds its
    /// global lock: transactions are serial, so none ever conflicts.
    writer: Mutex<()>,
    state: Mutex<State>,
}

struct State {
    committed: Vec<Tree>,
    synced: Vec<Tree>,
    /// Committed writes since the last flush, oldest first. A transaction's
    /// writes enter together, and a flush takes all of them, so the synced
    /// state always ends on a transaction boundary.
    unsynced: Vec<Write>,
}

/// A panic inside a transaction closure poisons the writer lock, but the
/// write set it held is gone with it, so the state is still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Memory {
    pub(crate) fn new(trees: usize) -> Self {
        Self::from_synced(vec![Tree::new(); trees])
    }

    /// A store restarted on `synced`: it holds exactly that, all of it synced.
    fn from_synced(synced: Vec<Tree>) -> Self {
        Self {
            writer: Mutex::new(()),
            state: Mutex::new(State {
                committed: synced.clone(),
                synced,
                unsynced: Vec::new(),
            }),
        }
    }

    pub(crate) fn get(&self, tree: usize, key: &[u8]) -> Option<IVec> {
        lock(&self.state).committed[tree].get(key).cloned()
    }

    /// Values whose keys start with `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, tree: usize, prefix: &[u8]) -> Vec<IVec> {
        lock(&self.state).committed[tree]
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// At most `limit` values with keys in `from..to` (`to` none: to the end).
    pub(crate) fn range(
        &self,
        tree: usize,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Vec<IVec> {
        let hi = to.map_or(Bound::Unbounded, Bound::Excluded);
        lock(&self.state).committed[tree]
            .range::<[u8], _>((Bound::Included(from), hi))
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// At most `limit` keys in `from..` that start with `prefix`.
    pub(crate) fn range_keys(
        &self,
        tree: usize,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Vec<Vec<u8>> {
        lock(&self.state).committed[tree]
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Every committed entry of `tree`, in key order.
    pub(crate) fn entries(&self, tree: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        lock(&self.state).committed[tree]
            .iter()
            .map(|(k, v)| (k.clone(), v.to_vec()))
            .collect()
    }

    pub(crate) fn len(&self, tree: usize) -> usize {
        lock(&self.state).committed[tree].len()
    }

    /// A write outside any transaction; committed at once, synced by a flush.
    pub(crate) fn insert(&self, tree: usize, key: &[u8], value: IVec) {
        let _serial = lock(&self.writer);
        lock(&self.state).apply(vec![(tree, key.to_vec(), Some(value))]);
    }

    /// Makes everything committed so far survive [`Memory::crash`].
    pub(crate) fn flush(&self) {
        let mut state = lock(&self.state);
        let State {
            synced, unsynced, ..
        } = &mut *state;
        for (tree, key, value) in unsynced.drain(..) {
            match value {
                Some(v) => synced[tree].insert(key, v),
                None => synced[tree].remove(&key),
            };
        }
    }

    /// What a restart after a crash finds: the synced state only.
    pub(crate) fn crash(&self) -> Self {
        Self::from_synced(lock(&self.state).synced.clone())
    }

    /// Starts a transaction; it owns the writer lock until it is dropped.
    pub(crate) fn begin(&self) -> MutexGuard<'_, ()> {
        lock(&self.writer)
    }

    pub(crate) fn tx(&self) -> MemTx<'_> {
        let trees = lock(&self.state).committed.len();
        MemTx {
            mem: self,
            writes: RefCell::new(vec![BTreeMap::new(); trees]),
        }
    }
}

impl State {
    fn apply(&mut self, writes: Vec<Write>) {
        for (tree, key, value) in &writes {
            match value {
                Some(v) => self.committed[*tree].insert(key.clone(), v.clone()),
                None => self.committed[*tree].remove(key),
            };
        }
        self.unsynced.extend(writes);
    }
}

/// One transaction's write set on top of the committed state; dropped
/// unapplied on abort.
pub(crate) struct MemTx<'a> {
    mem: &'a Memory,
    writes: RefCell<Vec<BTreeMap<Vec<u8>, Option<IVec>>>>,
}

impl MemTx<'_> {
    pub(crate) fn get(&self, tree: usize, key: &[u8]) -> Option<IVec> {
        if let Some(v) = self.writes.borrow()[tree].get(key) {
            return v.clone();
        }
        self.mem.get(tree, key)
    }

    pub(crate) fn insert(&self, tree: usize, key: &[u8], value: IVec) {
        self.writes.borrow_mut()[tree].insert(key.to_vec(), Some(value));
    }

    pub(crate) fn remove(&self, tree: usize, key: &[u8]) -> Option<IVec> {
        let old = self.get(tree, key);
        self.writes.borrow_mut()[tree].insert(key.to_vec(), None);
        old
    }

    /// Applies the write set atomically (the caller still holds the writer).
    pub(crate) fn commit(self) {
        let writes: Vec<Write> = self
            .writes
            .into_inner()
            .into_iter()
            .enumerate()
            .flat_map(|(tree, w)| w.into_iter().map(move |(k, v)| (tree, k, v)))
            .collect();
        if !writes.is_empty() {
            lock(&self.mem.state).apply(writes);
        }
    }
}
