//! `GET /api/v1/notifications/stream`: the notification feed
//! (`WatchNotifications`) as Server-Sent Events, for a browser's
//! `EventSource` and for `curl -N`. Each notification is one event:
//! `id:` its seq, `event: notification`, `data:` the `Notification` in the
//! JSON mapping on one line. The stored notifications after `after_seq` (or
//! after `Last-Event-ID`, which `EventSource` sends when it reconnects) come
//! first, then the live ones. A comment line every 15 s keeps proxies from
//! closing an idle stream; an error after the stream began is an
//! `event: error` with `{"code", "message"}`, and the stream ends.
use super::{ApiBody, ApiError, Call, Query};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use keyfed_proto::v1 as pb;
use prost::Message;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Status};

pub(super) const PATH: &str = "/api/v1/notifications/stream";
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) fn is_stream(req: &http::Request<Incoming>) -> bool {
    req.method() == http::Method::GET && req.uri().path() == PATH
}

/// Where the stream starts: `Last-Event-ID` (a reconnecting `EventSource`)
/// wins over `after_seq`.
fn after_seq(req: &http::Request<Incoming>) -> Result<u64, ApiError> {
    let q = Query::parse(req.uri().query())?;
    let from_query = q.only(&["after_seq"])?.number("after_seq")?;
    match req.headers().get("last-event-id") {
        None => Ok(from_query),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "Last-Event-ID {v:?} is not a notification seq (a whole number)"
                ))
            }),
    }
}

/// Opens the feed through the Admin guard (so a refused caller gets the
/// usual JSON error) and answers with the event stream.
pub(crate) async fn stream(
    call: Call,
    req: http::Request<Incoming>,
    stop: CancellationToken,
) -> Result<http::Response<ApiBody>, ApiError> {
    let after_seq = after_seq(&req)?;
    let (_, feed) = call
        .send(
            "WatchNotifications",
            &pb::ListNotificationsRequest { after_seq },
        )
        .await?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(pump(feed, tx, stop));
    let body =
        StreamBody::new(ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))));
    Ok(http::Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-store")
        // nginx and friends would otherwise hold events back
        .header("x-accel-buffering", "no")
        .body(BodyExt::boxed(body))
        .expect("static response parts are valid"))
}

/// Turns the gRPC feed into events until the feed ends, the client goes
/// away or the node stops.
async fn pump(mut feed: Body, tx: mpsc::Sender<Bytes>, stop: CancellationToken) {
    let mut buf = BytesMut::new();
    let start = tokio::time::Instant::now() + KEEP_ALIVE;
    let mut keep_alive = tokio::time::interval_at(start, KEEP_ALIVE);
    // the stream is open: say so at once, before any notification
    if tx
        .send(Bytes::from_static(b": keyfed notifications\n\n"))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => return,
            () = tx.closed() => return,
            _ = keep_alive.tick() => {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
                continue;
            }
            f = feed.frame() => f,
        };
        let frame = match frame {
            None => return,
            Some(Err(s)) => {
                let _ = tx.send(error_event(s.code(), s.message())).await;
                return;
            }
            Some(Ok(f)) => f,
        };
        if let Some(trailers) = frame.trailers_ref() {
            if let Some(s) = Status::from_header_map(trailers).filter(|s| s.code() != Code::Ok) {
                let _ = tx.send(error_event(s.code(), s.message())).await;
            }
            return;
        }
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(msg) = next_message(&mut buf) {
            let event = match pb::Notification::decode(msg) {
                Ok(n) => notification_event(&n),
                Err(e) => {
                    let why = format!("an undecodable notification: {e}");
                    let _ = tx.send(error_event(Code::Internal, &why)).await;
                    return;
                }
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// The next whole gRPC message (flag byte, 4-byte length, message) in `buf`.
fn next_message(buf: &mut BytesMut) -> Option<Bytes> {
    let len = u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    let mut whole = buf.split_to(5 + len);
    Some(whole.split_off(5).freeze())
}

fn notification_event(n: &pb::Notification) -> Bytes {
    // serde_json escapes newlines, so the data is one line as SSE needs
    let data = serde_json::to_string(n).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!(
        "id: {}\nevent: notification\ndata: {data}\n\n",
        n.seq
    ))
}

fn error_event(code: Code, message: &str) -> Bytes {
    let data = serde_json::json!({ "code": crate::auth::code_name(code), "message": message });
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_cut_whole_from_the_feed_and_become_one_line_events() {
        let n = pb::Notification {
            seq: 7,
            event: "key-added".into(),
            message: "two\nlines".into(),
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        for _ in 0..2 {
            buf.extend_from_slice(&[0]);
            buf.extend_from_slice(&u32::try_from(n.encoded_len()).unwrap().to_be_bytes());
            buf.extend_from_slice(&n.encode_to_vec());
        }
        let whole = buf.len();
        let mut part = buf.split_to(whole - 3);
        let first = next_message(&mut part).expect("the first message is whole");
        assert_eq!(pb::Notification::decode(first).unwrap(), n);
        assert!(
            next_message(&mut part).is_none(),
            "the second is not whole yet"
        );
        part.extend_from_slice(&buf);
        assert!(next_message(&mut part).is_some());
        assert!(part.is_empty());

        let text = String::from_utf8(notification_event(&n).to_vec()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "id: 7");
        assert_eq!(lines[1], "event: notification");
        assert!(
            lines[2].starts_with("data: {") && lines[2].contains(r#""seq":"7""#),
            "{text}"
        );
        assert!(text.ends_with("\n\n") && lines.len() == 4, "{text}");
    }
}
