//! Facts about the host that do not change while the daemon runs (read once at start),
//! and the `sysinfo` a member reports in its state.

use std::collections::BTreeMap;
use std::path::Path;

use crate::read::{read_bounded, read_trimmed, MAX_READ};

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
            hostname: read_value("/proc/sys/kernel/hostname").unwrap_or_else(|| "localhost".into()),
            kernel: read_value("/proc/sys/kernel/ostype").unwrap_or_else(|| "Linux".into()),
            kernel_version: read_value("/proc/sys/kernel/osrelease").unwrap_or_default(),
            kernel_architecture: arch,
            os_name: os.get("NAME").cloned().unwrap_or_default(),
            os_version: os.get("VERSION_ID").cloned().unwrap_or_default(),
            architectures,
        }
    }
}

/// A one-line procfs value, `None` when missing or empty.
fn read_value(path: &str) -> Option<String> {
    read_trimmed(Path::new(path)).filter(|s| !s.is_empty())
}

fn read_os_release() -> BTreeMap<String, String> {
    let text = read_bounded(Path::new("/etc/os-release"), MAX_READ).unwrap_or_default();
    parse_os_release(&text)
}

fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
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
    let uptime = read_value("/proc/uptime")
        .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    let loadavg = read_value("/proc/loadavg").unwrap_or_default();
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
}
