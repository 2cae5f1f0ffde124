//! `GET /api/v1/usage/history` (issue 12): `UsageHistory` in the JSON
//! mapping, or as CSV with `format=csv` or `Accept: text/csv` (the columns
//! are `UsagePoint`'s fields, see `keyfed_proto::csv`).
use super::{json_reply, ApiError, Call, Query, Reply};
use bytes::Bytes;
use http_body_util::Full;
use keyfed_proto::v1 as pb;
use tonic::codegen::http;

const CSV: &str = "text/csv; charset=utf-8; header=present";

pub(super) async fn history(
    call: &Call,
    q: &Query,
    headers: &http::HeaderMap,
) -> Result<Reply, ApiError> {
    let q = q.only(&["key_id", "from", "to", "node_id", "resolution", "format"])?;
    let r = pb::UsageHistoryRequest {
        key_id: q.string("key_id"),
        from: q.string("from"),
        to: q.string("to"),
        node_id: q.string("node_id"),
        resolution: q.string("resolution"),
    };
    let csv = wants_csv(q.get("format"), headers)?;
    let reply: pb::UsageHistoryReply = call.message("UsageHistory", &r).await?;
    if csv {
        Ok(csv_reply(keyfed_proto::csv::usage_points(&reply.points)))
    } else {
        Ok(json_reply(http::StatusCode::OK, &reply))
    }
}

/// `format` decides; without it, an `Accept` naming `text/csv` does.
pub(super) fn wants_csv(format: Option<&str>, headers: &http::HeaderMap) -> Result<bool, ApiError> {
    match format {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(f) => Err(ApiError::invalid(format!(
            "query parameter format={f:?} is not json or csv"
        ))),
        None => Ok(headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|m| {
                let media = m.split(';').next().unwrap_or_default().trim();
                media.eq_ignore_ascii_case("text/csv")
            })),
    }
}

/// A CSV document as the reply (the console's CSV downloads too).
#[must_use]
pub(crate) fn csv_reply(doc: String) -> Reply {
    http::Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, CSV)
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(doc)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::wants_csv;
    use tonic::codegen::http;

    #[test]
    fn format_beats_accept_and_a_bad_format_is_named() {
        let mut h = http::HeaderMap::new();
        assert!(!wants_csv(None, &h).unwrap());
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json;q=0.5, Text/CSV"),
        );
        assert!(wants_csv(None, &h).unwrap());
        assert!(!wants_csv(Some("json"), &h).unwrap());
        assert!(wants_csv(Some("csv"), &http::HeaderMap::new()).unwrap());
        let e = wants_csv(Some("xml"), &h).unwrap_err();
        assert!(e.message.contains("format=\"xml\""), "{e:?}");
    }
}
