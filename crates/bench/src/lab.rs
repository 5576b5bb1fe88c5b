//! The lab: the one place that starts, configures and stops the daemons of every side,
//! alone or as clusters, in one temporary directory.
//!
//! ```text
//!  /tmp/stapes-bench.XXXXXX/
//!    client.crt, client.key      the client certificate every side trusts (oha uses it)
//!    ceiling.crt, ceiling.key    the ceiling members' shared server certificate
//!    ceiling-body*.json          the bodies the ceiling serves (stapes's own GET /1.0)
//!    stapes/ incus/ ceiling/     single mode: one state directory per side
//!    stapes1..3/ incus1..3/ ...  cluster mode: one per member
//!    incus-conf/                 the incus client's configuration (cluster formation)
//!    logs/                       every daemon's output, oha's stderr
//!    results/                    raw oha JSON and summary.txt (or RESULTS_DIR)
//! ```
//!
//! Daemons are keyed by their directory name. Each is stopped by PID when the lab is
//! finished, also after an error or ^C; the containers they left are killed through
//! LXC, and what Incus mounted below the directory is unmounted, before the directory is
//! removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use client::connect::{DialSpec, ServerCheck};
use client::{Client, Endpoint, Method, Request};
use serde_json::{json, Value};

use crate::procs::{Daemon, Memory};

/// How long a daemon may take to answer `GET /1.0` after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The kinds of server measured side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Stapes,
    Incus,
    Ceiling,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Stapes, Kind::Incus, Kind::Ceiling];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Stapes => "stapes",
            Kind::Incus => "incus",
            Kind::Ceiling => "ceiling",
        }
    }
}

/// One daemon of a side: where it keeps its state and where it listens.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its directory name under the lab, and the key of its process and log.
    pub key: String,
    /// Its cluster member name (`node1`...).
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// `host:port` of its HTTPS listener.
    pub https: String,
}

/// A side as the cases see it: its kind and its members, the first being the one all
/// load goes to.
#[derive(Debug, Clone)]
pub struct Side {
    pub kind: Kind,
    pub members: Vec<Member>,
}

impl Side {
    pub fn front(&self) -> &Member {
        &self.members[0]
    }
}

/// The programs the lab runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub stapesd: PathBuf,
    pub stapesd_args: Vec<String>,
    pub incusd: PathBuf,
    pub ceiling: PathBuf,
}

/// The client certificate (ECDSA P-384) every side trusts.
#[derive(Debug, Clone)]
pub struct Identity {
    pub pair: trust::CertPair,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Sizes of `GET /1.0` as a trusted client sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bodies {
    pub tls: usize,
    pub unix: usize,
}

/// A response, whatever its status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    pub peer_cert: Option<Vec<u8>>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn metadata(&self) -> Value {
        self.json()["metadata"].clone()
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The start of the body, for error messages.
    pub fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned()
    }

    /// The answer if its status is `want` (`None`: any 2xx), else an error that says
    /// what was asked (`what`) and what came back.
    pub fn expect(self, want: Option<u16>, what: impl std::fmt::Display) -> anyhow::Result<Answer> {
        let fine = match want {
            Some(code) => self.status == code,
            None => self.ok(),
        };
        if !fine {
            bail!("{what} -> {} {}", self.status, self.excerpt());
        }
        Ok(self)
    }
}

/// A client for a unix socket, each request bounded by `timeout`.
pub fn unix_client(socket: &Path, timeout: Duration) -> Client {
    Client::unix(socket).with_timeout(timeout)
}

/// A client for `https://addr`, presenting `identity` if given, accepting any server
/// certificate (it hands it back in [`Answer::peer_cert`]).
pub fn tls_client(
    addr: &str,
    identity: Option<&trust::CertPair>,
    timeout: Duration,
) -> anyhow::Result<Client> {
    let endpoint = Endpoint::parse(&format!("https://{addr}"))?;
    Ok(Client::from_spec(DialSpec {
        endpoints: vec![endpoint],
        check: ServerCheck::Record,
        identity: identity.cloned(),
        connect_timeout: Duration::from_secs(3),
        state_file: None,
    })
    .with_timeout(timeout))
}

