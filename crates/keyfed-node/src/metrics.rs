//! Prometheus metrics (b06): counters the node bumps as it works, gauges read
//! from the store at scrape time, a tower layer timing every gRPC call, and a
//! tiny HTTP/1 server answering `GET /metrics` in text format 0.0.4.
use crate::node::Node;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codegen::http;

/// Renewal outcomes, as `Admin.CheckForUpdates` names them, plus `error`.
pub const RENEWAL_OUTCOMES: [&str; 6] = [
    "distributed",
    "store-only",
    "nothing",
    "propagated",
    "skipped",
    "error",
];
/// Upper bounds (seconds) of the RPC latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Distinct (method, code) series kept; more go to method "other", so a
/// client calling made-up paths cannot grow the scrape without bound.
const MAX_RPC_SERIES: usize = 512;
/// Station states come from a scan of every station record, so a scrape
/// reuses the last count for this long.
const STATION_STATES_TTL: Duration = Duration::from_secs(30);
/// Concurrent scrape connections; more are closed at once.
const MAX_SCRAPE_CONNECTIONS: usize = 16;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (b, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if secs <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// What the node counts while it runs; lost on restart, as Prometheus
/// counters may be.
#[derive(Default)]
pub struct Metrics {
    renewals: [AtomicU64; RENEWAL_OUTCOMES.len()],
    notifications: Mutex<BTreeMap<String, u64>>,
    rpcs: Mutex<BTreeMap<(String, &'static str), Histogram>>,
    stations: Mutex<Option<(Instant, BTreeMap<String, u64>)>>,
}

impl Metrics {
    /// One key's renewal check ended with `outcome` (see [`RENEWAL_OUTCOMES`]).
    pub fn renewal(&self, outcome: &str) {
        let i = RENEWAL_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(RENEWAL_OUTCOMES.len() - 1);
        self.renewals[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A committed notification was published.
    pub fn notification(&self, event: &str) {
        *self
            .notifications
            .lock()
            .expect("metrics lock")
            .entry(event.to_owned())
            .or_default() += 1;
    }

    fn rpc(&self, method: &str, code: &'static str, elapsed: Duration) {
        let mut rpcs = self.rpcs.lock().expect("metrics lock");
        // an unknown path answers UNIMPLEMENTED: never a label of its own
        let method = if code == "UNIMPLEMENTED"
            || (rpcs.len() >= MAX_RPC_SERIES && !rpcs.contains_key(&(method.to_owned(), code)))
        {
            "other"
        } else {
            method
        };
        rpcs.entry((method.to_owned(), code))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    fn station_states(&self, node: &Node) -> BTreeMap<String, u64> {
        let mut cached = self.stations.lock().expect("metrics lock");
        if let Some((at, states)) = cached.as_ref() {
            if at.elapsed() < STATION_STATES_TTL {
                return states.clone();
            }
        }
        let mut states: BTreeMap<String, u64> = ["licensed", "unlicensed", "withdrawn", "retired"]
            .into_iter()
            .map(|s| (s.to_owned(), 0))
            .collect();
        match node.engine.list_stations() {
            Ok(list) => {
                for s in list {
                    *states.entry(s.state).or_default() += 1;
                }
            }
            Err(e) => tracing::warn!(error = %e, "station states not counted"),
        }
        *cached = Some((Instant::now(), states.clone()));
        states
    }
}

/// Prometheus text exposition format 0.0.4.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric of `node`. Per key it reads the key and its `used`
/// counter; it never scans grants, and stations at most every 30 s.
pub fn render(node: &Node) -> Result<String, keyfed_store::StoreError> {
    let m = &node.metrics;
    let mut out = Exposition(String::new());
    let node_id = node.id();

    out.family(
        "keyfed_build_info",
        "gauge",
        "the running node and its version",
    );
    out.sample(
        "keyfed_build_info",
        &[("node", node_id), ("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    out.family(
        "keyfed_key_seats",
        "gauge",
        "seats of a key on this node: held (may hand out), used (granted), free",
    );
    for k in node.engine.store().keys()? {
        let used = node.engine.store().used(&k.key.id)?;
        let id = k.key.id.as_str();
        out.sample(
            "keyfed_key_seats",
            &[("key_id", id), ("state", "held")],
            k.held,
        );
        out.sample(
            "keyfed_key_seats",
            &[("key_id", id), ("state", "used")],
            used,
        );
        out.sample(
            "keyfed_key_seats",
            &[("key_id", id), ("state", "free")],
            k.held.saturating_sub(used),
        );
    }

    let peers = node.config.peers();
    out.family(
        "keyfed_peer_up",
        "gauge",
        "1 while the federation link to the peer is up",
    );
    for (peer, role) in &peers {
        let up = node.engine.peer_meta(peer).is_some_and(|p| p.online);
        out.sample(
            "keyfed_peer_up",
            &[("peer", peer), ("role", role.as_str())],
            u8::from(up),
        );
    }
    out.family(
        "keyfed_outbox_depth",
        "gauge",
        "deliveries queued for the peer and not yet acknowledged",
    );
    for (peer, _) in &peers {
        out.sample(
            "keyfed_outbox_depth",
            &[("peer", peer)],
            node.engine.store().outbox_depth(peer)?,
        );
    }

    out.family(
        "keyfed_renewal_outcomes_total",
        "counter",
        "renewal checks of one key by outcome (r01-r06), since the node started",
    );
    for (name, c) in RENEWAL_OUTCOMES.iter().zip(&m.renewals) {
        out.sample(
            "keyfed_renewal_outcomes_total",
            &[("outcome", name)],
            c.load(Ordering::Relaxed),
        );
    }

    out.family(
        "keyfed_notifications_total",
        "counter",
        "notifications given by event, since the node started",
    );
    for (event, n) in m.notifications.lock().expect("metrics lock").iter() {
        out.sample("keyfed_notifications_total", &[("event", event)], n);
    }

    out.family(
        "keyfed_station_records",
        "gauge",
        "stations this node knows of",
    );
    out.sample(
        "keyfed_station_records",
        &[],
        node.engine.store().station_count(),
    );
    out.family(
        "keyfed_stations",
        "gauge",
        "stations by state (counted at most every 30 s)",
    );
    for (state, n) in m.station_states(node) {
        out.sample("keyfed_stations", &[("state", &state)], n);
    }

    out.family(
        "keyfed_rpc_duration_seconds",
        "histogram",
        "gRPC calls served, by method and status code, and how long each took (streams: their lifetime)",
    );
    for ((method, code), h) in m.rpcs.lock().expect("metrics lock").iter() {
        // bucket counts are cumulative already: an observation bumps every
        // bucket whose bound it is within
        for (le, n) in BUCKETS.iter().zip(h.buckets) {
            let le = le.to_string();
            out.sample(
                "keyfed_rpc_duration_seconds_bucket",
                &[("method", method), ("code", code), ("le", &le)],
                n,
            );
        }
        out.sample(
            "keyfed_rpc_duration_seconds_bucket",
            &[("method", method), ("code", code), ("le", "+Inf")],
            h.count,
        );
        out.sample(
            "keyfed_rpc_duration_seconds_sum",
            &[("method", method), ("code", code)],
            h.sum,
        );
        out.sample(
            "keyfed_rpc_duration_seconds_count",
            &[("method", method), ("code", code)],
            h.count,
        );
    }
    Ok(out.0)
}

fn respond(node: &Node, req: &http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, body: String| {
        http::Response::builder()
            .status(status)
            .header(
                http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if req.uri().path() != "/metrics" {
        return reply(
            http::StatusCode::NOT_FOUND,
            "not found: metrics are served at /metrics\n".into(),
        );
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "use GET /metrics\n".into(),
        );
    }
    match render(node) {
        Ok(text) => reply(http::StatusCode::OK, text),
        Err(e) => {
            tracing::error!(error = %e, "metrics not rendered");
            reply(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("store unreadable: {e}\n"),
            )
        }
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // e.g. out of file descriptors: do not spin
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // too many scrapers: the connection is dropped
        };
        let node = node.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let reply = respond(&node, &req);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}

// ---- the RPC layer ---------------------------------------------------------

/// A tower layer around the tonic server: records each call's method path,
/// final `grpc-status` and duration into [`Metrics`].
#[derive(Clone)]
pub struct RpcMetricsLayer(Arc<Metrics>);

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self(metrics)
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tonic::codegen::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RecordedBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut call = Call {
            metrics: self.metrics.clone(),
            method: req.uri().path().to_owned(),
            start: Instant::now(),
            code: None,
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => {
                    // an error is answered "trailers-only": the status is a header
                    call.code = grpc_code(resp.headers());
                    Ok(resp.map(|inner| RecordedBody { inner, call }))
                }
                Err(e) => {
                    call.code = Some("TRANSPORT_ERROR");
                    call.finish();
                    Err(e)
                }
            }
        })
    }
}

/// One call in flight; recorded when its body ends or is dropped.
struct Call {
    metrics: Arc<Metrics>,
    method: String,
    start: Instant,
    code: Option<&'static str>,
    done: bool,
}

impl Call {
    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            // a stream the client dropped never got a status
            let code = self.code.unwrap_or("CANCELLED");
            self.metrics.rpc(&self.method, code, self.start.elapsed());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish();
    }
}

pin_project_lite::pin_project! {
    /// A response body that watches for the `grpc-status` trailer.
    pub struct RecordedBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }
}

impl<B: Body> Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    this.call.code = Some(code);
                    this.call.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.call.code.get_or_insert("INTERNAL");
                this.call.finish();
            }
            Poll::Ready(None) => this.call.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_code(headers: &http::HeaderMap) -> Option<&'static str> {
    let n: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(code_name(n))
}

