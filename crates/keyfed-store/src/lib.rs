//! keyfed's durable store: typed sled trees behind a narrow API. Every state
//! change is one transaction ([`Store::transact`]); the node syncs before it
//! acknowledges anything (durable before acknowledged, see the contract below).
//!
//! ## Two backends behind one seam
//! Every [`Tx`] method goes through three primitives on named trees (`get`,
//! `insert`, `remove`), and every [`Store`] read through a point get, a prefix
//! scan, a range or a length; each matches once on the backend:
//! - **sled** ([`Store::open`]), the production store. A transaction runs on
//!   sled's `TransactionalTree`s exactly as before. After a real crash sled
//!   keeps at least everything [`Store::flush`] made durable, maybe more
//!   (its own background flusher); [`Store::crash`] is refused.
//! - **memory** ([`Store::in_memory`]), for deterministic simulations: no
//!   files, no threads. A transaction holds one writer lock (as sled holds its
//!   global one, so transactions never conflict), writes into a write set and
//!   applies it whole on commit; an abort drops it. Committed and synced state
//!   are kept apart: [`Store::flush`] replays the writes committed since the
//!   last flush onto the synced state, and [`Store::crash`] returns a new
//!   store holding the synced state only, so whatever was committed but not
//!   flushed is gone, always in whole transactions.
//!
//! Values are encoded the same way for both: a format-version byte, then JSON.
//!
//! ## Durability contract
//! Every commit (a [`Store::transact`] that returned `Ok`, or a plain write)
//! gets the next *commit number*. [`Store::flush`] returns a [`Synced`]
//! covering every commit numbered before the call; `Synced` can only be made
//! by the sync path, and the engine needs one before it acknowledges
//! anything (r13: durable before acknowledged). Syncs are serial and one
//! covers a whole batch (group commit).
//!
//! A sync on the sled store is: the commit number written into sled; sled's
//! flush (sled 0.34 ends it with `sync_file_range`, which neither writes file
//! metadata nor flushes the drive's write cache); then, by path, `fdatasync`
//! of sled's log (`db`) and of any file it changed, `fsync` of every new file
//! (`conf`, `snap.*`, `blobs/*`) and of the directories whose entries changed;
//! last, the commit number into the high-water mark `<store>.acked` beside
//! the sled directory (two slots written in turn, `fdatasync`ed; the first
//! write `fsync`s the file and its directory).
//!
//! - **Process kill** (`kill -9`, a panic, OOM): everything acknowledged
//!   survives, in whole transactions. Commits not yet acknowledged may
//!   survive too (sled writes in the background); a client that got no
//!   answer must retry, and every federation message is idempotent.
//! - **Power loss or kernel crash**: the same, provided the drive honours
//!   cache flushes (`fdatasync` issues one) and the file system keeps
//!   `fsync`ed data (ext4, xfs, btrfs in their default modes).
//! - **Damage** (a torn or garbled `db`, a missing store directory, a garbled
//!   mark): [`Store::open`] refuses with [`StoreError::Damaged`] or
//!   [`StoreError::LostCommits`], naming the file and saying to restore from
//!   a backup. sled alone would treat a bad record as a torn tail and start
//!   without everything after it; comparing its commit number with the mark
//!   catches that, and every value is read once at open. Damage the mark
//!   cannot see (a garbled record followed by no acknowledged commit) is lost
//!   silently, as it was never acknowledged.
//! - **Full disk or failed write**: the sync that fails answers
//!   [`StoreError::Poisoned`] (out of space: `is_out_of_space`), and so does
//!   every later read, transaction and sync of this store, so what sled still
//!   holds in memory is never served; nothing acknowledged is lost. Restart
//!   (after freeing space) to serve again: the store then holds exactly
//!   what was synced, perhaps with some refused commits that reached the
//!   disk anyway.
//! - **Memory store**: [`Store::crash`] keeps exactly what was synced;
//!   [`Store::fail_next_sync`] simulates a full disk.
//! - **Backups**: [`Store::cut`] copies a running store consistently (whole
//!   transactions across trees; every write holds a barrier shared, the cut
//!   holds it alone briefly) and [`snapshot`] writes, verifies and restores
//!   the file (`keyfed backup`, `keyfed restore`).
pub mod conservation;
mod denials;
mod durability;
mod epoch;
mod memory;
mod records;
pub mod snapshot;
mod station_index;
mod usage_history;

use chrono::{DateTime, Utc};
pub use denials::{check_keep, DenialRecord, NewDenial};
use durability::{Durability, SledFiles};
pub use durability::{Synced, MARK_SUFFIX};
pub use epoch::{fresh_epoch, EPOCH_META};
pub use records::{
    AuditRecord, Command, CommandState, Grant, Notification, ObjectKind, Origin, OutboxEntry,
    PeerCursor, StationRecord, StationReport, StoredKey, UsageLine, Waiting,
};
pub use sled::transaction::ConflictableTransactionError;
use sled::transaction::{TransactionError, TransactionalTree, UnabortableTransactionError};
use sled::{IVec, Transactional};
pub use station_index::{past_key, IndexHit, StationScan, StationTotals};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
pub use usage_history::HistoryPoint;

