use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use stapes_testkit::{events_unix, ClientCert, Member, Target};
use tokio_tungstenite::tungstenite::Message;

async fn next_event<S>(ws: &mut S, kind: &str) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let fut = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == kind {
                        return v;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("event stream ended: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("an event within 10 s")
}

#[tokio::test]
async fn config_change_emits_lifecycle_with_requestor() {
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let cert = ClientCert::generate("ev");
    m.trust(&cert).await;
    let mut ws = events_unix(&m.socket(), "type=lifecycle").await.unwrap();
    let r = Target::tls(&addr, Some(&cert))
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.remote_token_expiry": "3H"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let e = next_event(&mut ws, "lifecycle").await;
    assert_eq!(e["metadata"]["action"], "config-updated");
    assert_eq!(e["metadata"]["source"], "/1.0");
    let req = &e["metadata"]["requestor"];
    assert_eq!(req["protocol"], "tls");
    assert_eq!(req["username"], cert.fingerprint);
    assert_eq!(req["address"], "127.0.0.1");
    assert!(!e["location"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn trust_changes_emit_lifecycle_and_tokens_emit_operations() {
    let mut m = Member::start().await;
    m.listen().await;
    let mut ws = events_unix(&m.socket(), "").await.unwrap();
    let cert = ClientCert::generate("ev2");
    m.trust(&cert).await;
    let e = next_event(&mut ws, "lifecycle").await;
    assert_eq!(e["metadata"]["action"], "certificate-created");
    assert_eq!(e["metadata"]["requestor"]["protocol"], "unix");
    let r = m
        .unix()
        .send_json(
            "POST",
            "/1.0/certificates",
            &json!({"name": "n", "type": "client", "token": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    let e = next_event(&mut ws, "operation").await;
    assert_eq!(e["metadata"]["class"], "token");
    // Logging events flow too (the request log line for the POST).
    let e = next_event(&mut ws, "logging").await;
    assert!(e["metadata"]["level"].is_string());
}

#[tokio::test]
async fn type_filter_and_project_filter() {
    let m = Member::start().await;
    let mut only_ops = events_unix(&m.socket(), "type=operation").await.unwrap();
    let mut other_project = events_unix(&m.socket(), "type=lifecycle&project=p1")
        .await
        .unwrap();
    let mut all_projects = events_unix(&m.socket(), "type=lifecycle&all-projects=true")
        .await
        .unwrap();
    let r = m
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &json!({"config": {"core.remote_token_expiry": "3H"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let e = next_event(&mut all_projects, "lifecycle").await;
    assert_eq!(e["project"], "default");
    // The two filtered streams must stay silent for this event.
    for ws in [&mut only_ops, &mut other_project] {
        let got = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
        assert!(got.is_err(), "unexpected event: {got:?}");
    }
}
