use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use stapes_testkit::{events_unix, eventually, next_lifecycle, ClientCert, Cluster, Member, Target};
use tokio_tungstenite::tungstenite::Message;

use crate::{slot, FAST, LONG};

async fn trusted_cluster() -> (Cluster, ClientCert) {
    let c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    let cert = crate::trusted_client(&c).await;
    (c, cert)
}

#[tokio::test]
async fn target_reaches_each_member_through_any_member() {
    let _slot = slot().await;
    let (c, cert) = trusted_cluster().await;
    let a1 = c.members[0].address().await;
    for (i, name) in ["node1", "node2", "node3"].iter().enumerate() {
        let want = c.members[i].address().await;
        for via in [c.members[0].unix(), Target::tls(&a1, Some(&cert))] {
            let r = via.get(&format!("/1.0?target={name}")).await.unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let env = &r.metadata()["environment"];
            assert_eq!(env["server_name"], *name);
            assert_eq!(env["addresses"], json!([want]));
        }
    }
    // The target's own view of per-member endpoints.
    let pid3 = c.members[2].pid();
    let r = c.members[0].unix().get("/1.0?target=node3").await.unwrap();
    assert_eq!(r.metadata()["environment"]["server_pid"], pid3);
    assert_eq!(
        c.members[0]
            .unix()
            .get("/1.0/resources?target=node2")
            .await
            .unwrap()
            .status,
        200
    );
    let m = c.members[0]
        .unix()
        .get("/1.0/metrics?target=node3")
        .await
        .unwrap();
    assert_eq!(m.status, 200);
    let state = c.members[0]
        .unix()
        .get("/1.0/cluster/members/node3/state")
        .await
        .unwrap();
    assert!(state.metadata()["sysinfo"]["total_ram"].as_u64().unwrap() > 0);
    // Unknown member: 404. Cluster-wide lists ignore target.
    let r = c.members[1].unix().get("/1.0?target=nosuchnode").await.unwrap();
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("Cluster member not found"))
    );
    let list = c.members[0]
        .unix()
        .get("/1.0/cluster/members?target=node2")
        .await
        .unwrap();
    assert_eq!(list.metadata().as_array().unwrap().len(), 3);
    // A write of a member-local key lands on the target and nowhere else: node2's
    // listener widens to every address on its port (so the cluster still reaches it at
    // its address), while node1, which relayed the write, and node3 keep their own.
    let own = |i: usize| {
        let u = c.members[i].unix();
        async move { u.get("/1.0").await.unwrap().metadata()["config"]["core.https_address"].clone() }
    };
    let before = [own(0).await, own(1).await, own(2).await];
    let port = before[1]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    let wider = format!("0.0.0.0:{port}");
    let r = Target::tls(&a1, Some(&cert))
        .send_json(
            "PATCH",
            "/1.0?target=node2",
            &json!({"config": {"core.https_address": wider}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(own(1).await, json!(wider), "the target has it");
    assert_eq!(
        [own(0).await, own(2).await],
        [before[0].clone(), before[2].clone()],
        "nobody else"
    );
    let seen = Target::tls(&a1, Some(&cert))
        .get("/1.0?target=node2")
        .await
        .unwrap();
    assert_eq!(seen.metadata()["config"]["core.https_address"], json!(wider));
}

#[tokio::test]
async fn target_on_a_standalone_server_is_400() {
    let m = Member::start().await;
    let r = m.unix().get("/1.0?target=node2").await.unwrap();
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("Target only allowed when clustered"))
    );
}