#[derive(Debug, Clone, Error)]
pub enum StoreError {
    #[error("store i/o failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("store tree `{tree}` holds an unreadable value: {why}")]
    Corrupt { tree: &'static str, why: String },
    #[error("store at {path} was written by schema version {found}, this build reads {expected}")]
    Schema {
        path: String,
        found: u8,
        expected: u8,
    },
    #[error("{what} is not supported by the {backend} store")]
    Unsupported {
        what: &'static str,
        backend: &'static str,
    },
    /// The files on disk cannot be read whole; nothing is served from them.
    #[error("store at {path} is damaged: {file} {why}; the node will not serve from it: restore the store directory from a backup")]
    Damaged {
        path: String,
        file: String,
        why: String,
    },
    /// sled opened, but without commits that were acknowledged: its log lost
    /// a tail (a torn or garbled write) and it started without it.
    #[error("store at {path} is damaged: its log {path}/db holds commits up to number {ledger}, but number {acked} was acknowledged (recorded in {mark}): acknowledged commits are gone; the node will not serve from it: restore the store directory from a backup")]
    LostCommits {
        path: String,
        mark: String,
        ledger: u64,
        acked: u64,
    },
    /// A write could not be made durable. What sled kept in memory since is
    /// never served: every later read and transaction answers this.
    #[error("store at {path} could not make a write durable ({why}); nothing written since the last durable commit is kept, and the store answers nothing until the node restarts: {advice}")]
    Poisoned {
        path: String,
        why: String,
        advice: &'static str,
        out_of_space: bool,
    },
}

impl StoreError {
    /// The disk (or the file size limit) is full: worth retrying once an
    /// operator freed space and restarted the node.
    #[must_use]
    pub fn is_out_of_space(&self) -> bool {
        matches!(
            self,
            Self::Poisoned {
                out_of_space: true,
                ..
            }
        )
    }

    /// The store refuses everything until restart (see [`StoreError::Poisoned`]).
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Self::Poisoned { .. })
    }
}

impl From<UnabortableTransactionError> for StoreError {
    fn from(e: UnabortableTransactionError) -> Self {
        match e {
            UnabortableTransactionError::Storage(e) => Self::Sled(e),
            UnabortableTransactionError::Conflict => Self::Corrupt {
                tree: "-",
                why: "transaction conflict escaped".into(),
            },
        }
    }
}

pub type TxResult<T, E> = Result<T, ConflictableTransactionError<E>>;

/// Every entry of every tree, by tree name, as raw key and value bytes.
pub type StoreDump = BTreeMap<&'static str, Vec<(Vec<u8>, Vec<u8>)>>;

/// Ends a transaction with a domain error; nothing it wrote is kept.
pub fn abort<T, E>(e: E) -> TxResult<T, E> {
    Err(ConflictableTransactionError::Abort(e))
}

const SCHEMA_VERSION: u8 = 1;
const TREES: [&str; 18] = [
    "keys",
    "grants",
    "used",
    "notifications",
    "outbox",
    "cursors",
    "applied",
    "usage",
    "waiting",
    "meta",
    "stations",
    "reports",
    "commands",
    "claims",
    "audit",
    "usage_history",
    "denials",
    "station_index",
];
const KEYS: usize = 0;
const GRANTS: usize = 1;
const USED: usize = 2;
const NOTIFICATIONS: usize = 3;
const OUTBOX: usize = 4;
const CURSORS: usize = 5;
const APPLIED: usize = 6;
const USAGE: usize = 7;
const WAITING: usize = 8;
const META: usize = 9;
const STATIONS: usize = 10;
const REPORTS: usize = 11;
const COMMANDS: usize = 12;
const CLAIMS: usize = 13;
const AUDIT: usize = 14;
const USAGE_HISTORY: usize = 15;
const DENIALS: usize = 16;
const STATION_INDEX: usize = 17;

/// Page cache size unless configured otherwise.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Commit numbers, the last sync and the poison flag, for both backends.
    durability: Arc<Durability>,
}

/// The seam: every read and transaction matches on this once per call.
#[derive(Clone)]
enum Backend {
    Sled(SledStore),
    Memory(Arc<memory::Memory>),
}

#[derive(Clone)]
struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    path: String,
    /// What a sync makes durable beside sled's own flush (see `durability`).
    files: Arc<std::sync::Mutex<SledFiles>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Sled(s) => write!(f, "Store({})", s.path),
            Backend::Memory(_) => write!(f, "Store(in memory)"),
        }
    }
}

/// Decodes every value `kv` yields (a sled iterator).
fn decode_all<T: serde::de::DeserializeOwned>(
    tree: usize,
    kv: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
) -> Result<Vec<T>, StoreError> {
    kv.map(|kv| records::decode(TREES[tree], &kv?.1)).collect()
}

fn decode_values<T: serde::de::DeserializeOwned>(
    tree: usize,
    values: Vec<IVec>,
) -> Result<Vec<T>, StoreError> {
    values
        .iter()
        .map(|v| records::decode(TREES[tree], v))
        .collect()
}

