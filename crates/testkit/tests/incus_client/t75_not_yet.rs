//! What stapes does not serve yet, as the official client reports it.

use stapes_testkit::{have_tool, Member};

use super::incus;

#[tokio::test]
async fn t75_missing_features_are_named_through_the_official_client() {
    if !have_tool("incus") {
        return;
    }
    let m = Member::start().await;
    let conf = tempfile::tempdir().unwrap();
    let sock = m.socket();
    for (args, message) in [
        (
            &["storage", "volume", "list", "default"][..],
            "Storage volumes are not supported by this server yet",
        ),
        // No such image: the client looks the alias up, as against Incus.
        (
            &["launch", "debian", "c1"][..],
            "Error: Image \"debian\" not found",
        ),
        (&["info", "c1"][..], "Error: Instance not found"),
        // The client itself refuses these, on the API extensions the server lists.
        (
            &["network", "list"][..],
            "Error: The server is missing the required \"network\" API extension",
        ),
    ] {
        let (success, _, err) = incus(conf.path(), Some(&sock), args).await;
        assert!(!success, "incus {args:?} succeeded");
        assert!(err.contains(message), "incus {args:?}: {err}");
    }
}
