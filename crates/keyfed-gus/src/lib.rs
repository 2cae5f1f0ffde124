//! The simulated vendor upstream ("GUS"): a real gRPC server with its own
//! sled store and Ed25519 identity. It issues signed keys, sells renewals,
//! and holds a renewal for a key until that key expires (seed 002).
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use keyfed_core::{Components, Key, KeyError, KeyFile, KeyKind, SharedClock, VendorSigner};
use keyfed_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

mod telemetry;
pub use telemetry::Accepted as TelemetryAccepted;

/// Why the upstream refused or failed a request. Mapped to a gRPC status
/// once, in [`GusError::to_status`].
#[derive(Debug, Error)]
pub enum GusError {
    /// The request names a bad field; the message says which.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The key the request describes is not a valid key (bad customer,
    /// product, component name ...); the message names the field.
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    #[error("upstream store: {0}")]
    Store(#[from] sled::Error),
    #[error("upstream store holds an unreadable value: {0}")]
    Corrupt(String),
    #[error("upstream i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl GusError {
    /// The one place upstream errors become gRPC statuses.
    #[must_use]
    pub fn to_status(&self) -> Status {
        let msg = self.to_string();
        match self {
            GusError::InvalidArgument(_) | GusError::InvalidKey(_) => Status::invalid_argument(msg),
            GusError::NotFound(_) => Status::not_found(msg),
            GusError::FailedPrecondition(_) => Status::failed_precondition(msg),
            GusError::Store(_)
            | GusError::Corrupt(_)
            | GusError::Io(_)
            | GusError::Transport(_) => {
                tracing::error!(error = %msg, "upstream failure");
                Status::internal(msg)
            }
        }
    }
}

impl From<GusError> for Status {
    fn from(e: GusError) -> Self {
        e.to_status()
    }
}

/// What the vendor asks for when it issues a key.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub customer: String,
    pub product: String,
    pub components: Vec<String>,
    pub seats: u32,
    pub kind: KeyKind,
    pub expires: NaiveDate,
}

#[derive(Serialize, Deserialize)]
struct IssuedKey {
    text: String,
    /// The renewal bought for this key, if any.
    renewal: Option<String>,
}

const FORMAT_VERSION: u8 = 1;

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    serde_json::to_writer(&mut out, v).expect("records serialize");
    out
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, GusError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            serde_json::from_slice(rest).map_err(|e| GusError::Corrupt(e.to_string()))
        }
        _ => Err(GusError::Corrupt("unknown format version".into())),
    }
}

/// Store layout: tree `meta` holds `signing_seed` (hex); tree `keys` maps a
/// key id to its [`IssuedKey`]. Every value is `FORMAT_VERSION` + JSON.
struct Inner {
    db: sled::Db,
    keys: sled::Tree,
    signer: VendorSigner,
    clock: SharedClock,
}

/// A handle on the upstream; clones share one store.
#[derive(Clone)]
pub struct Upstream(Arc<Inner>);

fn random_id(prefix: &str) -> Result<String, GusError> {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).map_err(|e| GusError::Io(std::io::Error::other(e.to_string())))?;
    Ok(format!("{prefix}-{}", hex::encode(b)))
}

