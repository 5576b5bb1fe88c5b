//! `stapes cluster update-certificate` and `stapes remote accept-certificate` against real
//! `stapesd` members (started by the testkit from the workspace's build directory: run
//! `cargo build --bins` first), reached over loopback HTTPS through remotes pinned to
//! the cluster certificate.
//!
//! Every wait is bounded: each command by [`common::COMMAND_LIMIT`], convergence by
//! [`eventually`] polling.

mod common;

use std::path::{Path, PathBuf};

use common::{add_remote, member_urls, Stapes, CONVERGE_LIMIT};
use testkit::eventually;
use testkit::Cluster;

impl Stapes {
    fn copy(&self) -> Stapes {
        let other = Stapes::new();
        copy_dir(self.conf.path(), other.conf.path());
        other
    }

    fn pin_path(&self, remote: &str) -> PathBuf {
        self.conf.path().join("servercerts").join(format!("{remote}.crt"))
    }

    fn pinned_fingerprint(&self, remote: &str) -> String {
        let pem = std::fs::read_to_string(self.pin_path(remote)).expect("pinned certificate");
        trust::fingerprint(&trust::cert::pem_to_der(&pem).expect("PEM"))
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A new cluster certificate for 127.0.0.1, valid now.
fn new_pair() -> trust::CertPair {
    let now = time::OffsetDateTime::now_utc();
    trust::CertPair::generate_valid(
        "cluster",
        &["127.0.0.1".parse().unwrap()],
        now - time::Duration::hours(1),
        now + time::Duration::days(365),
    )
    .expect("certificate")
}

fn fingerprint_of(pair: &trust::CertPair) -> String {
    trust::fingerprint(&trust::cert::pem_to_der(&pair.cert_pem).unwrap())
}

#[tokio::test]
async fn t20_update_certificate_repins_every_remote_of_the_cluster() {
    let cluster = Cluster::start(2).await;
    let urls = member_urls(&cluster, 2).await;
    let s1 = cluster.members[0].socket();
    let cli = Stapes::new();
    add_remote(&cli, &s1, "c1", &urls[0]).await;
    add_remote(&cli, &s1, "c2", &urls[1]).await;
    let old = cli.pinned_fingerprint("c1");
    assert_eq!(
        cli.pinned_fingerprint("c2"),
        old,
        "both members present the cluster certificate"
    );
    cli.ok(&s1, &["info", "c1:"]).await;
    cli.ok(&s1, &["info", "c2:"]).await;

    // A client whose configuration was copied before the update: nobody re-pins it.
    let stale = cli.copy();

    let pair = new_pair();
    let new = fingerprint_of(&pair);
    assert_ne!(new, old);
    let files = tempfile::tempdir().unwrap();
    let crt = files.path().join("cluster.crt");
    let key = files.path().join("cluster.key");
    std::fs::write(&crt, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    let out = cli
        .ok(
            &s1,
            &[
                "cluster",
                "update-certificate",
                "c1:",
                crt.to_str().unwrap(),
                key.to_str().unwrap(),
            ],
        )
        .await;
    assert_eq!(
        out,
        format!(
            "Successfully updated cluster certificates\nPinned the new certificate ({new}) for remotes: c1, c2\n"
        )
    );
    assert_eq!(cli.pinned_fingerprint("c1"), new);
    assert_eq!(cli.pinned_fingerprint("c2"), new);

    // Both remotes work once each member serves the new certificate.
    for remote in ["c1:", "c2:"] {
        eventually(CONVERGE_LIMIT, "the new certificate served", || async {
            cli.run(&s1, &["info", remote], None).await.success.then_some(())
        })
        .await;
    }

    // The stale client is told the certificate changed, what it is now, and what to do.
    for remote in ["c1", "c2"] {
        let err = stale.fails(&s1, &["info", &format!("{remote}:")]).await;
        assert!(
            err.starts_with(&format!("Error: The server certificate of remote {remote} ("))
                && err.contains("has changed: the cluster certificate was probably updated")
                && err.contains(&format!("now presents fingerprint {new}"))
                && err.contains(&format!("the pinned fingerprint is {old}"))
                && err.contains(&format!("stapes remote accept-certificate {remote}")),
            "{err}"
        );
        // The remote knows both members' addresses: still one notice.
        assert_eq!(err.matches("has changed").count(), 1, "{err}");
    }

    // Accepting: a "no" changes nothing; --yes pins what is presented now.
    let out = stale
        .run(&s1, &["remote", "accept-certificate", "c1"], Some("n\n"))
        .await;
    assert!(!out.success);
    assert!(
        out.stdout.contains(&format!("Certificate fingerprint: {new}")),
        "{}",
        out.stdout
    );
    assert_eq!(out.stderr, "Error: Server certificate NACKed by user\n");
    assert_eq!(stale.pinned_fingerprint("c1"), old);
    let out = stale
        .ok(&s1, &["remote", "accept-certificate", "c1", "--yes"])
        .await;
    assert!(
        out.contains(&format!("Remote c1 now pins certificate {new}")),
        "{out}"
    );
    assert_eq!(stale.pinned_fingerprint("c1"), new);
    stale.ok(&s1, &["info", "c1:"]).await;
    assert_eq!(
        stale
            .ok(&s1, &["remote", "accept-certificate", "c1", "--yes"])
            .await,
        format!("The certificate of remote c1 is unchanged: {new}\n")
    );
}

#[tokio::test]
async fn t30_update_certificate_refusals_change_nothing() {
    let cluster = Cluster::start(1).await;
    let urls = member_urls(&cluster, 1).await;
    let s1 = cluster.members[0].socket();
    let cli = Stapes::new();
    add_remote(&cli, &s1, "c1", &urls[0]).await;
    let pin_before = std::fs::read(cli.pin_path("c1")).unwrap();

    let a = new_pair();
    let b = new_pair();
    let files = tempfile::tempdir().unwrap();
    let crt = files.path().join("a.crt");
    let wrong_key = files.path().join("b.key");
    std::fs::write(&crt, &a.cert_pem).unwrap();
    std::fs::write(&wrong_key, &b.key_pem).unwrap();
    let (crt, wrong_key) = (crt.to_str().unwrap(), wrong_key.to_str().unwrap());

    let err = cli
        .fails(&s1, &["cluster", "update-certificate", "c1:", crt, wrong_key])
        .await;
    assert_eq!(err, "Error: The private key does not match the certificate\n");
    let missing = files.path().join("missing.key");
    let missing = missing.to_str().unwrap();
    let err = cli
        .fails(&s1, &["cluster", "update-certificate", "c1:", crt, missing])
        .await;
    assert_eq!(
        err,
        format!("Error: Could not find certificate key file path: {missing}\n")
    );

    // Nothing changed: the pin is the same file and the server still presents it.
    assert_eq!(std::fs::read(cli.pin_path("c1")).unwrap(), pin_before);
    cli.ok(&s1, &["info", "c1:"]).await;
    let err = cli
        .fails(&s1, &["cluster", "update-certificate", crt, wrong_key])
        .await;
    assert_eq!(
        err, "Error: The private key does not match the certificate\n",
        "through the unix socket too"
    );
    cli.ok(&s1, &["info", "c1:"]).await;
}

/// A cluster re-created at the same address: `accept-certificate` pins the new
/// certificate and says that a trust token is needed; with `--token` the remote works.
#[tokio::test]
async fn t40_accept_certificate_after_the_cluster_was_recreated() {
    let mut old = Cluster::start(1).await;
    let urls = member_urls(&old, 1).await;
    let s_old = old.members[0].socket();
    let cli = Stapes::new();
    add_remote(&cli, &s_old, "c1", &urls[0]).await;
    cli.ok(&s_old, &["info", "c1:"]).await;
    let address = old.members[0].address().await;
    old.members[0].kill9();

    let mut new = testkit::Member::start().await;
    let s_new = new.socket();
    let r = new
        .unix()
        .send_json(
            "PATCH",
            "/1.0",
            &serde_json::json!({"config": {"core.https_address": address}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    new.https = Some(address.clone());
    new.enable_cluster("node1").await;

    let err = cli.fails(&s_new, &["info", "c1:"]).await;
    assert!(err.contains("has changed"), "{err}");
    let out = cli
        .run(&s_new, &["remote", "accept-certificate", "c1", "--yes"], None)
        .await;
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stdout.contains("Remote c1 now pins certificate"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("the server does not trust this client (was the cluster re-created?)")
            && out
                .stderr
                .contains("stapes remote accept-certificate c1 --token TOKEN"),
        "{}",
        out.stderr
    );

    let token = cli
        .ok(&s_new, &["config", "trust", "add", "c1-again", "-q"])
        .await;
    let out = cli
        .ok(
            &s_new,
            &[
                "remote",
                "accept-certificate",
                "c1",
                "--yes",
                "--token",
                token.trim(),
            ],
        )
        .await;
    assert!(out.contains("is unchanged"), "{out}");
    assert!(
        out.contains("Client certificate now trusted by server: c1"),
        "{out}"
    );
    cli.ok(&s_new, &["info", "c1:"]).await;
}

/// `remote add` to a server that does not trust us, with no token and nothing on stdin.
#[tokio::test]
async fn t50_remote_add_without_a_token_says_so() {
    let cluster = Cluster::start(1).await;
    let urls = member_urls(&cluster, 1).await;
    let s1 = cluster.members[0].socket();
    let cli = Stapes::new();
    let err = cli
        .fails(&s1, &["remote", "add", "c1", &urls[0], "--accept-certificate"])
        .await;
    assert!(
        err.contains("\nError: No trust token given for c1: the server does not trust this client yet."),
        "{err}"
    );
    let remotes = cli.ok(&s1, &["remote", "list", "--format", "csv"]).await;
    assert!(!remotes.contains("c1"), "nothing half-added: {remotes}");
}
