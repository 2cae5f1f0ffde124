//! The open federation link of each peer: at most one, so a second link
//! never doubles deliveries.
use tokio_util::sync::CancellationToken;

/// At most one open link per peer: a newer link from (or to) the same peer
/// replaces the older one, which is closed. (A reconnect after a half-open
/// connection thus works at once; a second link never doubles deliveries.)
#[derive(Default)]
pub struct Links {
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::HashMap<String, (u64, CancellationToken)>>,
}

impl Links {
    /// Registers a link and closes the peer's older one; returns its number.
    pub fn open(&self, peer: &str, stop: CancellationToken) -> u64 {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let old = self
            .open
            .lock()
            .expect("links lock")
            .insert(peer.to_owned(), (n, stop));
        if let Some((_, old)) = old {
            tracing::warn!(%peer, "a second link from the same peer replaces the open one");
            old.cancel();
        }
        n
    }

    /// Forgets link `n`; false if a newer link of the peer replaced it.
    pub fn close(&self, peer: &str, n: u64) -> bool {
        let mut open = self.open.lock().expect("links lock");
        if open.get(peer).is_some_and(|(cur, _)| *cur == n) {
            open.remove(peer);
            true
        } else {
            false
        }
    }

    pub fn count(&self) -> usize {
        self.open.lock().expect("links lock").len()
    }
}
