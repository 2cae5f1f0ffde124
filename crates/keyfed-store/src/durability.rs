//! What an acknowledgement waits for: commit numbers, a sync that makes
//! sled's files durable with real fsyncs, the high-water mark beside the sled
//! directory, and the poison flag a failed sync raises.
use crate::StoreError;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{
    Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::SystemTime;

/// The high-water mark of a store at `dir` is the file `dir` + `.acked`
/// beside it (beside, so a sled directory wiped or swapped whole is noticed).
pub const MARK_SUFFIX: &str = "acked";
/// Where in sled the store keeps the commit number of its last sync.
pub(crate) const LEDGER_META: &[u8] = b"durable-commit";
const MARK_FORMAT: u8 = 1;
/// Two slots a page apart, written in turn: a write torn by a power cut
/// spoils only the slot whose sync was never acknowledged.
const MARK_SLOTS: [u64; 2] = [0, 4096];
const MARK_LEN: usize = 17;

/// Proof that every commit up to [`Synced::commit`] is on stable storage.
/// Only the store's sync path makes one, so an acknowledgement that needs a
/// `Synced` cannot be reached without a real sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Synced {
    commit: u64,
}

impl Synced {
    /// The commit number this sync covers (every commit numbered up to it).
    #[must_use]
    pub fn commit(self) -> u64 {
        self.commit
    }
}

type PoisonHook = Box<dyn Fn() + Send + Sync>;

/// Keys written (tree index, key) while a backup copies the trees.
pub(crate) type Journal = BTreeSet<(usize, Vec<u8>)>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Commit numbers and health, shared by every clone of one store.
pub(crate) struct Durability {
    committed: AtomicU64,
    synced: AtomicU64,
    poison: OnceLock<StoreError>,
    on_poison: Mutex<Vec<PoisonHook>>,
    /// Memory backend only: the next sync fails with this (a simulated full disk).
    fail_next: Mutex<Option<io::ErrorKind>>,
    /// The write barrier of a backup: every write holds it shared while it
    /// applies and is counted; a backup's cut holds it alone, twice, briefly
    /// (sled has no point-in-time view across trees, see `Store::cut`).
    cut: RwLock<()>,
    /// One backup's cut at a time (they share the journal).
    cuts: Mutex<()>,
    /// While a backup copies the trees: every (tree, key) written since the
    /// copy began, so the cut can read them again under the barrier.
    journal: Mutex<Option<Journal>>,
    /// Whether the journal is on: the one check a write makes otherwise.
    journaling: AtomicBool,
}

impl Durability {
    /// A store whose commits up to `commit` are all on disk.
    pub(crate) fn new(commit: u64) -> Self {
        Self {
            committed: AtomicU64::new(commit),
            synced: AtomicU64::new(commit),
            poison: OnceLock::new(),
            on_poison: Mutex::new(Vec::new()),
            fail_next: Mutex::new(None),
            cut: RwLock::new(()),
            cuts: Mutex::new(()),
            journal: Mutex::new(None),
            journaling: AtomicBool::new(false),
        }
    }

