//! Backups: a consistent cut of a running store ([`Store::cut`]), the file
//! it is written to ([`encode`], [`decode`]) and a new data directory made
//! from one ([`restore_into`]).
//!
//! The file is `KEYFEDBK`, a format version (u16), the length of a JSON
//! header (u32) and the header (node id, time, the source's commit number,
//! schema, entry count, body length), then the body: per tree its name, its
//! entry count and every raw key and value, then a SHA-256 over everything
//! before it. [`decode`] checks all of it before anything is written, so a
//! foreign, truncated or damaged file is refused whole.
//!
//! Not carried across: the meta entries that describe one store rather than
//! the ledger (`store-epoch`, the commit number of the last sync): a
//! restored store is a new store with its own epoch and commit numbers.
use crate::{durability, Backend, Store, StoreDump, StoreError, META, SCHEMA_VERSION, TREES};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"KEYFEDBK";
/// The layout this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// The meta key of the per-store epoch: a restored store makes its own.
pub const STORE_EPOCH_META: &[u8] = b"store-epoch";
/// The store directory inside a node's data directory.
pub const STORE_DIR: &str = "store";
const DIGEST_LEN: usize = 32;
const PREAMBLE_LEN: usize = MAGIC.len() + 2 + 4;
/// A header is a few hundred bytes; anything far larger is not one.
const MAX_HEADER: usize = 64 * 1024;
/// Entries written per sled batch when restoring.
const BATCH: usize = 4096;

/// Where a node with data directory `data_dir` keeps its store.
#[must_use]
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_DIR)
}

#[derive(Debug, Clone, Error)]
pub enum SnapshotError {
    #[error("not a keyfed backup: {0}")]
    Foreign(String),
    #[error("a keyfed backup of format version {found}, but this build reads version {expected}: restore it with the keyfed release that wrote it")]
    Version { found: u16, expected: u16 },
    #[error("the backup is truncated: it is {len} bytes, its header says {expected}; the file was cut short: copy or take the backup again")]
    Truncated { len: u64, expected: u64 },
    #[error("the backup is damaged: {0}; copy or take the backup again")]
    Damaged(String),
    #[error("the backup holds a store of schema version {found}, this build reads {expected}: restore it with the keyfed release that wrote it")]
    Schema { found: u8, expected: u8 },
    #[error("{} is not empty: restore makes a new data directory and never writes into one that holds anything; pass a new or empty directory", .0.display())]
    NotEmpty(PathBuf),
    #[error("{what} {}: {why}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |e| SnapshotError::Io {
        what,
        path,
        why: e.to_string(),
    }
}

/// What the file says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The node the store belonged to.
    pub node_id: String,
    /// When the cut was taken, by the node's clock.
    pub taken_at: DateTime<Utc>,
    /// The source store's commit number at the cut: every commit up to it
    /// is in the file, none after it.
    pub commit: u64,
    /// The store schema the entries are written in.
    pub schema: u8,
    /// Entries in the body, over every tree.
    pub entries: u64,
    /// Length of the body in bytes.
    pub body_bytes: u64,
}

/// A consistent copy of every tree of a running store.
#[derive(Debug, Clone)]
pub struct Cut {
    /// Every commit numbered up to this is in `trees`, none after it.
    pub commit: u64,
    pub trees: StoreDump,
    /// How long writes were held back for the cut, in all.
    pub barrier: std::time::Duration,
}

/// A decoded, verified backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub header: BackupHeader,
    /// Tree name → raw entries, without the entries a store keeps for itself.
    pub trees: BTreeMap<String, Entries>,
}

/// One tree's raw keys and values, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Keys of one tree read again at the cut, in key order; `None`: removed.
type Fresh = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl Snapshot {
    /// Entries over every tree.
    #[must_use]
    pub fn entries(&self) -> usize {
        self.trees.values().map(Vec::len).sum()
    }
}

/// Meta entries of one store rather than of its ledger.
fn store_local(tree: &str, key: &[u8]) -> bool {
    tree == TREES[META] && (key == STORE_EPOCH_META || key == durability::LEDGER_META)
}

