//! Secondary indexes of the station records (issue 12), so a page of
//! `ListStations` is a range scan of about one page, at any size.
//!
//! One tree, `station_index`, sections by a leading tag byte:
//! `i` station id + fingerprint, `t` tenant + fingerprint, `k` key id +
//! fingerprint (stations holding a seat of the key), `r` retired
//! fingerprints, `u` unlicensed fingerprints (not retired, no seat), `h`
//! seats a fingerprint holds, `#` counters. Each is written in the same
//! transaction as the station record or station grant it follows, and only
//! when the indexed field changed, so a plain renewal touches none.
use crate::{
    records, Backend, Grant, ObjectKind, StationRecord, Store, StoreError, Tx, TxResult, GRANTS,
    META, STATIONS, STATION_INDEX,
};

/// Set once the index holds every station of this store (built at open
/// for a store written before it existed).
pub(crate) const BUILT_META: &str = "station_index_v1";

const STATION_ID: u8 = b'i';
const TENANT: u8 = b't';
const KEY: u8 = b'k';
const RETIRED: u8 = b'r';
const UNLICENSED: u8 = b'u';
const HOLDS: u8 = b'h';
const COUNTER: u8 = b'#';

/// What a page walks, in the order of its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StationScan<'a> {
    /// Stations whose fingerprint starts with this ("" : every station).
    Fingerprint(&'a str),
    StationId(&'a str),
    Tenant(&'a str),
    /// Stations holding a seat of this key.
    Key(&'a str),
    /// Stations holding a seat of any key, by key id then fingerprint.
    Holders,
    Retired,
    Unlicensed,
}

/// One entry a page walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexHit {
    /// Opaque: give it back as `after` to go on behind this entry.
    pub position: Vec<u8>,
    pub fingerprint: String,
    /// The key of a `Key` or `Holders` walk.
    pub key_id: Option<String>,
}

/// The position behind every holder of `key_id` in a `Holders` walk, to
/// skip the key (fingerprints are UTF-8, so never hold the byte 0xff).
#[must_use]
pub fn past_key(key_id: &str) -> Vec<u8> {
    entry(KEY, key_id, "").into_iter().chain([0xff]).collect()
}

/// Station counts kept beside the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StationTotals {
    pub all: u64,
    pub retired: u64,
    pub unlicensed: u64,
}

fn section(tag: u8, field: &str) -> Vec<u8> {
    let mut k = vec![tag, 0];
    k.extend_from_slice(field.as_bytes());
    k
}

fn entry(tag: u8, field: &str, fp: &str) -> Vec<u8> {
    let mut k = section(tag, field);
    k.push(0);
    k.extend_from_slice(fp.as_bytes());
    k
}

fn counter(name: &str) -> Vec<u8> {
    section(COUNTER, name)
}

fn key_counter(key_id: &str) -> Vec<u8> {
    entry(COUNTER, "key", key_id)
}

impl Tx<'_> {
    fn index_set<E>(&self, k: &[u8], on: bool) -> TxResult<(), E> {
        if on {
            self.insert(STATION_INDEX, k, records::encode(&()))?;
        } else {
            self.remove(STATION_INDEX, k)?;
        }
        Ok(())
    }

    fn index_count<E: From<StoreError>>(&self, k: &[u8], delta: i64) -> TxResult<u64, E> {
        let n: u64 = self.read(STATION_INDEX, k)?.unwrap_or(0);
        let n = n.saturating_add_signed(delta);
        self.write(STATION_INDEX, k, &n)?;
        Ok(n)
    }

    /// Keeps the indexes of one station record; `old` is what was stored.
    pub(crate) fn index_station<E: From<StoreError>>(
        &self,
        old: Option<&StationRecord>,
        new: &StationRecord,
    ) -> TxResult<(), E> {
        let fp = &new.fingerprint;
        let field = |s: &StationRecord, f: fn(&StationRecord) -> &str| f(s).to_owned();
        for (tag, f) in [
            (
                STATION_ID,
                (|s: &StationRecord| s.station_id.as_str()) as fn(&_) -> &str,
            ),
            (TENANT, |s: &StationRecord| s.tenant.as_str()),
        ] {
            let was = old.map(|o| field(o, f));
            let now = field(new, f);
            if was.as_deref() == Some(now.as_str()) {
                continue;
            }
            if let Some(was) = was.filter(|w| !w.is_empty()) {
                self.index_set::<E>(&entry(tag, &was, fp), false)?;
            }
            if !now.is_empty() {
                self.index_set::<E>(&entry(tag, &now, fp), true)?;
            }
        }
        let was_retired = old.map(|o| o.retired_at.is_some());
        let retired = new.retired_at.is_some();
        if old.is_none() {
            self.index_count::<E>(&counter("all"), 1)?;
        }
        if was_retired != Some(retired) {
            self.index_set::<E>(&section(RETIRED, fp), retired)?;
            if was_retired.is_some() || retired {
                self.index_count::<E>(&counter("retired"), if retired { 1 } else { -1 })?;
            }
            self.refresh_unlicensed::<E>(fp, Some(retired))?;
        }
        Ok(())
    }

    /// Keeps the indexes of one grant change of a station (`kind` Station).
    pub(crate) fn index_grant<E: From<StoreError>>(
        &self,
        old: Option<&Grant>,
        new: Option<&Grant>,
    ) -> TxResult<(), E> {
        let g = match (old, new) {
            (None, Some(g)) | (Some(g), None) => g,
            _ => return Ok(()),
        };
        if g.kind != ObjectKind::Station {
            return Ok(());
        }
        let delta = if new.is_some() { 1 } else { -1 };
        self.index_set::<E>(&entry(KEY, &g.key_id, &g.object), new.is_some())?;
        self.index_count::<E>(&key_counter(&g.key_id), delta)?;
        let holds = self.index_count::<E>(&section(HOLDS, &g.object), delta)?;
        if holds == 0 {
            self.remove(STATION_INDEX, &section(HOLDS, &g.object))?;
        }
        if holds <= 1 {
            self.refresh_unlicensed::<E>(&g.object, None)?;
        }
        Ok(())
    }

    /// `u` holds the fingerprint exactly while its record is not retired
    /// and it holds no seat.
    fn refresh_unlicensed<E: From<StoreError>>(
        &self,
        fp: &str,
        retired: Option<bool>,
    ) -> TxResult<(), E> {
        let retired = match retired {
            Some(r) => Some(r),
            None => self.station::<E>(fp)?.map(|s| s.retired_at.is_some()),
        };
        let holds: u64 = self.read(STATION_INDEX, &section(HOLDS, fp))?.unwrap_or(0);
        let want = retired == Some(false) && holds == 0;
        let k = section(UNLICENSED, fp);
        let have = self.get(STATION_INDEX, &k)?.is_some();
        if want != have {
            self.index_set::<E>(&k, want)?;
            self.index_count::<E>(&counter("unlicensed"), if want { 1 } else { -1 })?;
        }
        Ok(())
    }
}