    /// Serializes backups' cuts.
    pub(crate) fn one_cut(&self) -> MutexGuard<'_, ()> {
        lock(&self.cuts)
    }

    /// Starts (`true`) or ends the journal of written keys; called under
    /// [`Self::cutting`], so no write is half-way when it switches. Ending
    /// returns what was written meanwhile.
    pub(crate) fn journal(&self, on: bool) -> Journal {
        let mut j = lock(&self.journal);
        let was = j.take().unwrap_or_default();
        if on {
            *j = Some(BTreeSet::new());
        }
        self.journaling.store(on, Ordering::SeqCst);
        was
    }

    /// Notes a write of `key` in `tree` while a backup copies (a no-op otherwise).
    pub(crate) fn touched(&self, tree: usize, key: &[u8]) {
        if !self.journaling.load(Ordering::SeqCst) {
            return;
        }
        if let Some(j) = lock(&self.journal).as_mut() {
            j.insert((tree, key.to_vec()));
        }
    }

    /// Held by a write (a transaction or a plain write) until it is counted.
    pub(crate) fn writing(&self) -> RwLockReadGuard<'_, ()> {
        self.cut.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Held by a backup's cut: no write applies meanwhile.
    pub(crate) fn cutting(&self) -> RwLockWriteGuard<'_, ()> {
        self.cut.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn check(&self) -> Result<(), StoreError> {
        match self.poison.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    pub(crate) fn poisoned(&self) -> Option<&StoreError> {
        self.poison.get()
    }

    /// Counts one commit (a transaction or a plain write) after it applied.
    pub(crate) fn counted(&self) {
        self.committed.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    pub(crate) fn synced_through(&self, commit: u64) -> Option<Synced> {
        let synced = self.synced.load(Ordering::SeqCst);
        (synced >= commit).then_some(Synced { commit: synced })
    }

    pub(crate) fn record(&self, commit: u64) -> Synced {
        let prev = self.synced.fetch_max(commit, Ordering::SeqCst);
        Synced {
            commit: prev.max(commit),
        }
    }

    /// Raises the poison flag (the first failure wins) and returns it.
    pub(crate) fn poison(&self, e: StoreError) -> StoreError {
        if self.poison.set(e).is_ok() {
            for hook in lock(&self.on_poison).iter() {
                hook();
            }
        }
        self.poison.get().expect("set above").clone()
    }

    pub(crate) fn on_poison(&self, hook: PoisonHook) {
        if self.poison.get().is_some() {
            hook();
        }
        lock(&self.on_poison).push(hook);
    }

    pub(crate) fn fail_next(&self, kind: io::ErrorKind) {
        *lock(&self.fail_next) = Some(kind);
    }

    pub(crate) fn take_failure(&self) -> Option<io::Error> {
        lock(&self.fail_next)
            .take()
            .map(|k| io::Error::new(k, "simulated failure of the next sync (memory store)"))
    }
}

/// Whether a failed write means the disk or a size limit is full.
pub(crate) fn out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge | io::ErrorKind::QuotaExceeded
    )
}

pub(crate) fn poisoned(path: &str, e: &io::Error) -> StoreError {
    let full = out_of_space(e);
    StoreError::Poisoned {
        path: path.to_owned(),
        why: e.to_string(),
        advice: if full {
            "free disk space (or raise the file size limit), then restart the node"
        } else {
            "check the disk and the system log, then restart the node"
        },
        out_of_space: full,
    }
}

/// The mark file of a store at `dir`.
pub(crate) fn mark_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(MARK_SUFFIX);
    dir.with_file_name(name)
}

/// The mark's slots: format byte, commit number, its complement.
fn decode_slot(b: &[u8]) -> Option<u64> {
    let (&v, rest) = b.split_first()?;
    let n = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let check = u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
    (v == MARK_FORMAT && check == !n).then_some(n)
}

fn encode_slot(n: u64) -> [u8; MARK_LEN] {
    let mut b = [0; MARK_LEN];
    b[0] = MARK_FORMAT;
    b[1..9].copy_from_slice(&n.to_be_bytes());
    b[9..].copy_from_slice(&(!n).to_be_bytes());
    b
}

/// Reads the last acknowledged commit number from the mark at `path`:
/// none if there is no mark yet, an error if no slot reads whole.
pub(crate) fn read_mark(path: &Path) -> Result<Option<u64>, String> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot be read: {e}"))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot be opened: {e}")),
    };
    if bytes.is_empty() {
        // created, never written: no sync was acknowledged
        return Ok(None);
    }
    MARK_SLOTS
        .iter()
        .filter_map(|&at| {
            let at = usize::try_from(at).ok()?;
            decode_slot(bytes.get(at..at + MARK_LEN)?)
        })
        .max()
        .map(Some)
        .ok_or_else(|| format!("is garbled ({} bytes, no readable slot)", bytes.len()))
}

/// The files of one sled store, synced by path after sled's own flush:
/// sled 0.34 ends its writes with `sync_file_range`, which neither writes
/// the file's metadata nor flushes the drive's cache.
pub(crate) struct SledFiles {
    dir: PathBuf,
    mark_path: PathBuf,
    mark: Option<File>,
    /// Which slot the next mark write goes to.
    slot: usize,
    /// Open handles by path, files and directories (a sync applies to the
    /// file, not the handle, so ours reach what sled wrote through its own).
    open: BTreeMap<PathBuf, File>,
    /// Each file's length and mtime at the last sync: a file that changed is
    /// synced again, a new one with its metadata and its directory.
    seen: BTreeMap<PathBuf, (u64, Option<SystemTime>)>,
    /// The parent directory is synced once, at the first sync (the sled
    /// directory and the mark may be new there).
    parent_synced: bool,
}

