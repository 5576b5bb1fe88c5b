//! The `ip` command (iproute2), for the few changes the daemon makes to the host's
//! addresses (`core.anycast_address` on `lo`).
//!
//! The command rather than netlink: `ip` is on every host that runs a routing daemon, and
//! it keeps netlink (and its raw sockets) out of the daemon. Each run is bounded by
//! [`COMMAND_TIMEOUT`] and killed if the caller gives up on it.

use std::net::IpAddr;
use std::time::Duration;

/// How long one `ip` command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed `ip` command.
#[derive(Debug, thiserror::Error)]
pub enum IpError {
    #[error("`ip addr {verb}` timed out")]
    Timeout { verb: &'static str },
    #[error("cannot run `ip`: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`ip addr {verb} {prefix} dev {device}`: {stderr}")]
    Failed {
        verb: &'static str,
        prefix: String,
        device: String,
        stderr: String,
    },
}

/// `ADDR/32` or `ADDR/128`: one address.
pub fn host_prefix(addr: IpAddr) -> String {
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    format!("{addr}/{bits}")
}

/// The `ip` binary: where iproute2 installs it, else from `PATH` (a daemon's `PATH` may
/// lack sbin).
fn ip_command() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("ip")
}

/// Adds `addr` as a single address on `device`, or keeps it if it is there.
pub async fn add_address(addr: IpAddr, device: &str) -> Result<(), IpError> {
    run("replace", addr, device).await
}

/// Removes `addr` from `device`. Removing an address that is not there succeeds.
pub async fn remove_address(addr: IpAddr, device: &str) -> Result<(), IpError> {
    match run("del", addr, device).await {
        // "Cannot assign requested address": it was not there.
        Err(IpError::Failed { stderr, .. }) if stderr.contains("Cannot assign requested address") => Ok(()),
        other => other,
    }
}

async fn run(verb: &'static str, addr: IpAddr, device: &str) -> Result<(), IpError> {
    let prefix = host_prefix(addr);
    let run = tokio::process::Command::new(ip_command())
        .args(["addr", verb, &prefix, "dev", device])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(COMMAND_TIMEOUT, run)
        .await
        .map_err(|_| IpError::Timeout { verb })?
        .map_err(IpError::Spawn)?;
    if out.status.success() {
        return Ok(());
    }
    Err(IpError::Failed {
        verb,
        prefix,
        device: device.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_single_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(host_prefix(ip("203.0.113.10")), "203.0.113.10/32");
        assert_eq!(host_prefix(ip("2001:db8::10")), "2001:db8::10/128");
    }
}
