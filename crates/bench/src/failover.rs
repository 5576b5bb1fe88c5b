//! Failover: how long `stapes info REMOTE:` and `incus info REMOTE:` take when the
//! first address of the remote is sick.
//!
//! A three-member stapes cluster runs on 127.0.0.1-3:PORT; one client certificate is
//! trusted and put, with the pinned cluster certificate, in a `stapes` and an `incus`
//! configuration directory. Then each client is timed (wall clock, one process per run,
//! one after the other) in each mode:
//!
//! | mode      | the sick first address                                   |
//! |-----------|----------------------------------------------------------|
//! | healthy   | none (stapes: the three members; incus: node2)           |
//! | refuse    | 127.0.0.1:PORT+1, where nothing listens                  |
//! | blackhole | 127.0.0.4:PORT, SYNs dropped by an nftables table of our own (root and `nft`; skipped otherwise) |
//! | hang      | node1 stopped with SIGSTOP (continued after the mode)   |
//!
//! stapes's remote is the sick address then the members; its remembered state is
//! removed before every `stapes` run, so each faces the sick address first, and kept
//! for `stapes-mem` runs (a user's second and later commands). Incus 6.0 has one address
//! per remote, so incus gets the sick address, each run bounded by `INCUS_TIMEOUT`.
//! Target: stapes p99 < 0.5 s and no failure in every sick mode.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use client::Method;
use nix::sys::signal::Signal;

use crate::lab::{call, log, tls_client, write_private, Kind, Lab, Member};
use crate::procs::version_of;
use crate::report::{self, FailoverRow};
use crate::settings::Settings;

/// The clients timed.
pub struct Clients {
    pub stapes: PathBuf,
    pub incus: Option<PathBuf>,
}

/// An nftables table of our own that drops TCP to one address and port (a blackholed
/// member); deleted when dropped, also when the run is interrupted.
struct Blackhole {
    table: String,
}

impl Blackhole {
    fn add(ip: &str, port: u16) -> anyhow::Result<Blackhole> {
        let guard = Blackhole {
            table: format!("stapes_bench_failover_{}", std::process::id()),
        };
        let rule = format!("ip daddr {ip} tcp dport {port} drop");
        for args in [
            vec!["add", "table", "inet", &guard.table],
            vec![
                "add",
                "chain",
                "inet",
                &guard.table,
                "out",
                "{ type filter hook output priority 0; policy accept; }",
            ],
            vec!["add", "rule", "inet", &guard.table, "out", &rule],
        ] {
            let ok = std::process::Command::new("nft")
                .args(&args)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!("nft {} failed", args.join(" "));
            }
        }
        Ok(guard)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// A client configuration directory with remote `c`.
struct Conf {
    dir: PathBuf,
}

impl Conf {
    fn new(dir: PathBuf, lab: &Lab, server_pem: &str) -> anyhow::Result<Conf> {
        std::fs::create_dir_all(dir.join("servercerts"))?;
        std::fs::write(dir.join("client.crt"), &lab.identity.pair.cert_pem)?;
        write_private(&dir.join("client.key"), &lab.identity.pair.key_pem)?;
        std::fs::write(dir.join("servercerts/c.crt"), server_pem)?;
        Ok(Conf { dir })
    }

    /// Points remote `c` at `addrs` (comma-separated) and forgets what worked before.
    fn set_remote(&self, addrs: &str) -> anyhow::Result<()> {
        let yml = format!(
            "default-remote: local\nremotes:\n  c:\n    addr: {addrs}\n    auth_type: tls\n    project: default\n    protocol: incus\n    public: false\n"
        );
        std::fs::write(self.dir.join("config.yml"), yml)?;
        self.forget();
        Ok(())
    }

    fn forget(&self) {
        let _ = std::fs::remove_dir_all(self.dir.join("remote-state"));
    }
}

struct Timer<'a> {
    lab: &'a Lab,
    clients: &'a Clients,
    stapes_conf: Conf,
    incus_conf: Conf,
    incus_timeout: Duration,
}

