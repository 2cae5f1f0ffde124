//! Ports for test nodes that must survive a restart.
//!
//! A node that is stopped and started again wants its old port back, but
//! while it is down that port is just a free port, and if it came from the
//! kernel's ephemeral range any outgoing connection in the machine may take
//! it as its source port (CI once failed on exactly that). So node ports are
//! picked below that range, at random, and bound to check they are free:
//! nothing takes such a port by itself, only another harness picking the
//! same one, which the restart path handles by moving the node.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr, TcpListener};

/// The lowest port the kernel hands out by itself (Linux's
/// `ip_local_port_range`; 32768, its default, where it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A random number from the standard library's per-process random keys.
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// A listener on `ip` at a port the kernel never picks for itself; the
/// kernel's own choice (port 0) if no such port is found free.
pub fn bind_restartable(ip: IpAddr) -> TcpListener {
    let high = ephemeral_low();
    let low = 10_000u16.min(high.saturating_sub(1_000));
    if high > low {
        for _ in 0..64 {
            let port = low + u16::try_from(random() % u64::from(high - low)).expect("in range");
            if let Ok(l) = TcpListener::bind(SocketAddr::new(ip, port)) {
                return l;
            }
        }
    }
    TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind a port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restartable_ports_are_below_the_ephemeral_range() {
        let low = ephemeral_low();
        for _ in 0..20 {
            let l = bind_restartable([127, 0, 0, 1].into());
            assert!(l.local_addr().unwrap().port() < low);
        }
    }
}
