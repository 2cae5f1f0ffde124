//! Backups over the Admin port: `Admin.Backup` streams a consistent cut of
//! the running node's store as a backup file (`keyfed_store::snapshot`);
//! `keyfed backup` fetches one into a file, `keyfed restore` makes a data
//! directory of it.
use crate::error::NodeError;
use crate::node::Node;
use anyhow::Context as _;
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::admin_client::AdminClient;
use keyfed_store::snapshot::{self, BackupHeader, Restored};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;

/// Bytes per streamed chunk: well under the node's message limit.
const CHUNK: usize = 512 * 1024;

pub type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// Admin.Backup: the cut is taken (and made durable) before the reply
/// starts, so a failure is the call's status and the audit trail's outcome;
/// the file is then streamed from memory, writes long since flowing again.
pub async fn stream(node: &Node) -> Result<BackupStream, NodeError> {
    let cut = node.engine.cut().await?;
    let file = Arc::new(snapshot::encode(&cut, node.id(), node.engine.now()));
    tracing::info!(
        node = %node.id(),
        commit = cut.commit,
        bytes = file.len(),
        barrier_micros = cut.barrier.as_micros(),
        "backup cut taken"
    );
    let total = file.len() as u64;
    let (commit, barrier) = (cut.commit, micros(cut.barrier));
    drop(cut);
    let chunks = file.len().div_ceil(CHUNK).max(1);
    Ok(Box::pin(tokio_stream::iter((0..chunks).map(move |i| {
        let data = file[i * CHUNK..((i + 1) * CHUNK).min(file.len())].to_vec();
        let first = i == 0;
        Ok(pb::BackupChunk {
            data,
            total_bytes: if first { total } else { 0 },
            commit: if first { commit } else { 0 },
            barrier_micros: if first { barrier } else { 0 },
        })
    }))))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How `keyfed backup` reaches a node: the address, its admin token and,
/// for an `https://` address, TLS files as keyfedctl takes them.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub addr: String,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Target {
    /// The endpoint for `addr`; over TLS for an `https://` address.
    ///
    /// # Errors
    /// A bad address, an unreadable TLS file, `--cert` without `--key`.
    pub fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let ep = Endpoint::from_shared(self.addr.clone())
            .with_context(|| format!("{:?} is not a valid address", self.addr))?;
        if !self.addr.starts_with("https://") {
            return Ok(ep);
        }
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let ca = self.ca.as_deref().context(
            "an https:// address needs --ca (or KEYFED_CA): the CA that signed the node's certificate",
        )?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => anyhow::bail!("--cert and --key (KEYFED_CERT, KEYFED_KEY) go together"),
        }
        ep.tls_config(tls).context("configuring TLS")
    }
}

/// Adds the admin token to the call, as keyfedctl does.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(t) = &self.0 {
            r.metadata_mut().insert("authorization", t.clone());
        }
        Ok(r)
    }
}

/// What `keyfed backup` wrote.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    pub bytes: u64,
    pub header: BackupHeader,
    /// How long the node held writes back for the cut.
    pub barrier: Duration,
}

/// Fetches a backup of the node at `target` into `out`: written to a
/// temporary file beside it, read back and verified (checksum and layout),
/// synced, then renamed to `out`. On any failure `out` is untouched and the
/// temporary file removed.
///
/// # Errors
/// The node refused (e.g. `PERMISSION_DENIED` for a read-only token) or
/// could not be reached, the stream broke off, or the file did not verify.
pub async fn fetch(target: &Target, out: &Path) -> anyhow::Result<Fetched> {
    let channel = target
        .endpoint()?
        .connect()
        .await
        .with_context(|| format!("could not reach {}", target.addr))?;
    let token = target
        .token
        .as_deref()
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .context("the token has characters not allowed in a header")?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .with_context(|| format!("{} names no file", out.display()))?
        .to_string_lossy()
        .into_owned();
    let partial = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let fetched = download(channel, token, &partial, out).await;
    if fetched.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    fetched
}

async fn download(
    channel: tonic::transport::Channel,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    partial: &Path,
    out: &Path,
) -> anyhow::Result<Fetched> {
    let mut client = AdminClient::with_interceptor(channel, Bearer(token))
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES * 2);
    let mut chunks = client
        .backup(pb::BackupRequest {})
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "the node refused the backup: {}: {}",
                crate::auth::code_name(s.code()),
                s.message()
            )
        })?
        .into_inner();
    let mut f = tokio::fs::File::create(partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let (mut total, mut barrier, mut got) = (0u64, 0u64, 0u64);
    while let Some(c) = chunks.next().await {
        let c = c.map_err(|s| {
            anyhow::anyhow!(
                "the backup stream broke off after {got} bytes: {}: {}",
                crate::auth::code_name(s.code()),
                s.message()
            )
        })?;
        if got == 0 {
            (total, barrier) = (c.total_bytes, c.barrier_micros);
        }
        got += c.data.len() as u64;
        f.write_all(&c.data)
            .await
            .with_context(|| format!("writing {}", partial.display()))?;
    }
    anyhow::ensure!(
        got == total,
        "the backup stream ended after {got} of {total} bytes: take the backup again"
    );
    f.sync_all()
        .await
        .with_context(|| format!("syncing {}", partial.display()))?;
    drop(f);
    // what is on disk is what gets renamed: read it back and check it whole
    let written = tokio::fs::read(partial)
        .await
        .with_context(|| format!("reading back {}", partial.display()))?;
    let snap = snapshot::decode(&written).with_context(|| {
        format!(
            "the backup received from the node does not verify ({})",
            partial.display()
        )
    })?;
    tokio::fs::rename(partial, out)
        .await
        .with_context(|| format!("moving the backup to {}", out.display()))?;
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing the directory {}", dir.display()))?;
    }
    Ok(Fetched {
        path: out.to_owned(),
        bytes: got,
        header: snap.header,
        barrier: Duration::from_micros(barrier),
    })
}

/// `keyfed restore FILE --data-dir DIR`: checks the file whole, then makes
/// the data directory `data_dir` of it (refused unless it is absent or
/// empty). A damaged, truncated or foreign file is refused before anything
/// is created.
///
/// # Errors
/// The file cannot be read or does not verify ([`snapshot::SnapshotError`]
/// inside, saying what is wrong), `data_dir` is not empty, or the store
/// cannot be written.
pub fn restore(file: &Path, data_dir: &Path) -> anyhow::Result<(BackupHeader, Restored)> {
    let bytes =
        std::fs::read(file).with_context(|| format!("reading the backup {}", file.display()))?;
    let snap = snapshot::decode(&bytes)
        .with_context(|| format!("{} cannot be restored", file.display()))?;
    let done = snapshot::restore_into(&snap, data_dir).with_context(|| {
        format!(
            "restoring {} into the data directory {}",
            file.display(),
            data_dir.display()
        )
    })?;
    Ok((snap.header, done))
}