/// One request; `Err` only when no answer came.
pub async fn call(c: &Client, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
    let mut req = Request::new(method, path);
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = c.request(req).await?;
    Ok(Answer {
        status: r.status.as_u16(),
        body: r.body,
        peer_cert: r.peer_cert,
    })
}

/// Logs a line on stderr, with the time.
pub fn log(line: impl AsRef<str>) {
    let now = time::OffsetDateTime::now_utc();
    eprintln!(
        "[bench {:02}:{:02}:{:02}] {}",
        now.hour(),
        now.minute(),
        now.second(),
        line.as_ref()
    );
}

pub struct Lab {
    pub dir: PathBuf,
    pub logs: PathBuf,
    /// Raw results and summary.txt.
    pub out: PathBuf,
    pub identity: Identity,
    pub tools: Tools,
    /// Behind a lock so that a case, which holds the lab shared, can restart a member
    /// ([`Lab::kill9_and_start`]).
    daemons: std::sync::Mutex<BTreeMap<String, Daemon>>,
    keep_dir: bool,
    results_dir: Option<PathBuf>,
}

impl Lab {
    /// A fresh temporary directory with a client certificate in it.
    pub fn new(tools: Tools, results_dir: Option<PathBuf>, keep_dir: bool) -> anyhow::Result<Lab> {
        let dir = tempfile::Builder::new()
            .prefix("stapes-bench.")
            .tempdir_in("/tmp")
            .context("making the temporary directory")?
            .keep();
        let logs = dir.join("logs");
        let out = results_dir.clone().unwrap_or_else(|| dir.join("results"));
        std::fs::create_dir_all(&logs)?;
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let pair = trust::CertPair::generate_client("stapes-bench")?;
        let identity = Identity {
            cert_file: dir.join("client.crt"),
            key_file: dir.join("client.key"),
            pair,
        };
        std::fs::write(&identity.cert_file, &identity.pair.cert_pem)?;
        write_private(&identity.key_file, &identity.pair.key_pem)?;
        Ok(Lab {
            dir,
            logs,
            out,
            identity,
            tools,
            daemons: std::sync::Mutex::new(BTreeMap::new()),
            keep_dir,
            results_dir,
        })
    }

    /// A member of `kind` under `key`, named `name`, to listen on `https`.
    pub fn member(&self, key: &str, name: &str, https: &str) -> Member {
        let dir = self.dir.join(key);
        Member {
            key: key.to_string(),
            name: name.to_string(),
            socket: dir.join("unix.socket"),
            dir,
            https: https.to_string(),
        }
    }

    /// Starts the daemon of `m`. A ceiling member listens on its address at once and
    /// forwards to `peer`; stapesd and incusd are told their address later
    /// ([`Lab::configure_https`]).
    pub fn start(&mut self, kind: Kind, m: &Member, peer: Option<&Member>) -> anyhow::Result<()> {
        self.spawn(kind, m, peer)
    }

