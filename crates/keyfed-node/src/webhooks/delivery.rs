//! One hook's delivery task: reads the notification log past the hook's
//! durable cursor, POSTs each matching notification in seq order until a
//! 2xx, waits out failures with the capped backoff, and sleeps until the
//! engine publishes the next notification.
use super::Hook;
use crate::Node;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use keyfed_core::webhook as rules;
use keyfed_store::{Notification, Store};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

/// Notifications read from the log at once.
const PAGE: usize = 256;
/// How much of a refusing receiver's answer is kept for `last_error`.
const ERROR_BODY_BYTES: usize = 200;

/// What the store keeps per hook (meta `webhook:<name>`, JSON).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Cursor {
    /// Every notification up to this seq was delivered or did not match.
    seq: u64,
    /// Deliveries acknowledged with a 2xx, ever.
    delivered: u64,
}

fn meta_name(hook: &str) -> String {
    format!("webhook:{hook}")
}

/// The hook's cursor; a hook seen for the first time starts after the
/// notifications already stored (a hook added to a node with a long
/// history is not flooded with it).
fn load_cursor(store: &Store, hook: &str) -> Result<Cursor, String> {
    match store.meta(&meta_name(hook)).map_err(|e| e.to_string())? {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| format!("the stored cursor of webhook {hook:?} is unreadable: {e}")),
        None => {
            let c = Cursor {
                seq: store.last_notification_seq().map_err(|e| e.to_string())?,
                delivered: 0,
            };
            save_cursor(store, hook, &c)?;
            Ok(c)
        }
    }
}

/// Written and synced before the next delivery, so an acknowledged one is
/// not sent again after a restart; the sync runs on the blocking pool, as
/// the engine's flushes do, so it holds up no runtime thread.
async fn save(store: &Store, hook: &str, c: &Cursor) -> Result<(), String> {
    let (store, hook, c) = (store.clone(), hook.to_owned(), c.clone());
    tokio::task::spawn_blocking(move || save_cursor(&store, &hook, &c))
        .await
        .map_err(|e| format!("saving the cursor: {e}"))?
}

fn save_cursor(store: &Store, hook: &str, c: &Cursor) -> Result<(), String> {
    let text = serde_json::to_string(c).map_err(|e| e.to_string())?;
    store
        .set_meta(&meta_name(hook), &text)
        .and_then(|()| store.flush().map(drop))
        .map_err(|e| e.to_string())
}

/// How one attempt failed, as the metric's `result` label and `last_error`.
enum Failure {
    Rejected(String),
    Unreachable(String),
    Timeout,
}

impl Failure {
    fn result(&self) -> &'static str {
        match self {
            Self::Rejected(_) => "rejected",
            Self::Unreachable(_) => "unreachable",
            Self::Timeout => "timeout",
        }
    }

    fn message(&self, hook: &Hook) -> String {
        match self {
            Self::Rejected(m) | Self::Unreachable(m) => m.clone(),
            Self::Timeout => format!("no answer within {} ms", hook.timeout.as_millis()),
        }
    }
}

/// Counts what arrives while the task works or waits, so `pending` moves
/// without reading the log; `seen` is the highest seq counted.
struct Feed {
    rx: broadcast::Receiver<Notification>,
    seen: u64,
}

impl Feed {
    /// Takes one published notification (or a lag) into `pending`; false
    /// when the engine is gone.
    fn take(
        &mut self,
        hook: &Hook,
        node: &Node,
        got: Result<Notification, broadcast::error::RecvError>,
    ) -> bool {
        match got {
            Ok(n) => {
                if n.seq > self.seen {
                    self.seen = n.seq;
                    if hook.filter.matches(&n.event) {
                        let mut s = hook.state();
                        s.pending += 1;
                        node.metrics.webhooks.set_pending(&hook.name, s.pending);
                    }
                }
                true
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                recount(node, hook, self);
                true
            }
            Err(broadcast::error::RecvError::Closed) => false,
        }
    }
}

