//! The official `incus` client (Debian's incus-client) driving stapesd. Skipped with a
//! message when `incus` is not installed; under `CI=true` its absence is a failure.

mod t45_interactive_join;
mod t55_quiet_monitor;
mod t60_images;
mod t60_storage_profiles;
mod t70_instances;
mod t75_not_yet;
mod t76_instances_lxc;
mod t80_exec;
mod t80_exec_lxc;
mod t80_files;
mod t82_files_lxc;
mod t84_snapshots;
mod t84_snapshots_lxc;
mod t88_move;
mod t90_validation;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use stapes_testkit::{have_tool, ClientCert, Member};

/// Runs `incus ARGS` with its own config directory; `socket` sets `INCUS_SOCKET`.
async fn incus(conf: &Path, socket: Option<&Path>, args: &[&str]) -> (bool, String, String) {
    incus_stdin(conf, socket, args, None).await
}

/// As [`incus`], writing `stdin` to it (a pipe, not a terminal: how `--preseed` and
/// `edit` read their input).
async fn incus_stdin(
    conf: &Path,
    socket: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("incus");
    cmd.args(args)
        .env("INCUS_CONF", conf)
        .env("HOME", conf)
        .env_remove("INCUS_SOCKET")
        .env_remove("INCUS_DIR")
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(s) = socket {
        cmd.env("INCUS_SOCKET", s);
    }
    let mut child = cmd.spawn().expect("incus runs");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("incus finished within 30 s")
        .expect("incus runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(conf: &Path, socket: Option<&Path>, args: &[&str]) -> String {
    let (success, stdout, stderr) = incus(conf, socket, args).await;
    assert!(success, "incus {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// What `incus monitor --format json` prints, line by line.
type MonitorLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Starts `incus monitor ARGS --format json` (through `socket` when given); the process
/// (killed when dropped) and its output lines.
fn monitor(conf: &Path, socket: Option<&Path>, args: &[&str]) -> (tokio::process::Child, MonitorLines) {
    let mut cmd = tokio::process::Command::new("incus");
    cmd.arg("monitor")
        .args(args)
        .args(["--format", "json"])
        .env("INCUS_CONF", conf)
        .env("HOME", conf)
        .env_remove("INCUS_SOCKET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(s) = socket {
        cmd.env("INCUS_SOCKET", s);
    }
    let mut child = cmd.spawn().expect("incus monitor runs");
    let stdout = child.stdout.take().expect("piped stdout");
    (
        child,
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
    )
}

/// Changes `core.remote_token_expiry` through `on`'s unix socket (between `hours` and one
/// more, so every change is one) until the monitor printing `lines` shows an event
/// `wanted` accepts; returns every event read until then, that one last.
async fn change_config_until(
    on: &Member,
    hours: u32,
    lines: &mut MonitorLines,
    limit: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    tokio::time::timeout(limit, async {
        for i in 0u32.. {
            let value = format!("{}H", hours + i % 2);
            let _ = on
                .unix()
                .send_json(
                    "PATCH",
                    "/1.0",
                    &json!({"config": {"core.remote_token_expiry": value}}),
                )
                .await;
            while let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await
            {
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&line).unwrap_or_default();
                let done = wanted(&v);
                seen.push(v);
                if done {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("incus monitor showed no matching event within {limit:?}"));
    seen
}

/// Runs `incus monitor REMOTE --type lifecycle` and changes the configuration through
/// `on`'s unix socket until the monitor prints an event `wanted` accepts; that event.
async fn incus_monitor_sees(
    conf: &Path,
    remote: &str,
    on: &Member,
    limit: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let (mut monitor, mut lines) = monitor(conf, None, &[remote, "--type", "lifecycle"]);
    let mut seen = change_config_until(on, 5, &mut lines, limit, wanted).await;
    let _ = monitor.kill().await;
    seen.pop().expect("the matching event")
}

#[tokio::test]
async fn t10_local_socket_info_query_and_config() {
    if !have_tool("incus") {
        return;
    }
    let m = Member::start().await;
    let conf = tempfile::tempdir().unwrap();
    let sock = Some(m.socket());
    let sock = sock.as_deref();
    let info = ok(conf.path(), sock, &["info"]).await;
    assert!(info.contains("auth_user_method: unix"), "{info}");
    let q: Value = serde_json::from_str(&ok(conf.path(), sock, &["query", "/1.0"]).await).unwrap();
    assert_eq!(q["auth"], "trusted");
    ok(
        conf.path(),
        sock,
        &["config", "set", "core.remote_token_expiry", "2H"],
    )
    .await;
    assert_eq!(
        ok(conf.path(), sock, &["config", "get", "core.remote_token_expiry"])
            .await
            .trim(),
        "2H"
    );
    let (success, _, err) = incus(conf.path(), sock, &["config", "set", "core.nonsense", "1"]).await;
    assert!(!success && err.contains("core.nonsense"), "{err}");
}

#[tokio::test]
async fn t20_trust_token_remote_add_and_trust_management() {
    if !have_tool("incus") {
        return;
    }
    let mut m = Member::start().await;
    let addr = m.listen().await;
    let admin = tempfile::tempdir().unwrap();
    let sock = Some(m.socket());
    let sock = sock.as_deref();
    let out = ok(admin.path(), sock, &["config", "trust", "add", "laptop"]).await;
    let token = out.lines().last().unwrap().trim().to_string();
    let tokens = ok(
        admin.path(),
        sock,
        &["config", "trust", "list-tokens", "--format", "csv"],
    )
    .await;
    assert!(tokens.starts_with("laptop,"), "{tokens}");
    let ops = ok(admin.path(), sock, &["operation", "list", "--format", "csv"]).await;
    assert!(ops.contains("TOKEN") && ops.contains("RUNNING"), "{ops}");

    // A fresh client redeems the token: no fingerprint prompt, then trusted.
    let laptop = tempfile::tempdir().unwrap();
    ok(laptop.path(), None, &["remote", "add", "s", &token]).await;
    let info = ok(laptop.path(), None, &["info", "s:"]).await;
    assert!(
        info.contains("auth: trusted") && info.contains("auth_user_method: tls"),
        "{info}"
    );
    let q: Value = serde_json::from_str(&ok(laptop.path(), None, &["query", "s:/1.0"]).await).unwrap();
    assert_eq!(q["environment"]["addresses"], json!([addr]));

    let list = ok(
        admin.path(),
        sock,
        &["config", "trust", "list", "--format", "csv"],
    )
    .await;
    assert!(list.contains("laptop,client"), "{list}");
    let fp = q["auth_user_name"].as_str().unwrap();

    // A second token, revoked, cannot be used.
    let out = ok(admin.path(), sock, &["config", "trust", "add", "tablet"]).await;
    let token2 = out.lines().last().unwrap().trim().to_string();
    ok(admin.path(), sock, &["config", "trust", "revoke-token", "tablet"]).await;
    let tablet = tempfile::tempdir().unwrap();
    let (success, _, _) = incus(tablet.path(), None, &["remote", "add", "s", &token2]).await;
    assert!(!success, "a revoked token must not work");

    // Remove the laptop: it is untrusted at once.
    ok(admin.path(), sock, &["config", "trust", "remove", &fp[..12]]).await;
    let (success, _, err) = incus(laptop.path(), None, &["query", "s:/1.0/certificates"]).await;
    assert!(!success && err.contains("not authorized"), "{err}");
}

#[tokio::test]
async fn t30_remote_add_accept_certificate_and_monitor() {
    if !have_tool("incus") {
        return;
    }
    let mut m = Member::start().await;
    let addr = m.listen().await;
    // The client's own certificate, made beforehand and trusted through the socket.
    let conf = tempfile::tempdir().unwrap();
    let cert = ClientCert::generate("cli");
    std::fs::write(conf.path().join("client.crt"), &cert.cert_pem).unwrap();
    std::fs::write(conf.path().join("client.key"), &cert.key_pem).unwrap();
    m.trust(&cert).await;
    ok(
        conf.path(),
        None,
        &[
            "remote",
            "add",
            "s",
            &format!("https://{addr}"),
            "--accept-certificate",
        ],
    )
    .await;
    let remotes = ok(conf.path(), None, &["remote", "list", "--format", "csv"]).await;
    assert!(remotes.contains(&format!("s,https://{addr}")), "{remotes}");

    // `incus monitor` sees a lifecycle event caused by someone else.
    let event = incus_monitor_sees(conf.path(), "s:", &m, Duration::from_secs(15), |v| {
        v["metadata"]["action"] == "config-updated"
    })
    .await;
    assert_eq!(event["metadata"]["requestor"]["protocol"], "unix");
}

#[tokio::test]
async fn t40_cluster_enable_add_preseed_join_list_tokens_remove() {
    if !have_tool("incus") {
        return;
    }
    let mut n1 = stapes_testkit::Member::start().await;
    let n2 = stapes_testkit::Member::start().await;
    let n3 = stapes_testkit::Member::start().await;
    let conf = tempfile::tempdir().unwrap();
    let c = conf.path();
    let s1 = n1.socket();
    let addr1 = n1.listen().await;
    ok(c, Some(&s1), &["cluster", "enable", "node1"]).await;
    let list = ok(c, Some(&s1), &["cluster", "list", "--format", "csv"]).await;
    assert!(list.starts_with(&format!("node1,https://{addr1},")), "{list}");

    // node2 joins with `incus admin init --preseed`, as the lab did with real Incus.
    let token = ok(c, Some(&s1), &["cluster", "add", "node2", "--quiet"])
        .await
        .trim()
        .to_string();
    let tokens = ok(c, Some(&s1), &["cluster", "list-tokens", "--format", "csv"]).await;
    assert!(tokens.starts_with("node2,"), "{tokens}");
    let addr2 = format!("127.0.0.1:{}", stapes_testkit::free_port());
    let preseed = format!(
        "cluster:\n  enabled: true\n  server_name: node2\n  server_address: {addr2}\n  cluster_token: {token}\n"
    );
    let n2_socket = n2.socket();
    let (success, _, stderr) = incus_stdin(
        c,
        Some(&n2_socket),
        &["admin", "init", "--preseed"],
        Some(&preseed),
    )
    .await;
    assert!(success, "preseed join: {stderr}");

    // node3 joins through the API; then a fourth token is revoked.
    let token3 = n1.join_token("node3").await;
    assert_eq!(n3.try_join("node3", &token3).await.status, 202);
    ok(c, Some(&s1), &["cluster", "add", "node4", "--quiet"]).await;
    ok(c, Some(&s1), &["cluster", "revoke-token", "node4"]).await;
    let tokens = ok(c, Some(&s1), &["cluster", "list-tokens", "--format", "csv"]).await;
    assert!(!tokens.contains("node4"), "{tokens}");

    // Seen from node2, through its own socket.
    let s2 = n2.socket();
    let list = stapes_testkit::eventually(Duration::from_secs(20), "three voters online", || {
        let c = c.to_path_buf();
        let s2 = s2.clone();
        async move {
            let list = ok(&c, Some(&s2), &["cluster", "list", "--format", "csv"]).await;
            let ready = list.lines().count() == 3
                && list.lines().all(|l| l.contains("ONLINE"))
                && list.matches("database").count() >= 3;
            ready.then_some(list)
        }
    })
    .await;
    assert!(list.contains("database-leader"), "{list}");
    let show = ok(c, Some(&s2), &["cluster", "show", "node3"]).await;
    assert!(
        show.contains("server_name: node3") && show.contains("status: Online"),
        "{show}"
    );

    // Remove node3.
    ok(c, Some(&s1), &["cluster", "remove", "node3"]).await;
    let list = ok(c, Some(&s1), &["cluster", "list", "--format", "csv"]).await;
    assert_eq!(list.lines().count(), 2, "{list}");
}

#[tokio::test]
async fn t50_target_and_monitor_across_members() {
    if !have_tool("incus") {
        return;
    }
    let c = stapes_testkit::Cluster::start(3).await;
    c.wait_healthy(3, Duration::from_secs(30)).await;
    let conf = tempfile::tempdir().unwrap();
    let cert = ClientCert::generate("cli");
    std::fs::write(conf.path().join("client.crt"), &cert.cert_pem).unwrap();
    std::fs::write(conf.path().join("client.key"), &cert.key_pem).unwrap();
    c.members[0].trust(&cert).await;
    let a1 = c.members[0].address().await;
    let a3 = c.members[2].address().await;
    ok(
        conf.path(),
        None,
        &[
            "remote",
            "add",
            "n1",
            &format!("https://{a1}"),
            "--accept-certificate",
        ],
    )
    .await;

    let q: Value =
        serde_json::from_str(&ok(conf.path(), None, &["query", "n1:/1.0?target=node3"]).await).unwrap();
    assert_eq!(q["environment"]["server_name"], "node3");
    let info = ok(conf.path(), None, &["info", "n1:", "--target", "node2"]).await;
    assert!(info.contains("server_name: node2"), "{info}");
    let got = ok(
        conf.path(),
        None,
        &["config", "get", "n1:", "core.https_address", "--target", "node3"],
    )
    .await;
    assert_eq!(got.trim(), a3);
    let (success, _, err) = incus(conf.path(), None, &["info", "n1:", "--target", "nosuchnode"]).await;
    assert!(!success && err.contains("Cluster member not found"), "{err}");

    // `incus monitor` on node1 sees a lifecycle event that happened on node3.
    let event = incus_monitor_sees(conf.path(), "n1:", &c.members[2], Duration::from_secs(60), |v| {
        v["location"] == "node3"
    })
    .await;
    assert_eq!(event["metadata"]["action"], "config-updated");
}

#[tokio::test]
async fn t60_update_certificate_with_the_official_client() {
    if !have_tool("incus") {
        return;
    }
    let c = stapes_testkit::Cluster::start(2).await;
    let conf = tempfile::tempdir().unwrap();
    let cert = ClientCert::generate("cli");
    std::fs::write(conf.path().join("client.crt"), &cert.cert_pem).unwrap();
    std::fs::write(conf.path().join("client.key"), &cert.key_pem).unwrap();
    c.members[0].trust(&cert).await;
    let a1 = c.members[0].address().await;
    ok(
        conf.path(),
        None,
        &[
            "remote",
            "add",
            "n1",
            &format!("https://{a1}"),
            "--accept-certificate",
        ],
    )
    .await;
    let start = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let pair = trust::CertPair::generate_valid(
        "cluster",
        &["127.0.0.1".parse().unwrap()],
        start,
        start + time::Duration::days(365),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("new.crt"), dir.path().join("new.key"));
    std::fs::write(&crt, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    ok(
        conf.path(),
        None,
        &[
            "cluster",
            "update-certificate",
            "n1:",
            crt.to_str().unwrap(),
            key.to_str().unwrap(),
        ],
    )
    .await;
    let fp = trust::fingerprint(&trust::cert::pem_to_der(&pair.cert_pem).unwrap());
    let q: Value =
        serde_json::from_str(&ok(conf.path(), None, &["query", "n1:/1.0?target=node2"]).await).unwrap();
    assert_eq!(q["environment"]["certificate_fingerprint"], fp.as_str());
}

#[tokio::test]
async fn t70_cluster_edit_with_the_official_client() {
    if !have_tool("incus") {
        return;
    }
    let c = stapes_testkit::Cluster::start(2).await;
    let conf = tempfile::tempdir().unwrap();
    let s1 = c.members[0].socket();
    let shown = ok(conf.path(), Some(&s1), &["cluster", "show", "node2"]).await;
    let edited = shown.replace("description: \"\"", "description: rack two");
    assert_ne!(shown, edited, "{shown}");
    let (success, _, stderr) = incus_stdin(
        conf.path(),
        Some(&s1),
        &["cluster", "edit", "node2"],
        Some(&edited),
    )
    .await;
    assert!(success, "cluster edit: {stderr}");
    let shown = ok(conf.path(), Some(&s1), &["cluster", "show", "node2"]).await;
    assert!(shown.contains("description: rack two"), "{shown}");
}

/// The official client's OpenID login: `remote add --auth-type oidc` meets the 401 and
/// its login headers, runs the device flow against the real provider (approved here as
/// a user would in a browser), and from then on its requests carry the access token.
#[tokio::test]
async fn t80_oidc_login_with_the_official_client() {
    use tokio::io::AsyncBufReadExt;
    if !have_tool("incus") || !stapes_testkit::oidc::available() {
        return;
    }
    let p = stapes_testkit::oidc::Provider::start(&[]).await;
    let ca = p.ca_file().display().to_string();
    let (_m, addr) = p.member().await;

    let conf = tempfile::tempdir().unwrap();
    let url = format!("https://{addr}");
    let mut child = tokio::process::Command::new("incus")
        .args([
            "remote",
            "add",
            "idp",
            &url,
            "--accept-certificate",
            "--auth-type",
            "oidc",
        ])
        .env("INCUS_CONF", conf.path())
        .env("HOME", conf.path())
        .env("SSL_CERT_FILE", &ca)
        .env("BROWSER", "none")
        .env_remove("INCUS_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("incus runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let code = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(code) = line.strip_prefix("Code: ") {
                return Some(code.trim().to_string());
            }
        }
        None
    })
    .await
    .expect("incus prints a code within 30 s");
    let Some(code) = code else {
        let out = child.wait_with_output().await.unwrap();
        panic!("no code printed: {}", String::from_utf8_lossy(&out.stderr));
    };
    p.approve_device(&code, "dave").await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("remote add finishes within 30 s")
        .unwrap();
    assert!(
        out.status.success(),
        "remote add: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let q: Value = serde_json::from_str(&ok(conf.path(), None, &["query", "idp:/1.0"]).await).unwrap();
    assert_eq!(q["auth"], "trusted");
    assert_eq!(q["auth_user_method"], "oidc");
    assert_eq!(q["auth_user_name"], "dave@stapes.test");
    ok(
        conf.path(),
        None,
        &["config", "set", "idp:", "core.remote_token_expiry", "2H"],
    )
    .await;
}
