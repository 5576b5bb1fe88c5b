//! The addresses the API is reachable at, from the host's interfaces.

use std::net::IpAddr;

/// The addresses clients can reach the API at, for `environment.addresses` and tokens:
/// the configured address, or for a wildcard every non-loopback address of the host
/// (loopback only when there is nothing else), each with the port (`default_port` when
/// the configured value has none).
pub fn listen_addresses(configured: &str, default_port: u16) -> Vec<String> {
    if configured.is_empty() {
        return Vec::new();
    }
    let Ok(parsed) = api::config::parse_listen_address(configured, default_port) else {
        return Vec::new();
    };
    let port = parsed.port;
    match parsed.host {
        Some(h) if h.contains(':') => vec![format!("[{h}]:{port}")],
        Some(h) => vec![format!("{h}:{port}")],
        None => {
            let ips = interface_ips();
            let external: Vec<IpAddr> = ips.iter().copied().filter(|ip| !ip.is_loopback()).collect();
            let chosen = if external.is_empty() { ips } else { external };
            chosen
                .into_iter()
                .map(|ip| match ip {
                    IpAddr::V4(v4) => format!("{v4}:{port}"),
                    IpAddr::V6(v6) => format!("[{v6}]:{port}"),
                })
                .collect()
        }
    }
}

fn interface_ips() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            let ip = v6.ip();
            // Link-local addresses need a scope a client cannot give; skip them.
            if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                out.push(IpAddr::V6(ip));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specific_and_wildcard_addresses() {
        assert_eq!(listen_addresses("127.0.0.2:8443", 8443), vec!["127.0.0.2:8443"]);
        assert_eq!(listen_addresses("127.0.0.2", 8443), vec!["127.0.0.2:8443"]);
        assert_eq!(listen_addresses("127.0.0.2", 9443), vec!["127.0.0.2:9443"]);
        assert_eq!(listen_addresses("[::1]:9000", 8443), vec!["[::1]:9000"]);
        assert!(listen_addresses("", 8443).is_empty());
        let wild = listen_addresses(":8443", 8443);
        assert!(!wild.is_empty() && wild.iter().all(|a| a.ends_with(":8443")));
    }
}
