//! `core.anycast_address`: the member holds an anycast address on `lo` only while it is
//! ready, so that a routing daemon on the host (bird, FRR) announcing that address
//! (`protocol direct` on `lo`, or a static route checked against it) withdraws the route
//! the moment the member cannot serve.
//!
//! ```text
//!  start:       remove the configured address (a crashed run may have left it)
//!  every 100 ms: want = the configured address if readiness() is Ok, else none
//!                plan(held, want) ─> [remove held] [add want] ─> `ip addr del|replace ADDR dev lo`
//!  shutdown:    remove it at once, before the drain period, so routers move new
//!               connections away while established ones are still served
//! ```
//!
//! The address is changed with the `ip` command (iproute2, run by `host::ip`): it is on
//! every host that runs a routing daemon, and it keeps netlink out of the daemon. A failed
//! `ip` command is logged and retried after [`RETRY`]; a failed add leaves the address
//! absent, which is the safe side (the route is not announced).

use std::net::IpAddr;
use std::time::Duration;

use crate::context::Ctx;

/// The interface that holds the address.
pub const INTERFACE: &str = "lo";
/// How often readiness and the configured address are looked at.
pub const TICK: Duration = Duration::from_millis(100);
/// How long to wait before trying again after an `ip` command failed.
pub const RETRY: Duration = Duration::from_secs(5);

/// One change to the host's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Add(IpAddr),
    Remove(IpAddr),
}

/// The address wanted on the host now: the configured one (already validated on
/// write) while the member is ready.
pub fn wanted(configured: Option<IpAddr>, ready: bool) -> Option<IpAddr> {
    configured.filter(|_| ready)
}

/// The steps that take the host from holding `held` to holding `want`: the old address
/// goes first, so a host never announces two.
pub fn plan(held: Option<IpAddr>, want: Option<IpAddr>) -> Vec<Step> {
    if held == want {
        return Vec::new();
    }
    held.map(Step::Remove)
        .into_iter()
        .chain(want.map(Step::Add))
        .collect()
}

/// Runs one step. Removing an address that is not there succeeds.
async fn apply(step: Step) -> Result<(), host::ip::IpError> {
    match step {
        Step::Add(a) => host::ip::add_address(a, INTERFACE).await,
        Step::Remove(a) => host::ip::remove_address(a, INTERFACE).await,
    }
}

/// Follows readiness until shutdown begins, then removes the address and returns.
pub async fn run(ctx: Ctx) {
    let mut stop = ctx.shutdown_tx.subscribe();
    let configured = || ctx.settings().anycast_address;
    // A run that crashed may have left the address behind: start from "absent".
    if let Some(stale) = wanted(configured(), true) {
        if let Err(e) = apply(Step::Remove(stale)).await {
            tracing::warn!(error = %e, "cannot remove the anycast address at start");
        }
    }
    let mut held: Option<IpAddr> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = transport::listen::stopped(&mut stop) => break,
        }
        if retry_at.is_some_and(|t| tokio::time::Instant::now() < t) {
            continue;
        }
        let readiness = ctx.readiness();
        let want = wanted(configured(), readiness.is_ok());
        for step in plan(held, want) {
            match apply(step).await {
                Ok(()) => {
                    retry_at = None;
                    held = match step {
                        Step::Add(a) => Some(a),
                        Step::Remove(_) => None,
                    };
                    match step {
                        Step::Add(a) => {
                            tracing::info!(address = %a, interface = INTERFACE, "ready: holding the anycast address")
                        }
                        Step::Remove(a) => tracing::info!(
                            address = %a,
                            reason = readiness.as_ref().err().map(String::as_str).unwrap_or("address changed"),
                            "removed the anycast address"
                        ),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry = ?RETRY, "cannot change the anycast address");
                    // A failed removal still counts as done: retrying it would only repeat
                    // the warning, and the next change tries again anyway.
                    if let Step::Remove(_) = step {
                        held = None;
                    }
                    retry_at = Some(tokio::time::Instant::now() + RETRY);
                    break;
                }
            }
        }
    }
    if let Some(a) = held {
        match apply(Step::Remove(a)).await {
            Ok(()) => tracing::info!(address = %a, "shutting down: removed the anycast address"),
            Err(e) => tracing::warn!(error = %e, "shutting down: cannot remove the anycast address"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn wanted_only_while_ready_and_configured() {
        let configured = |v: &str| {
            let local = [("core.anycast_address".to_string(), v.to_string())].into();
            api::Settings::new(&Default::default(), &local).anycast_address
        };
        assert_eq!(
            wanted(configured("203.0.113.10/32"), true),
            Some(ip("203.0.113.10"))
        );
        assert_eq!(wanted(configured("2001:db8::10"), true), Some(ip("2001:db8::10")));
        assert_eq!(wanted(configured("203.0.113.10"), false), None);
        assert_eq!(wanted(configured(""), true), None);
        // Never acts on a value validation would have refused.
        assert_eq!(wanted(configured("203.0.113.0/24"), true), None);
    }

    #[test]
    fn plans_remove_before_add() {
        let (a, b) = (ip("203.0.113.10"), ip("203.0.113.11"));
        assert_eq!(plan(None, None), vec![]);
        assert_eq!(plan(Some(a), Some(a)), vec![]);
        assert_eq!(plan(None, Some(a)), vec![Step::Add(a)]);
        assert_eq!(plan(Some(a), None), vec![Step::Remove(a)]);
        assert_eq!(plan(Some(a), Some(b)), vec![Step::Remove(a), Step::Add(b)]);
    }
}
