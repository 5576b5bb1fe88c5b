//! `stapes` with OpenID Connect remotes against a real OpenID provider (node
//! `oidc-provider`, started by the testkit; skipped locally when its packages are not
//! installed, a failure under `CI=true`) and a real `stapesd` member (from the
//! workspace's build directory: run `cargo build --bins` first).
//!
//! The device login is approved the way a user would, in the provider's pages, with the
//! code the CLI printed on stderr. The CLI trusts the provider through `SSL_CERT_FILE`.
//!
//! Every wait is bounded: each command by [`COMMAND_LIMIT`], reading the code by
//! [`CODE_LIMIT`], events by polling with a deadline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{Stapes, COMMAND_LIMIT};
use serde_json::{json, Value};
use testkit::oidc::{self, Provider};
use testkit::{ClientCert, Member};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the CLI may take to print the device code.
const CODE_LIMIT: Duration = Duration::from_secs(30);

/// A provider, and a member that trusts its CA and accepts its tokens, listening on
/// loopback HTTPS.
struct Lab {
    provider: Provider,
    member: Member,
    url: String,
    cli: Stapes,
}

impl Lab {
    async fn start() -> Option<Lab> {
        if !oidc::available() {
            return None;
        }
        let provider = Provider::start(&[]).await;
        let (member, addr) = provider.member().await;
        Some(Lab {
            provider,
            member,
            url: format!("https://{addr}"),
            cli: Stapes::new(),
        })
    }

