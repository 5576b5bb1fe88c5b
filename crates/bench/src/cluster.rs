//! Three-member clusters: formed, checked, stopped, and their leader killed, each side
//! the way its own users do it.
//!
//! - stapes: over the unix sockets with the client library, as `scripts/demo.sh` does:
//!   `PATCH /1.0` `core.https_address` and `PUT /1.0/cluster` on node1, then for each
//!   joiner a token from `POST /1.0/cluster/members` on node1 and `PUT /1.0/cluster` on
//!   the joiner (only a 202 counts as joined).
//! - Incus: as in the lab recipe, `incus admin init --preseed` on node1 (address,
//!   cluster, a `dir` pool), `incus cluster add nodeN --quiet` for the token and `incus
//!   admin init --preseed` on the joiner. Its figures include starting the `incus`
//!   client, about 20-40 ms per call.
//! - The ceiling: two members, node1 forwarding to node2; nothing to form.
//!
//! Member n listens on 127.0.0.n at the side's port.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use client::Method;
use serde_json::json;

use crate::lab::{call, log, tls_client, unix_client, Kind, Lab, Member};

/// How long one bootstrap or join call may take.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long writes may take to resume after the leader is killed.
pub const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// What forming one cluster took, in ms.
#[derive(Debug, Clone, Default)]
pub struct Formation {
    /// From just before the first spawn until all three answer `GET /1.0`.
    pub up_ms: f64,
    /// From just before the first spawn until the last join returned.
    pub form_ms: f64,
    /// Each join call alone (the token is issued before the clock starts).
    pub joins_ms: Vec<f64>,
}

/// The leader killed, and how long until a write through a survivor succeeded.
#[derive(Debug, Clone)]
pub struct LeaderLoss {
    pub leader: String,
    pub survivor: String,
    pub ms: f64,
    pub tries: u32,
}

/// What node1 shows of its cluster over TLS.
#[derive(Debug, Clone, Default)]
pub struct ClusterCheck {
    /// Size of `GET /1.0/cluster/members` (none for the ceiling).
    pub members_body: Option<usize>,
    /// Size of `GET /1.0?target=node2`.
    pub fwd_body: usize,
}

/// The join token text for the operation `POST /1.0/cluster/members` returned (its
/// `metadata`), as `incus cluster add` prints it.
pub fn join_token(op: &serde_json::Value) -> String {
    let md = &op["metadata"];
    let text = |k: &str| md[k].as_str().unwrap_or_default().to_string();
    trust::token::encode(&trust::token::JoinToken {
        server_name: text("serverName"),
        fingerprint: text("fingerprint"),
        addresses: serde_json::from_value(md["addresses"].clone()).unwrap_or_default(),
        secret: text("secret"),
        expires_at: md["expiresAt"].as_str().unwrap_or(trust::token::NO_EXPIRY).into(),
    })
}

impl Lab {
    /// The three members of `kind` at `port` on 127.0.0.1-3 (two for the ceiling).
    pub fn cluster_members(&self, kind: Kind, port: u16) -> Vec<Member> {
        let n = if kind == Kind::Ceiling { 2 } else { 3 };
        (1..=n)
            .map(|i| {
                self.member(
                    &format!("{}{i}", kind.name()),
                    &format!("node{i}"),
                    &format!("127.0.0.{i}:{port}"),
                )
            })
            .collect()
    }

    /// Starts the members at once, waits for each to answer, bootstraps node1 and joins
    /// the others one by one.
    pub async fn form_cluster(&mut self, kind: Kind, members: &[Member]) -> anyhow::Result<Formation> {
        let t0 = Instant::now();
        if kind == Kind::Ceiling {
            // node1 forwards to node2; start node2 first so the first forward finds it.
            self.start(kind, &members[1], None)?;
            self.start(kind, &members[0], Some(&members[1]))?;
        } else {
            for m in members {
                self.start(kind, m, None)?;
            }
        }
        let mut up_ms = 0.0;
        for m in members {
            up_ms = self.wait_ready(m, t0).await?;
        }
        let mut joins_ms = Vec::new();
        match kind {
            Kind::Stapes => {
                self.bootstrap_stapes(&members[0]).await?;
                for m in &members[1..] {
                    joins_ms.push(self.join_stapes(&members[0], m).await?);
                }
            }
            Kind::Incus => {
                self.bootstrap_incus(&members[0]).await?;
                for m in &members[1..] {
                    joins_ms.push(self.join_incus(&members[0], m).await?);
                }
            }
            Kind::Ceiling => {}
        }
        let f = Formation {
            up_ms,
            form_ms: t0.elapsed().as_secs_f64() * 1000.0,
            joins_ms,
        };
        log(format!(
            "{} cluster formed in {:.1} ms (all answering after {:.1} ms; joins {:?} ms)",
            kind.name(),
            f.form_ms,
            f.up_ms,
            f.joins_ms.iter().map(|j| format!("{j:.1}")).collect::<Vec<_>>()
        ));
        Ok(f)
    }

