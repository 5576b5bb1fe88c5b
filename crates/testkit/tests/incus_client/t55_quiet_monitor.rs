//! `incus monitor` on an idle follower: its logging events are this member's log lines
//! at the daemon's level, and the members' own traffic is not among them.

use std::time::Duration;

use serde_json::{json, Value};
use stapes_testkit::{have_tool, Cluster};
use tokio::io::AsyncBufReadExt;

/// Changes `core.remote_token_expiry` on `m` (between `hours` and one more) until
/// `lines` shows the log line of a change; returns every event read until then.
async fn until_config_change_logged(
    m: &stapes_testkit::Member,
    hours: u32,
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> Vec<Value> {
    let mut seen = Vec::new();
    let limit = Duration::from_secs(20);
    tokio::time::timeout(limit, async {
        for i in 0u32.. {
            let value = format!("{}H", hours + i % 2);
            let _ = m
                .unix()
                .send_json(
                    "PATCH",
                    "/1.0",
                    &json!({"config": {"core.remote_token_expiry": value}}),
                )
                .await;
            while let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await
            {
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&line).unwrap_or_default();
                let done = v["metadata"]["message"] == "server configuration changed";
                seen.push(v);
                if done {
                    return;
                }
            }
        }
        unreachable!()
    })
    .await
    .unwrap_or_else(|_| panic!("incus monitor showed no configuration change within {limit:?}"));
    seen
}

#[tokio::test]
async fn t55_monitor_on_an_idle_follower_shows_no_member_traffic() {
    if !have_tool("incus") {
        return;
    }
    let c = Cluster::start(3).await;
    c.wait_healthy(3, Duration::from_secs(30)).await;
    let leader = c.leader(Duration::from_secs(30)).await;
    let follower = &c.members[(leader + 1) % 3];
    let conf = tempfile::tempdir().unwrap();
    let mut monitor = tokio::process::Command::new("incus")
        .args(["monitor", "--type", "logging", "--format", "json"])
        .env("INCUS_CONF", conf.path())
        .env("HOME", conf.path())
        .env("INCUS_SOCKET", follower.socket())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("incus monitor runs");
    let stdout = monitor.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();

    until_config_change_logged(follower, 5, &mut lines).await;
    follower.wait_for_requests(40, Duration::from_secs(30)).await;
    let between = until_config_change_logged(follower, 7, &mut lines).await;
    let _ = monitor.kill().await;

    assert!(!between.is_empty());
    for event in &between {
        assert_eq!(event["type"], "logging", "{event}");
        let text = event.to_string();
        assert!(!text.contains("/internal/"), "member traffic shown: {text}");
        assert_ne!(event["metadata"]["level"], "debug", "{event}");
    }
}
