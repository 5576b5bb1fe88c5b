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
mod t45_catch_up;
mod t50_membership;
mod t55_logs;
mod t55_removed_member;
mod t60_any_member;
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
