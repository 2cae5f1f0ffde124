//! b01/r13: lent seats whose period ended, on both sides, as
//! `keyfed_core::donation` decides. The borrower holds nothing of a lending
//! that lapsed by its clock (on arrival, or at its tick) and gives it back
//! by message, naming the period; the lender frees exactly that lending on
//! receipt (`give_back_frees`), so the seats come back at once instead of at
//! the lender's own tick, and are never counted on both sides.
//!
//! The lender does not hand out a lending that lapsed by its own clock (a
//! waiting neighbor's stored period, a renewal moving a lapsed lending): it
//! keeps the seats (`before_send`). A grant already queued in the outbox
//! when its period ends is not recalled: the outbox is one ordered,
//! acknowledged stream. The lender's tick takes it back, and the borrower
//! gives it back on arrival.
use crate::engine::{given_back, withdrawn, Effects};
use crate::error::EngineError;
use chrono::{DateTime, Utc};
use keyfed_core::event::EventKind;
use keyfed_store::{Grant, ObjectKind, Tx};

type Tr<T> = keyfed_store::TxResult<T, EngineError>;

/// A lending that lapsed at this node, the borrower.
pub(crate) struct Lapsed<'a> {
    /// The neighbor that lent the seats.
    pub lender: &'a str,
    pub key_id: &'a str,
    /// The end of the period, as the lender sent it.
    pub until: DateTime<Utc>,
    /// Whether this node holds the key (from `lender`) and so drops it.
    pub held: bool,
    /// What this node granted of the key (re-read here).
    pub grants: &'a [Grant],
    pub why: String,
}

/// The borrower's side: the key goes with everything this node granted of
/// it, and the lending goes back to the lender, in one transaction.
pub(crate) fn borrowed_lapsed_tx(
    tx: &Tx<'_>,
    fx: &mut Effects,
    l: &Lapsed<'_>,
    now: DateTime<Utc>,
) -> Tr<()> {
    let id = l.key_id;
    if l.held {
        for g in l.grants {
            if tx.remove_grant::<EngineError>(id, &g.object)?.is_some()
                && g.kind == ObjectKind::Server
            {
                let why = "the lender's period ended".to_owned();
                fx.send(tx, &g.object, now, id, withdrawn(id, why))?;
            }
        }
        tx.remove_key::<EngineError>(id)?;
    }
    let back = format!(
        "the lending ended at {}: {}",
        crate::time::ts(l.until),
        l.why
    );
    fx.send(tx, l.lender, now, id, given_back(id, back, l.until))?;
    fx.notify(
        tx,
        now,
        EventKind::DonationLapsed,
        id,
        format!(
            "seats of key {id} lent by {} lapsed ({}) and were given back",
            l.lender, l.why
        ),
        &[("from", l.lender.to_owned())],
    )
}