impl Upstream {
    /// Opens or creates the store; the signing seed is made on first start and kept.
    pub fn open(data_dir: &Path, clock: SharedClock) -> Result<Self, GusError> {
        std::fs::create_dir_all(data_dir)?;
        let db = open_sled(&data_dir.join("store"))?;
        let meta = db.open_tree("meta")?;
        let seed: [u8; 32] = match meta.get("signing_seed")? {
            Some(v) => decode::<String>(&v)
                .ok()
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| GusError::Corrupt("signing seed".into()))?,
            None => {
                let mut s = [0u8; 32];
                getrandom::getrandom(&mut s)
                    .map_err(|e| GusError::Io(std::io::Error::other(e.to_string())))?;
                meta.insert("signing_seed", encode(&hex::encode(s)))?;
                db.flush()?;
                s
            }
        };
        let keys = db.open_tree("keys")?;
        Ok(Self(Arc::new(Inner {
            db,
            keys,
            signer: VendorSigner::from_seed(seed),
            clock,
        })))
    }

    #[must_use]
    pub fn public_key_hex(&self) -> String {
        self.0.signer.public_hex()
    }

    fn now(&self) -> DateTime<Utc> {
        self.0.clock.now().trunc_subsecs(0)
    }

    fn get(&self, id: &str) -> Result<(IssuedKey, KeyFile), GusError> {
        let v = self.0.keys.get(id)?.ok_or_else(|| {
            GusError::NotFound(format!("key {id} was not issued by this upstream"))
        })?;
        let rec: IssuedKey = decode(&v)?;
        // the upstream wrote this text itself: a parse failure is corruption, not bad input
        let file =
            KeyFile::parse(&rec.text).map_err(|e| GusError::Corrupt(format!("key {id}: {e}")))?;
        Ok((rec, file))
    }

    fn put(&self, rec: &IssuedKey, id: &str) -> Result<(), GusError> {
        self.0.keys.insert(id, encode(rec))?;
        self.0.db.flush()?;
        Ok(())
    }

    fn check_expiry(&self, expires: NaiveDate) -> Result<(), GusError> {
        let today = self.now().date_naive();
        if expires < today {
            return Err(GusError::InvalidArgument(format!(
                "expires {expires} is in the past (today is {today})"
            )));
        }
        Ok(())
    }

    /// Issues a new key (serial 1, a new license) and keeps it for download.
    pub fn issue(&self, req: IssueRequest) -> Result<KeyFile, GusError> {
        check_seats(req.seats)?;
        let components = Components::new(&req.components)?;
        self.check_expiry(req.expires)?;
        let key = Key {
            id: random_id("k")?,
            license: random_id("l")?,
            serial: 1,
            customer: req.customer,
            product: req.product,
            components,
            seats: req.seats,
            kind: req.kind,
            issued_at: self.now(),
            expires: req.expires,
            renews: None,
        };
        let file = self.0.signer.sign(key)?;
        self.put(
            &IssuedKey {
                text: file.render(),
                renewal: None,
            },
            &file.key.id,
        )?;
        tracing::info!(key_id = %file.key.id, customer = %file.key.customer, "key issued");
        Ok(file)
    }

    /// Sells a renewal of `key_id`: same customer, product, kind and license,
    /// the next serial, `renews = key_id`. The renewed key must exist and not
    /// be expired, and the renewal must expire after it.
    ///
    /// Only one renewal is held per key: buying again replaces the one held
    /// before (CheckRenewal then names the newer one). The replaced renewal
    /// stays downloadable by id, as every key this upstream signed does.
    pub fn purchase_renewal(
        &self,
        key_id: &str,
        components: Vec<String>,
        seats: u32,
        expires: NaiveDate,
    ) -> Result<KeyFile, GusError> {
        let (mut rec, old) = self.get(key_id)?;
        if old.key.is_expired(self.now()) {
            return Err(GusError::FailedPrecondition(format!(
                "key {key_id} expired on {}; a renewal must be bought before",
                old.key.expires
            )));
        }
        check_seats(seats)?;
        let components = Components::new(&components)?;
        if expires <= old.key.expires {
            return Err(GusError::InvalidArgument(format!(
                "expires {expires} must be after the renewed key's {}",
                old.key.expires
            )));
        }
        let key = Key {
            id: random_id("k")?,
            serial: old.key.serial + 1,
            components,
            seats,
            issued_at: self.now(),
            expires,
            renews: Some(key_id.to_owned()),
            ..old.key.clone()
        };
        let file = self.0.signer.sign(key)?;
        rec.renewal = Some(file.key.id.clone());
        // the renewal and the link to it land together or not at all
        let mut batch = sled::Batch::default();
        batch.insert(
            file.key.id.as_bytes(),
            encode(&IssuedKey {
                text: file.render(),
                renewal: None,
            }),
        );
        batch.insert(key_id.as_bytes(), encode(&rec));
        self.0.keys.apply_batch(batch)?;
        self.0.db.flush()?;
        tracing::info!(key_id, renewal = %file.key.id, serial = file.key.serial, "renewal purchased");
        Ok(file)
    }

    /// e05: one more key on the license of `key_id` (more seats, or another
    /// term), activated by the customer's administrator as add-seats or
    /// extend. Not a renewal: it is not offered by CheckRenewal.
    pub fn issue_additional(
        &self,
        key_id: &str,
        seats: u32,
        kind: KeyKind,
        expires: NaiveDate,
    ) -> Result<KeyFile, GusError> {
        let (_, old) = self.get(key_id)?;
        check_seats(seats)?;
        self.check_expiry(expires)?;
        let key = Key {
            id: random_id("k")?,
            serial: old.key.serial + 1,
            seats,
            kind,
            issued_at: self.now(),
            expires,
            renews: None,
            ..old.key.clone()
        };
        let file = self.0.signer.sign(key)?;
        self.put(
            &IssuedKey {
                text: file.render(),
                renewal: None,
            },
            &file.key.id,
        )?;
        tracing::info!(key_id = %file.key.id, license = %file.key.license, "additional key issued");
        Ok(file)
    }

    /// The renewal held for `key_id`, while that key has not expired (the
    /// upstream holds a renewal until the key it renews expires, e01 instant).
    pub fn renewal_of(&self, key_id: &str) -> Result<Option<String>, GusError> {
        let (rec, file) = self.get(key_id)?;
        Ok(rec.renewal.filter(|_| !file.key.is_expired(self.now())))
    }

    /// The key file text of any key this upstream signed, issued or renewal.
    pub fn download(&self, key_id: &str) -> Result<String, GusError> {
        Ok(self.get(key_id)?.0.text)
    }

    /// Makes every write durable; `serve` calls it on shutdown.
    pub fn flush(&self) -> Result<(), GusError> {
        self.0.db.flush()?;
        Ok(())
    }
}