impl Store {
    /// Builds the indexes of a store written before they existed, once.
    pub(crate) fn ensure_station_index(&self) -> Result<(), StoreError> {
        if self.get::<String>(META, BUILT_META.as_bytes())?.is_some() {
            return Ok(());
        }
        // a build cut short left no marker: start again from nothing
        for k in self.range_keys(STATION_INDEX, b"", b"", usize::MAX)? {
            self.transact(|tx| {
                tx.remove(STATION_INDEX, &k)?;
                Ok::<_, crate::ConflictableTransactionError<StoreError>>(())
            })?;
        }
        let grants: Vec<Grant> = self.scan(GRANTS, b"")?;
        for chunk in grants.chunks(1000) {
            self.transact(|tx| {
                for g in chunk {
                    tx.index_grant::<StoreError>(None, Some(g))?;
                }
                Ok(())
            })?;
        }
        let stations: Vec<StationRecord> = self.scan(STATIONS, b"")?;
        for chunk in stations.chunks(1000) {
            self.transact(|tx| {
                for s in chunk {
                    tx.index_station::<StoreError>(None, s)?;
                }
                Ok(())
            })?;
        }
        self.set_meta(BUILT_META, "built")
    }

    /// Removes the indexes and their marker, as a store written before them
    /// looked (for tests of the build at open).
    #[doc(hidden)]
    pub fn wipe_station_index_for_tests(&self) -> Result<(), StoreError> {
        let keys = self.range_keys(STATION_INDEX, b"", b"", usize::MAX)?;
        self.transact(|tx| {
            for k in &keys {
                tx.remove(STATION_INDEX, k)?;
            }
            tx.remove_meta::<StoreError>(BUILT_META)
        })
    }

