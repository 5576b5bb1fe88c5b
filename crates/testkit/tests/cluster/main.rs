//! Several real members on loopback, each with its own state directory.
//!
//! Numbering: t10 forming a cluster, t20 tokens, t30 replication, t40 member loss,
//! t45 catching up, t50 roles and membership. Cluster tests take a slot from [`SLOTS`] so that no more
//! than one cluster runs at a time: the machine has two cores.

mod t10_form;
mod t20_tokens;
mod t25_join_by_certificate;
mod t30_replication;
mod t40_failures;
mod t42_forward_failures;
mod t45_catch_up;
mod t50_membership;
mod t55_logs;
mod t55_removed_member;
mod t60_any_member;
mod t65_operations;
mod t65_streaming;
mod t70_certificate;
mod t80_acme;
mod t90_haproxy;

use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

static SLOTS: Semaphore = Semaphore::const_new(1);

pub async fn slot() -> SemaphorePermit<'static> {
    SLOTS.acquire().await.expect("semaphore open")
}

/// Offline detection in tests: 3 s, the lowest threshold the issue asks to support.
pub const FAST: &[(&str, &str)] = &[("cluster.offline_threshold", "3")];

pub const LONG: Duration = Duration::from_secs(30);

/// A client certificate trusted through the first member, once every member applied it.
pub async fn trusted_client(c: &stapes_testkit::Cluster) -> stapes_testkit::ClientCert {
    let cert = stapes_testkit::ClientCert::generate("client");
    c.members[0].trust(&cert).await;
    for m in &c.members {
        let t = stapes_testkit::Target::tls(&m.address().await, Some(&cert));
        stapes_testkit::eventually(LONG, "the client trusted everywhere", || async {
            (t.get("/1.0").await.ok()?.metadata()["auth"] == "trusted").then_some(())
        })
        .await;
    }
    cert
}
