//! `incus monitor` on an idle follower: its logging events are this member's log lines
//! at the daemon's level, and the members' own traffic is not among them.

use std::time::Duration;

use serde_json::Value;
use stapes_testkit::{have_tool, Cluster};

use super::{change_config_until, monitor};

fn config_change_logged(v: &Value) -> bool {
    v["metadata"]["message"] == "server configuration changed"
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
    let socket = follower.socket();
    let (mut monitor, mut lines) = monitor(conf.path(), Some(&socket), &["--type", "logging"]);

    let limit = Duration::from_secs(20);
    change_config_until(follower, 5, &mut lines, limit, config_change_logged).await;
    follower.wait_for_requests(40, Duration::from_secs(30)).await;
    let between = change_config_until(follower, 7, &mut lines, limit, config_change_logged).await;
    let _ = monitor.kill().await;

    assert!(!between.is_empty());
    for event in &between {
        assert_eq!(event["type"], "logging", "{event}");
        let text = event.to_string();
        assert!(!text.contains("/internal/"), "member traffic shown: {text}");
        assert_ne!(event["metadata"]["level"], "debug", "{event}");
    }
}