impl Timer<'_> {
    /// One `CLIENT info c:`: whether it succeeded within its bound, and how long it took.
    async fn once(&self, incus: bool) -> (bool, f64) {
        let (program, conf, env, limit, err) = if incus {
            let Some(p) = &self.clients.incus else {
                return (false, 0.0);
            };
            (p, &self.incus_conf, "INCUS_CONF", self.incus_timeout, "incus.err")
        } else {
            (
                &self.clients.stapes,
                &self.stapes_conf,
                "STAPES_CONF",
                Duration::from_secs(60),
                "stapes.err",
            )
        };
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.lab.logs.join(err))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(["info", "c:"])
            .env(env, &conf.dir)
            .env("HOME", &conf.dir)
            .env_remove("STAPES_SOCKET")
            .env_remove("STAPES_DIR")
            .env_remove("XDG_CONFIG_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        let t0 = Instant::now();
        let ok = match cmd.spawn() {
            Ok(mut child) => match tokio::time::timeout(limit, child.wait()).await {
                Ok(Ok(status)) => status.success(),
                _ => false,
            },
            Err(_) => false,
        };
        (ok, t0.elapsed().as_secs_f64())
    }

    /// `count` timed runs of `client` (`stapes`, `stapes-mem` or `incus`).
    async fn measure(&self, mode: &str, client: &str, count: u32) -> FailoverRow {
        let incus = client == "incus";
        let mut times = Vec::new();
        let mut failures = 0;
        for _ in 0..count {
            if client == "stapes" {
                self.stapes_conf.forget();
            }
            let (ok, secs) = self.once(incus).await;
            times.push(secs);
            if !ok {
                failures += 1;
            }
        }
        // The target is about a user's first command: fresh `stapes` runs.
        let pass = (client == "stapes").then(|| {
            let p99 = crate::stats::percentile(&times, 99).unwrap_or(f64::INFINITY);
            p99 < 0.5 && failures == 0
        });
        let row = FailoverRow {
            mode: mode.to_string(),
            client: client.to_string(),
            times,
            failures,
            pass,
        };
        println!("{}", report::failover_line(&row));
        row
    }

    /// stapes fresh, stapes with memory, then incus, against a remote whose first
    /// address is `sick` (`rest`, the members, after it for stapes).
    async fn mode(
        &self,
        s: &Settings,
        mode: &str,
        sick: &str,
        rest: &str,
        rows: &mut Vec<FailoverRow>,
    ) -> anyhow::Result<()> {
        let stapes_addrs = if rest.is_empty() {
            sick.to_string()
        } else {
            format!("{sick},{rest}")
        };
        self.stapes_conf.set_remote(&stapes_addrs)?;
        rows.push(self.measure(mode, "stapes", s.n).await);
        self.stapes_conf.set_remote(&stapes_addrs)?;
        rows.push(self.measure(mode, "stapes-mem", s.n).await);
        if self.clients.incus.is_some() {
            self.incus_conf.set_remote(sick)?;
            rows.push(self.measure(mode, "incus", s.n_incus.unwrap_or(s.n)).await);
        }
        Ok(())
    }
}

fn urls(members: &[Member]) -> Vec<String> {
    members.iter().map(|m| format!("https://{}", m.https)).collect()
}