/// The identity arrives at the target as the client's, and forged headers gain nothing,
/// directly or through forwarding.
#[tokio::test]
async fn forwarded_identity_cannot_be_forged() {
    let _slot = slot().await;
    let (c, cert) = trusted_cluster().await;
    let a1 = c.members[0].address().await;
    let forged = [
        ("X-Incus-forwarded-protocol", "unix"),
        ("X-Incus-forwarded-username", "root"),
        ("X-Incus-forwarded-address", "@"),
    ];
    let r = Target::tls(&a1, Some(&cert))
        .request("GET", "/1.0?target=node2", None, &forged)
        .await
        .unwrap();
    let md = r.metadata();
    assert_eq!(md["environment"]["server_name"], "node2");
    assert_eq!(md["auth_user_method"], "tls");
    assert_eq!(md["auth_user_name"], cert.fingerprint);
    // Untrusted with forged headers: untrusted, and not forwarded.
    let r = Target::tls(&a1, None)
        .request("GET", "/1.0?target=node2", None, &forged)
        .await
        .unwrap();
    assert_eq!(r.metadata()["auth"], "untrusted");
    let r = Target::tls(&a1, None)
        .request("GET", "/1.0/certificates?target=node2", None, &forged)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    // The lifecycle event on the target names the real client.
    let mut ws = events_unix(&c.members[1].socket(), "type=lifecycle")
        .await
        .unwrap();
    let r = Target::tls(&a1, Some(&cert))
        .request(
            "PATCH",
            "/1.0?target=node2",
            Some(serde_json::to_vec(&json!({"config": {"core.remote_token_expiry": "6H"}})).unwrap()),
            &forged,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let e = next_lifecycle(&mut ws, "config-updated").await;
    // Made by node2 (the relay also carries node1's and node3's events to this stream).
    assert_eq!(e["location"], "node2", "{e}");
    assert_eq!(e["metadata"]["requestor"]["protocol"], "tls");
    assert_eq!(e["metadata"]["requestor"]["username"], cert.fingerprint);
    assert_eq!(e["metadata"]["requestor"]["address"], "127.0.0.1");
}

/// A dead member fails at once; a hung one within the forward timeout; healthy members
/// keep answering meanwhile.
#[tokio::test]
async fn sick_members_never_stall_the_cluster() {
    let _slot = slot().await;
    let (mut c, _) = trusted_cluster().await;
    let r = c.members[0]
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"cluster.forward_timeout": "2"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let leader = c.leader(LONG).await;
    let (front, hung, dead) = match leader {
        0 => (0, 1, 2),
        1 => (1, 0, 2),
        _ => (2, 0, 1),
    };
    let name = |i: usize| format!("node{}", i + 1);

    // Hung: accepts TCP, answers nothing.
    c.members[hung].stop_process().await;
    let u = c.members[front].unix();
    let hung_path = format!("/1.0?target={}", name(hung));
    let started = Instant::now();
    let pending = tokio::spawn(async move { u.get(&hung_path).await });
    let healthy = c.members[front].unix();
    for _ in 0..20 {
        let t = Instant::now();
        let r = healthy.get(&format!("/1.0?target={}", name(dead))).await.unwrap();
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a healthy member stalled: {:?}",
            t.elapsed()
        );
    }
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let took = started.elapsed();
    println!("a request to a hung member failed after {took:?} (forward timeout 2 s)");
    assert!(
        took < Duration::from_secs(8),
        "hung member stalled the request for {took:?}"
    );
    c.members[hung].signal(nix::sys::signal::Signal::SIGCONT);

    // Dead: connection refused, at once.
    c.members[dead].kill9();
    let t = Instant::now();
    let r = c.members[front]
        .unix()
        .get(&format!("/1.0?target={}", name(dead)))
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    println!("a request to a dead member failed after {:?}", t.elapsed());
    // "At once" rather than after a timeout; loose, since CI machines are busy.
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// Events from every member reach a listener on any member, and a member that dies and
/// returns is picked up again.
#[tokio::test]
async fn events_from_every_member_survive_a_restart() {
    let _slot = slot().await;
    let (mut c, _) = trusted_cluster().await;
    let mut ws = events_unix(&c.members[0].socket(), "type=lifecycle")
        .await
        .unwrap();
    let change = |m: &Member, v: &str| {
        let u = m.unix();
        let body = json!({"config": {"core.remote_token_expiry": v}});
        async move { u.send_json("PATCH", "/1.0?target=node3", &body).await }
    };
    let mut seen_node3 = false;
    for i in 0..50 {
        change(&c.members[2], &format!("{}H", i + 1)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
        if let Ok(Some(Ok(Message::Text(t)))) = got {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["location"] == "node3" {
                seen_node3 = true;
                break;
            }
        }
    }
    assert!(seen_node3, "node1's listener saw node3's event");
    c.members[2].restart().await;
    let mut again = false;
    let deadline = Instant::now() + LONG;
    let mut i = 100;
    while Instant::now() < deadline && !again {
        i += 1;
        let _ = change(&c.members[2], &format!("{i}M")).await;
        let got = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
        if let Ok(Some(Ok(Message::Text(t)))) = got {
            let v: Value = serde_json::from_str(&t).unwrap();
            again = v["location"] == "node3";
        }
    }
    assert!(again, "events from node3 after its restart");
}

#[tokio::test]
async fn operations_are_reachable_through_any_member() {
    let _slot = slot().await;
    let mut c = Cluster::start_with(1, FAST).await;
    // node2's join leaves a finished operation in node2's memory.
    let joiner = Member::start().await;
    let token = c.members[0].join_token("node2").await;
    let r = joiner.try_join("node2", &token).await;
    assert_eq!(r.status, 202);
    let op = r.metadata()["id"].as_str().unwrap().to_string();
    c.members.push(joiner);
    let all = c.members[0]
        .unix()
        .get("/1.0/operations")
        .await
        .unwrap()
        .metadata()
        .to_string();
    assert!(all.contains(&op), "node1 lists node2's operation: {all}");
    let shown = c.members[0]
        .unix()
        .get(&format!("/1.0/operations/{op}"))
        .await
        .unwrap();
    assert_eq!(shown.status, 200);
    assert_eq!(shown.metadata()["location"], "node2");
    let waited = c.members[0]
        .unix()
        .get(&format!("/1.0/operations/{op}/wait?timeout=5"))
        .await
        .unwrap();
    assert_eq!(waited.metadata()["status"], "Success");
    let missing = c.members[0].unix().get("/1.0/operations/nope").await.unwrap();
    assert_eq!(missing.status, 404);
    // A token made on node2 is waited on through node1.
    let r = c.members[1]
        .unix()
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"name": "w", "type": "client", "token": true}),
        )
        .await
        .unwrap();
    let tok = r.metadata()["id"].as_str().unwrap().to_string();
    let r = eventually(Duration::from_secs(5), "token visible on node1", || async {
        let r = c.members[0]
            .unix()
            .get(&format!("/1.0/operations/{tok}"))
            .await
            .ok()?;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(r.metadata()["class"], "token");
}

/// Forwarded requests share a kept connection per member; when the member behind it
/// restarts, the first request after it is back still succeeds (the stale connection
/// is not used for it), and so do concurrent ones.
#[tokio::test]
async fn forwarding_survives_a_restarted_target_and_concurrency() {
    let _slot = slot().await;
    let (mut c, cert) = trusted_cluster().await;
    let via = Target::tls(&c.members[0].address().await, Some(&cert));
    let burst = |n: usize| {
        let via = via.clone();
        async move {
            let calls = (0..n).map(|_| {
                let via = via.clone();
                async move { via.get("/1.0?target=node2").await.map(|r| r.status) }
            });
            futures_util::future::join_all(calls).await
        }
    };
    for r in burst(12).await {
        assert_eq!(r.unwrap(), 200);
    }
    c.members[1].restart().await;
    let direct = Target::tls(&c.members[1].address().await, Some(&cert));
    eventually(LONG, "node2 serving again", || {
        let direct = direct.clone();
        async move { (direct.get("/1.0").await.ok()?.status == 200).then_some(()) }
    })
    .await;
    eventually(LONG, "node2 online for node1", || async {
        let list = c.members[0].members().await;
        list.iter().all(|m| m["status"] == "Online").then_some(())
    })
    .await;
    let r = via.get("/1.0?target=node2").await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.metadata()["environment"]["server_pid"], c.members[1].pid());
    for r in burst(12).await {
        assert_eq!(r.unwrap(), 200);
    }
}

/// Through a member that does not own the route: every protected route of the table
/// (each method, `?target=` another member, operations owned by another member)
/// refuses a stranger, and an operation websocket on another member wants its secret.
#[tokio::test]
async fn t90_the_route_table_refuses_strangers_through_any_member() {
    let _slot = slot().await;
    let c = Cluster::start_env(3, FAST, &[("STAPES_TEST_ROUTES", "true")]).await;
    c.wait_healthy(3, LONG).await;
    let table = stapes_testkit::route_table(&c.members[0].unix()).await;
    let id = stapes_testkit::held_websocket_operation(&c.members[1].unix()).await;
    let a1 = c.members[0].address().await;
    let stranger = ClientCert::generate("stranger");
    for t in [Target::tls(&a1, None), Target::tls(&a1, Some(&stranger))] {
        stapes_testkit::assert_refused_everywhere(
            &table,
            &t,
            &[("id", &id), ("name", "node2")],
            "?target=node2",
        )
        .await;
    }
}
