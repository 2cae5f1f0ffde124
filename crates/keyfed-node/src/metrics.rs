//! Prometheus metrics (b06): counters the node bumps as it works, gauges read
//! from the store at scrape time, a tower layer timing every gRPC call, and a
//! tiny HTTP/1 server answering `GET /metrics`. The exposition (OpenMetrics
//! text, which Prometheus scrapes) is written by the `prometheus-client`
//! crate; the metric names and labels are the ones dashboards know.
use http_body::{Body, Frame, SizeHint};
use keyfed_core::event::RenewalOutcomeKind;
#[cfg(test)]
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::codegen::http;

/// Upper bounds (seconds) of the RPC latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Distinct (method, code) series kept; more go to method "other", so a
/// client calling made-up paths cannot grow the scrape without bound.
const MAX_RPC_SERIES: usize = 512;

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
    pub(crate) registry: Registry,
    renewals: Family<OutcomeLabel, Counter>,
    notifications: Family<EventLabel, Counter>,
    rpcs: RpcHistograms,
    /// (method, code) pairs seen, to bound the series.
    rpc_series: Mutex<HashSet<(String, &'static str)>>,
    /// Station states as last counted (see `exposition::station_states`).
    pub(crate) stations: Mutex<Option<(Instant, BTreeMap<String, u64>)>>,
    pub(crate) webhooks: crate::webhooks::WebhookMetrics,
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
        let webhooks = crate::webhooks::WebhookMetrics::register(&mut registry);
        Self {
            webhooks,
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
