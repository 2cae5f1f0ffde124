//! `GET /api/v1/stations` and `GET /api/v1/objects` with their page and
//! search parameters (issue 12), as `ListStationsRequest` and
//! `ListObjectsRequest` take them.
use super::{ApiError, Call, Query, Reply};
use keyfed_proto::v1 as pb;

pub(super) async fn stations(call: &Call, q: &Query) -> Result<Reply, ApiError> {
    let q = q.only(&["page_size", "page_token", "state", "search", "key_id"])?;
    let r = pb::ListStationsRequest {
        page_size: q.number("page_size")?,
        page_token: q.string("page_token"),
        state: q.string("state"),
        search: q.string("search"),
        key_id: q.string("key_id"),
    };
    call.unary::<_, pb::StationList>("ListStations", &r).await
}

pub(super) async fn objects(call: &Call, q: &Query) -> Result<Reply, ApiError> {
    let q = q.only(&["page_size", "page_token", "search", "key_id"])?;
    let r = pb::ListObjectsRequest {
        page_size: q.number("page_size")?,
        page_token: q.string("page_token"),
        search: q.string("search"),
        key_id: q.string("key_id"),
    };
    call.unary::<_, pb::ObjectList>("ListObjects", &r).await
}
