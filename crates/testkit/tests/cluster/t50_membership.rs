use std::time::Duration;

use serde_json::json;
use stapes_testkit::{eventually, Cluster};

use crate::{slot, FAST, LONG};

#[tokio::test]
async fn a_standby_is_promoted_when_a_voter_is_lost() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(4, FAST).await;
    c.wait_healthy(3, LONG).await;
    let list = c.members[0].members().await;
    assert_eq!(
        list.iter()
            .filter(|m| m["roles"].to_string().contains("database-standby"))
            .count(),
        1
    );
    let leader = c.leader(LONG).await;
    let victim = list
        .iter()
        .position(|m| {
            m["roles"] == json!(["database"]) && m["server_name"] != format!("node{}", leader + 1).as_str()
        })
        .expect("a non-leader voter");
    c.members[victim].kill9();
    let victim_name = format!("node{}", victim + 1);
    eventually(Duration::from_secs(20), "three online voters again", || async {
        let list = c.members[leader].members().await;
        let voters: Vec<_> = list
            .iter()
            .filter(|m| m["roles"].to_string().contains("\"database\""))
            .collect();
        (voters.len() == 3
            && voters
                .iter()
                .all(|m| m["status"] == "Online" && m["server_name"] != victim_name.as_str()))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn remove_force_rename_and_edit() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    // Edit.
    let r = c.members[0]
        .unix()
        .send_json(
            "PATCH",
            "/1.0/cluster/members/node2",
            &json!({"description": "rack 2", "failure_domain": "r2"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let m = c.members[2]
        .unix()
        .get("/1.0/cluster/members/node2")
        .await
        .unwrap();
    assert!(m.header("etag").is_some());
    // A token node2 issues is located on node2, under whatever name it has.
    let r = c.members[1]
        .unix()
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"name": "later", "type": "client", "token": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let op = r.metadata()["id"].as_str().unwrap().to_string();
    let location = |name: &'static str| {
        let node1 = c.members[0].unix();
        let path = format!("/1.0/operations/{op}");
        async move {
            let shown = node1.get(&path).await.ok()?.metadata();
            (shown["location"] == name).then_some(())
        }
    };
    eventually(Duration::from_secs(10), "the token on node2", || {
        location("node2")
    })
    .await;
    // Rename, seen by the member itself.
    let r = c.members[0]
        .unix()
        .send_json(
            "POST",
            "/1.0/cluster/members/node2",
            &json!({"server_name": "node2b"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    eventually(Duration::from_secs(10), "node2 knows its new name", || async {
        let me = c.members[1].unix().get("/1.0").await.ok()?.metadata();
        (me["environment"]["server_name"] == "node2b").then_some(())
    })
    .await;
    let m = c.members[0]
        .unix()
        .get("/1.0/cluster/members/node2b")
        .await
        .unwrap()
        .metadata();
    assert_eq!(
        (m["description"].as_str(), m["failure_domain"].as_str()),
        (Some("rack 2"), Some("r2"))
    );
    eventually(Duration::from_secs(10), "the token on node2b", || {
        location("node2b")
    })
    .await;

    // A dead member: refused without --force, removed with it.
    c.members[2].kill9();
    eventually(Duration::from_secs(15), "node3 offline", || async {
        let list = c.members[0].members().await;
        list.iter()
            .any(|m| m["server_name"] == "node3" && m["status"] == "Offline")
            .then_some(())
    })
    .await;
    let r = c.members[0]
        .unix()
        .request("DELETE", "/1.0/cluster/members/node3", None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = c.members[0]
        .unix()
        .request("DELETE", "/1.0/cluster/members/node3?force=1", None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let names: Vec<_> = c.members[0]
        .members()
        .await
        .iter()
        .map(|m| m["server_name"].clone())
        .collect();
    assert_eq!(names, vec![json!("node1"), json!("node2b")]);
    let unknown = c.members[0]
        .unix()
        .get("/1.0/cluster/members/node3")
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"], "Cluster member not found");
    // The two left still write.
    let r = c.members[1]
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.remote_token_expiry": "9H"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}
