//! The operations engine through real members: an operation runs on the member that
//! started it, and is seen, waited on, cancelled and connected to through any member;
//! its transitions reach every member's `/1.0/events`. Demo operations come from
//! `/internal/test/operations`, served only under `--test-routes`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use stapes_testkit::{events_unix, eventually, have_tool, ClientCert, Cluster, Member, Target};
use tokio_tungstenite::tungstenite::Message;

use crate::{slot, FAST, LONG};

const HOOKS: &[(&str, &str)] = &[("STAPES_TEST_ROUTES", "true")];

/// A 3-member cluster with test hooks, a trusted client, and a target per member
/// presenting it.
async fn cluster() -> (Cluster, ClientCert, Vec<Target>) {
    let c = Cluster::start_env(3, FAST, HOOKS).await;
    c.wait_healthy(3, LONG).await;
    let cert = ClientCert::generate("client");
    c.members[0].trust(&cert).await;
    let mut targets = Vec::new();
    for m in &c.members {
        let t = Target::tls(&m.address().await, Some(&cert));
        eventually(LONG, "the client trusted everywhere", || async {
            (t.get("/1.0").await.ok()?.metadata()["auth"] == "trusted").then_some(())
        })
        .await;
        targets.push(t);
    }
    (c, cert, targets)
}

/// Starts a demo operation through `on`; checks the 202 answer as Incus gives it.
async fn start(on: &Target, demo: Value) -> Value {
    let r = on
        .send_json("POST", "/internal/test/operations", &demo)
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let env = r.json();
    let op = env["metadata"].clone();
    let url = format!("/1.0/operations/{}", op["id"].as_str().unwrap());
    assert_eq!(env["type"], "async");
    assert_eq!(env["status_code"], 100);
    assert_eq!(env["operation"], url);
    assert_eq!(r.header("location"), Some(url.as_str()));
    assert_eq!(op["status"], "Running");
    op
}

async fn show(on: &Target, path: &str) -> stapes_testkit::Resp {
    on.request_within("GET", path, None, &[("connection", "close")], LONG)
        .await
        .unwrap()
}

/// The `operation` events about `id` on `ws` until one with `last`; every one checked
/// for `location`.
async fn transitions<S>(ws: &mut S, id: &str, location: &str, last: u64) -> Vec<u64>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut seen = Vec::new();
    let read = async {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let e: Value = serde_json::from_str(&t).unwrap();
            if e["type"] != "operation" || e["metadata"]["id"] != id {
                continue;
            }
            assert_eq!(e["location"], location, "{e}");
            assert_eq!(e["metadata"]["location"], location, "{e}");
            let code = e["metadata"]["status_code"].as_u64().unwrap();
            seen.push(code);
            if code == last {
                return;
            }
        }
        panic!("the event stream ended");
    };
    tokio::time::timeout(LONG, read)
        .await
        .unwrap_or_else(|_| panic!("no {last} event for {id}; saw {seen:?}"));
    seen
}

/// Waits until `member`'s event stream relays operations started on `from` (the relay
/// connects in the background): starts short ones until one's end shows up.
async fn relay_ready<S>(ws: &mut S, from: &Target)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    for _ in 0..60 {
        let op = start(from, json!({})).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
            if let Message::Text(t) = msg {
                let e: Value = serde_json::from_str(&t).unwrap();
                if e["metadata"]["id"] == op["id"] {
                    return;
                }
            }
        }
    }
    panic!("the event relay never carried an operation");
}

