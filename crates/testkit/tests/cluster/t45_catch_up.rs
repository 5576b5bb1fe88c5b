//! A member catches up whatever the size of the replicated state: a member that was
//! away while 64 MiB were written, and a member that joins afterwards, both receive the
//! state as a streamed snapshot; a member that cannot take it is shown as lagging,
//! never as fully operational.

use std::time::{Duration, Instant};

use serde_json::json;
use stapes_testkit::{eventually, ClientCert, Cluster, Member};

use crate::{slot, FAST, LONG};

/// Records of 512 KiB (under the 1 MiB body limit): trusted certificates with a long
/// description, each one a write.
const RECORD: usize = 512 * 1024;

/// Adds `batches` records through `target`; returns their fingerprints.
/// The index up to which `member` last purged its Raft log, from its log.
fn purged_upto(member: &Member) -> u64 {
    member
        .log()
        .lines()
        .filter(|l| l.contains("raft log purged up to index"))
        .filter_map(|l| l.split("index=").nth(1)?.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

async fn grow(member: &Member, batches: std::ops::Range<usize>) -> Vec<String> {
    let target = member.unix();
    let mut added = Vec::new();
    for batch in batches {
        let cert = ClientCert::generate(&format!("bulk-{batch}"));
        let fill = char::from(b'a' + (batch % 26) as u8);
        let body = json!({
            "type": "client",
            "name": format!("bulk-{batch}"),
            "certificate": cert.cert_pem,
            "description": fill.to_string().repeat(RECORD),
        });
        // With one member away every write needs the other follower; on overloaded cores
        // a write may time out waiting for it (503, not acknowledged) and is sent again.
        let mut attempts = 0;
        let r = loop {
            attempts += 1;
            let r = target
                .request_within(
                    "POST",
                    "/1.0/certificates",
                    Some(serde_json::to_vec(&body).unwrap()),
                    &[],
                    Duration::from_secs(60),
                )
                .await
                .expect("POST /1.0/certificates");
            if r.status != 503 || attempts == 5 {
                break r;
            }
        };
        // A write refused with 503 may still have committed; sent again it then conflicts.
        let landed =
            r.status == 201 || (attempts > 1 && String::from_utf8_lossy(&r.body).contains("already"));
        if !landed {
            let log = member.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "write {batch}: {}\nlog tail (newest first):\n{}",
                String::from_utf8_lossy(&r.body),
                tail.join("\n")
            );
        }
        added.push(cert.fingerprint);
    }
    added
}

/// How far a member has applied the replicated log (its own answer).
async fn applied(m: &Member) -> Option<u64> {
    let r = m.unix().get("/internal/ready").await.ok()?;
    r.metadata()["applied"].as_u64()
}

/// Whether a member trusts every one of `fingerprints`.
async fn has_all(m: &Member, fingerprints: &[String]) -> bool {
    let r = m
        .unix()
        .get("/1.0/certificates")
        .await
        .expect("GET /1.0/certificates");
    let listed = r.metadata().to_string();
    fingerprints.iter().all(|fp| listed.contains(fp.as_str()))
}

#[tokio::test]
async fn a_paused_member_and_a_new_member_catch_up_on_64_mib_of_state() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    let leader = c.leader(LONG).await;
    let away = (leader + 1) % 3;
    c.members[away].stop_process().await;

    let batches = 64 * 1024 * 1024 / RECORD;
    let started = Instant::now();
    let written = grow(&c.members[leader], 0..batches).await;
    println!("wrote 64 MiB in {batches} writes in {:?}", started.elapsed());
    let target = applied(&c.members[leader]).await.expect("leader's applied index");

    // The member that was away gets the state as a snapshot: its log was purged.
    c.members[away].signal(nix::sys::signal::Signal::SIGCONT);
    let resumed = Instant::now();
    eventually(
        Duration::from_secs(240),
        "the member that was away caught up",
        || async { (applied(&c.members[away]).await? >= target).then_some(()) },
    )
    .await;
    println!("the member that was away caught up in {:?}", resumed.elapsed());
    c.members[away]
        .log_when(LONG, "a snapshot install in the log", |log| {
            log.contains("snapshot installed")
        })
        .await;

    // A new member joins with the state this size.
    let fresh = Member::start().await;
    let token = c.members[leader].join_token("node4").await;
    let joining = Instant::now();
    let r = fresh.try_join("node4", &token).await;
    assert_eq!(
        r.status,
        202,
        "join: {}\n{}",
        String::from_utf8_lossy(&r.body),
        fresh.log()
    );
    eventually(Duration::from_secs(240), "the new member caught up", || async {
        (applied(&fresh).await? >= target).then_some(())
    })
    .await;
    println!("a new member joined and caught up in {:?}", joining.elapsed());
    fresh
        .log_when(LONG, "a snapshot install in the new member's log", |log| {
            log.contains("snapshot installed")
        })
        .await;
    c.members.push(fresh);

    for m in &c.members {
        assert!(has_all(m, &written).await, "a member misses records");
    }
    // Everyone is fully operational again, and writes still work with any member away.
    c.wait_healthy(3, Duration::from_secs(60)).await;
    c.members[away].stop_process().await;
    grow(&c.members[leader], batches..batches + 1).await;
    c.members[away].signal(nix::sys::signal::Signal::SIGCONT);
}

/// A member that cannot take the snapshot it needs (here: larger than it accepts) is
/// shown as lagging on every member and is not ready, rather than "Fully operational".
#[tokio::test]
async fn a_member_that_cannot_catch_up_is_shown_lagging_and_not_ready() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    let leader = c.leader(LONG).await;
    let behind = (leader + 1) % 3;
    c.members[behind].kill9();
    // More than 16 MiB of log: a snapshot is taken and the log purged. The purge runs
    // after the snapshot is built; a member back before it would just be sent the log.
    grow(&c.members[leader], 0..40).await;
    eventually(LONG, "the leader purged its log", || async {
        (purged_upto(&c.members[leader]) >= 40).then_some(())
    })
    .await;
    c.members[behind].set_env("STAPES_MAX_SNAPSHOT_SIZE", "1048576");
    c.members[behind].start_again().await;
    let name = format!("node{}", behind + 1);
    eventually(
        Duration::from_secs(60),
        "the member refused the snapshot",
        || async {
            c.members[behind]
                .log()
                .contains("larger than this member accepts")
                .then_some(())
        },
    )
    .await;
    for observer in [leader, behind] {
        eventually(Duration::from_secs(60), "listed as lagging", || async {
            let list = c.members[observer].members().await;
            let m = list.iter().find(|m| m["server_name"] == name.as_str())?;
            (m["status"] == "Blocked" && m["message"].as_str()?.starts_with("Lagging behind the leader"))
                .then_some(())
        })
        .await;
    }
    let r = c.members[behind].unix().get("/ready").await.unwrap();
    assert_eq!(r.status, 503);
    assert!(
        r.json()["error"].as_str().unwrap().contains("lagging behind"),
        "{}",
        r.json()
    );
}

/// A member whose Raft database is empty refuses to start, naming the file and how to
/// rejoin, instead of refusing its leader forever.
#[tokio::test]
async fn a_member_with_an_empty_raft_database_refuses_to_start() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    c.members[2].kill9();
    std::fs::write(c.members[2].dir.join("database/raft.redb"), b"").unwrap();
    let said = stapes_testkit::refused_start(&c.members[2].dir);
    assert!(said.contains("raft.redb is empty"), "{said}");
    assert!(said.contains("incus cluster remove node3 --force"), "{said}");
}
