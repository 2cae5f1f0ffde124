//! Webhooks (issue 12 part 5) against a receiver the test runs on an
//! ephemeral port: deliveries are signed over timestamp, delivery id and
//! body; a receiver that refuses or is down, and a node restart, lose
//! nothing and keep the order; the event filter holds; bad config stops
//! the node.
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use keyfed_core::webhook as rules;
use keyfed_node::config::WebhookConfig;
use keyfed_node::NodeConfig;
use keyfed_proto::v1 as pb;
use keyfed_tests::{eventually, metric, TestCluster, Topology};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "test-webhook-secret-0123456789";

/// One request the receiver got, and what it answered.
#[derive(Clone, Debug)]
struct Received {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    answered: u16,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map_or("", String::as_str)
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
    fn seq(&self) -> u64 {
        // uint64 is a string in the protobuf JSON mapping
        let v = &self.json()["notification"]["seq"];
        v.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v.as_u64())
            .expect("notification.seq")
    }
    fn event(&self) -> String {
        self.json()["notification"]["event"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// A webhook receiver: records every request, answers `status` (200 unless
/// told), and can be stopped (connections refused) and started again on
/// the same port.
struct Receiver {
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    stop: Option<CancellationToken>,
}

impl Receiver {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Serving https with the certificate `name` issued from the CA in `pki`.
    async fn start_tls(pki: &std::path::Path, name: &str) -> Self {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls;
        let certs = CertificateDer::pem_file_iter(pki.join(format!("{name}.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.join(format!("{name}.key"))).unwrap();
        let sc = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(sc)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut r = Self {
            addr: l.local_addr().expect("addr"),
            tls,
            got: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            stop: None,
        };
        r.serve(l);
        r
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    fn serve(&mut self, l: TcpListener) {
        let stop = CancellationToken::new();
        self.stop = Some(stop.clone());
        let (got, status) = (self.got.clone(), self.status.clone());
        let tls = self.tls.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    a = l.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (got, status, tls) = (got.clone(), status.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let (got, status) = (got.clone(), status.clone());
                        async move {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect();
                            let body = req.into_body().collect().await?.to_bytes().to_vec();
                            let answered = status.load(Ordering::SeqCst);
                            got.lock().unwrap().push(Received {
                                headers,
                                body,
                                answered,
                            });
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(answered)
                                    .body(Full::new(Bytes::from_static(b"receiver says no")))
                                    .unwrap(),
                            )
                        }
                    });
                    let http = http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(s), svc).await,
                        Some(tls) => match tls.accept(s).await {
                            Ok(s) => http.serve_connection(TokioIo::new(s), svc).await,
                            Err(_) => return,
                        },
                    };
                });
            }
        });
    }

    /// Down: the port refuses connections.
    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
    }

    /// Up again on the same port.
    async fn restart(&mut self) {
        let addr = self.addr;
        let mut l = None;
        eventually("the receiver's port is free again", || {
            let ok = std::net::TcpListener::bind(addr).ok();
            let found = ok.is_some();
            if let Some(s) = ok {
                s.set_nonblocking(true).unwrap();
                l = Some(TcpListener::from_std(s).unwrap());
            }
            async move { found }
        })
        .await;
        self.serve(l.expect("bound"));
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The requests it acknowledged (2xx), in arrival order.
    fn acked(&self) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }
}

fn hook(name: &str, url: String, events: &[&str]) -> WebhookConfig {
    WebhookConfig {
        name: Some(name.into()),
        url,
        secret: Some(SECRET.into()),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        timeout_millis: 2_000,
        initial_backoff_millis: 20,
        max_backoff_millis: 200,
        ..WebhookConfig::default()
    }
}

async fn webhooks(c: &TestCluster, node: &str) -> Vec<pb::WebhookInfo> {
    c.admin(node)
        .await
        .list_webhooks(pb::Empty {})
        .await
        .expect("ListWebhooks")
        .into_inner()
        .webhooks
}

/// The seqs of `node`'s notifications of `events` (all when empty).
async fn seqs(c: &TestCluster, node: &str, events: &[&str]) -> Vec<u64> {
    c.notifications(node)
        .await
        .iter()
        .filter(|n| events.is_empty() || events.contains(&n.event.as_str()))
        .map(|n| n.seq)
        .collect()
}