impl Store {
    /// A consistent copy of every tree of a running store: each transaction
    /// is in it whole or not at all, across trees (sled has no point-in-time
    /// view across trees). Writes are held back only briefly, twice: to start
    /// a journal of the keys written from then on, and, after every tree was
    /// copied while writes went on, to read those keys again with the commit
    /// number. The copy patched with them is the store as of that moment.
    /// The pause grows with the writes made during the copy, not with the
    /// store; no I/O but sled's page cache happens under it. The caller makes
    /// the cut durable with a flush afterwards if it needs to.
    ///
    /// # Errors
    /// A read of sled fails, or the store is poisoned.
    pub fn cut(&self) -> Result<Cut, StoreError> {
        self.durability.check()?;
        let _one = self.durability.one_cut();
        let started = std::time::Instant::now();
        {
            let _alone = self.durability.cutting();
            self.durability.journal(true);
        }
        let mut barrier = started.elapsed();
        let fuzzy = self.dump();
        let alone = self.durability.cutting();
        let held = std::time::Instant::now();
        let touched = self.durability.journal(false);
        let fuzzy = fuzzy?;
        let commit = self.durability.committed();
        let mut fresh: BTreeMap<usize, Fresh> = BTreeMap::new();
        for (tree, key) in touched {
            let now = self.raw(tree, &key)?;
            fresh.entry(tree).or_default().push((key, now));
        }
        barrier += held.elapsed();
        drop(alone);
        let mut trees = fuzzy;
        for (tree, fresh) in fresh {
            let name = TREES[tree];
            let copied = trees.remove(name).unwrap_or_default();
            trees.insert(name, patched(copied, fresh));
        }
        Ok(Cut {
            commit,
            trees,
            barrier,
        })
    }

    /// The raw value under `key` of `tree`.
    fn raw(&self, tree: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(match &self.backend {
            Backend::Sled(s) => s.trees[tree].get(key)?.map(|v| v.to_vec()),
            Backend::Memory(m) => m.get(tree, key).map(|v| v.to_vec()),
        })
    }

    /// Writes raw entries into `tree` outside any transaction (restore only:
    /// the store is new and nothing else uses it).
    fn load(&self, tree: usize, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        let _writing = self.durability.writing();
        for chunk in entries.chunks(BATCH) {
            match &self.backend {
                Backend::Sled(s) => {
                    let mut batch = sled::Batch::default();
                    for (k, v) in chunk {
                        batch.insert(k.as_slice(), v.as_slice());
                    }
                    s.trees[tree].apply_batch(batch)?;
                }
                Backend::Memory(m) => {
                    for (k, v) in chunk {
                        m.insert(tree, k, sled::IVec::from(v.as_slice()));
                    }
                }
            }
            self.durability.counted();
        }
        Ok(())
    }
}

/// `copied` (in key order) with the values `fresh` (in key order) read
/// later: a key's fresh value replaces its copy, a fresh absence removes it.
fn patched(copied: Entries, fresh: Fresh) -> Entries {
    let mut out = Vec::with_capacity(copied.len() + fresh.len());
    let mut fresh = fresh.into_iter().peekable();
    for (k, v) in copied {
        while let Some((fk, fv)) = fresh.next_if(|(fk, _)| *fk < k) {
            out.extend(fv.map(|v| (fk, v)));
        }
        match fresh.next_if(|(fk, _)| *fk == k) {
            Some((_, fv)) => out.extend(fv.map(|v| (k, v))),
            None => out.push((k, v)),
        }
    }
    out.extend(fresh.filter_map(|(k, v)| v.map(|v| (k, v))));
    out
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(
        &u32::try_from(b.len())
            .expect("entry under 4 GiB")
            .to_be_bytes(),
    );
    out.extend_from_slice(b);
}