    /// The daemons, locked (a poisoned lock is taken as it is: the map stays usable).
    fn daemons(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Daemon>> {
        self.daemons
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// SIGKILL for `m`'s daemon, then the same daemon started again on its state
    /// directory; returns the instant just before the new process was spawned.
    pub async fn kill9_and_start(&self, kind: Kind, m: &Member) -> anyhow::Result<Instant> {
        let old = self.daemons().remove(&m.key);
        if let Some(d) = old {
            d.kill9().await;
        }
        let t0 = Instant::now();
        self.spawn(kind, m, None)?;
        Ok(t0)
    }

    /// Whether `m`'s daemon runs (false if it exited or was never started).
    pub fn running(&self, key: &str) -> bool {
        self.daemons().get_mut(key).is_some_and(Daemon::running)
    }

    fn spawn(&self, kind: Kind, m: &Member, peer: Option<&Member>) -> anyhow::Result<()> {
        if self.daemons().contains_key(&m.key) {
            bail!("{} is already running", m.key);
        }
        std::fs::create_dir_all(&m.dir)?;
        let log = self.logs.join(format!("{}.log", m.key));
        let cmd = match kind {
            Kind::Stapes => {
                let mut c = tokio::process::Command::new(&self.tools.stapesd);
                c.arg("--state-dir").arg(&m.dir).args(&self.tools.stapesd_args);
                c
            }
            Kind::Incus => {
                let mut c = tokio::process::Command::new(&self.tools.incusd);
                c.env("INCUS_DIR", &m.dir)
                    .env("INCUS_CONF", self.dir.join("incus-conf"))
                    .arg("--group")
                    .arg("root")
                    .arg("--logfile")
                    .arg(&log);
                c
            }
            Kind::Ceiling => {
                let mut c = tokio::process::Command::new(&self.tools.ceiling);
                c.arg("--name")
                    .arg(&m.name)
                    .arg("--listen")
                    .arg(&m.https)
                    .arg("--unix")
                    .arg(&m.socket)
                    .arg("--cert")
                    .arg(self.dir.join("ceiling.crt"))
                    .arg("--key")
                    .arg(self.dir.join("ceiling.key"))
                    .arg("--body")
                    .arg(self.dir.join("ceiling-body.json"))
                    .arg("--untrusted-body")
                    .arg(self.dir.join("ceiling-body-untrusted.json"));
                if let Some(p) = peer {
                    c.arg("--peer").arg(&p.https);
                }
                c
            }
        };
        // incusd writes its own log with --logfile; what it prints goes beside it.
        let output = match kind {
            Kind::Incus => self.logs.join(format!("{}.out", m.key)),
            _ => log,
        };
        let daemon = Daemon::spawn(cmd, &output)?;
        self.daemons().insert(m.key.clone(), daemon);
        Ok(())
    }

    /// Polls `GET /1.0` on `m`'s unix socket every 10 ms until it answers 200; returns
    /// the milliseconds since `t0`. Fails if the daemon exits or [`READY_TIMEOUT`] passes.
    pub async fn wait_ready(&mut self, m: &Member, t0: Instant) -> anyhow::Result<f64> {
        let c = unix_client(&m.socket, Duration::from_secs(1));
        let deadline = t0 + READY_TIMEOUT;
        loop {
            if let Ok(a) = call(&c, Method::GET, "/1.0", None).await {
                if a.status == 200 {
                    return Ok(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
            {
                let mut daemons = self.daemons();
                let d = daemons.get_mut(&m.key).context("not started")?;
                if !d.running() {
                    bail!("{} exited during start-up; see {}", m.key, d.log.display());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer GET /1.0 on {} within {READY_TIMEOUT:?}",
                    m.key,
                    m.socket.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts `m` and returns its start-to-ready time in ms.
    pub async fn start_timed(
        &mut self,
        kind: Kind,
        m: &Member,
        peer: Option<&Member>,
    ) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        self.start(kind, m, peer)?;
        self.wait_ready(m, t0).await
    }

    /// Stops the daemon under `key` (TERM, then KILL after a bound).
    pub async fn stop(&mut self, key: &str) {
        let d = self.daemons().remove(key);
        if let Some(d) = d {
            d.stop().await;
        }
    }

    /// SIGKILL for the daemon under `key`.
    pub async fn kill9(&mut self, key: &str) {
        let d = self.daemons().remove(key);
        if let Some(d) = d {
            d.kill9().await;
        }
    }

    pub fn memory(&self, key: &str) -> Option<Memory> {
        self.daemons().get(key)?.memory()
    }

    pub fn pid(&self, key: &str) -> Option<i32> {
        self.daemons().get(key).map(Daemon::pid)
    }

    pub fn exe(&self, key: &str) -> Option<PathBuf> {
        self.daemons().get(key)?.exe()
    }

    pub fn signal(&self, key: &str, sig: nix::sys::signal::Signal) {
        if let Some(d) = self.daemons().get(key) {
            d.signal(sig);
        }
    }

    /// `PATCH /1.0` `core.https_address` over the unix socket.
    pub async fn configure_https(&self, m: &Member) -> anyhow::Result<()> {
        let c = unix_client(&m.socket, Duration::from_secs(30));
        let body = json!({"config": {"core.https_address": m.https}});
        call(&c, Method::PATCH, "/1.0", Some(&body))
            .await?
            .expect(None, format!("{}: PATCH /1.0 core.https_address", m.key))?;
        Ok(())
    }

    /// Trusts the client certificate through `via`'s unix socket, then checks that
    /// `https://addr/1.0` sees it as trusted (bounded to 10 s: the listener may still be
    /// opening, a cluster may still be replicating).
    pub async fn trust_client(&self, via: &Member, addr: &str) -> anyhow::Result<Bodies> {
        let c = unix_client(&via.socket, Duration::from_secs(30));
        // Incus wants base64 DER (what the incus CLI sends); PEM is the fallback.
        let der = trust::cert::pem_to_der(&self.identity.pair.cert_pem)?;
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
        let mut answer = None;
        for cert in [b64.as_str(), self.identity.pair.cert_pem.as_str()] {
            let body = json!({"type": "client", "name": "bench", "certificate": cert});
            let a = call(&c, Method::POST, "/1.0/certificates", Some(&body)).await?;
            let done = a.ok();
            answer = Some(a);
            if done {
                break;
            }
        }
        if let Some(a) = answer {
            a.expect(None, format!("{}: POST /1.0/certificates", via.key))?;
        }
        let tls = tls_client(addr, Some(&self.identity.pair), Duration::from_secs(2))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = loop {
            match call(&tls, Method::GET, "/1.0", None).await {
                Ok(a) if a.status == 200 => break a,
                other if Instant::now() > deadline => {
                    bail!("{}: https://{addr}/1.0 -> {other:?}", via.key)
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        if answer.metadata()["auth"] != "trusted" {
            bail!(
                "{}: the client certificate is not trusted over TLS: {}",
                via.key,
                answer.excerpt()
            );
        }
        let unix = call(&c, Method::GET, "/1.0", None).await?;
        Ok(Bodies {
            tls: answer.body.len(),
            unix: unix.body.len(),
        })
    }

    /// Writes the ceiling's certificate and the bodies it serves: stapes's own `GET
    /// /1.0` over TLS from `stapes_addr`, with and without the client certificate.
    pub async fn prepare_ceiling(&self, stapes_addr: &str) -> anyhow::Result<()> {
        let pair = trust::CertPair::generate_server("ceiling")?;
        std::fs::write(self.dir.join("ceiling.crt"), &pair.cert_pem)?;
        write_private(&self.dir.join("ceiling.key"), &pair.key_pem)?;
        for (file, who) in [
            ("ceiling-body.json", Some(&self.identity.pair)),
            ("ceiling-body-untrusted.json", None),
        ] {
            let c = tls_client(stapes_addr, who, Duration::from_secs(10))?;
            let a = call(&c, Method::GET, "/1.0", None)
                .await?
                .expect(Some(200), "stapes: GET /1.0 for the ceiling's body")?;
            std::fs::write(self.dir.join(file), &a.body)?;
        }
        Ok(())
    }

    /// Stops every daemon (by PID), kills through LXC the containers they left, unmounts
    /// what they left below the directory, keeps the logs in `RESULTS_DIR` if set, and
    /// removes the directory unless `KEEP_DIR`. After a failure the last lines of each log
    /// are shown.
    pub async fn finish(mut self, failed: bool) {
        let keys: Vec<String> = self.daemons().keys().cloned().collect();
        for k in keys {
            self.stop(&k).await;
        }
        if failed && !self.keep_dir {
            show_log_tails(&self.logs);
        }
        if let Some(r) = &self.results_dir {
            if let Ok(entries) = std::fs::read_dir(&self.logs) {
                for e in entries.flatten() {
                    let _ = std::fs::copy(e.path(), r.join(e.file_name()));
                }
            }
            log(format!("raw oha JSON, logs and summary.txt in {}", r.display()));
        }
        crate::procs::stop_containers_under(&self.dir).await;
        crate::procs::unmount_under(&self.dir).await;
        if self.keep_dir {
            log(format!("kept {}", self.dir.display()));
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            log(format!("could not remove {}: {e}", self.dir.display()));
        }
    }
}

fn show_log_tails(logs: &Path) {
    let Ok(entries) = std::fs::read_dir(logs) else {
        return;
    };
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if text.trim().is_empty() {
            continue;
        }
        log(format!("last lines of {}:", e.file_name().to_string_lossy()));
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(15)..] {
            eprintln!("{l}");
        }
    }
}

/// Writes a file only its owner can read (a private key).
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