/// Counts the queue from the log (at start, and when the feed lagged).
fn recount(node: &Node, hook: &Hook, feed: &mut Feed) {
    let from = hook.state().delivered_seq;
    let Ok(queued) = node.engine.store().notifications_after(from) else {
        return;
    };
    feed.seen = queued.last().map_or(feed.seen.max(from), |n| n.seq);
    let pending = queued
        .iter()
        .filter(|n| hook.filter.matches(&n.event))
        .count() as u64;
    hook.state().pending = pending;
    node.metrics.webhooks.set_pending(&hook.name, pending);
}

/// A hook's queue as it stood at start: the feed subscribed before the
/// cursor was read, so nothing published in between is missed.
pub(super) struct Start {
    feed: Feed,
    cursor: Cursor,
}

impl Start {
    pub(super) fn new(node: &Node, hook: &Hook) -> Result<Self, String> {
        let feed = Feed {
            rx: node.engine.subscribe(),
            seen: 0,
        };
        let cursor = load_cursor(node.engine.store(), &hook.name)
            .map_err(|e| format!("webhook {:?}: {e}", hook.name))?;
        let mut s = hook.state();
        s.delivered = cursor.delivered;
        s.delivered_seq = cursor.seq;
        Ok(Self { feed, cursor })
    }
}

pub(super) async fn run(node: Node, hook: Arc<Hook>, start: Start, shutdown: CancellationToken) {
    let Start {
        mut feed,
        mut cursor,
    } = start;
    let store = node.engine.store().clone();
    recount(&node, &hook, &mut feed);
    tracing::info!(url = %hook.url, after_seq = cursor.seq, "webhook delivering");
    loop {
        let page = match store.notifications_page(cursor.seq, PAGE) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "webhook cannot read the notification log");
                Vec::new()
            }
        };
        let full = page.len() == PAGE;
        let read_through = page.last().map(|n| n.seq);
        let mut skipped = false;
        for n in page {
            if !hook.filter.matches(&n.event) {
                cursor.seq = n.seq;
                skipped = true;
                continue;
            }
            if !deliver(&node, &hook, &n, &mut feed, &shutdown).await {
                return;
            }
            cursor.seq = n.seq;
            cursor.delivered += 1;
            skipped = false;
            if let Err(e) = save(&store, &hook.name, &cursor).await {
                // the receiver has it; after a restart it gets it again (same id)
                tracing::warn!(error = %e, seq = n.seq, "webhook cursor not saved");
            }
            let mut s = hook.state();
            s.delivered = cursor.delivered;
            s.delivered_seq = cursor.seq;
            s.pending = s.pending.saturating_sub(1);
            node.metrics.webhooks.set_pending(&hook.name, s.pending);
        }
        if skipped {
            hook.state().delivered_seq = cursor.seq;
            if let Err(e) = save(&store, &hook.name, &cursor).await {
                tracing::warn!(error = %e, "webhook cursor not saved");
            }
        }
        // more to read: a full page, or notifications the feed took in
        // while this page was being delivered
        if full || read_through.is_some_and(|last| feed.seen > last) {
            continue;
        }
        // the log is drained: what is published from here on is pending
        {
            let mut s = hook.state();
            s.pending = 0;
            feed.seen = feed.seen.max(cursor.seq);
            node.metrics.webhooks.set_pending(&hook.name, 0);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = feed.rx.recv() => if !feed.take(&hook, &node, got) { return },
        }
    }
}