/// Runs the failover modes; returns the summary and the number of sick modes missed.
pub async fn run(s: &Settings, lab: &mut Lab, clients: &Clients) -> anyhow::Result<(String, usize)> {
    for mode in s.failover_modes() {
        if !["healthy", "refuse", "blackhole", "hang"].contains(&mode.as_str()) {
            bail!("unknown failover mode {mode:?} (known: healthy refuse blackhole hang)");
        }
    }
    for host in ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        for port in [s.port, s.port + 1] {
            if crate::procs::port_busy(&format!("{host}:{port}")).await {
                bail!("{host}:{port} is in use; pick another PORT");
            }
        }
    }
    if clients.incus.is_none() {
        log("no incus client; only stapes is measured");
    }
    let members = lab.cluster_members(Kind::Stapes, s.port);
    lab.form_cluster(Kind::Stapes, &members).await?;
    lab.trust_client(&members[0], &members[0].https).await?;
    // The cluster certificate (the same on every member), pinned by both clients.
    let probe = tls_client(
        &members[1].https,
        Some(&lab.identity.pair),
        Duration::from_secs(10),
    )?;
    let der = call(&probe, Method::GET, "/1.0", None)
        .await?
        .peer_cert
        .context("no server certificate seen")?;
    let server_pem = trust::cert::der_to_pem(&der);
    let timer = Timer {
        lab,
        clients,
        stapes_conf: Conf::new(lab.dir.join("stapes-conf"), lab, &server_pem)?,
        incus_conf: Conf::new(lab.dir.join("incus-client-conf"), lab, &server_pem)?,
        incus_timeout: Duration::from_secs(s.incus_timeout),
    };
    // Every member must know the client before anything is timed.
    for m in &members {
        timer.stapes_conf.set_remote(&format!("https://{}", m.https))?;
        let deadline = Instant::now() + crate::lab::READY_TIMEOUT;
        while !timer.once(false).await.0 {
            if Instant::now() > deadline {
                bail!(
                    "{} does not answer the client; see {}",
                    m.name,
                    lab.logs.join("stapes.err").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let _ = std::fs::write(lab.logs.join("stapes.err"), "");
    let incus_version = clients.incus.as_deref().map(|p| version_of(p, "version"));
    let header = vec![
        format!(
            "{}, incus {}",
            version_of(&clients.stapes, "--version"),
            incus_version.unwrap_or_else(|| "(none)".into())
        ),
        format!(
            "N={} N_INCUS={} PORT={}, {} CPUs, kernel {}",
            s.n,
            s.n_incus.unwrap_or(s.n),
            s.port,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        ),
    ];
    for l in &header {
        println!("{l}");
    }
    let nodes = urls(&members).join(",");
    let mut rows = Vec::new();
    for mode in s.failover_modes() {
        match mode.as_str() {
            "healthy" => {
                timer.stapes_conf.set_remote(&nodes)?;
                rows.push(timer.measure("healthy", "stapes", s.n).await);
                rows.push(timer.measure("healthy", "stapes-mem", s.n).await);
                if clients.incus.is_some() {
                    timer
                        .incus_conf
                        .set_remote(&format!("https://{}", members[1].https))?;
                    rows.push(timer.measure("healthy", "incus", s.n_incus.unwrap_or(s.n)).await);
                }
            }
            "refuse" => {
                let sick = format!("https://127.0.0.1:{}", s.port + 1);
                timer.mode(s, "refuse", &sick, &nodes, &mut rows).await?;
            }
            "blackhole" => {
                let root = nix::unistd::geteuid().is_root();
                if !root || crate::procs::find_tool("nft").is_none() {
                    println!("blackhole: skipped (needs root and nft)");
                    continue;
                }
                let _hole = Blackhole::add("127.0.0.4", s.port)?;
                let sick = format!("https://127.0.0.4:{}", s.port);
                timer.mode(s, "blackhole", &sick, &nodes, &mut rows).await?;
            }
            _ => {
                // hang: node1 itself, stopped; continued afterwards (and by the lab's
                // stop, which sends SIGCONT first, if this ends early).
                lab.signal(&members[0].key, Signal::SIGSTOP);
                let rest = urls(&members[1..]).join(",");
                let sick = format!("https://{}", members[0].https);
                let r = timer.mode(s, "hang", &sick, &rest, &mut rows).await;
                lab.signal(&members[0].key, Signal::SIGCONT);
                r?;
            }
        }
    }
    Ok(report::failover(&header, &rows))
}
