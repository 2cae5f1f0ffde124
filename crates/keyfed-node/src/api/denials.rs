//! `GET /api/v1/denials` (issue 12): the denial log as JSON, or as CSV with
//! `format=csv` or `Accept: text/csv` (the columns are `Denial`'s fields,
//! see `keyfed_proto::csv`).
use super::usage::{csv_reply, wants_csv};
use super::{json_reply, ApiError, Call, Query, Reply};
use keyfed_proto::v1 as pb;
use tonic::codegen::http;

pub(super) async fn get(
    call: &Call,
    q: &Query,
    headers: &http::HeaderMap,
) -> Result<Reply, ApiError> {
    let q = q.only(&["after_seq", "limit", "reason", "format"])?;
    let r = pb::ListDenialsRequest {
        after_seq: q.number("after_seq")?,
        limit: q.number("limit")?,
        reason: q.string("reason"),
    };
    let csv = wants_csv(q.get("format"), headers)?;
    let list: pb::DenialList = call.message("ListDenials", &r).await?;
    if csv {
        Ok(csv_reply(keyfed_proto::csv::denials(&list.denials)))
    } else {
        Ok(json_reply(http::StatusCode::OK, &list))
    }
}