/// Waits until the receiver acknowledged exactly the notifications of
/// `events` on `node` (in seq order, each once) and returns them.
async fn wait_acked(c: &TestCluster, node: &str, r: &Receiver, events: &[&str]) -> Vec<u64> {
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let acked: Vec<u64> = r.acked().iter().map(Received::seq).collect();
        let want = seqs(c, node, events).await;
        if acked == want {
            return want;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting until the receiver acknowledged {want:?}; it acknowledged {acked:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Adds a new key on `node` (one `key-added` notification) and returns its id.
async fn add_key(c: &TestCluster, node: &str) -> String {
    let k = c.issue(&["antivirus"], 10, "2027-12-31");
    c.add(node, &k).await;
    k.key.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_are_signed_and_carry_the_notification_and_the_filter_holds() {
    let all = Receiver::start().await;
    let deleted = Receiver::start().await;
    let (all_url, deleted_url) = (all.url("/in?src=keyfed"), deleted.url("/deleted"));
    let c = TestCluster::start(Topology::new().root("main").tweak("main", move |cfg| {
        cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.webhooks = vec![
            hook("all", all_url.clone(), &[]),
            hook("deleted", deleted_url.clone(), &["key-deleted"]),
        ];
    }))
    .await;
    let first = add_key(&c, "main").await;
    add_key(&c, "main").await;
    c.admin("main")
        .await
        .delete_key(pb::KeyId { id: first })
        .await
        .expect("deleted");

    let delivered = wait_acked(&c, "main", &all, &[]).await;
    let events: Vec<String> = c
        .notifications("main")
        .await
        .into_iter()
        .map(|n| n.event)
        .collect();
    assert!(
        delivered.len() >= 3,
        "two key-added and a key-deleted at least: {events:?}"
    );
    let stored = c.notifications("main").await;
    for r in all.acked() {
        let ts: i64 = r
            .header(rules::HEADER_TIMESTAMP)
            .parse()
            .expect("a unix time");
        let id = r.header(rules::HEADER_DELIVERY);
        assert!(
            rules::verify(
                SECRET.as_bytes(),
                ts,
                id,
                &r.body,
                r.header(rules::HEADER_SIGNATURE)
            ),
            "the signature verifies over timestamp, delivery id and body"
        );
        assert!(!rules::verify(
            b"another-secret-0123456789",
            ts,
            id,
            &r.body,
            r.header(rules::HEADER_SIGNATURE)
        ));
        let body = r.json();
        assert_eq!(body["delivery_id"], id);
        assert_eq!(body["timestamp"], ts);
        assert_eq!(body["node_id"], "main");
        assert_eq!(body["webhook"], "all");
        assert_eq!(id, format!("main:all:{}", r.seq()));
        assert_eq!(r.header(rules::HEADER_ATTEMPT), "1");
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header(rules::HEADER_EVENT), r.event());
        // the notification in the protobuf JSON mapping, as ListNotifications has it
        let n = stored
            .iter()
            .find(|n| n.seq == r.seq())
            .expect("a stored notification");
        assert_eq!(body["notification"]["event"], n.event.as_str());
        assert_eq!(body["notification"]["message"], n.message.as_str());
        assert_eq!(body["notification"]["at"], n.at.as_str());
    }
    assert_eq!(all.acked()[0].event(), "key-added");

    // the filter: only key-deleted reaches the second hook
    let got = wait_acked(&c, "main", &deleted, &["key-deleted"]).await;
    assert_eq!(got.len(), 1);
    assert!(deleted.all().iter().all(|r| r.event() == "key-deleted"));

    let info = webhooks(&c, "main").await;
    assert_eq!(info.len(), 2);
    let (a, l) = (&info[0], &info[1]);
    assert_eq!(
        (a.name.as_str(), a.url.as_str()),
        ("all", all.url("/in?src=keyfed").as_str())
    );
    assert!(a.events.is_empty());
    assert_eq!(a.delivered, delivered.len() as u64);
    assert_eq!(
        (a.pending, a.failed_attempts, a.last_error.as_str()),
        (0, 0, "")
    );
    assert!(!a.last_delivery_at.is_empty());
    assert_eq!(l.events, ["key-deleted"]);
    assert_eq!(l.delivered, 1);
    // the filtered hook's cursor moved past what it does not take
    eventually("the filtered hook's cursor passed everything", || async {
        webhooks(&c, "main").await[1].delivered_seq == *seqs(&c, "main", &[]).await.last().unwrap()
    })
    .await;

    let (_, text) = c.scrape("main").await;
    let series = |h: &str, result: &str| {
        metric(
            &text,
            &format!("keyfed_webhook_deliveries_total{{webhook=\"{h}\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(
        series("all", "delivered"),
        Some(delivered.len() as f64),
        "{text}"
    );
    assert_eq!(series("deleted", "delivered"), Some(1.0));
    assert_eq!(series("all", "rejected"), Some(0.0));
    assert_eq!(
        metric(&text, "keyfed_webhook_pending{webhook=\"all\"}"),
        Some(0.0)
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receiver_refusing_then_down_then_up_loses_nothing_and_keeps_the_order() {
    let mut r = Receiver::start().await;
    r.answer(500);
    let url = r.url("/");
    let c = TestCluster::start(Topology::new().root("main").tweak("main", move |cfg| {
        cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.webhooks = vec![hook("ops", url.clone(), &[])];
    }))
    .await;
    add_key(&c, "main").await;

    // refused: retried with backoff, the same delivery id each time
    eventually("the receiver refused a few attempts", || async {
        r.all().len() >= 3
    })
    .await;
    let tries = r.all();
    assert!(tries
        .iter()
        .all(|t| t.header(rules::HEADER_DELIVERY) == tries[0].header(rules::HEADER_DELIVERY)));
    assert_eq!(tries[1].header(rules::HEADER_ATTEMPT), "2");
    let info = &webhooks(&c, "main").await[0];
    assert!(info.failed_attempts >= 3 && info.delivered == 0, "{info:?}");
    assert!(info.last_error.contains("500"), "{info:?}");
    assert!(!info.next_attempt_at.is_empty());
    assert!(info.pending >= 1);

    // down: connections refused while more happens
    r.stop();
    for _ in 0..5 {
        add_key(&c, "main").await;
    }
    eventually(
        "the hook reports the queue and the refused connection",
        || async {
            let w = &webhooks(&c, "main").await[0];
            w.pending >= 6 && w.last_error.contains("connecting")
        },
    )
    .await;
    let (_, text) = c.scrape("main").await;
    assert!(
        metric(&text, "keyfed_webhook_pending{webhook=\"ops\"}").unwrap() >= 6.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "keyfed_webhook_deliveries_total{webhook=\"ops\",result=\"rejected\"}"
        )
        .unwrap()
            >= 3.0
    );
    assert!(
        metric(
            &text,
            "keyfed_webhook_deliveries_total{webhook=\"ops\",result=\"unreachable\"}"
        )
        .unwrap()
            >= 1.0
    );

    // up: everything, in seq order, each acknowledged once
    r.answer(200);
    r.restart().await;
    let all = wait_acked(&c, "main", &r, &[]).await;
    assert!(all.len() >= 6, "six key-added: {all:?}");
    eventually("the queue is empty", || async {
        let w = &webhooks(&c, "main").await[0];
        w.pending == 0 && w.last_error.is_empty() && w.delivered == all.len() as u64
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_queue_survives_a_node_restart_without_redelivering_what_was_acknowledged() {
    let mut r = Receiver::start().await;
    let url = r.url("/");
    let mut c = TestCluster::start(Topology::new().root("main").tweak("main", move |cfg| {
        cfg.webhooks = vec![hook("ops", url.clone(), &[])];
    }))
    .await;
    add_key(&c, "main").await;
    let before = wait_acked(&c, "main", &r, &[]).await;

    r.stop();
    for _ in 0..4 {
        add_key(&c, "main").await;
    }
    eventually("the new notifications are queued", || async {
        webhooks(&c, "main").await[0].pending >= 4
    })
    .await;
    let history = *seqs(&c, "main", &[]).await.last().unwrap();
    c.stop("main").await;
    // a hook added while the node was down starts after the history stored then
    let late = Receiver::start().await;
    let late_url = late.url("/late");
    c.nodes
        .get_mut("main")
        .unwrap()
        .config
        .webhooks
        .push(hook("late", late_url, &[]));
    c.restart("main").await;
    let info = &webhooks(&c, "main").await[0];
    assert_eq!(
        info.delivered,
        before.len() as u64,
        "the durable count survived"
    );
    assert_eq!(info.delivered_seq, *before.last().unwrap());
    eventually("the restarted node counts the queue", || async {
        webhooks(&c, "main").await[0].pending >= 4
    })
    .await;

    r.restart().await;
    let all = wait_acked(&c, "main", &r, &[]).await;
    assert!(all.len() >= before.len() + 4);
    // nothing acknowledged before the restart came twice
    let ids: Vec<String> = r
        .acked()
        .iter()
        .map(|x| x.header(rules::HEADER_DELIVERY).to_owned())
        .collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique);

    // the late hook got nothing of the history, and what came after it
    let id = add_key(&c, "main").await;
    let after: Vec<u64> = seqs(&c, "main", &[])
        .await
        .into_iter()
        .filter(|s| *s > history)
        .collect();
    eventually("the late hook delivered what came after it", || async {
        late.acked().iter().map(Received::seq).collect::<Vec<_>>() == after
    })
    .await;
    assert!(late
        .acked()
        .iter()
        .any(|x| x.json()["notification"]["key_id"] == id.as_str()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_webhook_stops_the_node_at_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (w, want) in [
        (
            hook("ops", "http://127.0.0.1:9/".into(), &["key-addded"]),
            "\"key-addded\" is not a known event",
        ),
        (
            WebhookConfig {
                secret: Some("short".into()),
                ..hook("ops", "http://127.0.0.1:9/".into(), &[])
            },
            "at least 16",
        ),
        (
            hook("ops", "gopher://127.0.0.1/".into(), &[]),
            "must start with http",
        ),
    ] {
        let cfg = NodeConfig {
            data_dir: dir.path().join("data"),
            webhooks: vec![w],
            ..NodeConfig::default()
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = keyfed_node::run_with_listeners(
            cfg,
            l,
            None,
            None,
            Arc::new(keyfed_core::clock::ManualClock::new(
                keyfed_tests::start_time(),
            )),
            CancellationToken::new(),
        )
        .await
        .expect_err("the node refuses to start");
        let e = format!("{e:#}");
        assert!(e.contains(want) && e.contains("[[webhooks]] #1"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_verifies_the_receiver_against_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, other) = (dir.path().join("pki"), dir.path().join("other"));
    keyfed_node::pki::init(&pki).unwrap();
    keyfed_node::pki::issue(&pki, "receiver", &[], &[]).unwrap();
    keyfed_node::pki::init(&other).unwrap();
    let r = Receiver::start_tls(&pki, "receiver").await;
    let (url, ca, other_ca) = (r.url("/tls"), pki.join("ca.pem"), other.join("ca.pem"));
    let c = TestCluster::start(Topology::new().root("main").tweak("main", move |cfg| {
        cfg.webhooks = vec![
            WebhookConfig {
                ca_file: Some(ca.clone()),
                ..hook("trusted", url.clone(), &[])
            },
            WebhookConfig {
                ca_file: Some(other_ca.clone()),
                ..hook("untrusted", url.clone(), &[])
            },
        ];
    }))
    .await;
    add_key(&c, "main").await;
    add_key(&c, "main").await;
    eventually("the trusted hook delivered both over TLS", || async {
        webhooks(&c, "main").await[0].delivered == 2
    })
    .await;
    let acked = r.acked();
    assert_eq!(
        acked.len(),
        2,
        "only the hook that trusts the receiver's CA got through"
    );
    assert!(acked.iter().all(|x| x
        .header(rules::HEADER_DELIVERY)
        .starts_with("main:trusted:")));
    eventually("the other hook says why it cannot deliver", || async {
        let w = &webhooks(&c, "main").await[1];
        w.delivered == 0 && w.failed_attempts > 0 && w.last_error.contains("TLS")
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_times_out_and_is_tried_again() {
    // accepts connections and reads, but never answers
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = silent.accept().await {
            keep.lock().unwrap().push(s);
        }
    });
    let c = TestCluster::start(Topology::new().root("main").tweak("main", move |cfg| {
        cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.webhooks = vec![WebhookConfig {
            timeout_millis: 100,
            ..hook("slow", url.clone(), &[])
        }];
    }))
    .await;
    add_key(&c, "main").await;
    eventually("two attempts timed out", || async {
        let w = &webhooks(&c, "main").await[0];
        w.failed_attempts >= 2 && w.last_error.contains("no answer within 100 ms")
    })
    .await;
    assert!(
        held.lock().unwrap().len() >= 2,
        "each attempt opened a connection"
    );
    let (_, text) = c.scrape("main").await;
    let timeouts = metric(
        &text,
        "keyfed_webhook_deliveries_total{webhook=\"slow\",result=\"timeout\"}",
    );
    assert!(timeouts.unwrap() >= 2.0, "{text}");
    assert_eq!(webhooks(&c, "main").await[0].delivered, 0);
    c.shutdown().await;
}
