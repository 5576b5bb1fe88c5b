//! A removed member is a stranger everywhere: with its own certificate it reaches no
//! internal route and speaks for nobody, on every remaining member, including one that
//! joined while it was a member (and so learnt its certificate from the join reply).

use std::time::Duration;

use stapes_testkit::{eventually, ClientCert, Cluster, Target};

use crate::{slot, FAST, LONG};

#[tokio::test]
async fn a_removed_member_is_refused_everywhere() {
    let _slot = slot().await;
    let c = Cluster::start_with(3, FAST).await;
    c.wait_healthy(3, LONG).await;
    let dir = &c.members[1].dir;
    let node2 = ClientCert {
        cert_pem: std::fs::read_to_string(dir.join("server.crt")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("server.key")).unwrap(),
        fingerprint: String::new(),
    };
    let r = c.members[0]
        .unix()
        .request("DELETE", "/1.0/cluster/members/node2", None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for at in [0, 2] {
        eventually(Duration::from_secs(15), "the removal applied", || async {
            let list = c.members[at].members().await;
            (!list.is_empty() && list.iter().all(|m| m["server_name"] != "node2")).then_some(())
        })
        .await;
    }
    let forged: &[(&str, &str)] = &[
        ("X-Incus-forwarded-protocol", "unix"),
        ("X-Incus-forwarded-username", "root"),
        ("X-Incus-forwarded-address", "@"),
    ];
    let mut tried = 0;
    for at in [0, 2] {
        let addr = c.members[at].address().await;
        let t = Target::tls(&addr, Some(&node2));
        for headers in [&[][..], forged] {
            for (method, path) in [
                ("GET", "/1.0/certificates"),
                ("GET", "/1.0/cluster/members"),
                ("PUT", "/internal/shutdown"),
                ("GET", "/internal/ready"),
                ("GET", "/internal/events"),
                ("POST", "/internal/raft/append"),
                ("POST", "/internal/raft/vote"),
                ("POST", "/internal/raft/snapshot"),
                ("POST", "/internal/raft/write"),
                ("PATCH", "/1.0"),
            ] {
                let body = (method != "GET").then(|| b"{}".to_vec());
                let r = t.request(method, path, body, headers).await.unwrap();
                assert_eq!(r.status, 403, "node{}: {method} {path} with {headers:?}", at + 1);
                tried += 1;
            }
            let server = t.request("GET", "/1.0", None, headers).await.unwrap().metadata();
            assert_eq!(server["auth"], "untrusted", "node{} with {headers:?}", at + 1);
        }
    }
    assert_eq!(tried, 40);
    // Nobody was shut down, and the cluster works.
    for at in [0, 2] {
        assert_eq!(c.members[at].unix().get("/ready").await.unwrap().status, 200);
    }
}
