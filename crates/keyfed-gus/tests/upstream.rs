//! The upstream over real gRPC: issue, download and verify, renewals held
//! until the renewed key expires (seed 002, r03/r04, e01), restarts, refusals.
use chrono::Duration;
use keyfed_core::{KeyFile, KeyKind, ManualClock, SharedClock};
use keyfed_gus::{GusError, IssueRequest, Upstream};
use keyfed_proto::v1 as pb;
use pb::upstream_client::UpstreamClient;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

const START: &str = "2026-11-23T10:00:00.750Z";
const EXPIRES: &str = "2026-12-31";

/// One running upstream on a random port.
struct Gus {
    upstream: Upstream,
    clock: Arc<ManualClock>,
    channel: Channel,
    stop: CancellationToken,
    task: JoinHandle<Result<(), GusError>>,
}

impl Gus {
    async fn start(dir: &Path, clock: Arc<ManualClock>) -> Gus {
        let shared: SharedClock = clock.clone();
        let upstream = Upstream::open(dir, shared).expect("upstream opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let task = tokio::spawn(keyfed_gus::serve(upstream.clone(), listener, stop.clone()));
        // the listener is already bound, so the first connect reaches it
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(std::time::Duration::from_secs(10))
            .connect()
            .await
            .expect("connects to the upstream");
        Gus {
            upstream,
            clock,
            channel,
            stop,
            task,
        }
    }

    fn client(&self) -> UpstreamClient<Channel> {
        UpstreamClient::new(self.channel.clone())
    }

    async fn stop(self) -> Arc<ManualClock> {
        self.stop.cancel();
        self.task
            .await
            .expect("serve task")
            .expect("serve ends cleanly");
        self.clock
    }

    async fn issue(&self, components: &[&str], seats: u32) -> KeyFile {
        let text = self
            .client()
            .issue_key(issue_req(components, seats, EXPIRES))
            .await
            .expect("issued")
            .into_inner()
            .text;
        KeyFile::parse(&text).expect("issued key parses")
    }

    async fn purchase(
        &self,
        key_id: &str,
        seats: u32,
        expires: &str,
    ) -> Result<KeyFile, tonic::Status> {
        let text = self
            .client()
            .purchase_renewal(pb::PurchaseRenewalRequest {
                key_id: key_id.into(),
                components: vec!["antivirus".into(), "firewall".into()],
                seats,
                expires: expires.into(),
            })
            .await?
            .into_inner()
            .text;
        Ok(KeyFile::parse(&text).expect("renewal parses"))
    }

    async fn check(&self, key_id: &str) -> Result<pb::RenewalAvailability, tonic::Status> {
        self.client()
            .check_renewal(pb::KeyId { id: key_id.into() })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn download(&self, key_id: &str) -> Result<String, tonic::Status> {
        self.client()
            .download_key(pb::KeyId { id: key_id.into() })
            .await
            .map(|r| r.into_inner().text)
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(START.parse().expect("rfc 3339")))
}

fn issue_req(components: &[&str], seats: u32, expires: &str) -> pb::IssueKeyRequest {
    pb::IssueKeyRequest {
        customer: "acme".into(),
        product: "endpoint".into(),
        components: components.iter().map(|c| (*c).to_owned()).collect(),
        seats,
        kind: pb::KeyKind::Unspecified as i32,
        expires: expires.into(),
    }
}

fn is_hex_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 12
            && rest
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

#[tokio::test]
async fn issued_key_downloads_and_verifies_against_the_vendor_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let gus = Gus::start(dir.path(), clock()).await;
    let issued = gus.issue(&["antivirus"], 5).await;

    let public = gus
        .client()
        .public_key(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .public_key_hex;
    assert_eq!(public, gus.upstream.public_key_hex());

    let text = gus.download(&issued.key.id).await.unwrap();
    assert_eq!(text, issued.render(), "download gives the issued bytes");
    let file = KeyFile::parse_trusted(&text, &[public]).expect("signature verifies");
    let key = &file.key;
    assert!(is_hex_id(&key.id, "k-"), "key id {}", key.id);
    assert!(is_hex_id(&key.license, "l-"), "license id {}", key.license);
    assert_eq!(key.serial, 1);
    assert_eq!(
        key.kind,
        KeyKind::Term,
        "unspecified kind issues a term key"
    );
    assert_eq!(
        key.issued_at,
        "2026-11-23T10:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap(),
        "whole seconds"
    );
    assert_eq!(key.renews, None);
    assert_eq!((key.seats, key.customer.as_str()), (5, "acme"));
    gus.stop().await;
}

#[tokio::test]
async fn r04_no_renewal_upstream_means_nothing_available() {
    let dir = tempfile::tempdir().unwrap();
    let gus = Gus::start(dir.path(), clock()).await;
    let k = gus.issue(&["antivirus"], 5).await;
    let a = gus.check(&k.key.id).await.unwrap();
    assert!(!a.available);
    assert_eq!(a.renewal_key_id, "");
    gus.stop().await;
}

#[tokio::test]
async fn r03_renewal_is_held_until_the_renewed_key_expires() {
    let dir = tempfile::tempdir().unwrap();
    let gus = Gus::start(dir.path(), clock()).await;
    let k = gus.issue(&["antivirus"], 5).await;

    let first = gus.purchase(&k.key.id, 5, "2027-06-30").await.unwrap();
    let r = gus.purchase(&k.key.id, 8, "2027-12-31").await.unwrap();
    let a = gus.check(&k.key.id).await.unwrap();
    assert!(a.available);
    assert_eq!(
        a.renewal_key_id, r.key.id,
        "a second purchase replaces the first"
    );
    assert!(
        gus.download(&first.key.id).await.is_ok(),
        "the replaced renewal stays downloadable"
    );

    let text = gus.download(&a.renewal_key_id).await.unwrap();
    let renewal = KeyFile::parse_trusted(&text, &[gus.upstream.public_key_hex()]).unwrap();
    let (old, new) = (&k.key, &renewal.key);
    assert_eq!(new.renews.as_deref(), Some(old.id.as_str()));
    assert_eq!(new.serial, 2);
    assert_eq!(
        (&new.license, &new.customer, &new.product, new.kind),
        (&old.license, &old.customer, &old.product, old.kind)
    );
    assert_eq!(
        (new.seats, new.components.to_vec()),
        (8, vec!["antivirus".to_owned(), "firewall".to_owned()])
    );
    assert_eq!(new.expires.to_string(), "2027-12-31");

    gus.clock.set("2026-12-31T23:59:59Z".parse().unwrap());
    assert!(
        gus.check(&k.key.id).await.unwrap().available,
        "still held on the last day"
    );
    gus.clock.advance(Duration::seconds(1));
    let a = gus.check(&k.key.id).await.unwrap();
    assert!(
        !a.available,
        "gone at 00:00 UTC after the expiry date (e01)"
    );
    assert_eq!(a.renewal_key_id, "");
    assert!(
        gus.download(&r.key.id).await.is_ok(),
        "the renewal key itself stays downloadable"
    );

    let late = gus.purchase(&k.key.id, 5, "2028-12-31").await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains(&k.key.id), "{}", late.message());
    gus.stop().await;
}

#[tokio::test]
async fn restart_keeps_the_vendor_identity_and_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let gus = Gus::start(dir.path(), clock()).await;
    let k = gus.issue(&["antivirus"], 5).await;
    let r = gus.purchase(&k.key.id, 5, "2027-12-31").await.unwrap();
    let public = gus.upstream.public_key_hex();
    let clock = gus.stop().await;

