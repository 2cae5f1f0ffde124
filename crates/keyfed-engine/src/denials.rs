//! Denials (issue 12): every refused station connection and assignment is
//! recorded with its stable reason (`keyfed_core::denial`), in the
//! transaction of the refusal's other effects where it has any.
use crate::engine::Engine;
use crate::error::EngineError;
use chrono::{DateTime, Utc};
use keyfed_core::denial::{DenialKind, DenialReason};
use keyfed_core::seats::SeatError;
use keyfed_store::{NewDenial, Tx, TxResult};

/// A refusal as the engine decided it: why, of which key, and the words
/// the caller is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DenialReason,
    pub key_id: String,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: DenialReason, key_id: &str, message: String) -> Self {
        Self {
            reason,
            key_id: key_id.to_owned(),
            message,
        }
    }
}

impl Engine {
    fn denial(&self, kind: DenialKind, object: &str, r: &Refusal, at: DateTime<Utc>) -> NewDenial {
        NewDenial {
            at,
            kind,
            object: object.to_owned(),
            key_id: r.key_id.clone(),
            node_id: self.id().to_owned(),
            reason: r.reason,
            message: r.message.clone(),
        }
    }

    /// Records a refusal inside the transaction that made it.
    pub(crate) fn deny_tx(
        &self,
        tx: &Tx<'_>,
        kind: DenialKind,
        object: &str,
        r: &Refusal,
        at: DateTime<Utc>,
    ) -> TxResult<(), EngineError> {
        tx.record_denial::<EngineError>(
            self.denial(kind, object, r, at),
            self.config.denials.keep,
        )?;
        Ok(())
    }

    /// Admin.AssignSeats refused: the refusal changed nothing, so it is
    /// recorded in a write of its own, durable before the refusal is
    /// answered like every other write. A failure to record it is logged,
    /// never put in place of the refusal itself.
    pub(crate) async fn deny_assignment(
        &self,
        key_id: &str,
        object: &str,
        e: &EngineError,
        at: DateTime<Utc>,
    ) {
        let Some(reason) = assignment_reason(e) else {
            return;
        };
        let r = Refusal {
            reason,
            key_id: key_id.to_owned(),
            message: e.to_string(),
        };
        let d = self.denial(DenialKind::Assignment, object, &r, at);
        let recorded = match self.store.record_denial(d, self.config.denials.keep) {
            Ok(_) => self.durable().await.map(|_| ()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = recorded {
            tracing::warn!(node = %self.id(), error = %e, "refused assignment not recorded");
        }
    }
}

/// The reason an assignment error is a refusal, if it is one; malformed
/// requests (bad names, zero seats) and store failures are not.
#[must_use]
pub fn assignment_reason(e: &EngineError) -> Option<DenialReason> {
    Some(match e {
        EngineError::Seat(SeatError::NotEnough { .. }) => DenialReason::NoFreeSeats,
        EngineError::NotFound { what: "key", .. } => DenialReason::UnknownKey,
        EngineError::ReadOnly { state, .. } if *state == "suspended" => DenialReason::KeySuspended,
        EngineError::ReadOnly { .. } => DenialReason::KeyExpired,
        EngineError::Refused { reason, .. } => *reason,
        _ => return None,
    })
}