    /// `stapes ARGS`, trusting the provider, with piped output.
    fn spawn(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_stapes"))
            .args(args)
            .env("STAPES_CONF", self.cli.conf.path())
            .env("STAPES_SOCKET", self.member.socket())
            .env("HOME", self.cli.conf.path())
            .env("SSL_CERT_FILE", self.provider.ca_file())
            .env_remove("STAPES_DIR")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("SSL_CERT_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("stapes starts")
    }

    /// Runs `stapes ARGS` that must succeed without a device login; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(COMMAND_LIMIT, self.spawn(args).wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("stapes {args:?} did not finish within {COMMAND_LIMIT:?}"))
            .expect("stapes runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "stapes {args:?} failed:\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !stderr.contains("Code:"),
            "stapes {args:?} asked for a login:\n{stderr}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `stapes ARGS`, which must print a device login (`URL:`, `Code:` on stderr);
    /// approves it as `login` in the provider's pages and expects success. Returns stdout
    /// and stderr.
    async fn with_login(&self, args: &[&str], login: &str) -> (String, String) {
        let mut child = self.spawn(args);
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let mut seen = Vec::new();
        let found = tokio::time::timeout(CODE_LIMIT, async {
            let mut url = None;
            while let Ok(Some(line)) = lines.next_line().await {
                seen.push(line.clone());
                if let Some(u) = line.strip_prefix("URL: ") {
                    url = Some(u.trim().to_string());
                }
                if let Some(code) = line.strip_prefix("Code: ") {
                    return Some((url, code.trim().to_string()));
                }
            }
            None
        })
        .await;
        let (url, code) = match found {
            Ok(Some(found)) => found,
            other => {
                let _ = child.start_kill();
                panic!(
                    "stapes {args:?} printed no device code ({}):\n{}",
                    if other.is_err() {
                        "timed out"
                    } else {
                        "stderr closed"
                    },
                    seen.join("\n")
                );
            }
        };
        let url = url.expect("the URL comes before the code");
        assert!(url.starts_with(&self.provider.issuer()), "{url}");
        assert!(url.contains(&code), "the complete verification URL: {url}");
        self.provider.approve_device(&code, login).await;
        let mut rest = String::new();
        let mut stderr = lines.into_inner();
        let mut stdout = String::new();
        let mut out_pipe = child.stdout.take().expect("piped stdout");
        let status = tokio::time::timeout(COMMAND_LIMIT, async {
            let (a, b) = tokio::join!(
                stderr.read_to_string(&mut rest),
                out_pipe.read_to_string(&mut stdout)
            );
            a.and(b).expect("read output");
            child.wait().await.expect("stapes runs")
        })
        .await
        .unwrap_or_else(|_| {
            panic!("stapes {args:?} did not finish within {COMMAND_LIMIT:?} of the approval")
        });
        let stderr = format!("{}\n{rest}", seen.join("\n"));
        assert!(status.success(), "stapes {args:?} failed:\n{stdout}\n{stderr}");
        (stdout, stderr)
    }

    fn tokens_path(&self, remote: &str) -> PathBuf {
        self.cli
            .conf
            .path()
            .join("oidc-tokens")
            .join(format!("{remote}.json"))
    }

    fn tokens(&self, remote: &str) -> Value {
        let text = std::fs::read_to_string(self.tokens_path(remote)).expect("a tokens file");
        serde_json::from_str(&text).expect("tokens JSON")
    }

    fn edit_tokens(&self, remote: &str, edit: impl FnOnce(&mut Value)) {
        let mut t = self.tokens(remote);
        edit(&mut t);
        std::fs::write(self.tokens_path(remote), serde_json::to_vec(&t).unwrap()).unwrap();
    }

    /// `GET /1.0` through the remote, as `stapes query` prints it.
    async fn whoami(&self, remote: &str) -> (String, String) {
        let out = self.ok(&["query", &format!("{remote}:/1.0")]).await;
        let v: Value = serde_json::from_str(&out).expect("query prints JSON");
        assert_eq!(v["auth"], "trusted", "{v}");
        (
            v["auth_user_method"].as_str().unwrap_or_default().to_string(),
            v["auth_user_name"].as_str().unwrap_or_default().to_string(),
        )
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[tokio::test]
async fn t20_remote_add_logs_in_then_refreshes_then_logs_in_again() {
    let Some(lab) = Lab::start().await else { return };

    // (a) The first login happens in `remote add`.
    let (_, stderr) = lab
        .with_login(
            &[
                "remote",
                "add",
                "idp",
                &lab.url,
                "--accept-certificate",
                "--auth-type",
                "oidc",
            ],
            "alice",
        )
        .await;
    assert!(!stderr.contains("Generating a client certificate"), "{stderr}");
    assert!(
        !lab.cli.conf.path().join("client.crt").exists(),
        "an OpenID remote needs no client certificate"
    );
    let config = std::fs::read_to_string(lab.cli.conf.path().join("config.yml")).unwrap();
    assert!(config.contains("auth_type: oidc"), "{config}");
    assert_eq!(mode(&lab.tokens_path("idp")), 0o600);
    let first = lab.tokens("idp");
    assert_eq!(first["issuer"], lab.provider.issuer());
    assert_eq!(first["client_id"], lab.provider.client_id());
    assert!(first["refresh_token"].is_string(), "{first}");

    let info = lab.ok(&["info", "idp:"]).await;
    assert!(info.contains("auth_user_method: oidc"), "{info}");
    assert!(info.contains("auth_user_name: alice@stapes.test"), "{info}");
    assert_eq!(lab.tokens("idp"), first, "a valid token is used as it is");
    let list = lab.ok(&["remote", "list", "-f", "csv", "-c", "na"]).await;
    assert!(list.contains("idp,oidc"), "{list}");

    // (b) An access token the server refuses: refreshed, the request retried, no login.
    // A PATCH is retried too (the server refused it before doing anything).
    lab.edit_tokens("idp", |t| t["access_token"] = json!("garbage"));
    lab.ok(&["config", "set", "idp:", "core.remote_token_expiry", "2H"])
        .await;
    let refreshed = lab.tokens("idp");
    assert_ne!(refreshed["access_token"], "garbage");
    assert_ne!(
        refreshed["refresh_token"], first["refresh_token"],
        "the provider rotates refresh tokens"
    );
    assert_eq!(
        lab.ok(&["config", "get", "idp:", "core.remote_token_expiry"])
            .await
            .trim(),
        "2H"
    );

    // An access token past its expiry is refreshed before it is sent.
    lab.edit_tokens("idp", |t| t["expires_at"] = json!(oidc_now() - 60));
    let before = lab.tokens("idp");
    assert_eq!(
        lab.whoami("idp").await,
        ("oidc".to_string(), "alice@stapes.test".to_string())
    );
    let after = lab.tokens("idp");
    assert_ne!(after["access_token"], before["access_token"], "refreshed ahead");
    assert!(after["expires_at"].as_i64().unwrap() > oidc_now());

    // (c) Neither token works: a new device login, by whoever approves it.
    lab.edit_tokens("idp", |t| {
        t["access_token"] = json!("garbage");
        t["refresh_token"] = json!("garbage too");
    });
    let (out, _) = lab.with_login(&["query", "idp:/1.0"], "bob").await;
    let v: Value = serde_json::from_str(&out).expect("query prints JSON");
    assert_eq!(v["auth_user_method"], "oidc");
    assert_eq!(v["auth_user_name"], "bob@stapes.test");
    assert_eq!(
        lab.whoami("idp").await,
        ("oidc".to_string(), "bob@stapes.test".to_string())
    );
}

/// Seconds since the Unix epoch.
fn oidc_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn t20_default_auth_type_monitor_rename_and_remove() {
    let Some(lab) = Lab::start().await else { return };

    // Without --auth-type, a private server that offers OpenID gets an OpenID remote.
    lab.with_login(
        &["remote", "add", "idp", &lab.url, "--accept-certificate"],
        "carol",
    )
    .await;
    let config = std::fs::read_to_string(lab.cli.conf.path().join("config.yml")).unwrap();
    assert!(config.contains("auth_type: oidc"), "{config}");

    // The events websocket refreshes a refused token too.
    lab.edit_tokens("idp", |t| t["access_token"] = json!("garbage"));
    let mut monitor = lab.spawn(&["monitor", "idp:", "--type", "lifecycle", "--format", "json"]);
    let mut lines = BufReader::new(monitor.stdout.take().expect("piped stdout")).lines();
    let deadline = tokio::time::Instant::now() + COMMAND_LIMIT;
    let mut event = None;
    for i in 0..300 {
        // Until the monitor is connected, events go unseen: make one now and then.
        lab.member.trust(&ClientCert::generate(&format!("c{i}"))).await;
        if let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
        {
            event = Some(line);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event within {COMMAND_LIMIT:?}"
        );
    }
    let _ = monitor.start_kill();
    let out = monitor.wait_with_output().await.expect("monitor output");
    let event =
        event.unwrap_or_else(|| panic!("no event; stderr:\n{}", String::from_utf8_lossy(&out.stderr)));
    let v: Value = serde_json::from_str(&event).expect("a JSON event");
    assert_eq!(v["type"], "lifecycle", "{v}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Code:"));
    assert_ne!(lab.tokens("idp")["access_token"], "garbage");

    // The tokens follow a rename and go with a remove.
    lab.ok(&["remote", "rename", "idp", "sso"]).await;
    assert!(!lab.tokens_path("idp").exists());
    assert_eq!(
        lab.whoami("sso").await,
        ("oidc".to_string(), "carol@stapes.test".to_string())
    );
    lab.ok(&["remote", "remove", "sso"]).await;
    assert!(!lab.tokens_path("sso").exists());
}
