//! Facts about the host that do not change while the daemon runs, read once at start,
//! and the addresses the API is reachable at.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// What `environment` reports about the host.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    pub hostname: String,
    pub kernel: String,
    pub kernel_version: String,
    pub kernel_architecture: String,
    pub os_name: String,
    pub os_version: String,
    pub architectures: Vec<String>,
}

impl HostInfo {
    pub fn read() -> Self {
        let os = read_os_release();
        let arch = std::env::consts::ARCH.to_string();
        let mut architectures = vec![arch.clone()];
        if arch == "x86_64" {
            architectures.push("i686".into());
        }
        HostInfo {
            hostname: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_else(|| "localhost".into()),
            kernel: read_trimmed("/proc/sys/kernel/ostype").unwrap_or_else(|| "Linux".into()),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
            kernel_architecture: arch,
            os_name: os.get("NAME").cloned().unwrap_or_default(),
            os_version: os.get("VERSION_ID").cloned().unwrap_or_default(),
            architectures,
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn read_os_release() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    parse_os_release(&text)
}

fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// The addresses clients can reach the API at, for `environment.addresses` and tokens:
/// the configured address, or for a wildcard every non-loopback address of the host
/// (loopback only when there is nothing else), each with the port.
pub fn listen_addresses(configured: &str) -> Vec<String> {
    if configured.is_empty() {
        return Vec::new();
    }
    let Ok(parsed) = api::config::parse_listen_address(configured, crate::listeners::DEFAULT_PORT) else {
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

/// The `sysinfo` of a member's state, from /proc (Linux `sysinfo(2)` fields).
pub fn sysinfo() -> serde_json::Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let uptime = read_trimmed("/proc/uptime")
        .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    let loadavg = read_trimmed("/proc/loadavg").unwrap_or_default();
    let mut fields = loadavg.split_whitespace();
    let loads: Vec<f64> = fields.by_ref().take(3).filter_map(|v| v.parse().ok()).collect();
    let processes = fields
        .next()
        .and_then(|p| p.split_once('/'))
        .and_then(|(_, total)| total.parse::<u64>().ok())
        .unwrap_or(0);
    serde_json::json!({
        "uptime": uptime,
        "load_averages": loads,
        "total_ram": kb("MemTotal"),
        "free_ram": kb("MemFree"),
        "shared_ram": kb("Shmem"),
        "buffered_ram": kb("Buffers"),
        "total_swap": kb("SwapTotal"),
        "free_swap": kb("SwapFree"),
        "processes": processes,
        "logical_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parses_quotes() {
        let m = parse_os_release("NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n");
        assert_eq!(m["NAME"], "Debian GNU/Linux");
        assert_eq!(m["VERSION_ID"], "12");
    }

    #[test]
    fn specific_and_wildcard_addresses() {
        assert_eq!(listen_addresses("127.0.0.2:8443"), vec!["127.0.0.2:8443"]);
        assert_eq!(listen_addresses("127.0.0.2"), vec!["127.0.0.2:8443"]);
        assert_eq!(listen_addresses("[::1]:9000"), vec!["[::1]:9000"]);
        assert!(listen_addresses("").is_empty());
        let wild = listen_addresses(":8443");
        assert!(!wild.is_empty() && wild.iter().all(|a| a.ends_with(":8443")));
    }
}