/// Sends `n` until a 2xx; false when shutdown came first.
async fn deliver(
    node: &Node,
    hook: &Hook,
    n: &Notification,
    feed: &mut Feed,
    shutdown: &CancellationToken,
) -> bool {
    let id = rules::delivery_id(node.id(), &hook.name, n.seq);
    let seed = rules::jitter_seed(&id);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let now = node.engine.now();
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return false,
            r = post(hook, &id, now.timestamp(), attempt, n, node.id()) => r,
        };
        match outcome {
            Ok(()) => {
                node.metrics.webhooks.attempt(&hook.name, "delivered");
                let mut s = hook.state();
                s.last_delivery_at = Some(now);
                s.last_error.clear();
                s.next_attempt_at = None;
                tracing::debug!(delivery = %id, attempt, "webhook delivered");
                return true;
            }
            Err(f) => {
                node.metrics.webhooks.attempt(&hook.name, f.result());
                let wait = hook.backoff.delay(attempt, seed);
                let message = f.message(hook);
                tracing::warn!(delivery = %id, attempt, retry_in_ms = wait.as_millis(), error = %message, "webhook delivery failed");
                {
                    let mut s = hook.state();
                    s.failed_attempts += 1;
                    s.last_error = message;
                    s.next_attempt_at = chrono::Duration::from_std(wait).ok().map(|w| now + w);
                }
                let until = tokio::time::Instant::now() + wait;
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep_until(until) => break,
                        got = feed.rx.recv() => if !feed.take(hook, node, got) { return false },
                    }
                }
            }
        }
    }
}

/// The body: the notification in the protobuf JSON mapping (proto field
/// names, as the API and `keyfedctl --json` print it), with what identifies
/// this delivery, named the same way.
#[derive(Serialize)]
struct Payload<'a> {
    delivery_id: &'a str,
    timestamp: i64,
    node_id: &'a str,
    webhook: &'a str,
    notification: keyfed_proto::v1::Notification,
}

/// One attempt: connect (TLS for https), POST, read the status; one
/// connection per attempt, so a receiver restarting in between is no matter.
async fn post(
    hook: &Hook,
    id: &str,
    timestamp: i64,
    attempt: u32,
    n: &Notification,
    node_id: &str,
) -> Result<(), Failure> {
    let body = serde_json::to_vec(&Payload {
        delivery_id: id,
        timestamp,
        node_id,
        webhook: &hook.name,
        notification: crate::convert::notification(n),
    })
    .map_err(|e| Failure::Unreachable(format!("encoding the delivery: {e}")))?;
    let signature = rules::signature(&hook.secret, timestamp, id, &body);
    let req = http::Request::post(&hook.target.path_and_query)
        .header(http::header::HOST, &hook.target.authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("keyfed/", env!("CARGO_PKG_VERSION")),
        )
        .header(rules::HEADER_TIMESTAMP, timestamp.to_string())
        .header(rules::HEADER_DELIVERY, id)
        .header(rules::HEADER_SIGNATURE, signature)
        .header(rules::HEADER_ATTEMPT, attempt.to_string())
        .header(rules::HEADER_EVENT, &n.event)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Failure::Unreachable(format!("building the request: {e}")))?;
    match tokio::time::timeout(hook.timeout, send(hook, req)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(r) => r,
    }
}

/// Ends the connection task when the attempt is over, however it ended.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send(hook: &Hook, req: http::Request<Full<Bytes>>) -> Result<(), Failure> {
    let t = &hook.target;
    let unreachable = |what: &str, e: &dyn std::fmt::Display| {
        Failure::Unreachable(format!("{what} {}:{}: {e}", t.host, t.port))
    };
    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| unreachable("connecting to", &e))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = match &hook.tls {
        None => {
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| unreachable("HTTP with", &e))?;
            (s, AbortOnDrop(tokio::spawn(async move { drop(c.await) })))
        }
        Some(tls) => {
            let name = rustls_pki_types::ServerName::try_from(t.host.clone())
                .map_err(|e| unreachable("the TLS name of", &e))?;
            let io = tls
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable("TLS with", &e))?;
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| unreachable("HTTP with", &e))?;
            (s, AbortOnDrop(tokio::spawn(async move { drop(c.await) })))
        }
    };
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable("sending to", &e))?;
    let status = resp.status();
    if status.is_success() {
        drop(conn);
        return Ok(());
    }
    let text = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    drop(conn);
    let snippet: String = String::from_utf8_lossy(&text)
        .chars()
        .filter(|c| !c.is_control())
        .take(ERROR_BODY_BYTES)
        .collect();
    Err(Failure::Rejected(if snippet.is_empty() {
        format!("the receiver answered {status}")
    } else {
        format!("the receiver answered {status}: {snippet}")
    }))
}