fn pair(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn outbox_key(peer: &str, seq: u64) -> Vec<u8> {
    let mut k = pair(peer, "");
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens with a page cache of `cache_bytes` (sled's default of 1 GiB is
    /// far more than a license server needs).
    ///
    /// # Errors
    /// [`StoreError::Damaged`] when sled cannot read its files or a value in
    /// them, [`StoreError::LostCommits`] when sled opened without commits the
    /// mark beside it says were acknowledged: the store is never served
    /// half-read.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let files = SledFiles::new(dir);
        let mark = files.mark_path().display().to_string();
        let damaged = |file: String, why: String| StoreError::Damaged {
            path: path.clone(),
            file,
            why,
        };
        let acked =
            durability::read_mark(files.mark_path()).map_err(|why| damaged(mark.clone(), why))?;
        // sled panics on some damage instead of answering an error
        let opened = std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .open()
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)))) => {
                return Err(damaged(
                    format!("{path}/db"),
                    format!("cannot be read by sled: {e}"),
                ))
            }
            Ok(Err(e)) => return Err(StoreError::Sled(e)),
            Err(panic) => {
                return Err(damaged(
                    format!("{path}/db"),
                    format!(
                        "made sled fail while reading it: {}",
                        panic_message(&*panic)
                    ),
                ))
            }
        };
        let trees = TREES
            .iter()
            .map(|t| db.open_tree(t))
            .collect::<Result<Vec<_>, _>>()?;
        match trees[META].get("schema")? {
            None => {
                trees[META].insert("schema", &[SCHEMA_VERSION])?;
            }
            Some(v) if v.as_ref() == [SCHEMA_VERSION] => {}
            Some(v) => {
                return Err(StoreError::Schema {
                    path,
                    found: v.first().copied().unwrap_or(0),
                    expected: SCHEMA_VERSION,
                })
            }
        }
        epoch::ensure_sled(&db, &trees[META])?;
        let ledger = match trees[META].get(durability::LEDGER_META)? {
            Some(v) => records::decode::<u64>(TREES[META], &v)
                .map_err(|e| damaged(format!("{path}/db"), e.to_string()))?,
            None => 0,
        };
        if let Some(acked) = acked.filter(|&a| a > ledger) {
            return Err(StoreError::LostCommits {
                path,
                mark,
                ledger,
                acked,
            });
        }
        verify(&trees).map_err(|why| damaged(format!("{path}/db"), why))?;
        let store = Self {
            backend: Backend::Sled(SledStore {
                db,
                trees,
                path,
                files: Arc::new(std::sync::Mutex::new(files)),
            }),
            durability: Arc::new(Durability::new(ledger)),
        };
        store.ensure_station_index()?;
        Ok(store)
    }

    /// An empty store that lives in memory only, for deterministic
    /// simulations: no files, no background threads. See [`Store::crash`].
    #[must_use]
    pub fn in_memory() -> Self {
        let mem = memory::Memory::new(TREES.len());
        mem.insert(META, b"schema", IVec::from(&[SCHEMA_VERSION]));
        mem.insert(META, EPOCH_META.as_bytes(), epoch::memory_value());
        mem.insert(
            META,
            station_index::BUILT_META.as_bytes(),
            records::encode(&"built").into(),
        );
        mem.flush();
        Self {
            backend: Backend::Memory(Arc::new(mem)),
            durability: Arc::new(Durability::new(0)),
        }
    }

    /// What a restart after a crash of this node would find: a new store
    /// holding only what [`Store::flush`] synced; everything committed since
    /// is gone. This handle (and its clones) keeps working on its own state,
    /// so a crashed node's leftover tasks cannot reach the new store.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] for a sled store: what survives a real
    /// crash there is up to sled (at least everything flushed).
    pub fn crash(&self) -> Result<Store, StoreError> {
        match &self.backend {
            Backend::Sled(_) => Err(StoreError::Unsupported {
                what: "a simulated crash",
                backend: "sled",
            }),
            Backend::Memory(m) => Ok(Self {
                backend: Backend::Memory(Arc::new(m.crash())),
                durability: Arc::new(Durability::new(
                    self.durability.synced_through(0).map_or(0, Synced::commit),
                )),
            }),
        }
    }

    /// Runs `f` as one atomic transaction over every tree. `f` may run more
    /// than once on conflict, so it must not have side effects.
    pub fn transact<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: Fn(&Tx<'_>) -> TxResult<T, E>,
    {
        self.durability.check()?;
        // a backup's cut waits for this transaction to apply and be counted
        let _writing = self.durability.writing();
        let done = match &self.backend {
            Backend::Sled(s) => s
                .trees
                .as_slice()
                .transaction(|trees| {
                    f(&Tx {
                        view: View::Sled(trees),
                        durability: &self.durability,
                    })
                })
                .map_err(|e| match e {
                    TransactionError::Abort(e) => e,
                    TransactionError::Storage(e) => E::from(self.sled_failed(&s.path, e)),
                }),
            Backend::Memory(m) => {
                let _serial = m.begin();
                loop {
                    let mtx = m.tx();
                    match f(&Tx {
                        view: View::Memory(&mtx),
                        durability: &self.durability,
                    }) {
                        Ok(v) => {
                            mtx.commit();
                            break Ok(v);
                        }
                        Err(ConflictableTransactionError::Abort(e)) => break Err(e),
                        // never raised by this backend; retried as sled does
                        Err(ConflictableTransactionError::Conflict) => {}
                        Err(ConflictableTransactionError::Storage(e)) => {
                            break Err(E::from(StoreError::Sled(e)))
                        }
                    }
                }
            }
        }?;
        self.durability.counted();
        Ok(done)
    }

    /// Makes everything committed so far durable and returns the proof: on
    /// sled, its flush, then an fdatasync of each file it changed (fsync of
    /// new files and of directories whose entries changed), then the
    /// high-water mark. Syncs are serial; one covers every commit before it,
    /// and a call with nothing new to sync returns at once.
    ///
    /// # Errors
    /// A failed sync poisons the store ([`StoreError::Poisoned`]): sled keeps
    /// the failed writes in memory, so from then on every read, transaction
    /// and sync answers that error until the store is opened again.
    pub fn flush(&self) -> Result<Synced, StoreError> {
        self.durability.check()?;
        match &self.backend {
            Backend::Sled(s) => {
                let mut files = s
                    .files
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                self.durability.check()?;
                let commit = self.durability.committed();
                if let Some(done) = self.durability.synced_through(commit) {
                    return Ok(done);
                }
                match files.sync(&s.db, &s.trees[META], commit) {
                    Ok(()) => Ok(self.durability.record(commit)),
                    Err(e) => Err(self.durability.poison(durability::poisoned(&s.path, &e))),
                }
            }
            Backend::Memory(m) => {
                // counted only after applied, so the flush below takes it
                let commit = self.durability.committed();
                if let Some(e) = self.durability.take_failure() {
                    return Err(self.durability.poison(durability::poisoned("memory", &e)));
                }
                m.flush();
                Ok(self.durability.record(commit))
            }
        }
    }

    /// A write sled could not do: an I/O failure (sled's background writer
    /// may have met it first, e.g. a full disk) poisons the store as a
    /// failed sync does.
    fn sled_failed(&self, path: &str, e: sled::Error) -> StoreError {
        match e {
            sled::Error::Io(io) => self.durability.poison(durability::poisoned(path, &io)),
            e => StoreError::Sled(e),
        }
    }

    /// The number of the last commit (transaction or plain write) made on
    /// this store; [`Store::flush`] after it returns a [`Synced`] covering it.
    #[must_use]
    pub fn committed(&self) -> u64 {
        self.durability.committed()
    }

    /// The proof of the last sync, if it covers commit number `commit`.
    #[must_use]
    pub fn synced_through(&self, commit: u64) -> Option<Synced> {
        self.durability.synced_through(commit)
    }

    /// The error every call answers since a sync failed, if one did.
    #[must_use]
    pub fn poisoned(&self) -> Option<StoreError> {
        self.durability.poisoned().cloned()
    }

    /// Calls `hook` once when a sync fails (at once if one already did), on
    /// the thread that saw the failure: it must not block.
    pub fn on_poison(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.durability.on_poison(Box::new(hook));
    }

    /// Makes the next sync of a memory store fail with `kind`, as a full disk
    /// would (for simulations and tests).
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] for a sled store: fill its disk instead.
    pub fn fail_next_sync(&self, kind: std::io::ErrorKind) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(_) => Err(StoreError::Unsupported {
                what: "a simulated sync failure",
                backend: "sled",
            }),
            Backend::Memory(_) => {
                self.durability.fail_next(kind);
                Ok(())
            }
        }
    }

    fn scan<T: serde::de::DeserializeOwned>(
        &self,
        tree: usize,
        prefix: &[u8],
    ) -> Result<Vec<T>, StoreError> {
        self.durability.check()?;
        match &self.backend {
            Backend::Sled(s) => decode_all(tree, s.trees[tree].scan_prefix(prefix)),
            Backend::Memory(m) => decode_values(tree, m.scan_prefix(tree, prefix)),
        }
    }

    /// At most `limit` values with keys in `from..to` (`to` none: to the end).
    fn range<T: serde::de::DeserializeOwned>(
        &self,
        tree: usize,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        self.durability.check()?;
        match &self.backend {
            Backend::Sled(s) => match to {
                Some(to) => decode_all(tree, s.trees[tree].range(from..to).take(limit)),
                None => decode_all(tree, s.trees[tree].range(from..).take(limit)),
            },
            Backend::Memory(m) => decode_values(tree, m.range(tree, from, to, limit)),
        }
    }

    fn len(&self, tree: usize) -> usize {
        match &self.backend {
            Backend::Sled(s) => s.trees[tree].len(),
            Backend::Memory(m) => m.len(tree),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        tree: usize,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.durability.check()?;
        let v = match &self.backend {
            Backend::Sled(s) => s.trees[tree].get(key)?,
            Backend::Memory(m) => m.get(tree, key),
        };
        v.map(|v| records::decode(TREES[tree], &v)).transpose()
    }

    pub fn key(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        self.get(KEYS, id.as_bytes())
    }

    pub fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.scan(KEYS, b"")
    }

    /// The grant of one key to one object: a point lookup.
    pub fn grant(&self, key_id: &str, object: &str) -> Result<Option<Grant>, StoreError> {
        self.get(GRANTS, &pair(key_id, object))
    }

    pub fn grants_of_key(&self, key_id: &str) -> Result<Vec<Grant>, StoreError> {
        self.scan(GRANTS, &pair(key_id, ""))
    }

    pub fn all_grants(&self) -> Result<Vec<Grant>, StoreError> {
        self.scan(GRANTS, b"")
    }

    pub fn used(&self, key_id: &str) -> Result<u32, StoreError> {
        Ok(self.get(USED, key_id.as_bytes())?.unwrap_or(0))
    }

    pub fn notifications_after(&self, seq: u64) -> Result<Vec<Notification>, StoreError> {
        self.range(NOTIFICATIONS, &(seq + 1).to_be_bytes(), None, usize::MAX)
    }

    /// At most `limit` notifications after `seq`, oldest first (a webhook's queue).
    pub fn notifications_page(
        &self,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        self.range(NOTIFICATIONS, &(seq + 1).to_be_bytes(), None, limit)
    }

    /// The seq of the newest notification ever stored (0: none yet).
    pub fn last_notification_seq(&self) -> Result<u64, StoreError> {
        Ok(self.get(META, b"notification_seq")?.unwrap_or(0))
    }

    pub fn notification_count(&self) -> usize {
        self.len(NOTIFICATIONS)
    }

    /// Entries queued for `peer` that it has not acked, oldest first.
    pub fn outbox(&self, peer: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        let acked = self.cursor(peer)?.acked;
        self.range(
            OUTBOX,
            &outbox_key(peer, acked + 1),
            Some(&outbox_key(peer, u64::MAX)),
            usize::MAX,
        )
    }

    pub fn outbox_depth(&self, peer: &str) -> Result<u64, StoreError> {
        let c = self.cursor(peer)?;
        Ok(c.last_queued.saturating_sub(c.acked))
    }

    pub fn cursor(&self, peer: &str) -> Result<PeerCursor, StoreError> {
        Ok(self.get(CURSORS, peer.as_bytes())?.unwrap_or_default())
    }

    /// Records that `peer` acked everything up to `seq` and drops those entries.
    pub fn ack(&self, peer: &str, seq: u64) -> Result<Vec<OutboxEntry>, StoreError> {
        let acked: Vec<OutboxEntry> = self.transact(|tx| {
            let mut c = tx.cursor(peer)?;
            if seq <= c.acked {
                return Ok(Vec::new());
            }
            let mut done = Vec::new();
            for s in (c.acked + 1)..=seq.min(c.last_queued) {
                if let Some(e) = tx.remove(OUTBOX, &outbox_key(peer, s))? {
                    done.push(tx.decode(OUTBOX, &e)?);
                }
            }
            c.acked = seq.min(c.last_queued);
            tx.put_cursor(peer, &c)?;
            Ok::<_, ConflictableTransactionError<StoreError>>(done)
        })?;
        Ok(acked)
    }

    pub fn usage_lines(&self) -> Result<Vec<UsageLine>, StoreError> {
        self.scan(USAGE, b"")
    }

    pub fn waiting(&self) -> Result<Vec<Waiting>, StoreError> {
        self.scan(WAITING, b"")
    }

    /// Seats of `key_id` held by stations of `tenant` (e07).
    pub fn used_by(&self, key_id: &str, tenant: &str) -> Result<u32, StoreError> {
        Ok(self.get(USED, &pair(key_id, tenant))?.unwrap_or(0))
    }

    pub fn station(&self, fingerprint: &str) -> Result<Option<StationRecord>, StoreError> {
        self.get(STATIONS, fingerprint.as_bytes())
    }

    pub fn stations(&self) -> Result<Vec<StationRecord>, StoreError> {
        self.scan(STATIONS, b"")
    }

    pub fn station_count(&self) -> usize {
        self.len(STATIONS)
    }

    pub fn reports_of(&self, fingerprint: &str) -> Result<Vec<StationReport>, StoreError> {
        self.scan(REPORTS, &pair(fingerprint, ""))
    }

    /// Every command, oldest first.
    pub fn commands(&self) -> Result<Vec<Command>, StoreError> {
        let mut all: Vec<Command> = self.scan(COMMANDS, b"")?;
        all.sort_by_key(|c| c.id);
        Ok(all)
    }

    /// Commands queued for one object, oldest first.
    pub fn commands_of(&self, object: &str) -> Result<Vec<Command>, StoreError> {
        self.scan(COMMANDS, &pair(object, ""))
    }

    pub fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.get(META, name.as_bytes())
    }

    /// Audit records after `seq`, oldest first, at most `limit` (b06).
    pub fn audit_after(&self, seq: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.range(AUDIT, &seq.saturating_add(1).to_be_bytes(), None, limit)
    }

    /// The highest serial of `license` this store ever held, even if that key
    /// was deleted since (rollback protection).
    pub fn license_serial(&self, license: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .meta(&license_serial_meta(license))?
            .and_then(|s| s.parse().ok()))
    }

    /// Every committed entry of every tree, by tree name, in key order: for
    /// simulations and tests that compare two stores (same commands in,
    /// same store out).
    pub fn dump(&self) -> Result<StoreDump, StoreError> {
        let mut out = BTreeMap::new();
        for (i, name) in TREES.iter().enumerate() {
            let entries = match &self.backend {
                Backend::Sled(s) => s.trees[i]
                    .iter()
                    .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
                    .collect::<Result<Vec<_>, _>>()?,
                Backend::Memory(m) => m.entries(i),
            };
            out.insert(*name, entries);
        }
        Ok(out)
    }

    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.durability.check()?;
        let _writing = self.durability.writing();
        self.durability.touched(META, name.as_bytes());
        let v = records::encode(&value);
        match &self.backend {
            Backend::Sled(s) => {
                s.trees[META]
                    .insert(name.as_bytes(), v)
                    .map_err(|e| self.sled_failed(&s.path, e))?;
            }
            Backend::Memory(m) => m.insert(META, name.as_bytes(), IVec::from(v)),
        }
        self.durability.counted();
        Ok(())
    }
}

