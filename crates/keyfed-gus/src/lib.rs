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

#[derive(Debug, Error)]
pub enum GusError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("upstream store: {0}")]
    Store(#[from] sled::Error),
    #[error("upstream store holds an unreadable value: {0}")]
    Corrupt(String),
    #[error("upstream i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<GusError> for Status {
    fn from(e: GusError) -> Self {
        let msg = e.to_string();
        match e {
            GusError::InvalidArgument(_) | GusError::Key(_) => Status::invalid_argument(msg),
            GusError::NotFound(_) => Status::not_found(msg),
            GusError::FailedPrecondition(_) => Status::failed_precondition(msg),
            _ => {
                tracing::error!(error = %msg, "upstream failure");
                Status::internal(msg)
            }
        }
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
        let db = sled::open(data_dir.join("store"))?;
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
        let file = KeyFile::parse(&rec.text)?;
        Ok((rec, file))
    }

    fn put(&self, rec: &IssuedKey, id: &str) -> Result<(), GusError> {
        self.0.keys.insert(id, encode(rec))?;
        self.0.db.flush()?;
        Ok(())
    }

    fn check_expiry(&self, expires: NaiveDate) -> Result<(), GusError> {
        if expires < self.now().date_naive() {
            return Err(GusError::InvalidArgument(format!(
                "expires {expires} is in the past"
            )));
        }
        Ok(())
    }

    pub fn issue(&self, req: IssueRequest) -> Result<KeyFile, GusError> {
        if req.seats == 0 {
            return Err(GusError::InvalidArgument("seats must be at least 1".into()));
        }
        self.check_expiry(req.expires)?;
        let key = Key {
            id: random_id("k")?,
            license: random_id("l")?,
            serial: 1,
            customer: req.customer,
            product: req.product,
            components: Components::new(&req.components)?,
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

    /// Sells a renewal of `key_id`. One renewal is held per key: buying again
    /// replaces the one held before.
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
        if seats == 0 {
            return Err(GusError::InvalidArgument("seats must be at least 1".into()));
        }
        if expires <= old.key.expires {
            return Err(GusError::InvalidArgument(format!(
                "expires {expires} must be after the renewed key's {}",
                old.key.expires
            )));
        }
        let key = Key {
            id: random_id("k")?,
            serial: old.key.serial + 1,
            components: Components::new(&components)?,
            seats,
            issued_at: self.now(),
            expires,
            renews: Some(key_id.to_owned()),
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
        rec.renewal = Some(file.key.id.clone());
        self.put(&rec, key_id)?;
        tracing::info!(key_id, renewal = %file.key.id, "renewal purchased");
        Ok(file)
    }

    /// The renewal held for `key_id`, while that key has not expired.
    pub fn renewal_of(&self, key_id: &str) -> Result<Option<String>, GusError> {
        let (rec, file) = self.get(key_id)?;
        Ok(rec.renewal.filter(|_| !file.key.is_expired(self.now())))
    }

    pub fn download(&self, key_id: &str) -> Result<String, GusError> {
        Ok(self.get(key_id)?.0.text)
    }

    pub fn flush(&self) -> Result<(), GusError> {
        self.0.db.flush()?;
        Ok(())
    }
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
        let id = self.0.renewal_of(&r.into_inner().id)?;
        Ok(Response::new(pb::RenewalAvailability {
            available: id.is_some(),
            renewal_key_id: id.unwrap_or_default(),
        }))
    }

    async fn download_key(&self, r: Request<pb::KeyId>) -> R<pb::KeyFile> {
        Ok(Response::new(pb::KeyFile {
            text: self.0.download(&r.into_inner().id)?,
        }))
    }

    async fn submit_telemetry(&self, _: Request<pb::TelemetrySubmission>) -> R<pb::TelemetryAck> {
        Err(Status::unimplemented(
            "telemetry and compliance arrive with the telemetry issue (SPEC t01-t03)",
        ))
    }

    async fn issue_key(&self, r: Request<pb::IssueKeyRequest>) -> R<pb::KeyFile> {
        let r = r.into_inner();
        let kind = match pb::KeyKind::try_from(r.kind).unwrap_or_default() {
            pb::KeyKind::Unspecified | pb::KeyKind::Term => KeyKind::Term,
            pb::KeyKind::Subscription => KeyKind::Subscription,
            pb::KeyKind::Trial => KeyKind::Trial,
            pb::KeyKind::Nfr => KeyKind::Nfr,
        };
        let file = self.0.issue(IssueRequest {
            customer: r.customer,
            product: r.product,
            components: r.components,
            seats: r.seats,
            kind,
            expires: parse_date("expires", &r.expires)?,
        })?;
        Ok(Response::new(pb::KeyFile {
            text: file.render(),
        }))
    }

    async fn purchase_renewal(&self, r: Request<pb::PurchaseRenewalRequest>) -> R<pb::KeyFile> {
        let r = r.into_inner();
        let file = self.0.purchase_renewal(
            &r.key_id,
            r.components,
            r.seats,
            parse_date("expires", &r.expires)?,
        )?;
        Ok(Response::new(pb::KeyFile {
            text: file.render(),
        }))
    }

    async fn public_key(&self, _: Request<pb::Empty>) -> R<pb::PublicKeyReply> {
        Ok(Response::new(pb::PublicKeyReply {
            public_key_hex: self.0.public_key_hex(),
        }))
    }

    async fn compliance(&self, _: Request<pb::ComplianceRequest>) -> R<pb::ComplianceReport> {
        Err(Status::unimplemented(
            "telemetry and compliance arrive with the telemetry issue (SPEC t01-t03)",
        ))
    }

    async fn set_exempt(&self, _: Request<pb::SetExemptRequest>) -> R<pb::Empty> {
        Err(Status::unimplemented(
            "telemetry and compliance arrive with the telemetry issue (SPEC t01-t03)",
        ))
    }
}

/// Serves the Upstream service, health and reflection on `listener` until
/// `shutdown` is cancelled, then flushes the store.
pub async fn serve(
    upstream: Upstream,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GusError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<pb::upstream_server::UpstreamServer<UpstreamService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(keyfed_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| GusError::Io(std::io::Error::other(e.to_string())))?;
    tracing::info!(addr = %listener.local_addr()?, "keyfed upstream serving");
    tonic::transport::Server::builder()
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
