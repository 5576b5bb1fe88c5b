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

/// A warning about events never becomes an event: a listener that falls behind in a
/// flood is logged once per episode, never told on the stream itself, and the member
/// goes quiet once the flood is over.
#[tokio::test]
async fn a_flood_with_slow_listeners_settles() {
    let m = Member::start().await;
    let mut slow = events_unix(&m.socket(), "").await.unwrap();
    let stalled = events_unix(&m.socket(), "").await.unwrap();
    let u = m.unix();
    let flood = futures_util::future::join_all((0..8).map(|_| {
        let u = u.clone();
        async move {
            for _ in 0..300 {
                let _ = u.get("/1.0").await;
            }
        }
    }));
    let read_slowly = async {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(3), slow.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    seen.push(t.to_string());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(Some(Ok(_))) => {}
                _ => return seen,
            }
        }
    };
    let ((), seen) = tokio::join!(
        async {
            flood.await;
        },
        read_slowly
    );
    assert!(seen.len() > 100, "the slow listener saw {} events", seen.len());
    assert!(
        !seen.iter().any(|e| e.contains("fell behind")),
        "a lag warning was published as an event"
    );
    let lags = m.log().matches("event listener fell behind").count();
    assert!(
        (1..=2).contains(&lags),
        "{lags} lag warnings for two listeners in one flood"
    );
    // Quiet afterwards: nothing more is logged while nobody calls.
    let before = m.log().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = m.log();
    assert!(
        after.len() - before < 500,
        "still logging after the flood:\n{}",
        &after[before..]
    );
    drop(stalled);
}

/// The event stream has its own cap on listeners; past it a listener is refused with 503
/// and the others keep theirs.
#[tokio::test]
async fn event_listeners_are_capped() {
    let m = Member::start().await;
    let mut open = Vec::new();
    for _ in 0..256 {
        open.push(events_unix(&m.socket(), "type=lifecycle").await.unwrap());
    }
    let refused = events_unix(&m.socket(), "type=lifecycle").await;
    match refused.map_err(|e| e.downcast::<tokio_tungstenite::tungstenite::Error>()) {
        Err(Ok(tokio_tungstenite::tungstenite::Error::Http(r))) => assert_eq!(r.status(), 503),
        Err(other) => panic!("expected a 503, got {other:?}"),
        Ok(_) => panic!("a listener past the cap was accepted"),
    }
    drop(open.pop());
    stapes_testkit::eventually(Duration::from_secs(10), "a place freed", || async {
        events_unix(&m.socket(), "type=lifecycle").await.ok().map(|_| ())
    })
    .await;
}
