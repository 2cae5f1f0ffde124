//! `GET /api/v1/denials` (issue 12): the denial log as JSON, or with
//! `format=csv` as CSV (RFC 4180): the `Denial` fields in proto order,
//! a header row of their names.
use super::{ApiError, Call, Query, Reply};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keyfed_proto::v1 as pb;
use prost::Message;
use tonic::codegen::http;
use tonic::{Code, Status};

/// The CSV header: the proto field names of `Denial`, in order.
pub const CSV_HEADER: [&str; 8] = [
    "seq", "at", "kind", "object", "key_id", "node_id", "reason", "message",
];

pub(super) async fn get(call: &Call, q: &Query) -> Result<Reply, ApiError> {
    let q = q.only(&["after_seq", "limit", "reason", "format"])?;
    let r = pb::ListDenialsRequest {
        after_seq: q.number("after_seq")?,
        limit: q.number("limit")?,
        reason: q.string("reason"),
    };
    match q.get("format").unwrap_or("json") {
        "json" => call.unary::<_, pb::DenialList>("ListDenials", &r).await,
        "csv" => {
            let list: pb::DenialList = message(call, "ListDenials", &r).await?;
            Ok(csv_reply(&to_csv(&list.denials)))
        }
        other => Err(ApiError::invalid(format!(
            "query parameter format={other:?} is not json or csv"
        ))),
    }
}

/// The unary Admin RPC `rpc` with `req`, its reply decoded.
async fn message<Req: Message, Resp: Message + Default>(
    call: &Call,
    rpc: &str,
    req: &Req,
) -> Result<Resp, ApiError> {
    let (parts, body) = call.send(rpc, req).await?;
    let collected = body.collect().await?;
    let status = Status::from_header_map(&parts.headers)
        .or_else(|| collected.trailers().and_then(Status::from_header_map));
    match status {
        Some(s) if s.code() == Code::Ok => {}
        Some(s) => return Err(s.into()),
        None => {
            return Err(ApiError::new(
                Code::Internal,
                format!("{rpc} answered without a gRPC status"),
            ))
        }
    }
    collected
        .to_bytes()
        .get(5..)
        .and_then(|m| Resp::decode(m).ok())
        .ok_or_else(|| ApiError::new(Code::Internal, format!("{rpc}: undecodable reply")))
}

/// One CSV field: quoted when it holds a comma, quote, CR or LF, with
/// quotes doubled (RFC 4180).
#[must_use]
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The denials as CSV, header first, CRLF line ends.
#[must_use]
pub fn to_csv(denials: &[pb::Denial]) -> String {
    let mut out = CSV_HEADER.join(",");
    out.push_str("\r\n");
    for d in denials {
        let row = [
            d.seq.to_string(),
            d.at.clone(),
            d.kind.clone(),
            d.object.clone(),
            d.key_id.clone(),
            d.node_id.clone(),
            d.reason.clone(),
            d.message.clone(),
        ];
        let row: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_reply(text: &str) -> Reply {
    http::Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(text.to_owned())))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_quotes_or_line_breaks_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"no\""), "\"say \"\"no\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn the_header_names_the_proto_fields_in_order() {
        let csv = to_csv(&[pb::Denial {
            seq: 7,
            reason: "no-free-seats".into(),
            message: "k-1 has all 1 seats in use; try later".into(),
            ..Default::default()
        }]);
        let mut lines = csv.split("\r\n");
        assert_eq!(
            lines.next(),
            Some("seq,at,kind,object,key_id,node_id,reason,message")
        );
        assert_eq!(
            lines.next(),
            Some("7,,,,,,no-free-seats,k-1 has all 1 seats in use; try later")
        );
    }
}