fn check_seats(seats: u32) -> Result<(), GusError> {
    if seats == 0 {
        return Err(GusError::InvalidArgument(
            "seats must be at least 1, got 0".into(),
        ));
    }
    Ok(())
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, GusError> {
    if value.trim().is_empty() {
        return Err(GusError::InvalidArgument(format!("{field} is required")));
    }
    Ok(value)
}

/// Runs a store write (which flushes, a blocking call) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, GusError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("upstream task failed: {e}")))?
        .map_err(Status::from)
}

fn parse_date(field: &str, s: &str) -> Result<NaiveDate, GusError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| {
        GusError::InvalidArgument(format!("{field} {s:?} is not a YYYY-MM-DD date: {e}"))
    })
}

struct UpstreamService(Upstream);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::upstream_server::Upstream for UpstreamService {
    async fn check_renewal(&self, r: Request<pb::KeyId>) -> R<pb::RenewalAvailability> {
        let r = r.into_inner();
        let id = self.0.renewal_of(required("id", &r.id)?)?;
        Ok(Response::new(pb::RenewalAvailability {
            available: id.is_some(),
            renewal_key_id: id.unwrap_or_default(),
        }))
    }

    async fn download_key(&self, r: Request<pb::KeyId>) -> R<pb::KeyFile> {
        Ok(Response::new(pb::KeyFile {
            text: self.0.download(required("id", &r.into_inner().id)?)?,
        }))
    }

    async fn submit_telemetry(&self, r: Request<pb::TelemetrySubmission>) -> R<pb::TelemetryAck> {
        let text = r.into_inner().text;
        let upstream = self.0.clone();
        let a = blocking(move || upstream.submit_telemetry(&text)).await?;
        Ok(Response::new(pb::TelemetryAck {
            report_id: a.report_id,
            duplicate: a.duplicate,
            node_id: a.node,
            accepted_at: a
                .accepted_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }))
    }

