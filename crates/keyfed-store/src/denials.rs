//! The denial log (issue 12): refused station connections and assignments,
//! keyed by sequence, bounded by `keyfed_core::denial::admit`, with a
//! durable count of what was dropped and of every reason ever recorded.
use crate::{Store, StoreError, Tx, TxResult, DENIALS, META};
use chrono::{DateTime, Utc};
use keyfed_core::denial::{admit, DenialKind, DenialLog, DenialReason};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the log stands (a [`DenialLog`] as JSON) in the meta tree.
const LOG_META: &str = "denial_log";
/// Prefix of the per-reason totals in the meta tree.
const REASON_META: &str = "denials_by_reason:";

/// One refusal as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialRecord {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub kind: DenialKind,
    /// A station fingerprint, or the object or peer an assignment was for.
    pub object: String,
    /// Empty when no key was involved (none covered the station).
    pub key_id: String,
    /// The node that refused.
    pub node_id: String,
    pub reason: DenialReason,
    pub message: String,
}

/// A refusal to record; the log gives it its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDenial {
    pub at: DateTime<Utc>,
    pub kind: DenialKind,
    pub object: String,
    pub key_id: String,
    pub node_id: String,
    pub reason: DenialReason,
    pub message: String,
}

impl Tx<'_> {
    /// Keeps one refusal, drops the oldest beyond `keep` (counted) and
    /// counts its reason, all in this transaction.
    pub fn record_denial<E: From<StoreError>>(
        &self,
        d: NewDenial,
        keep: u64,
    ) -> TxResult<DenialRecord, E> {
        let log: DenialLog = self.read(META, LOG_META.as_bytes())?.unwrap_or_default();
        let step = admit(log, keep);
        for seq in step.drop.clone() {
            self.remove(DENIALS, &seq.to_be_bytes())?;
        }
        let r = DenialRecord {
            seq: step.seq,
            at: d.at,
            kind: d.kind,
            object: d.object,
            key_id: d.key_id,
            node_id: d.node_id,
            reason: d.reason,
            message: d.message,
        };
        self.write(DENIALS, &r.seq.to_be_bytes(), &r)?;
        self.write(META, LOG_META.as_bytes(), &step.log)?;
        let name = format!("{REASON_META}{}", r.reason.as_str());
        let n: u64 = self.read(META, name.as_bytes())?.unwrap_or(0);
        self.write(META, name.as_bytes(), &(n + 1))?;
        Ok(r)
    }
}

/// A `keep` of zero would keep nothing; refused where it is configured.
pub fn check_keep(keep: u64) -> Result<(), String> {
    if keep == 0 {
        return Err("[denials] keep must be at least 1".into());
    }
    Ok(())
}

impl Store {
    /// Kept denials after `after_seq`, oldest first, at most `limit`, only
    /// of `reason` if given (the log is bounded, so a filtered read is too).
    pub fn denials_after(
        &self,
        after_seq: u64,
        limit: usize,
        reason: Option<DenialReason>,
    ) -> Result<Vec<DenialRecord>, StoreError> {
        let from = after_seq.saturating_add(1).to_be_bytes();
        let Some(reason) = reason else {
            return self.range(DENIALS, &from, None, limit);
        };
        let mut out = Vec::new();
        let mut next = from;
        loop {
            let chunk: Vec<DenialRecord> = self.range(DENIALS, &next, None, 1024)?;
            let Some(last) = chunk.last().map(|d| d.seq) else {
                return Ok(out);
            };
            out.extend(chunk.into_iter().filter(|d| d.reason == reason));
            if out.len() >= limit {
                out.truncate(limit);
                return Ok(out);
            }
            next = last.saturating_add(1).to_be_bytes();
        }
    }

    /// Where the log stands (numbers kept, dropped).
    pub fn denial_log(&self) -> Result<DenialLog, StoreError> {
        Ok(self.get(META, LOG_META.as_bytes())?.unwrap_or_default())
    }

    /// Every denial ever recorded here, by reason (dropped ones too).
    pub fn denial_counts(&self) -> Result<BTreeMap<DenialReason, u64>, StoreError> {
        let mut out = BTreeMap::new();
        for r in DenialReason::ALL {
            let name = format!("{REASON_META}{}", r.as_str());
            if let Some(n) = self.get::<u64>(META, name.as_bytes())? {
                out.insert(r, n);
            }
        }
        Ok(out)
    }

    /// Records one refusal in a transaction of its own (an assignment that
    /// was refused changed nothing else).
    pub fn record_denial(&self, d: NewDenial, keep: u64) -> Result<DenialRecord, StoreError> {
        self.transact(|tx| tx.record_denial::<StoreError>(d.clone(), keep))
    }
}