/// The canonical upper-case gRPC code names.
fn code_name(n: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(n)
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_series_are_bounded_and_unknown_paths_are_not_labels() {
        let m = Metrics::default();
        m.rpc("/keyfed.v1.Admin/Status", "OK", Duration::from_millis(3));
        m.rpc("/made/up", "UNIMPLEMENTED", Duration::from_millis(1));
        for i in 0..(MAX_RPC_SERIES + 10) {
            m.rpc(&format!("/x/{i}"), "OK", Duration::ZERO);
        }
        let rpcs = m.rpcs.lock().unwrap();
        assert!(rpcs.len() <= MAX_RPC_SERIES + 1, "{}", rpcs.len());
        assert!(rpcs.contains_key(&("other".to_owned(), "UNIMPLEMENTED")));
        let h = &rpcs[&("/keyfed.v1.Admin/Status".to_owned(), "OK")];
        assert_eq!(h.count, 1);
        assert_eq!(h.buckets[0], 0, "3 ms is above the 1 ms bucket");
        assert_eq!(h.buckets[1], 1, "3 ms is within the 5 ms bucket");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition(String::new());
        e.sample("m", &[("k", "a\"b\\c\nd")], 1);
        assert_eq!(e.0, "m{k=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn unknown_renewal_outcomes_count_as_errors() {
        let m = Metrics::default();
        m.renewal("distributed");
        m.renewal("something new");
        assert_eq!(m.renewals[0].load(Ordering::Relaxed), 1);
        assert_eq!(m.renewals[5].load(Ordering::Relaxed), 1);
    }
}

impl keyfed_engine::EventSink for Metrics {
    fn published(&self, n: &keyfed_store::Notification) {
        self.notification(&n.event);
    }
    fn renewal_checked(&self, outcome: &str) {
        self.renewal(outcome);
    }
}
