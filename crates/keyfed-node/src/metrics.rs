//! Prometheus metrics (b06): counters the node bumps as it works, gauges read
//! from the store at scrape time, a tower layer timing every gRPC call, and a
//! tiny HTTP/1 server answering `GET /metrics`. The exposition (OpenMetrics
//! text, which Prometheus scrapes) is written by the `prometheus-client`
//! crate; the metric names and labels are the ones dashboards know.
use crate::node::Node;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyfed_core::event::RenewalOutcomeKind;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codegen::http;

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
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: &'static str,
}

type RpcHistograms = Family<RpcLabels, Histogram, fn() -> Histogram>;

fn rpc_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// What the node counts while it runs; lost on restart, as Prometheus
/// counters may be.
pub struct Metrics {
    registry: Registry,
    renewals: Family<OutcomeLabel, Counter>,
    notifications: Family<EventLabel, Counter>,
    rpcs: RpcHistograms,
    /// (method, code) pairs seen, to bound the series.
    rpc_series: Mutex<HashSet<(String, &'static str)>>,
    stations: Mutex<Option<(Instant, BTreeMap<String, u64>)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let renewals = Family::<OutcomeLabel, Counter>::default();
        // every outcome shows from the start, at zero
        for o in RenewalOutcomeKind::ALL {
            drop(renewals.get_or_create(&OutcomeLabel {
                outcome: o.as_str(),
            }));
        }
        registry.register(
            "keyfed_renewal_outcomes",
            "renewal checks of one key by outcome (r01-r06), since the node started",
            renewals.clone(),
        );
        let notifications = Family::<EventLabel, Counter>::default();
        registry.register(
            "keyfed_notifications",
            "notifications given by event, since the node started",
            notifications.clone(),
        );
        let rpcs: RpcHistograms = Family::new_with_constructor(rpc_histogram);
        registry.register(
            "keyfed_rpc_duration_seconds",
            "gRPC calls served, by method and status code, and how long each took (streams: their lifetime)",
            rpcs.clone(),
        );
        Self {
            registry,
            renewals,
            notifications,
            rpcs,
            rpc_series: Mutex::new(HashSet::new()),
            stations: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// One key's renewal check ended with `outcome`; an unknown one counts
    /// as an error.
    pub fn renewal(&self, outcome: &str) {
        let outcome = RenewalOutcomeKind::from_reported(outcome).as_str();
        self.renewals.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A committed notification was published.
    pub fn notification(&self, event: &str) {
        self.notifications
            .get_or_create(&EventLabel {
                event: event.to_owned(),
            })
            .inc();
    }

    fn rpc(&self, method: &str, code: &'static str, elapsed: Duration) {
        let method = {
            let mut seen = self.rpc_series.lock().expect("metrics lock");
            let key = (method.to_owned(), code);
            // an unknown path answers UNIMPLEMENTED: never a label of its own
            if code == "UNIMPLEMENTED" || (seen.len() >= MAX_RPC_SERIES && !seen.contains(&key)) {
                "other".to_owned()
            } else {
                seen.insert(key);
                method.to_owned()
            }
        };
        self.rpcs
            .get_or_create(&RpcLabels { method, code })
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    node: String,
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeatLabels {
    key_id: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

fn gauge(v: impl TryInto<i64>) -> Gauge {
    let g = Gauge::default();
    g.set(clamp(v));
    g
}

fn clamp(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// The gauges read from the store at scrape time, in a registry of their
/// own. Per key it reads the key and its `used` counter; it never scans
/// grants, and stations at most every 30 s.
fn store_gauges(node: &Node) -> Result<Registry, keyfed_store::StoreError> {
    let mut r = Registry::default();
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            node: node.id().to_owned(),
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    r.register(
        "keyfed_build_info",
        "the running node and its version",
        build,
    );

    let seats = Family::<SeatLabels, Gauge>::default();
    let store = node.engine.store();
    for k in store.keys()? {
        let used = store.used(&k.key.id)?;
        for (state, n) in [
            ("held", k.held),
            ("used", used),
            ("free", k.held.saturating_sub(used)),
        ] {
            let labels = SeatLabels {
                key_id: k.key.id.clone(),
                state,
            };
            seats.get_or_create(&labels).set(i64::from(n));
        }
    }
    r.register(
        "keyfed_key_seats",
        "seats of a key on this node: held (may hand out), used (granted), free",
        seats,
    );

    let up = Family::<PeerLabels, Gauge>::default();
    let depth = Family::<PeerLabel, Gauge>::default();
    for (peer, role) in node.config.peers() {
        let online = node.engine.peer_meta(&peer).is_some_and(|p| p.online);
        let labels = PeerLabels {
            peer: peer.clone(),
            role: role.as_str(),
        };
        up.get_or_create(&labels).set(i64::from(online));
        let n = store.outbox_depth(&peer)?;
        depth.get_or_create(&PeerLabel { peer }).set(clamp(n));
    }
    r.register(
        "keyfed_peer_up",
        "1 while the federation link to the peer is up",
        up,
    );
    r.register(
        "keyfed_outbox_depth",
        "deliveries queued for the peer and not yet acknowledged",
        depth,
    );

    r.register(
        "keyfed_station_records",
        "stations this node knows of",
        gauge(store.station_count()),
    );
    let states = Family::<StateLabel, Gauge>::default();
    for (state, n) in node.metrics.station_states(node) {
        states.get_or_create(&StateLabel { state }).set(clamp(n));
    }
    r.register(
        "keyfed_stations",
        "stations by state (counted at most every 30 s)",
        states,
    );
    Ok(r)
}

/// Renders every metric of `node` as OpenMetrics text.
pub fn render(node: &Node) -> Result<String, keyfed_store::StoreError> {
    let gauges = store_gauges(node)?;
    let mut out = String::new();
    let written = encode_registry(&mut out, &gauges)
        .and_then(|()| encode_registry(&mut out, &node.metrics.registry))
        .and_then(|()| encode_eof(&mut out));
    // writing to a String cannot fail
    debug_assert!(written.is_ok());
    Ok(out)
}

fn respond(node: &Node, req: &http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, body: String| {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
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

impl keyfed_engine::EventSink for Metrics {
    fn published(&self, n: &keyfed_store::Notification) {
        self.notification(&n.event);
    }
    fn renewal_checked(&self, outcome: &str) {
        self.renewal(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut out = String::new();
        encode_registry(&mut out, &m.registry).unwrap();
        out
    }

    #[test]
    fn rpc_series_are_bounded_and_unknown_paths_are_not_labels() {
        let m = Metrics::default();
        m.rpc("/keyfed.v1.Admin/Status", "OK", Duration::from_millis(3));
        m.rpc("/made/up", "UNIMPLEMENTED", Duration::from_millis(1));
        for i in 0..(MAX_RPC_SERIES + 10) {
            m.rpc(&format!("/x/{i}"), "OK", Duration::ZERO);
        }
        let t = text(&m);
        let series = t
            .lines()
            .filter(|l| l.starts_with("keyfed_rpc_duration_seconds_count"))
            .count();
        assert!(series <= MAX_RPC_SERIES + 2, "{series}");
        assert!(t.contains(
            "keyfed_rpc_duration_seconds_count{method=\"other\",code=\"UNIMPLEMENTED\"} 1"
        ));
        let status = "method=\"/keyfed.v1.Admin/Status\",code=\"OK\"";
        assert!(
            t.contains(&format!(
                "keyfed_rpc_duration_seconds_bucket{{le=\"0.001\",{status}}} 0"
            )),
            "3 ms is above the 1 ms bucket"
        );
        assert!(
            t.contains(&format!(
                "keyfed_rpc_duration_seconds_bucket{{le=\"0.005\",{status}}} 1"
            )),
            "3 ms is within the 5 ms bucket"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.notification("a\"b\\c\nd");
        assert!(
            text(&m).contains("keyfed_notifications_total{event=\"a\\\"b\\\\c\\nd\"} 1"),
            "{}",
            text(&m)
        );
    }

    #[test]
    fn unknown_renewal_outcomes_count_as_errors() {
        let m = Metrics::default();
        m.renewal("distributed");
        m.renewal("something new");
        let t = text(&m);
        assert!(
            t.contains("keyfed_renewal_outcomes_total{outcome=\"distributed\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("keyfed_renewal_outcomes_total{outcome=\"error\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("keyfed_renewal_outcomes_total{outcome=\"nothing\"} 0"),
            "{t}"
        );
    }
}
