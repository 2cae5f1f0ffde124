//! The audit trail (b06): one durable record per mutating Admin call,
//! accepted or refused, saying who, what, about which object, and how it
//! ended. Details name keys and objects, never secrets or key files.
use crate::convert::ts;
use crate::error::NodeError;
use crate::node::Node;
use keyfed_proto::v1 as pb;
use prost::Message;
use sha2::Digest;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::Status;

const DEFAULT_LIMIT: usize = 1000;
const MAX_FIELD: usize = 120;

/// Writes one record and waits until it is on disk. A failure is logged:
/// the call it describes has already happened.
pub async fn record(node: &Node, actor: &str, action: &str, detail: &str, outcome: &str) {
    match node
        .engine
        .record_audit(actor, action, detail, outcome)
        .await
    {
        Ok(()) => {
            tracing::info!(node = %node.id(), %actor, %action, %detail, %outcome, "audit");
        }
        Err(e) => {
            tracing::error!(node = %node.id(), %actor, %action, %outcome, error = %e, "audit record not written");
        }
    }
}

/// Admin.ListAudit.
pub fn list(node: &Node, r: &pb::ListAuditRequest) -> Result<pb::AuditList, NodeError> {
    let limit = match r.limit {
        0 => DEFAULT_LIMIT,
        n => usize::try_from(n).unwrap_or(DEFAULT_LIMIT),
    };
    let entries = node
        .engine
        .store()
        .audit_after(r.after_seq, limit)?
        .into_iter()
        .map(|a| pb::AuditEntry {
            at: ts(a.at),
            actor: a.actor,
            action: a.action,
            detail: a.detail,
            seq: a.seq,
            outcome: a.outcome,
        })
        .collect();
    Ok(pb::AuditList { entries })
}

/// Reads a unary request body (bounded by the node's message limit) and
/// gives it back intact, with a short description for the audit trail.
pub async fn read_request(rpc: &str, body: Body) -> Result<(Body, String), Status> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(body, crate::MAX_MESSAGE_BYTES + 5);
    let bytes: Bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Status::resource_exhausted(format!(
                "{rpc}: the request is larger than {} bytes",
                crate::MAX_MESSAGE_BYTES
            )))
        }
        Err(e) => {
            return Err(Status::cancelled(format!(
                "{rpc}: reading the request: {e}"
            )))
        }
    };
    // gRPC frame: compressed flag, 4-byte length, message
    let detail = match bytes.split_first() {
        Some((0, rest)) if rest.len() >= 4 => detail(rpc, &rest[4..]),
        Some((1, _)) => "(compressed request)".into(),
        _ => String::new(),
    };
    Ok((Body::new(http_body_util::Full::new(bytes)), detail))
}

/// Printable, one line, bounded: a field as it goes in the trail.
fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_FIELD)
        .collect();
    if s.chars().count() > MAX_FIELD {
        out.push('…');
    }
    out
}

fn short_hash(s: &str) -> String {
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..4])
}

/// What a mutating call was about. Key files, settings and telemetry files
/// are described by their id or size and hash, never copied.
fn detail(rpc: &str, msg: &[u8]) -> String {
    fn d<M: Message + Default>(msg: &[u8]) -> Option<M> {
        M::decode(msg).ok()
    }
    let field_of = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| clean(v.trim()))
            .unwrap_or_default()
    };
    let s = match rpc {
        "AddKey" => d::<pb::AddKeyRequest>(msg).map(|r| {
            let mut s = format!("key {}", field_of(&r.key_file, "id:"));
            if !r.activation.is_empty() {
                s.push_str(&format!(" activation {}", clean(&r.activation)));
            }
            s
        }),
        "DeleteKey" | "ExtendTrial" => d::<pb::KeyId>(msg).map(|r| format!("key {}", clean(&r.id))),
        "AssignSeats" => d::<pb::AssignSeatsRequest>(msg).map(|r| {
            format!(
                "key {} object {} seats {}",
                clean(&r.key_id),
                clean(&r.object),
                r.seats
            )
        }),
        "UnassignSeats" => d::<pb::UnassignSeatsRequest>(msg)
            .map(|r| format!("key {} object {}", clean(&r.key_id), clean(&r.object))),
        "CheckForUpdates" => d::<pb::CheckForUpdatesRequest>(msg).map(|r| {
            if r.key_id.is_empty() {
                "every upstream key".into()
            } else {
                format!("key {}", clean(&r.key_id))
            }
        }),
        "QueueCommand" => d::<pb::QueueCommandRequest>(msg)
            .map(|r| format!("object {} command {}", clean(&r.object), clean(&r.command))),
        "ShareSubscription" => d::<pb::ShareSubscriptionRequest>(msg).map(|r| {
            if r.r#move {
                format!("key {} moved to {}", clean(&r.key_id), clean(&r.tenant))
            } else {
                format!(
                    "key {} tenant {} seats {}",
                    clean(&r.key_id),
                    clean(&r.tenant),
                    r.seats
                )
            }
        }),
        // settings may hold credentials for the agents: size and hash only
        "SetSettings" => d::<pb::StationSettings>(msg).map(|r| {
            format!(
                "settings {} bytes sha256:{}",
                r.settings.len(),
                short_hash(&r.settings)
            )
        }),
        "UploadTelemetry" => d::<pb::TelemetryFile>(msg).map(|r| {
            format!(
                "report {} of node {}",
                field_of(&r.text, "report:"),
                field_of(&r.text, "node:")
            )
        }),
        "AdvanceClock" => {
            d::<pb::AdvanceClockRequest>(msg).map(|r| format!("seconds {}", r.seconds))
        }
        _ => None,
    };
    s.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b06_details_name_the_key_but_never_copy_the_key_file_or_settings() {
        let add = pb::AddKeyRequest {
            key_file: "format: keyfed-key/1\nid: k-123\nsignature: abcdef\n".into(),
            activation: String::new(),
        }
        .encode_to_vec();
        let s = detail("AddKey", &add);
        assert_eq!(s, "key k-123");
        let set = pb::StationSettings {
            settings: "password = hunter2".into(),
            version: 0,
        }
        .encode_to_vec();
        let s = detail("SetSettings", &set);
        assert!(
            s.starts_with("settings 18 bytes sha256:") && !s.contains("hunter2"),
            "{s}"
        );
        let long = "x".repeat(500);
        assert!(clean(&long).chars().count() <= MAX_FIELD + 1);
        assert_eq!(clean("a\nb"), "a b");
    }
}