    async fn bootstrap_stapes(&self, first: &Member) -> anyhow::Result<()> {
        self.configure_https(first).await?;
        let c = unix_client(&first.socket, JOIN_TIMEOUT);
        let body = json!({"server_name": first.name, "enabled": true});
        call(&c, Method::PUT, "/1.0/cluster", Some(&body))
            .await?
            .expect(None, format!("{}: PUT /1.0/cluster (bootstrap)", first.key))?;
        Ok(())
    }

    async fn join_stapes(&self, first: &Member, m: &Member) -> anyhow::Result<f64> {
        let c1 = unix_client(&first.socket, JOIN_TIMEOUT);
        let a = call(
            &c1,
            Method::POST,
            "/1.0/cluster/members",
            Some(&json!({"server_name": m.name})),
        )
        .await?
        .expect(
            None,
            format!("{}: POST /1.0/cluster/members {}", first.key, m.name),
        )?;
        let token = join_token(&a.metadata());
        let body = json!({"server_name": m.name, "enabled": true, "server_address": m.https, "cluster_token": token});
        let c = unix_client(&m.socket, JOIN_TIMEOUT);
        let t = Instant::now();
        call(&c, Method::PUT, "/1.0/cluster", Some(&body))
            .await?
            .expect(Some(202), format!("{}: PUT /1.0/cluster (join)", m.key))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        Ok(ms)
    }