    /// At most `limit` keys of `tree` from `from` on that start with `prefix`.
    fn range_keys(
        &self,
        tree: usize,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.durability.check()?;
        let from = if from < prefix { prefix } else { from };
        match &self.backend {
            Backend::Sled(s) => {
                let mut out = Vec::new();
                for kv in s.trees[tree].range(from..).keys() {
                    let k = kv?;
                    if !k.starts_with(prefix) || out.len() >= limit {
                        break;
                    }
                    out.push(k.to_vec());
                }
                Ok(out)
            }
            Backend::Memory(m) => Ok(m.range_keys(tree, from, prefix, limit)),
        }
    }

    /// Up to `limit` stations of `scan` after position `after` (exclusive),
    /// in index order.
    pub fn station_page(
        &self,
        scan: StationScan<'_>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<IndexHit>, StoreError> {
        let (tree, prefix) = match scan {
            StationScan::Fingerprint(p) => (STATIONS, p.as_bytes().to_vec()),
            StationScan::StationId(p) => (STATION_INDEX, section(STATION_ID, p)),
            StationScan::Tenant(p) => (STATION_INDEX, section(TENANT, p)),
            StationScan::Key(k) => (STATION_INDEX, entry(KEY, k, "")),
            StationScan::Holders => (STATION_INDEX, section(KEY, "")),
            StationScan::Retired => (STATION_INDEX, section(RETIRED, "")),
            StationScan::Unlicensed => (STATION_INDEX, section(UNLICENSED, "")),
        };
        let from = match after {
            // the smallest key after `a`
            Some(a) => [a, &[0]].concat(),
            None => prefix.clone(),
        };
        let keyed = matches!(scan, StationScan::Key(_) | StationScan::Holders);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let keys = self.range_keys(tree, &from, &prefix, limit)?;
        Ok(keys
            .into_iter()
            .map(|k| {
                let (fingerprint, key_id) = if tree == STATIONS {
                    (text(&k), None)
                } else {
                    // tag, NUL, [field, NUL,] fingerprint: names hold no NUL
                    let mut parts = k[2..].rsplitn(2, |b| *b == 0);
                    let fp = text(parts.next().unwrap_or_default());
                    (fp, keyed.then(|| text(parts.next().unwrap_or_default())))
                };
                IndexHit {
                    position: k,
                    fingerprint,
                    key_id,
                }
            })
            .collect())
    }

    pub fn station_totals(&self) -> Result<StationTotals, StoreError> {
        let n = |name: &str| -> Result<u64, StoreError> {
            Ok(self.get(STATION_INDEX, &counter(name))?.unwrap_or(0))
        };
        Ok(StationTotals {
            all: n("all")?,
            retired: n("retired")?,
            unlicensed: n("unlicensed")?,
        })
    }

    /// Stations holding a seat of `key_id`.
    pub fn station_holders(&self, key_id: &str) -> Result<u64, StoreError> {
        Ok(self.get(STATION_INDEX, &key_counter(key_id))?.unwrap_or(0))
    }
}
