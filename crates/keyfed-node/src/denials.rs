//! Admin.ListDenials (issue 12): the node's bounded log of refused station
//! connections and assignments, with what was dropped and every reason's count.
use crate::convert::ts;
use crate::error::NodeError;
use crate::node::Node;
use keyfed_core::denial::DenialReason;
use keyfed_proto::v1 as pb;

/// Denials one call answers at most (and when the request names no limit).
pub const MAX_LIMIT: usize = 1000;

/// Admin.ListDenials: kept denials after `after_seq`, oldest first.
pub fn list(node: &Node, r: &pb::ListDenialsRequest) -> Result<pb::DenialList, NodeError> {
    let reason = match r.reason.as_str() {
        "" => None,
        name => Some(name.parse::<DenialReason>().map_err(|_| {
            NodeError::InvalidArgument(format!(
                "reason {name:?} is not a denial reason; known: {}",
                DenialReason::ALL.map(DenialReason::as_str).join(", ")
            ))
        })?),
    };
    let limit = match r.limit {
        0 => MAX_LIMIT,
        n => usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
    };
    let store = node.engine.store();
    let denials = store
        .denials_after(r.after_seq, limit, reason)?
        .into_iter()
        .map(|d| pb::Denial {
            seq: d.seq,
            at: ts(d.at),
            kind: d.kind.as_str().into(),
            object: d.object,
            key_id: d.key_id,
            node_id: d.node_id,
            reason: d.reason.as_str().into(),
            message: d.message,
        })
        .collect();
    let counts_by_reason = store
        .denial_counts()?
        .into_iter()
        .map(|(r, n)| (r.as_str().to_owned(), n))
        .collect();
    Ok(pb::DenialList {
        denials,
        dropped: store.denial_log()?.dropped,
        counts_by_reason,
    })
}