#[tokio::test]
async fn t10_an_operation_is_seen_waited_and_cancelled_through_any_member() {
    let _slot = slot().await;
    let (c, _cert, t) = cluster().await;
    let mut events = events_unix(&c.members[1].socket(), "type=operation")
        .await
        .unwrap();
    relay_ready(&mut events, &t[0]).await;

    let op = start(
        &t[0],
        json!({"steps": 2, "step_ms": 20, "hold": true, "may_cancel": true,
               "resources": {"instances": ["/1.0/instances/c1"]}}),
    )
    .await;
    let id = op["id"].as_str().unwrap().to_string();
    assert_eq!(
        (op["location"].as_str(), op["class"].as_str()),
        (Some("node1"), Some("task"))
    );
    assert_eq!(op["may_cancel"], true);
    let path = format!("/1.0/operations/{id}");
    for via in &t {
        let r = show(via, &path).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let got = r.metadata();
        assert_eq!(
            (got["id"].as_str(), got["location"].as_str()),
            (Some(id.as_str()), Some("node1"))
        );
        assert_eq!(got["resources"], json!({"instances": ["/1.0/instances/c1"]}));
    }
    // Every member lists every member's operations; `?target=` keeps one member's.
    for via in &t {
        let all = show(via, "/1.0/operations?recursion=1").await.metadata();
        let running: Vec<&str> = all["running"]
            .as_array()
            .map(|a| a.iter().filter_map(|o| o["id"].as_str()).collect())
            .unwrap_or_default();
        assert!(running.contains(&id.as_str()), "{all}");
    }
    let on1 = show(&t[2], "/1.0/operations?target=node1")
        .await
        .metadata()
        .to_string();
    assert!(on1.contains(&id), "{on1}");
    let on2 = show(&t[2], "/1.0/operations?target=node2")
        .await
        .metadata()
        .to_string();
    assert!(!on2.contains(&id), "{on2}");
    let r = show(&t[2], "/1.0/operations?target=nosuchnode").await;
    assert_eq!(r.status, 404);

    // A bounded wait returns the operation as it is; a cancel through node3 ends it.
    let r = show(&t[2], &format!("{path}/wait?timeout=0.2")).await;
    assert_eq!(r.metadata()["status"], "Running");
    let r = t[2]
        .request("DELETE", &path, None, &[("connection", "close")])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = show(&t[1], &format!("{path}/wait?timeout=30")).await;
    let done = r.metadata();
    assert_eq!(
        (done["status"].as_str(), done["status_code"].as_u64()),
        (Some("Cancelled"), Some(401))
    );
    assert_eq!(done["may_cancel"], false);
    let seen = transitions(&mut events, &id, "node1", 401).await;
    assert_eq!(seen.first(), Some(&105), "{seen:?}");
    assert!(seen.ends_with(&[104, 401]), "{seen:?}");
    assert!(
        seen.iter().filter(|c| **c == 103).count() >= 3,
        "running, then progress: {seen:?}"
    );
    // A final operation is cancelled no more.
    let r = t[0].request("DELETE", &path, None, &[]).await.unwrap();
    assert_eq!(r.status, 400);

    // Success and failure, started on node3 and followed from node1.
    let ok = start(&t[2], json!({"steps": 3, "step_ms": 20})).await;
    let r = show(
        &t[0],
        &format!("/1.0/operations/{}/wait?timeout=30", ok["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(
        (
            r.metadata()["status_code"].as_u64(),
            r.metadata()["location"].as_str()
        ),
        (Some(200), Some("node3"))
    );
    let failed = start(&t[2], json!({"fail": "it broke"})).await;
    let fpath = format!("/1.0/operations/{}", failed["id"].as_str().unwrap());
    let r = show(&t[1], &format!("{fpath}/wait?timeout=30")).await;
    assert_eq!(
        (r.metadata()["status"].as_str(), r.metadata()["err"].as_str()),
        (Some("Failure"), Some("it broke"))
    );

    // Finished operations expire, as in Incus: then 404 everywhere.
    eventually(LONG, "the finished operation expires", || async {
        (show(&t[1], &fpath).await.status == 404).then_some(())
    })
    .await;
    for via in &t {
        let r = show(via, &fpath).await;
        assert_eq!(r.status, 404);
    }
}

/// A client behind a load balancer: `Connection: close`, each request to the next
/// member.
#[tokio::test]
async fn t20_a_client_hopping_members_follows_an_operation_to_its_end() {
    let _slot = slot().await;
    let (_c, _cert, t) = cluster().await;
    let op = start(&t[1], json!({"steps": 10, "step_ms": 50})).await;
    let path = format!("/1.0/operations/{}", op["id"].as_str().unwrap());
    let mut hop = 0usize;
    let done = eventually(LONG, "the operation ends", || {
        hop += 1;
        let via = t[hop % 3].clone();
        let path = path.clone();
        async move {
            let r = show(&via, &path).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let op = r.metadata();
            (op["status_code"].as_u64()? >= 200).then_some(op)
        }
    })
    .await;
    assert_eq!(done["status"], "Success");
    assert_eq!(done["metadata"]["progress"]["percent"], "100");
    let r = show(&t[(hop + 1) % 3], &format!("{path}/wait?timeout=5")).await;
    assert_eq!(r.metadata()["status"], "Success");
}

#[tokio::test]
async fn t30_unknown_and_malformed_ids_are_404_everywhere() {
    let _slot = slot().await;
    let (_c, _cert, t) = cluster().await;
    for via in &t {
        for id in [
            "5e2bb8fb-6363-4ec0-8d3f-541a7ed91bbe",
            "00000000-0000-4000-8000-000000000000",
            "nonsense",
            "5e2bb8fb-6363-1ec0-8d3f-541a7ed91bbe",
        ] {
            for (method, path) in [
                ("GET", format!("/1.0/operations/{id}")),
                ("GET", format!("/1.0/operations/{id}/wait?timeout=1")),
                ("DELETE", format!("/1.0/operations/{id}")),
            ] {
                let r = via.request(method, &path, None, &[]).await.unwrap();
                assert_eq!(r.status, 404, "{method} {path}");
                assert_eq!(
                    r.json(),
                    json!({"type": "error", "status": "", "status_code": 0, "operation": "",
                           "error_code": 404, "error": "Operation not found", "metadata": null}),
                    "{method} {path}"
                );
            }
        }
    }
}

/// A websocket to `addr` for `path`, presenting `cert` (or none).
async fn websocket(
    addr: &str,
    cert: Option<&ClientCert>,
    path: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<transport::tls::ClientTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let tls = stapes_testkit::tls_stream(addr, cert, b"http/1.1").await.unwrap();
    let url = format!("wss://stapes.test{path}");
    tokio::time::timeout(LONG, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("websocket answer")
        .map(|(ws, _)| ws)
}

async fn echoes<S>(ws: &mut S)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message>
        + Unpin,
{
    let _ = ws.send(Message::Binary(b"hello".to_vec().into())).await;
    let got = tokio::time::timeout(LONG, ws.next()).await.expect("an echo");
    assert!(matches!(got, Some(Ok(Message::Binary(b))) if &b[..] == b"hello"));
}

/// Untrusted callers are refused everything about operations, on every member, but
/// the websocket with its secret.
#[tokio::test]
async fn t90_untrusted_callers_reach_only_the_websocket_with_its_secret() {
    let _slot = slot().await;
    let (c, cert, t) = cluster().await;
    let open = start(&t[0], json!({"websockets": ["0", "control"], "hold": true})).await;
    let bound = start(
        &t[0],
        json!({"websockets": ["0"], "hold": true, "requestor": true}),
    )
    .await;
    assert_eq!(open["class"], "websocket");
    let id = open["id"].as_str().unwrap();
    let secret = open["metadata"]["fds"]["0"].as_str().unwrap();
    let bound_id = bound["id"].as_str().unwrap();
    let bound_secret = bound["metadata"]["fds"]["0"].as_str().unwrap();
    assert_ne!(secret, bound_secret);
    for m in &c.members {
        let stranger = Target::tls(&m.address().await, None);
        for (method, path) in [
            ("GET", "/1.0/operations".to_string()),
            ("GET", "/1.0/operations?recursion=1".to_string()),
            ("GET", format!("/1.0/operations/{id}")),
            ("GET", format!("/1.0/operations/{id}/wait?timeout=1")),
            ("DELETE", format!("/1.0/operations/{id}")),
        ] {
            let r = stranger.request(method, &path, None, &[]).await.unwrap();
            assert_eq!(
                r.status,
                403,
                "{method} {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        let r = stranger
            .send_json("POST", "/internal/test/operations", &json!({}))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
        let ws = |q: String| format!("/1.0/operations/{id}/websocket{q}");
        for (query, status) in [
            (String::new(), 400),
            ("?secret=".to_string(), 400),
            ("?secret=wrong".to_string(), 403),
            (format!("?secret={bound_secret}"), 403),
            (format!("?secret={}", "0".repeat(64)), 403),
        ] {
            let r = stranger.get(&ws(query.clone())).await.unwrap();
            assert_eq!(r.status, status, "{query}: {}", String::from_utf8_lossy(&r.body));
        }
        // The right secret without an upgrade: a clear refusal, nothing claimed.
        let r = stranger.get(&ws(format!("?secret={secret}"))).await.unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    }
    // On the owner, the right secret opens the websocket, to a stranger too; a
    // connected fd is not opened twice.
    let a1 = c.members[0].address().await;
    let mut ws = websocket(
        &a1,
        None,
        &format!("/1.0/operations/{id}/websocket?secret={secret}"),
    )
    .await
    .expect("the right secret opens the websocket");
    echoes(&mut ws).await;
    assert!(websocket(
        &a1,
        None,
        &format!("/1.0/operations/{id}/websocket?secret={secret}")
    )
    .await
    .is_err());
    // An operation bound to its requestor: only that caller, even with the secret.
    let path = format!("/1.0/operations/{bound_id}/websocket?secret={bound_secret}");
    let r = Target::tls(&a1, None).get(&path).await.unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("Requestor mismatch"))
    );
    let mut ws = websocket(&a1, Some(&cert), &path)
        .await
        .expect("the requestor connects");
    echoes(&mut ws).await;

    // Through members that do not run the operation, carried to its owner: the other fd
    // with its secret, and the bound one, whose requestor is still told apart.
    let other = start(
        &t[0],
        json!({"websockets": ["0"], "hold": true, "requestor": true}),
    )
    .await;
    let path = format!(
        "/1.0/operations/{}/websocket?secret={}",
        other["id"].as_str().unwrap(),
        other["metadata"]["fds"]["0"].as_str().unwrap()
    );
    let a2 = c.members[1].address().await;
    let a3 = c.members[2].address().await;
    let control = open["metadata"]["fds"]["control"].as_str().unwrap();
    let mut ws = websocket(
        &a2,
        None,
        &format!("/1.0/operations/{id}/websocket?secret={control}"),
    )
    .await
    .expect("the right secret opens the websocket through another member");
    echoes(&mut ws).await;
    let r = Target::tls(&a3, None).get(&path).await.unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("Requestor mismatch"))
    );
    let mut ws = websocket(&a3, Some(&cert), &path)
        .await
        .expect("the requestor connects through another member");
    echoes(&mut ws).await;
}

/// Without `--test-routes` the demo route does not exist.
#[tokio::test]
async fn t90_test_routes_are_absent_in_production() {
    let m = Member::start().await;
    let r = m
        .unix()
        .send_json("POST", "/internal/test/operations", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let hooked = Member::start_env(HOOKS).await;
    let r = hooked
        .unix()
        .send_json("POST", "/internal/test/operations", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 202);
}

/// The official client lists, shows and cancels an operation through a member that
/// does not run it.
#[tokio::test]
async fn t40_the_incus_client_lists_shows_and_deletes_operations() {
    if !have_tool("incus") {
        return;
    }
    let _slot = slot().await;
    let (c, _cert, t) = cluster().await;
    let op = start(&t[0], json!({"hold": true, "may_cancel": true})).await;
    let id = op["id"].as_str().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let incus = |args: &[&str]| {
        let shown = format!("{args:?}");
        let mut cmd = tokio::process::Command::new("incus");
        cmd.args(args)
            .env("INCUS_CONF", conf.path())
            .env("HOME", conf.path())
            .env("INCUS_SOCKET", c.members[1].socket())
            .env_remove("INCUS_DIR")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        async move {
            let out = tokio::time::timeout(LONG, cmd.output())
                .await
                .expect("incus finished")
                .expect("incus runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "incus {shown}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            text
        }
    };
    let list = incus(&["operation", "list", "--format", "json"]).await;
    let ops: Value = serde_json::from_str(&list).unwrap();
    let listed = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == id)
        .expect(&list);
    assert_eq!(listed["location"], "node1");
    let shown = incus(&["operation", "show", id]).await;
    assert!(
        shown.contains(&format!("id: {id}")) && shown.contains("location: node1"),
        "{shown}"
    );
    incus(&["operation", "delete", id]).await;
    let r = show(&t[2], &format!("/1.0/operations/{id}/wait?timeout=30")).await;
    assert_eq!(r.metadata()["status"], "Cancelled");
}
