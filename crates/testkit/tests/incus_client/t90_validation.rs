//! Server configuration through the official client: `user.*` keys, and values refused
//! in Incus's words.

use stapes_testkit::{have_tool, Member};

use super::{incus, ok};

#[tokio::test]
async fn t90_config_set_checks_values_as_incus_does() {
    if !have_tool("incus") {
        return;
    }
    let m = Member::start().await;
    let conf = tempfile::tempdir().unwrap();
    let c = conf.path();
    let sock = m.socket();
    let s = Some(sock.as_path());
    ok(c, s, &["config", "set", "user.foo", "bar"]).await;
    assert_eq!(ok(c, s, &["config", "get", "user.foo"]).await.trim(), "bar");
    let shown = ok(c, s, &["config", "show"]).await;
    assert!(shown.contains("user.foo: bar"), "{shown}");
    ok(c, s, &["config", "unset", "user.foo"]).await;
    assert_eq!(ok(c, s, &["config", "get", "user.foo"]).await.trim(), "");

    for (key, value, message) in [
        (
            "cluster.max_voters",
            "4",
            "Error: cannot set 'cluster.max_voters' to '4': Value must be an odd number equal to or higher than 3",
        ),
        (
            "core.remote_token_expiry",
            "9999y",
            "Error: cannot set 'core.remote_token_expiry' to '9999y': Expiry must be at most 1000 years",
        ),
        ("core.nonsense", "1", "Error: cannot set 'core.nonsense' to '1': unknown key"),
    ] {
        let (success, _, err) = incus(c, s, &["config", "set", key, value]).await;
        assert!(!success, "{key}={value} accepted");
        assert_eq!(err.trim(), message, "{key}={value}");
    }
    ok(c, s, &["config", "set", "acme.agree_tos", "yes"]).await;
    assert_eq!(
        ok(c, s, &["config", "get", "acme.agree_tos"]).await.trim(),
        "true"
    );
}