impl SledFiles {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            mark_path: mark_path(dir),
            mark: None,
            slot: 0,
            open: BTreeMap::new(),
            seen: BTreeMap::new(),
            parent_synced: false,
        }
    }

    pub(crate) fn mark_path(&self) -> &Path {
        &self.mark_path
    }

    fn handle(&mut self, path: &Path) -> io::Result<Option<&File>> {
        if !self.open.contains_key(path) {
            match File::open(path) {
                Ok(f) => {
                    self.open.insert(path.to_owned(), f);
                }
                // sled removed it since it was listed (an old snapshot, a
                // collected blob)
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(self.open.get(path))
    }

    /// fdatasync every file sled changed since the last sync (fsync for new
    /// ones), then fsync the directories whose entries changed.
    pub(crate) fn sync_files(&mut self) -> io::Result<()> {
        let blobs = self.dir.join("blobs");
        let mut now = BTreeMap::new();
        for d in [&self.dir, &blobs] {
            let entries = match std::fs::read_dir(d) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_file() {
                    now.insert(entry.path(), (meta.len(), meta.modified().ok()));
                }
            }
        }
        let log = self.dir.join("db");
        let mut entries_changed = false;
        for (path, stat) in &now {
            let before = self.seen.get(path).copied();
            entries_changed |= before.is_none();
            // sled rewrites only its log in place; it writes every other file
            // once (conf, blobs, snapshots), so those are synced when they
            // appear or change, the log at every sync
            if *path != log && before.as_ref() == Some(stat) {
                continue;
            }
            if let Some(f) = self.handle(path)? {
                if before.is_none() {
                    f.sync_all()?;
                } else {
                    f.sync_data()?;
                }
            }
        }
        entries_changed |= self.seen.keys().any(|p| !now.contains_key(p));
        self.open
            .retain(|p, _| now.contains_key(p) || *p == self.dir || *p == blobs);
        self.seen = now;
        if entries_changed {
            for d in [self.dir.clone(), blobs] {
                if let Some(f) = self.handle(&d)? {
                    f.sync_all()?;
                }
            }
        }
        Ok(())
    }

    /// Writes `commit` into the mark (the other slot than last time) and
    /// syncs it; the first time also the directory holding it.
    pub(crate) fn write_mark(&mut self, commit: u64) -> io::Result<()> {
        let first = self.mark.is_none();
        if first {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.mark_path)?;
            self.mark = Some(f);
        }
        let mut f = self.mark.as_ref().expect("opened above");
        f.seek(SeekFrom::Start(MARK_SLOTS[self.slot]))?;
        f.write_all(&encode_slot(commit))?;
        if first {
            f.sync_all()?;
        } else {
            f.sync_data()?;
        }
        self.slot = 1 - self.slot;
        if !self.parent_synced {
            if let Some(parent) = self.mark_path.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                File::open(parent)?.sync_all()?;
            }
            self.parent_synced = true;
        }
        Ok(())
    }

    /// One sync: the commit number into sled, sled's flush, fsyncs of its
    /// files, then the mark. Everything committed before the call is durable
    /// when this returns `Ok`.
    pub(crate) fn sync(&mut self, db: &sled::Db, meta: &sled::Tree, commit: u64) -> io::Result<()> {
        meta.insert(LEDGER_META, crate::records::encode(&commit))
            .map_err(io::Error::from)?;
        db.flush().map_err(io::Error::from)?;
        self.sync_files()?;
        self.write_mark(commit)
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_slot, encode_slot, mark_path};
    use std::path::Path;

    #[test]
    fn a_mark_slot_reads_back_and_a_garbled_one_does_not() {
        let b = encode_slot(41);
        assert_eq!(decode_slot(&b), Some(41));
        let mut bad = b;
        bad[4] ^= 0x10;
        assert_eq!(decode_slot(&bad), None);
        assert_eq!(decode_slot(&[0; 17]), None);
    }

    #[test]
    fn the_mark_lives_beside_the_sled_directory() {
        assert_eq!(
            mark_path(Path::new("/var/lib/keyfed/store")),
            Path::new("/var/lib/keyfed/store.acked")
        );
    }
}