    async fn issue_key(&self, r: Request<pb::IssueKeyRequest>) -> R<pb::KeyFile> {
        let r = r.into_inner();
        let kind = match pb::KeyKind::try_from(r.kind) {
            Ok(pb::KeyKind::Unspecified | pb::KeyKind::Term) => KeyKind::Term,
            Ok(pb::KeyKind::Subscription) => KeyKind::Subscription,
            Ok(pb::KeyKind::Trial) => KeyKind::Trial,
            Ok(pb::KeyKind::Nfr) => KeyKind::Nfr,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "kind {} is not a key kind (term, subscription, trial, nfr)",
                    r.kind
                )))
            }
        };
        let req = IssueRequest {
            customer: r.customer,
            product: r.product,
            components: r.components,
            seats: r.seats,
            kind,
            expires: parse_date("expires", &r.expires)?,
        };
        let upstream = self.0.clone();
        let file = blocking(move || upstream.issue(req)).await?;
        Ok(Response::new(pb::KeyFile {
            text: file.render(),
        }))
    }

    async fn purchase_renewal(&self, r: Request<pb::PurchaseRenewalRequest>) -> R<pb::KeyFile> {
        let r = r.into_inner();
        required("key_id", &r.key_id)?;
        let expires = parse_date("expires", &r.expires)?;
        let upstream = self.0.clone();
        let file =
            blocking(move || upstream.purchase_renewal(&r.key_id, r.components, r.seats, expires))
                .await?;
        Ok(Response::new(pb::KeyFile {
            text: file.render(),
        }))
    }

    async fn public_key(&self, _: Request<pb::Empty>) -> R<pb::PublicKeyReply> {
        Ok(Response::new(pb::PublicKeyReply {
            public_key_hex: self.0.public_key_hex(),
        }))
    }

    async fn compliance(&self, r: Request<pb::ComplianceRequest>) -> R<pb::ComplianceReport> {
        let c = r.into_inner().customer;
        let upstream = self.0.clone();
        let customers =
            blocking(move || upstream.compliance((!c.is_empty()).then_some(c.as_str()))).await?;
        Ok(Response::new(pb::ComplianceReport { customers }))
    }

    async fn set_exempt(&self, r: Request<pb::SetExemptRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let upstream = self.0.clone();
        blocking(move || upstream.set_exempt(&r.customer, r.exempt)).await?;
        Ok(Response::new(pb::Empty {}))
    }
}

/// Serves the Upstream service, health and reflection on `listener` until
/// `shutdown` is cancelled, then flushes the store.
pub async fn serve(
    upstream: Upstream,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GusError> {
    serve_with_tls(upstream, listener, shutdown, None).await
}

/// Reads `--tls-ca --tls-cert --tls-key`: the upstream's identity, and the
/// CA every caller's client certificate must chain to (always required).
pub fn tls_config(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tonic::transport::ServerTlsConfig, GusError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| {
            GusError::Io(std::io::Error::other(format!(
                "reading {}: {e}",
                p.display()
            )))
        })
    };
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .client_ca_root(Certificate::from_pem(read(ca)?)))
}

/// Serves the upstream; with `tls`, mutual TLS only (no client certificate,
/// no connection).
pub async fn serve_with_tls(
    upstream: Upstream,
    listener: TcpListener,
    shutdown: CancellationToken,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<(), GusError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<pb::upstream_server::UpstreamServer<UpstreamService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(keyfed_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| GusError::Io(std::io::Error::other(e.to_string())))?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = tls {
        tracing::info!(addr = %listener.local_addr()?, "keyfed upstream serving (mutual TLS)");
        builder = builder
            .tls_config(t)
            .map_err(|e| GusError::Io(std::io::Error::other(format!("TLS: {e}"))))?;
    } else {
        tracing::warn!(addr = %listener.local_addr()?, "keyfed upstream serving plaintext gRPC; pass --tls-ca --tls-cert --tls-key outside local development");
    }
    builder
        .add_service(health)
        .add_service(reflection)
        .add_service(
            pb::upstream_server::UpstreamServer::new(UpstreamService(upstream.clone()))
                .max_decoding_message_size(1024 * 1024),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await?;
    upstream.flush()
}

/// sled's flusher thread can hold the store's file lock for a moment after
/// the last handle is dropped (spacejam/sled#1234), so reopening in the same
/// process (a restart in the sandbox or a test) retries for a few seconds
/// instead of failing with "could not acquire lock".
fn open_sled(dir: &Path) -> Result<sled::Db, sled::Error> {
    let mut tries = 0;
    loop {
        match sled::open(dir) {
            Err(sled::Error::Io(e))
                if tries < 50 && e.to_string().contains("could not acquire lock") =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