/// The backup file of `cut`, taken on `node_id` at `taken_at`.
#[must_use]
pub fn encode(cut: &Cut, node_id: &str, taken_at: DateTime<Utc>) -> Vec<u8> {
    let mut body = Vec::new();
    let mut entries = 0u64;
    for (name, kv) in &cut.trees {
        let kept: Vec<_> = kv.iter().filter(|(k, _)| !store_local(name, k)).collect();
        body.push(u8::try_from(name.len()).expect("tree names are short"));
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&(kept.len() as u64).to_be_bytes());
        for (k, v) in kept {
            put_bytes(&mut body, k);
            put_bytes(&mut body, v);
            entries += 1;
        }
    }
    let header = BackupHeader {
        node_id: node_id.to_owned(),
        taken_at,
        commit: cut.commit,
        schema: SCHEMA_VERSION,
        entries,
        body_bytes: body.len() as u64,
    };
    let header = serde_json::to_vec(&header).expect("header serializes");
    let mut out = Vec::with_capacity(PREAMBLE_LEN + header.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(header.len())
            .expect("small header")
            .to_be_bytes(),
    );
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Reads a body field by field; running out is damage (the length was checked).
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], SnapshotError> {
        if self.rest.len() < n {
            return Err(SnapshotError::Damaged(format!(
                "its body ends inside {what}"
            )));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
    fn u64(&mut self, what: &str) -> Result<u64, SnapshotError> {
        Ok(u64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self, what: &str) -> Result<&'a [u8], SnapshotError> {
        let n = u32::from_be_bytes(self.take(4, what)?.try_into().expect("4 bytes"));
        self.take(n as usize, what)
    }
}

/// Checks `file` whole (magic, version, length, checksum, layout) and
/// returns what it holds.
///
/// # Errors
/// [`SnapshotError::Foreign`] for a file that is no keyfed backup,
/// [`SnapshotError::Version`] for another format version,
/// [`SnapshotError::Truncated`] for one cut short and
/// [`SnapshotError::Damaged`] for one whose checksum or layout is wrong.
pub fn decode(file: &[u8]) -> Result<Snapshot, SnapshotError> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        let what = if file.is_empty() {
            "the file is empty".to_owned()
        } else if looks_like_text(file) {
            "it is a text file (a key file or certificate?), not the file `keyfed backup` writes"
                .into()
        } else {
            "it does not start with the keyfed backup magic bytes".into()
        };
        return Err(SnapshotError::Foreign(what));
    }
    let len = file.len() as u64;
    let truncated = |expected: u64| SnapshotError::Truncated { len, expected };
    if file.len() < PREAMBLE_LEN {
        return Err(truncated(PREAMBLE_LEN as u64));
    }
    let version = u16::from_be_bytes([file[8], file[9]]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let header_len = u32::from_be_bytes(file[10..14].try_into().expect("4 bytes")) as usize;
    if header_len > MAX_HEADER {
        return Err(SnapshotError::Damaged(format!(
            "its header length reads {header_len} bytes"
        )));
    }
    let body_at = PREAMBLE_LEN + header_len;
    if file.len() < body_at {
        return Err(truncated(body_at as u64));
    }
    let header: BackupHeader = serde_json::from_slice(&file[PREAMBLE_LEN..body_at])
        .map_err(|e| SnapshotError::Damaged(format!("its header does not read: {e}")))?;
    let expected = (body_at as u64)
        .saturating_add(header.body_bytes)
        .saturating_add(DIGEST_LEN as u64);
    if len < expected {
        return Err(truncated(expected));
    }
    if len > expected {
        return Err(SnapshotError::Damaged(format!(
            "it has {} bytes after its end (it is {len} bytes, its header says {expected})",
            len - expected
        )));
    }
    let (content, digest) = file.split_at(file.len() - DIGEST_LEN);
    let actual = Sha256::digest(content);
    if actual.as_slice() != digest {
        return Err(SnapshotError::Damaged(format!(
            "its SHA-256 checksum does not match (the file says {}, its content is {})",
            hex(digest),
            hex(&actual)
        )));
    }
    // the checksum holds: what follows reads a file keyfed wrote
    let mut r = Reader {
        rest: &content[body_at..],
    };
    let mut trees = BTreeMap::new();
    let mut entries = 0u64;
    while !r.rest.is_empty() {
        let n = r.take(1, "a tree name")?[0] as usize;
        let name = std::str::from_utf8(r.take(n, "a tree name")?)
            .map_err(|_| SnapshotError::Damaged("a tree name is not UTF-8".into()))?
            .to_owned();
        if !TREES.contains(&name.as_str()) {
            return Err(SnapshotError::Damaged(format!(
                "it holds a tree `{name}` this build does not know"
            )));
        }
        let count = r.u64("an entry count")?;
        let mut kv = Vec::new();
        for _ in 0..count {
            let k = r.bytes("a key")?.to_vec();
            let v = r.bytes("a value")?.to_vec();
            if !store_local(&name, &k) {
                kv.push((k, v));
            }
            entries += 1;
        }
        trees.insert(name, kv);
    }
    if entries != header.entries {
        return Err(SnapshotError::Damaged(format!(
            "it holds {entries} entries, its header says {}",
            header.entries
        )));
    }
    if header.schema != SCHEMA_VERSION {
        return Err(SnapshotError::Schema {
            found: header.schema,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(Snapshot { header, trees })
}

/// Whether a file starts like text (a key file, a PEM file, a config).
fn looks_like_text(file: &[u8]) -> bool {
    let head = &file[..file.len().min(64)];
    std::str::from_utf8(head).is_ok_and(|s| {
        s.chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What [`restore_into`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub store: PathBuf,
    pub entries: usize,
}

/// Makes the data directory `data_dir` from `snap`: a new store at
/// `data_dir/store`, every entry written, synced through the store's own
/// sync path (so its high-water mark `store.acked` matches it) and opened
/// again as a node opens it. The store is built in a directory beside
/// `data_dir` and renamed into place, so a failure leaves `data_dir` as it
/// was (absent or empty).
///
/// # Errors
/// [`SnapshotError::NotEmpty`] if `data_dir` holds anything; I/O and store
/// errors otherwise.
pub fn restore_into(snap: &Snapshot, data_dir: &Path) -> Result<Restored, SnapshotError> {
    let existed = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SnapshotError::NotEmpty(data_dir.to_owned()));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(SnapshotError::NotEmpty(data_dir.to_owned()))
        }
        Err(e) => return Err(io("reading the data directory", data_dir)(e)),
    };
    let name = data_dir
        .file_name()
        .ok_or_else(|| SnapshotError::Io {
            what: "restoring into",
            path: data_dir.to_owned(),
            why: "the data directory needs a name (not `/` or `..`)".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io("creating the directory", &parent))?;
    let staging = parent.join(format!(".{name}.restoring-{}", std::process::id()));
    std::fs::create_dir(&staging).map_err(io("creating the staging directory", &staging))?;
    let built = build(snap, &staging).and_then(|entries| {
        if existed {
            std::fs::remove_dir(data_dir).map_err(io("replacing the empty directory", data_dir))?;
        }
        std::fs::rename(&staging, data_dir)
            .map_err(io("moving the restored store to", data_dir))?;
        std::fs::File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory", &parent))?;
        Ok(entries)
    });
    match built {
        Ok(entries) => Ok(Restored {
            store: store_dir(data_dir),
            entries,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            if existed && !data_dir.exists() {
                let _ = std::fs::create_dir(data_dir);
            }
            Err(e)
        }
    }
}

/// The store of `snap` in the data directory `dir`, checked by opening it again.
fn build(snap: &Snapshot, dir: &Path) -> Result<usize, SnapshotError> {
    // the schema marker is the new store's own (the header's was checked)
    let ledger =
        |tree: &str, k: &[u8]| !(store_local(tree, k) || (tree == TREES[META] && k == b"schema"));
    let path = store_dir(dir);
    let mut want = 0;
    {
        let store = Store::open(&path)?;
        for (name, kv) in &snap.trees {
            let tree = TREES.iter().position(|t| t == name).ok_or_else(|| {
                SnapshotError::Damaged(format!("it holds a tree `{name}` this build does not know"))
            })?;
            let kv: Vec<_> = kv
                .iter()
                .filter(|(k, _)| ledger(name, k))
                .cloned()
                .collect();
            want += kv.len();
            store.load(tree, &kv)?;
        }
        store.flush()?;
    }
    // opened as the node opens it: every value read, the mark compared
    let store = Store::open(&path)?;
    let found: usize = store
        .dump()?
        .iter()
        .map(|(t, kv)| kv.iter().filter(|(k, _)| ledger(t, k)).count())
        .sum();
    if found != want {
        return Err(SnapshotError::Damaged(format!(
            "the restored store holds {found} entries, the backup {want}"
        )));
    }
    Ok(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreError};

    fn at() -> DateTime<Utc> {
        "2026-12-02T12:00:00Z".parse().unwrap()
    }

    /// A sled store with entries in several trees, and a store epoch.
    fn filled(dir: &Path) -> Store {
        let store = Store::open(dir).unwrap();
        for i in 0..50 {
            store
                .transact(|tx| {
                    tx.put_claim::<StoreError>(&format!("k-{i}"), "fp", "peer")?;
                    tx.notify::<StoreError>(
                        at(),
                        "key-added",
                        &format!("k-{i}"),
                        "m".into(),
                        BTreeMap::new(),
                    )?;
                    tx.put_meta::<StoreError>(&format!("flag:{i}"), "v")
                })
                .unwrap();
        }
        store
            .set_meta("store-epoch", "epoch-of-the-source")
            .unwrap();
        store.flush().unwrap();
        store
    }

    /// The ledger entries of a dump: without what a store keeps for itself.
    fn ledger(d: &StoreDump) -> BTreeMap<String, Entries> {
        d.iter()
            .map(|(t, kv)| {
                let kv = kv
                    .iter()
                    .filter(|(k, _)| !store_local(t, k))
                    .cloned()
                    .collect();
                ((*t).to_owned(), kv)
            })
            .collect()
    }

    fn backup(store: &Store) -> Vec<u8> {
        encode(&store.cut().unwrap(), "main", at())
    }

    #[test]
    fn r13_a_backup_round_trips_and_restores_into_a_store_that_opens_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(&dir.path().join("src"));
        let cut = store.cut().unwrap();
        let file = encode(&cut, "main", at());
        let snap = decode(&file).unwrap();
        assert_eq!(snap.header.node_id, "main");
        assert_eq!(snap.header.taken_at, at());
        assert_eq!(snap.header.commit, store.committed());
        assert_eq!(snap.trees, ledger(&cut.trees));

        let data = dir.path().join("restored");
        let done = restore_into(&snap, &data).unwrap();
        assert_eq!(done.store, data.join("store"));
        drop(store);
        // opens as a node opens it (mark and ledger agree), with the same ledger
        let restored = Store::open(&data.join("store")).unwrap();
        assert_eq!(ledger(&restored.dump().unwrap()), snap.trees);
        let mark = durability::read_mark(&durability::mark_path(&data.join("store"))).unwrap();
        assert!(
            mark.is_some(),
            "the restore synced through the store's sync path"
        );
        // and takes new commits like any store
        restored.set_meta("after", "x").unwrap();
        restored.flush().unwrap();
        drop(restored);
        Store::open(&data.join("store")).unwrap();
        // nothing left beside it
        let beside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside.len(), 3, "src, src.acked, restored: {beside:?}");
    }

    #[test]
    fn the_store_epoch_is_not_carried_across_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(&dir.path().join("src"));
        let file = backup(&store);
        let snap = decode(&file).unwrap();
        let meta = &snap.trees["meta"];
        assert!(
            meta.iter().all(|(k, _)| k != STORE_EPOCH_META),
            "not written"
        );
        assert!(meta.iter().any(|(k, _)| k == b"flag:7"));
        // a file that carries one anyway (another writer) is not restored with it
        let mut planted = snap.clone();
        planted.trees.get_mut("meta").unwrap().push((
            STORE_EPOCH_META.to_vec(),
            crate::records::encode(&"planted"),
        ));
        let data = dir.path().join("restored");
        restore_into(&planted, &data).unwrap();
        let restored = Store::open(&data.join("store")).unwrap();
        assert_ne!(
            restored.meta("store-epoch").unwrap().as_deref(),
            Some("planted")
        );
        assert_ne!(
            restored.meta("store-epoch").unwrap().as_deref(),
            Some("epoch-of-the-source")
        );
    }

    #[test]
    fn a_patch_replaces_inserts_and_removes_in_key_order() {
        let e = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        let f =
            |k: &str, v: Option<&str>| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()));
        let copied = vec![e("b", "1"), e("d", "1"), e("f", "1")];
        let fresh = vec![
            f("a", Some("2")),
            f("b", None),
            f("c", None),
            f("d", Some("2")),
            f("g", Some("2")),
        ];
        assert_eq!(
            patched(copied, fresh),
            vec![e("a", "2"), e("d", "2"), e("f", "1"), e("g", "2")]
        );
    }

    #[test]
    fn a_flipped_byte_a_truncation_or_a_foreign_file_is_refused_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let file = backup(&filled(&dir.path().join("src")));
        // one byte of the body
        let mut flipped = file.clone();
        let i = file.len() / 2;
        flipped[i] ^= 0x01;
        let e = decode(&flipped).unwrap_err();
        assert!(matches!(e, SnapshotError::Damaged(_)), "{e}");
        assert!(
            e.to_string().contains("SHA-256 checksum does not match"),
            "{e}"
        );
        // the checksum itself
        let mut last = file.clone();
        *last.last_mut().unwrap() ^= 0x80;
        assert!(matches!(decode(&last), Err(SnapshotError::Damaged(_))));
        // cut short, anywhere
        for len in [file.len() - 1, file.len() / 2, 20, 12] {
            let e = decode(&file[..len]).unwrap_err();
            assert!(
                matches!(
                    e,
                    SnapshotError::Truncated { .. } | SnapshotError::Damaged(_)
                ),
                "{len}: {e}"
            );
        }
        let e = decode(&file[..file.len() - 10]).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // not a backup at all
        for foreign in [
            &b"format: keyfed-key/1\nid: k-123\nsignature: abcdef\n"[..],
            &b"-----BEGIN CERTIFICATE-----\nMIIB\n"[..],
            &[0x13, 0x37, 0xfe, 0x00, 0x42, 0x99, 0x01, 0x02, 0x03][..],
            &[][..],
        ] {
            let e = decode(foreign).unwrap_err();
            assert!(e.to_string().starts_with("not a keyfed backup"), "{e}");
        }
        // a later format
        let mut newer = file.clone();
        newer[9] = 2;
        let e = decode(&newer).unwrap_err();
        assert!(matches!(e, SnapshotError::Version { found: 2, .. }), "{e}");
    }

    #[test]
    fn restore_refuses_a_data_directory_that_holds_anything_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let snap = decode(&backup(&filled(&dir.path().join("src")))).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("notes.txt"), "mine").unwrap();
        let e = restore_into(&snap, &data).unwrap_err();
        assert!(matches!(e, SnapshotError::NotEmpty(_)), "{e}");
        assert!(e.to_string().contains("not empty"), "{e}");
        let left: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
        assert_eq!(left.len(), 1);
        // an empty directory is fine
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        restore_into(&snap, &empty).unwrap();
        Store::open(&empty.join("store")).unwrap();
    }

    #[test]
    fn a_cut_holds_whole_transactions_while_writers_run() {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let written = std::sync::Arc::new(AtomicU32::new(0));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, written, stop) = (store.clone(), written.clone(), stop.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    // two trees in one transaction: a cut sees both or neither
                    store
                        .transact(|tx| {
                            tx.put_meta::<StoreError>(&format!("a:{i:06}"), "v")?;
                            tx.put_claim::<StoreError>(&format!("k-{i:06}"), "fp", "p")?;
                            if i % 3 == 2 {
                                tx.remove_meta::<StoreError>(&format!("a:{:06}", i - 2))?;
                                tx.remove_claim::<StoreError>(&format!("k-{:06}", i - 2), "fp")?;
                            }
                            Ok(())
                        })
                        .unwrap();
                    written.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let mut cuts = 0;
        while cuts < 40 || written.load(Ordering::SeqCst) < 500 {
            let cut = store.cut().unwrap();
            let metas = cut.trees["meta"]
                .iter()
                .filter(|(k, _)| k.starts_with(b"a:"))
                .count();
            let claims = cut.trees["claims"].len();
            assert_eq!(metas, claims, "a cut split a transaction");
            cuts += 1;
        }
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
    }
}