/// Reads every value of every tree once, so a store whose files sled reads
/// only in part (a garbled page it would meet later) is refused at open.
fn verify(trees: &[sled::Tree]) -> Result<(), String> {
    let scan = || -> Result<(), String> {
        for (i, tree) in trees.iter().enumerate() {
            for kv in tree.iter() {
                let (k, v) = kv.map_err(|e| format!("cannot be read by sled: {e}"))?;
                if i == META && k.as_ref() == b"schema" {
                    continue; // the one bare version byte
                }
                records::decode::<serde::de::IgnoredAny>(TREES[i], &v)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    };
    // on a panic the store is dropped unused, so nothing half-updated is seen
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(scan)).unwrap_or_else(|panic| {
        Err(format!(
            "made sled fail while reading it: {}",
            panic_message(&*panic)
        ))
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

fn license_serial_meta(license: &str) -> String {
    format!("license-serial:{license}")
}

/// The typed view of one transaction.
pub struct Tx<'a> {
    view: View<'a>,
    /// Told of every key written, while a backup copies the trees.
    durability: &'a Durability,
}

enum View<'a> {
    Sled(&'a [TransactionalTree]),
    Memory(&'a memory::MemTx<'a>),
}

impl Tx<'_> {
    // The three primitives every typed method goes through.

    fn get(&self, tree: usize, key: &[u8]) -> Result<Option<IVec>, UnabortableTransactionError> {
        match self.view {
            View::Sled(t) => t[tree].get(key),
            View::Memory(m) => Ok(m.get(tree, key)),
        }
    }

    fn insert(
        &self,
        tree: usize,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<(), UnabortableTransactionError> {
        self.durability.touched(tree, key);
        match self.view {
            View::Sled(t) => {
                t[tree].insert(key, value)?;
            }
            View::Memory(m) => m.insert(tree, key, IVec::from(value)),
        }
        Ok(())
    }

    fn remove(&self, tree: usize, key: &[u8]) -> Result<Option<IVec>, UnabortableTransactionError> {
        self.durability.touched(tree, key);
        match self.view {
            View::Sled(t) => t[tree].remove(key),
            View::Memory(m) => Ok(m.remove(tree, key)),
        }
    }

    fn decode<T: serde::de::DeserializeOwned, E: From<StoreError>>(
        &self,
        tree: usize,
        v: &[u8],
    ) -> TxResult<T, E> {
        records::decode(TREES[tree], v).map_err(|e| ConflictableTransactionError::Abort(E::from(e)))
    }

    fn read<T: serde::de::DeserializeOwned, E: From<StoreError>>(
        &self,
        tree: usize,
        key: &[u8],
    ) -> TxResult<Option<T>, E> {
        match self.get(tree, key)? {
            Some(v) => Ok(Some(self.decode(tree, &v)?)),
            None => Ok(None),
        }
    }

    fn write<T: serde::Serialize, E>(&self, tree: usize, key: &[u8], value: &T) -> TxResult<(), E> {
        self.insert(tree, key, records::encode(value))?;
        Ok(())
    }

    pub fn key<E: From<StoreError>>(&self, id: &str) -> TxResult<Option<StoredKey>, E> {
        self.read(KEYS, id.as_bytes())
    }

    /// Stores a key and remembers the highest serial seen of its license,
    /// which outlives the key (rollback protection after a delete).
    pub fn put_key<E>(&self, k: &StoredKey) -> TxResult<(), E> {
        let name = license_serial_meta(&k.key.license);
        let seen = self
            .get(META, name.as_bytes())?
            .and_then(|v| records::decode::<String>(TREES[META], &v).ok())
            .and_then(|s| s.parse::<u64>().ok());
        if seen.is_none_or(|s| s < k.key.serial) {
            self.write::<_, E>(META, name.as_bytes(), &k.key.serial.to_string())?;
        }
        self.write(KEYS, k.key.id.as_bytes(), k)
    }

    /// The highest serial of `license` this store ever held (see [`Tx::put_key`]).
    pub fn license_serial<E: From<StoreError>>(&self, license: &str) -> TxResult<Option<u64>, E> {
        Ok(self
            .meta::<E>(&license_serial_meta(license))?
            .and_then(|s| s.parse().ok()))
    }

    /// Removes a key with all its grants' counter; grants must be removed first.
    pub fn remove_key<E>(&self, id: &str) -> TxResult<(), E> {
        self.remove(KEYS, id.as_bytes())?;
        self.remove(USED, id.as_bytes())?;
        Ok(())
    }

    pub fn grant<E: From<StoreError>>(
        &self,
        key_id: &str,
        object: &str,
    ) -> TxResult<Option<Grant>, E> {
        self.read(GRANTS, &pair(key_id, object))
    }

    pub fn used<E: From<StoreError>>(&self, key_id: &str) -> TxResult<u32, E> {
        Ok(self.read(USED, key_id.as_bytes())?.unwrap_or(0))
    }

    /// Seats of `key_id` held by stations of `tenant` (e07).
    pub fn used_by<E: From<StoreError>>(&self, key_id: &str, tenant: &str) -> TxResult<u32, E> {
        Ok(self.read(USED, &pair(key_id, tenant))?.unwrap_or(0))
    }

    fn add_used<E: From<StoreError>>(&self, g: &Grant, delta: i64) -> TxResult<(), E> {
        let bump = |n: u32| u32::try_from((i64::from(n) + delta).max(0)).unwrap_or(u32::MAX);
        let used = bump(self.used::<E>(&g.key_id)?);
        self.write(USED, g.key_id.as_bytes(), &used)?;
        if !g.tenant.is_empty() {
            let by = bump(self.used_by::<E>(&g.key_id, &g.tenant)?);
            self.write(USED, &pair(&g.key_id, &g.tenant), &by)?;
        }
        Ok(())
    }

    /// Writes a grant and keeps the key's used-seat counters exact.
    pub fn put_grant<E: From<StoreError>>(&self, g: &Grant) -> TxResult<(), E> {
        let old = self.grant::<E>(&g.key_id, &g.object)?;
        if let Some(old) = &old {
            self.add_used::<E>(old, -i64::from(old.seats))?;
        }
        self.index_grant::<E>(old.as_ref(), Some(g))?;
        self.add_used::<E>(g, i64::from(g.seats))?;
        self.write(GRANTS, &pair(&g.key_id, &g.object), g)
    }

    pub fn remove_grant<E: From<StoreError>>(
        &self,
        key_id: &str,
        object: &str,
    ) -> TxResult<Option<Grant>, E> {
        let Some(old) = self.grant::<E>(key_id, object)? else {
            return Ok(None);
        };
        self.add_used::<E>(&old, -i64::from(old.seats))?;
        self.index_grant::<E>(Some(&old), None)?;
        self.remove(GRANTS, &pair(key_id, object))?;
        Ok(Some(old))
    }

    pub fn station<E: From<StoreError>>(
        &self,
        fingerprint: &str,
    ) -> TxResult<Option<StationRecord>, E> {
        self.read(STATIONS, fingerprint.as_bytes())
    }

    pub fn put_station<E: From<StoreError>>(&self, s: &StationRecord) -> TxResult<(), E> {
        let old = self.station::<E>(&s.fingerprint)?;
        self.index_station::<E>(old.as_ref(), s)?;
        self.write(STATIONS, s.fingerprint.as_bytes(), s)
    }

    /// Keeps a station report once by its id; false if it was already kept.
    pub fn put_report<E: From<StoreError>>(&self, r: &StationReport) -> TxResult<bool, E> {
        let k = pair(&r.fingerprint, &r.report_id);
        if self.get(REPORTS, &k)?.is_some() {
            return Ok(false);
        }
        self.write(REPORTS, &k, r)?;
        Ok(true)
    }

    /// Queues a command and gives it the next id (o03).
    pub fn add_command<E: From<StoreError>>(
        &self,
        object: &str,
        kind: ObjectKind,
        command: &str,
        at: DateTime<Utc>,
    ) -> TxResult<Command, E> {
        let c = Command {
            id: self.next_counter("command_seq")?,
            object: object.into(),
            kind,
            command: command.into(),
            queued_at: at,
            state: CommandState::Pending,
        };
        self.put_command(&c)?;
        Ok(c)
    }

    /// b02: the peer whose station holds a seat of `key_id` (or that
    /// forwarded the claim), if any.
    pub fn claim<E: From<StoreError>>(
        &self,
        key_id: &str,
        fingerprint: &str,
    ) -> TxResult<Option<String>, E> {
        self.read(CLAIMS, &pair(key_id, fingerprint))
    }

    pub fn put_claim<E>(&self, key_id: &str, fingerprint: &str, peer: &str) -> TxResult<(), E> {
        self.write(CLAIMS, &pair(key_id, fingerprint), &peer)
    }

    pub fn remove_claim<E>(&self, key_id: &str, fingerprint: &str) -> TxResult<(), E> {
        self.remove(CLAIMS, &pair(key_id, fingerprint))?;
        Ok(())
    }

    pub fn put_command<E>(&self, c: &Command) -> TxResult<(), E> {
        self.write(COMMANDS, &outbox_key(&c.object, c.id), c)
    }

    pub fn command<E: From<StoreError>>(
        &self,
        object: &str,
        id: u64,
    ) -> TxResult<Option<Command>, E> {
        self.read(COMMANDS, &outbox_key(object, id))
    }

    fn next_counter<E: From<StoreError>>(&self, name: &str) -> TxResult<u64, E> {
        let n: u64 = self.read::<u64, E>(META, name.as_bytes())?.unwrap_or(0) + 1;
        self.write(META, name.as_bytes(), &n)?;
        Ok(n)
    }

    pub fn notify<E: From<StoreError>>(
        &self,
        at: DateTime<Utc>,
        event: &str,
        key_id: &str,
        message: String,
        details: BTreeMap<String, String>,
    ) -> TxResult<Notification, E> {
        let seq = self.next_counter("notification_seq")?;
        let n = Notification {
            seq,
            at,
            event: event.into(),
            key_id: key_id.into(),
            message,
            details,
        };
        self.write(NOTIFICATIONS, &seq.to_be_bytes(), &n)?;
        Ok(n)
    }

    /// Appends one administrator action to the audit trail (b06).
    pub fn audit<E: From<StoreError>>(
        &self,
        at: DateTime<Utc>,
        actor: &str,
        action: &str,
        detail: &str,
        outcome: &str,
    ) -> TxResult<AuditRecord, E> {
        let seq = self.next_counter("audit_seq")?;
        let r = AuditRecord {
            seq,
            at,
            actor: actor.into(),
            action: action.into(),
            detail: detail.into(),
            outcome: outcome.into(),
        };
        self.write(AUDIT, &seq.to_be_bytes(), &r)?;
        Ok(r)
    }

    pub fn cursor<E: From<StoreError>>(&self, peer: &str) -> TxResult<PeerCursor, E> {
        Ok(self.read(CURSORS, peer.as_bytes())?.unwrap_or_default())
    }

    pub fn put_cursor<E>(&self, peer: &str, c: &PeerCursor) -> TxResult<(), E> {
        self.write(CURSORS, peer.as_bytes(), c)
    }

    /// Queues a message for `peer`; returns the sequence it was given.
    pub fn enqueue<E: From<StoreError>>(
        &self,
        peer: &str,
        at: DateTime<Utc>,
        key_id: &str,
        what: &str,
        body: Vec<u8>,
    ) -> TxResult<OutboxEntry, E> {
        let mut c = self.cursor::<E>(peer)?;
        c.last_queued += 1;
        let seq = c.last_queued;
        // the epoch keeps ids unique across a wipe or restore of this store,
        // whose sequences (and manual clock) may repeat (issue 15 §3)
        let epoch = self.epoch::<E>()?;
        let tag = epoch.get(..12).unwrap_or(&epoch);
        let entry = OutboxEntry {
            seq,
            message_id: format!("{peer}/{seq}/{}/{tag}", at.timestamp_micros()),
            body,
            queued_at: at,
            key_id: key_id.into(),
            what: what.into(),
        };
        self.write(OUTBOX, &outbox_key(peer, seq), &entry)?;
        self.put_cursor(peer, &c)?;
        Ok(entry)
    }

    /// Idempotency record: true the first time a message id is seen.
    pub fn first_sight<E: From<StoreError>>(
        &self,
        message_id: &str,
        at: DateTime<Utc>,
    ) -> TxResult<bool, E> {
        if self.get(APPLIED, message_id.as_bytes())?.is_some() {
            return Ok(false);
        }
        self.write(APPLIED, message_id.as_bytes(), &at)?;
        Ok(true)
    }

    pub fn put_usage<E>(&self, line: &UsageLine) -> TxResult<(), E> {
        self.write(USAGE, &pair(&line.node_id, &line.key_id), line)
    }

    pub fn remove_usage<E>(&self, node_id: &str, key_id: &str) -> TxResult<(), E> {
        self.remove(USAGE, &pair(node_id, key_id))?;
        Ok(())
    }

    /// A named meta value, read inside the transaction (see [`Store::meta`]).
    pub fn meta<E: From<StoreError>>(&self, name: &str) -> TxResult<Option<String>, E> {
        self.read(META, name.as_bytes())
    }

    pub fn put_meta<E>(&self, name: &str, value: &str) -> TxResult<(), E> {
        self.write(META, name.as_bytes(), &value)
    }

    pub fn remove_meta<E>(&self, name: &str) -> TxResult<(), E> {
        self.remove(META, name.as_bytes())?;
        Ok(())
    }

    pub fn put_waiting<E>(&self, w: &Waiting) -> TxResult<(), E> {
        self.write(WAITING, &pair(&w.key_id, &w.object), w)
    }

    /// The waiting record of one object for one key: a point lookup.
    pub fn waiting<E: From<StoreError>>(
        &self,
        key_id: &str,
        object: &str,
    ) -> TxResult<Option<Waiting>, E> {
        self.read(WAITING, &pair(key_id, object))
    }

    pub fn remove_waiting<E>(&self, key_id: &str, object: &str) -> TxResult<(), E> {
        self.remove(WAITING, &pair(key_id, object))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{pair, records, Backend, Store, StoreError, CLAIMS, META, SCHEMA_VERSION};

    /// The raw bytes under `key` of `tree`, whichever backend holds them.
    fn raw(store: &Store, tree: usize, key: &[u8]) -> Vec<u8> {
        match &store.backend {
            Backend::Sled(s) => s.trees[tree].get(key).unwrap().unwrap().to_vec(),
            Backend::Memory(m) => m.get(tree, key).unwrap().to_vec(),
        }
    }

    /// Callers share a store across threads and tasks, whichever backend.
    const _: () = {
        const fn send_sync<T: Send + Sync>() {}
        send_sync::<Store>();
    };

    #[test]
    fn every_value_starts_with_its_format_version_on_both_backends() {
        let dir = tempfile::tempdir().unwrap();
        for store in [Store::open(dir.path()).unwrap(), Store::in_memory()] {
            store
                .transact(|tx| tx.put_meta::<StoreError>("in-tx", "v"))
                .unwrap();
            store.set_meta("plain", "v").unwrap();
            store
                .transact(|tx| tx.put_claim::<StoreError>("k-1", "fp", "peer"))
                .unwrap();
            for key in [&b"in-tx"[..], b"plain"] {
                assert_eq!(raw(&store, META, key)[0], records::FORMAT_VERSION);
            }
            assert_eq!(
                raw(&store, CLAIMS, &pair("k-1", "fp"))[0],
                records::FORMAT_VERSION
            );
            // the schema marker is the one value that is a bare version byte
            assert_eq!(raw(&store, META, b"schema"), [SCHEMA_VERSION]);
        }
    }
}
