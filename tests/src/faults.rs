//! A per-link fault switch: every address a node dials (child → parent,
//! neighbor → neighbor) goes through a small TCP proxy the harness owns, so a
//! test can cut one link and heal it without stopping either node.
//!
//! The proxy only moves bytes, so TLS passes through untouched: the dialer
//! still names the peer's node id as the TLS server name (see
//! `keyfed_node::tls::endpoint`), not the proxy's address.
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A TCP proxy in front of one node's port, used by one dialing node.
pub struct LinkProxy {
    /// Where the dialer connects.
    pub listen: SocketAddr,
    /// The node's real address when the proxy started (see [`Self::retarget`]).
    pub target: SocketAddr,
    cut: watch::Sender<bool>,
    to: watch::Sender<SocketAddr>,
    _stop: DropGuard,
}

impl LinkProxy {
    /// Binds `127.0.0.1:0` and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a link proxy");
        let listen = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = watch::channel(false);
        let (to, to_rx) = watch::channel(target);
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, to_rx, cut_rx, stop.clone()));
        Self {
            listen,
            target,
            cut,
            to,
            _stop: stop.drop_guard(),
        }
    }

    /// Closes every open connection and refuses new ones until [`Self::heal`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    /// Forwards new connections to `to` from now on: a node process that
    /// came back on another port (its old one was taken) is reached through
    /// the same proxy address, so the dialer's config stays as it is.
    pub fn retarget(&self, to: SocketAddr) {
        self.to.send_replace(to);
    }

    /// Where new connections go now.
    pub fn current_target(&self) -> SocketAddr {
        *self.to.borrow()
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: watch::Receiver<SocketAddr>,
    cut: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((inbound, _)) = accepted else { continue };
        if *cut.borrow() {
            // refused: the dialer sees its connection closed at once
            drop(inbound);
            continue;
        }
        let to = *target.borrow();
        tokio::spawn(forward(inbound, to, cut.clone(), stop.clone()));
    }
}

async fn forward(
    mut inbound: TcpStream,
    target: SocketAddr,
    mut cut: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return; // the node is stopped: the dialer sees a closed connection
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.wait_for(|c| *c) => {}
        () = stop.cancelled() => {}
    }
    // both sockets drop here: each side sees its connection closed
}
