//! High availability at the network, with the real software, in network namespaces the
//! tests make: keepalived (VRRP) moving a virtual IP between member hosts, and bird2 (BGP
//! with BFD) spreading an anycast address over member hosts with ECMP.
//!
//! Every member "host" is a namespace on a LAN bridge with a real `stapesd` listening on
//! the wildcard `:8443`; a client namespace probes the service address. No namespace has
//! a route out, and every address is in a documentation range (198.51.100.0/24 for the
//! LAN, 203.0.113.0/24 for the anycast address and the client behind the router).
//!
//! Numbering: t10 VRRP, t20 ECMP. The tests need root, `ip`, keepalived and bird: they
//! skip with a message when one is missing locally, and fail under `CI=true`. They take
//! [`slot`] so that only one lab runs at a time.

mod t10_vrrp;
mod t20_ecmp;

use std::time::Duration;

use stapes_testkit::netns::Lab;
use stapes_testkit::{eventually, have_tool, Member};
use tokio::sync::{Semaphore, SemaphorePermit};

static SLOTS: Semaphore = Semaphore::const_new(1);

pub async fn slot() -> SemaphorePermit<'static> {
    SLOTS.acquire().await.expect("semaphore open")
}

/// The LAN: 198.51.100.0/24.
pub const LAN: &str = "198.51.100";
/// The HTTPS port every member listens on (wildcard).
pub const PORT: u16 = 8443;
/// How long a SIGTERMed member keeps serving while not ready.
pub const DRAIN_S: &str = "3";

/// Whether this machine can run the lab: root and every tool in `tools`.
pub fn can_run(tools: &[&str]) -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the network namespace tests need root under CI=true");
        }
        eprintln!("SKIP: network namespace tests need root");
        return false;
    }
    tools.iter().all(|t| have_tool(t))
}

/// `198.51.100.N`.
pub fn lan_ip(n: u8) -> String {
    format!("{LAN}.{n}")
}

/// Three members, one per host `m1`..`m3` (198.51.100.11-13), listening on `:8443`,
/// formed into one cluster (so two of them keep a quorum when one dies). Each takes
/// `local` configuration (e.g. `core.anycast_address`) before joining.
pub async fn cluster_in(lab: &mut Lab, local: &[(&str, &str)]) -> Vec<Member> {
    let mut members: Vec<Member> = Vec::new();
    for i in 1..=3u8 {
        let host = format!("m{i}");
        lab.host(&host, &format!("{}/24", lan_ip(10 + i))).expect("host");
        let ns = lab.ns(&host);
        let m = Member::start_in(Some(&ns), &[("STAPES_DRAIN", DRAIN_S)]).await;
        let mut config = serde_json::json!({"core.https_address": format!(":{PORT}")});
        for (k, v) in local {
            config[*k] = serde_json::json!(v);
        }
        if i == 1 {
            config["cluster.https_address"] = serde_json::json!(format!("{}:{PORT}", lan_ip(11)));
        }
        let r = m
            .unix()
            .send_json("PATCH", "/1.0", &serde_json::json!({ "config": config }))
            .await
            .expect("PATCH /1.0");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        if i == 1 {
            let r = m
                .unix()
                .send_json(
                    "PUT",
                    "/1.0/cluster",
                    &serde_json::json!({"server_name": host, "enabled": true}),
                )
                .await
                .expect("PUT /1.0/cluster");
            assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        } else {
            let token = members[0].join_token(&host).await;
            let r = m
                .try_join_at(&host, &token, &format!("{}:{PORT}", lan_ip(10 + i)))
                .await;
            assert_eq!(
                r.status,
                202,
                "join {host}: {}\n{}",
                String::from_utf8_lossy(&r.body),
                m.log()
            );
        }
        members.push(m);
    }
    eventually(Duration::from_secs(30), "three members online", || async {
        let list = members[0].members().await;
        (list.len() == 3 && list.iter().all(|v| v["status"] == "Online")).then_some(())
    })
    .await;
    members
}

/// Prints a measured figure in one recognisable line.
pub fn report(what: &str, f: &stapes_testkit::netns::Failover) {
    println!(
        "MEASURED {what}: {} -> {}: {} ms, {} of {} attempts failed",
        f.before.as_deref().unwrap_or("?"),
        f.after.as_deref().unwrap_or("?"),
        f.time
            .map(|t| t.as_millis().to_string())
            .unwrap_or_else(|| "n/a".into()),
        f.failed,
        f.attempts
    );
}
