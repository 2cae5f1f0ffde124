//! The API's `Host` check: a defence against DNS rebinding for nodes that
//! trust loopback callers.
use super::ApiError;
use crate::config::NodeConfig;
use tonic::codegen::http;
use tonic::Code;

/// Which `Host` a request may name. A node that administers without
/// credentials (no admin tokens, no administrator certificates) trusts
/// whoever reaches it on loopback; a web page can reach loopback too, under
/// a name of the attacker's that resolves there (DNS rebinding), and then
/// reads the replies as same-origin. Such a node answers only requests
/// addressed to an IP address or `localhost`, which a rebinding page cannot
/// send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCheck {
    Any,
    AddressOrLocalhost,
}

impl HostCheck {
    #[must_use]
    pub fn for_config(cfg: &NodeConfig) -> Self {
        let credentials = !cfg.admin_tokens.is_empty()
            || cfg.tls.as_ref().is_some_and(|t| !t.admin_names.is_empty());
        if credentials {
            Self::Any
        } else {
            Self::AddressOrLocalhost
        }
    }

    pub(super) fn check(self, headers: &http::HeaderMap) -> Result<(), ApiError> {
        if self == Self::Any {
            return Ok(());
        }
        let host = headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if host_is_address_or_localhost(host) {
            return Ok(());
        }
        Err(ApiError::new(
            Code::PermissionDenied,
            format!(
                "Host {host:?} refused: this node administers without credentials, so its API answers only requests addressed to an IP address or localhost (a defence against DNS rebinding); use http://127.0.0.1:PORT, or configure [[admin_tokens]] to reach it by name"
            ),
        ))
    }
}

/// `localhost`, an IPv4 address or a bracketed IPv6 address, with or
/// without a port.
fn host_is_address_or_localhost(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').is_some_and(|(ip, port)| {
            ip.parse::<std::net::Ipv6Addr>().is_ok()
                && (port.is_empty() || port.strip_prefix(':').is_some_and(is_port))
        });
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_free_node_takes_only_addresses_and_localhost_as_host() {
        for ok in [
            "127.0.0.1:7603",
            "127.0.0.1",
            "localhost",
            "LOCALHOST:80",
            "[::1]:7603",
            "[::1]",
            "10.0.0.7:7603",
        ] {
            assert!(host_is_address_or_localhost(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7603",
            "127.0.0.1.evil.example",
            "localhost.evil:1",
            "",
            "[::1",
            "[::1]x",
            "127.0.0.1:",
            "127.0.0.1:99999x",
            "keyfed",
        ] {
            assert!(!host_is_address_or_localhost(bad), "{bad}");
        }
        let mut cfg = NodeConfig::default();
        assert_eq!(HostCheck::for_config(&cfg), HostCheck::AddressOrLocalhost);
        cfg.admin_tokens.push(crate::config::AdminToken::default());
        assert_eq!(HostCheck::for_config(&cfg), HostCheck::Any);
        let mut h = http::HeaderMap::new();
        h.insert(http::header::HOST, "rebound.example:7603".parse().unwrap());
        let e = HostCheck::AddressOrLocalhost.check(&h).unwrap_err();
        assert_eq!((e.code, e.http.as_u16()), (Code::PermissionDenied, 403));
        assert!(e.message.contains("DNS rebinding"), "{}", e.message);
        assert!(HostCheck::Any.check(&h).is_ok());
    }
}