    /// The incus client on member `m`'s unix socket, bounded by [`JOIN_TIMEOUT`].
    async fn incus_cli(&self, m: &Member, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        use tokio::io::AsyncWriteExt as _;
        let mut cmd = tokio::process::Command::new("incus");
        cmd.env("INCUS_DIR", &m.dir)
            .env("INCUS_CONF", self.dir.join("incus-conf"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("running the incus client")?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.unwrap_or_default().as_bytes()).await?;
        }
        let out = tokio::time::timeout(JOIN_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("incus {} took over {JOIN_TIMEOUT:?}", args.join(" ")))??;
        let cli_log = self.logs.join("incus-cli.log");
        let mut text = format!("$ incus {}\n", args.join(" "));
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        append(&cli_log, &text);
        if !out.status.success() {
            bail!(
                "{}: incus {} failed; see {}",
                m.key,
                args.join(" "),
                cli_log.display()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn bootstrap_incus(&self, first: &Member) -> anyhow::Result<()> {
        let preseed = [
            "config:".to_string(),
            format!("  core.https_address: {}", first.https),
            "cluster:".into(),
            format!("  server_name: {}", first.name),
            "  enabled: true".into(),
            "storage_pools:".into(),
            "- name: default".into(),
            "  driver: dir".into(),
            "profiles:".into(),
            "- name: default".into(),
            "  devices:".into(),
            "    root:".into(),
            "      path: /".into(),
            "      pool: default".into(),
            "      type: disk".into(),
        ]
        .join("\n");
        self.incus_cli(first, &["admin", "init", "--preseed"], Some(&preseed))
            .await?;
        Ok(())
    }

    async fn join_incus(&self, first: &Member, m: &Member) -> anyhow::Result<f64> {
        let out = self
            .incus_cli(first, &["cluster", "add", &m.name, "--quiet"], None)
            .await?;
        let token = out.lines().last().unwrap_or_default().trim().to_string();
        let preseed = [
            "cluster:".to_string(),
            "  enabled: true".into(),
            format!("  server_name: {}", m.name),
            format!("  server_address: {}", m.https),
            format!("  cluster_token: {token}"),
            "  member_config:".into(),
            "  - entity: storage-pool".into(),
            "    name: default".into(),
            "    key: source".into(),
            "    value: \"\"".into(),
        ]
        .join("\n");
        let t = Instant::now();
        self.incus_cli(m, &["admin", "init", "--preseed"], Some(&preseed))
            .await?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    }

    /// Stops the members and removes their state directories.
    pub async fn stop_cluster(&mut self, members: &[Member]) {
        for m in members {
            self.stop(&m.key).await;
        }
        for m in members {
            crate::procs::unmount_under(&m.dir).await;
            let _ = std::fs::remove_dir_all(&m.dir);
        }
    }

    /// Over TLS on node1 with the client certificate: the members listed (not for the
    /// ceiling), and `GET /1.0?target=node2` answered by node2.
    pub async fn check_cluster(&self, kind: Kind, front: &Member) -> anyhow::Result<ClusterCheck> {
        let c = tls_client(&front.https, Some(&self.identity.pair), Duration::from_secs(10))?;
        let mut check = ClusterCheck::default();
        if kind != Kind::Ceiling {
            let a = call(&c, Method::GET, "/1.0/cluster/members?recursion=1", None)
                .await?
                .expect(Some(200), format!("{}: GET /1.0/cluster/members", kind.name()))?;
            let mut names: Vec<String> = a
                .metadata()
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    format!(
                        "{}={}",
                        m["server_name"].as_str().unwrap_or("?"),
                        m["status"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            names.sort();
            log(format!("{} members: {}", kind.name(), names.join(" ")));
            check.members_body = Some(
                call(&c, Method::GET, "/1.0/cluster/members", None)
                    .await?
                    .body
                    .len(),
            );
        }
        let a = call(&c, Method::GET, "/1.0?target=node2", None)
            .await?
            .expect(Some(200), format!("{}: GET /1.0?target=node2", kind.name()))?;
        if a.metadata()["environment"]["server_name"] != "node2" {
            bail!("{}: GET /1.0?target=node2 was not answered by node2", kind.name());
        }
        check.fwd_body = a.body.len();
        Ok(check)
    }

    /// SIGKILLs the member with the `database-leader` role, then times `PATCH /1.0`
    /// through a survivor's unix socket until one succeeds (each try bounded to 5 s,
    /// 10 ms apart, all within [`RECOVER_TIMEOUT`]). The same request on both sides.
    pub async fn leader_loss(&mut self, kind: Kind, members: &[Member]) -> anyhow::Result<LeaderLoss> {
        let c = unix_client(&members[0].socket, Duration::from_secs(10));
        let a = call(&c, Method::GET, "/1.0/cluster/members?recursion=1", None).await?;
        let leader = a
            .metadata()
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                m["roles"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == "database-leader"))
            })
            .and_then(|m| m["server_name"].as_str().map(str::to_string))
            .with_context(|| format!("{}: no database-leader in {}", kind.name(), a.excerpt()))?;
        let dead = members
            .iter()
            .find(|m| m.name == leader)
            .with_context(|| format!("{}: the leader {leader} is not one of ours", kind.name()))?;
        let survivor = members.iter().find(|m| m.name != leader).context("a survivor")?;
        let write = unix_client(&survivor.socket, Duration::from_secs(5));
        let t0 = Instant::now();
        self.kill9(&dead.key).await;
        let mut tries = 0;
        loop {
            tries += 1;
            let body = json!({"config": {"core.remote_token_expiry": format!("{}H", tries + 1)}});
            if let Ok(a) = call(&write, Method::PATCH, "/1.0", Some(&body)).await {
                if a.ok() {
                    break;
                }
            }
            if t0.elapsed() > RECOVER_TIMEOUT {
                bail!(
                    "{}: no successful write through {} within {RECOVER_TIMEOUT:?} after killing {leader}",
                    kind.name(),
                    survivor.name
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let loss = LeaderLoss {
            leader,
            survivor: survivor.name.clone(),
            ms: t0.elapsed().as_secs_f64() * 1000.0,
            tries,
        };
        log(format!(
            "{}: killed leader {}; a write through {} succeeded after {:.1} ms ({} tries)",
            kind.name(),
            loss.leader,
            loss.survivor,
            loss.ms,
            loss.tries
        ));
        Ok(loss)
    }
}

/// Appends `text` to the file at `path` (a log), ignoring errors.
pub fn append(path: &std::path::Path, text: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_join_token_from_the_operation() {
        let op = json!({"metadata": {"serverName": "node2", "fingerprint": "ab", "addresses": ["127.0.0.1:8444"],
                                     "secret": "s3", "expiresAt": "2030-01-01T00:00:00Z"}});
        let t: trust::token::JoinToken = trust::token::decode(&join_token(&op)).unwrap();
        assert_eq!(t.server_name, "node2");
        assert_eq!(t.addresses, ["127.0.0.1:8444"]);
        assert_eq!(t.secret, "s3");
        assert_eq!(t.expires_at, "2030-01-01T00:00:00Z");
        let t: trust::token::JoinToken = trust::token::decode(&join_token(&json!({"metadata": {}}))).unwrap();
        assert_eq!(t.expires_at, trust::token::NO_EXPIRY);
    }
}