    let gus = Gus::start(dir.path(), clock).await;
    assert_eq!(gus.upstream.public_key_hex(), public);
    assert_eq!(gus.download(&k.key.id).await.unwrap(), k.render());
    assert_eq!(gus.download(&r.key.id).await.unwrap(), r.render());
    assert_eq!(gus.check(&k.key.id).await.unwrap().renewal_key_id, r.key.id);
    gus.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_what_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let gus = Gus::start(dir.path(), clock()).await;
    let mut c = gus.client();
    let refused = |r: Result<tonic::Response<pb::KeyFile>, tonic::Status>| r.expect_err("refused");

    let e = refused(c.issue_key(issue_req(&["antivirus"], 0, EXPIRES)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("seats"), "{}", e.message());

    let e = refused(c.issue_key(issue_req(&["Anti Virus"], 5, EXPIRES)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("components"), "{}", e.message());

    let e = refused(c.issue_key(issue_req(&[], 5, EXPIRES)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("components"), "{}", e.message());

    for bad in ["2026-13-01", "", "2026-11-22"] {
        let e = refused(c.issue_key(issue_req(&["antivirus"], 5, bad)).await);
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
        assert!(e.message().contains("expires"), "{bad:?}: {}", e.message());
    }

    let mut req = issue_req(&["antivirus"], 5, EXPIRES);
    req.kind = 99;
    let e = refused(c.issue_key(req).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("kind"), "{}", e.message());

    let mut req = issue_req(&["antivirus"], 5, EXPIRES);
    req.customer = String::new();
    let e = refused(c.issue_key(req).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("customer"), "{}", e.message());

    let unknown = "k-000000000000";
    let e = gus.check(unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        e.message(),
        format!("key {unknown} was not issued by this upstream")
    );
    let e = gus.download(unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains(unknown), "{}", e.message());
    let e = gus.purchase(unknown, 5, "2027-12-31").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains(unknown), "{}", e.message());
    let e = gus.check("").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("id"), "{}", e.message());

    let k = gus.issue(&["antivirus"], 5).await;
    let e = gus.purchase(&k.key.id, 5, EXPIRES).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "a renewal must expire after the key"
    );
    assert!(e.message().contains("expires"), "{}", e.message());
    let e = gus.purchase(&k.key.id, 0, "2027-12-31").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("seats"), "{}", e.message());
    assert!(
        !gus.check(&k.key.id).await.unwrap().available,
        "refused purchases hold nothing"
    );

    // the direct API refuses the same way
    let e = gus
        .upstream
        .issue(IssueRequest {
            customer: "acme".into(),
            product: "endpoint".into(),
            components: vec!["antivirus".into()],
            seats: 0,
            kind: KeyKind::Trial,
            expires: EXPIRES.parse().unwrap(),
        })
        .unwrap_err();
    assert_eq!(e.to_status().code(), Code::InvalidArgument);
    gus.stop().await;
}

#[tokio::test]
async fn oversized_requests_and_telemetry_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gus = Gus::start(dir.path(), clock()).await;
    let mut c = gus.client();
    let mut req = issue_req(&["antivirus"], 5, EXPIRES);
    req.customer = "a".repeat(2 * 1024 * 1024);
    let e = c.issue_key(req).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    let e = c
        .submit_telemetry(pb::TelemetrySubmission { text: "x".into() })
        .await
        .unwrap_err();
    // t01 arrived: a file that is not a telemetry report is refused, saying why
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("telemetry file refused") && e.message().contains("line 1"),
        "{}",
        e.message()
    );
    gus.stop().await;
}

#[tokio::test]
async fn health_and_reflection_name_the_upstream_service() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let gus = Gus::start(dir.path(), clock()).await;

    let health = HealthClient::new(gus.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "keyfed.v1.Upstream".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(gus.channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "keyfed.v1.Upstream"), "{names:?}");
    gus.stop().await;
}
