//! r09: after every notification the administrator's hook runs, one at a
//! time, with the event in environment variables and a timeout. A failing or
//! hanging hook is logged and never holds up the node.
use crate::config::HookConfig;
use keyfed_store::{Notification, Store};
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Hands every published notification to the hook runner, in order.
pub struct HookSink(pub mpsc::UnboundedSender<Notification>);

impl keyfed_engine::EventSink for HookSink {
    fn published(&self, n: &Notification) {
        let _ = self.0.send(n.clone());
    }
}

pub async fn run_hooks(
    hook: HookConfig,
    node_id: String,
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Notification>,
    shutdown: CancellationToken,
) {
    loop {
        let n = tokio::select! {
            () = shutdown.cancelled() => return,
            n = rx.recv() => match n { Some(n) => n, None => return },
        };
        run_one(&hook, &node_id, &store, &n).await;
    }
}

async fn run_one(hook: &HookConfig, node_id: &str, store: &Store, n: &Notification) {
    let mut cmd = Command::new(&hook.path);
    cmd.kill_on_drop(true)
        .env("KEYFED_EVENT", &n.event)
        .env("KEYFED_KEY_ID", &n.key_id)
        .env("KEYFED_MESSAGE", &n.message)
        .env("KEYFED_NODE_ID", node_id)
        .env("KEYFED_NOTIFICATION_SEQ", n.seq.to_string())
        .stdin(std::process::Stdio::null());
    for (k, v) in &n.details {
        cmd.env(format!("KEYFED_{}", k.to_uppercase()), v);
    }
    // the hook may export the key file (r12): it is written to a temp file, never the key folder
    let _tmp = if hook.with_key_file && !n.key_id.is_empty() {
        match store.key(&n.key_id) {
            Ok(Some(k)) => key_file(&k.text, node_id, n.seq).inspect(|f| {
                cmd.env("KEYFED_KEY_FILE", f.path());
            }),
            _ => None,
        }
    } else {
        None
    };
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(hook = %hook.path.display(), error = %e, event = %n.event, "hook could not start");
            return;
        }
    };
    match tokio::time::timeout(
        Duration::from_secs(hook.timeout_secs.max(1)),
        child.wait_with_output(),
    )
    .await
    {
        Ok(Ok(out)) if out.status.success() => tracing::debug!(event = %n.event, "hook ran"),
        Ok(Ok(out)) => {
            tracing::warn!(hook = %hook.path.display(), status = %out.status, event = %n.event, "hook failed")
        }
        Ok(Err(e)) => tracing::warn!(hook = %hook.path.display(), error = %e, "hook failed"),
        Err(_) => {
            tracing::warn!(hook = %hook.path.display(), timeout_secs = hook.timeout_secs, event = %n.event, "hook timed out and was killed")
        }
    }
}

/// The key file a hook may read, in a private temp file (0600) that is
/// removed when the hook has finished; never in the key folder (r12).
fn key_file(text: &str, node_id: &str, seq: u64) -> Option<tempfile::NamedTempFile> {
    let made = tempfile::Builder::new()
        .prefix(&format!("keyfed-hook-{node_id}-{seq}-"))
        .suffix(".key")
        .tempfile()
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            Ok(f)
        });
    match made {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(error = %e, "the key file for the hook could not be written; the hook runs without it");
            None
        }
    }
}
