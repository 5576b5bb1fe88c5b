//! Test support for stapes: real `stapesd` processes in temporary directories, a raw
//! HTTP client over TLS or the unix socket (raw so tests can send what a well-behaved
//! client never would), client identities, and eventual assertions.
//!
//! Tests never sleep for a fixed time to wait for something: they poll with
//! [`eventually`] under a bound.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

pub mod acme;
pub mod netns;
pub mod oidc;

pub use transport::tls::{PeerRecorder, ServerTrust};

/// The path of a workspace binary (`stapesd`, `stapes`), built next to the tests.
/// `STAPES_BIN_DIR` overrides the directory.
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("STAPES_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    profile_dir.join(name)
}

/// The environment that makes a daemon use the in-process instance driver (no root, no
/// LXC), for `Member::start_env` and `Cluster::start_env`.
pub const FAKE_DRIVER: (&str, &str) = ("STAPES_DRIVER", "fake");

/// Starts `stapesd` on `dir` expecting it to refuse; returns what it said.
pub fn refused_start(dir: &std::path::Path) -> String {
    let mut child = std::process::Command::new(bin("stapesd"))
        .arg("--state-dir")
        .arg(dir)
        .env_remove("STAPES_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("stapesd starts");
    for _ in 0..2000 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "stapesd started on damaged files");
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return err;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("stapesd did not stop within 20 s on damaged files");
}

/// Whether the test runs as root. Not root locally: the caller skips with a message.
/// Not root under `CI=true`: a failure, never a skip.
pub fn have_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("this test needs root under CI=true");
        }
        eprintln!("SKIP: this test needs root");
    }
    root
}

/// Whether an external tool is available. Missing locally: the caller skips with a
/// message. Missing under `CI=true`: a failure, never a skip.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{tool} is required under CI=true but is not installed");
        }
        eprintln!("SKIP: {tool} is not installed; install it to run this test");
    }
    found
}

/// The variable set in a test's own run under [`rerun_with_signals_ignored`].
const SIGNALS_IGNORED: &str = "STAPES_INNER_IGNORED";

/// Whether this is the inner run of [`rerun_with_signals_ignored`]; it checks that the
/// process does ignore SIGHUP, SIGINT and SIGQUIT.
pub fn in_rerun_with_signals_ignored() -> bool {
    if std::env::var_os(SIGNALS_IGNORED).is_none() {
        return false;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ignored = instance::signals::ignored_in(&status);
    assert!(
        [1, 2, 3].iter().all(|n| ignored.contains(n)),
        "the runner was meant to ignore HUP, INT and QUIT:\n{status}"
    );
    true
}

/// Runs test `name` (its path in this test binary) again in a child process that
/// ignores SIGHUP, SIGINT and SIGQUIT, as `nohup` and a shell's `&` leave a daemon, so
/// that every `stapesd` it starts inherits them ignored; panics, with its output, unless
/// that run passed. The inner run knows itself by [`in_rerun_with_signals_ignored`].
pub fn rerun_with_signals_ignored(name: &str) {
    let me = std::env::current_exe().expect("test binary");
    let out = Command::new("sh")
        .args(["-c", "trap '' HUP INT QUIT; exec \"$0\" \"$@\""])
        .arg(me)
        .args(["--exact", name, "--nocapture"])
        .env(SIGNALS_IGNORED, "1")
        .output()
        .expect("the test runs itself");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

/// VmRSS and VmHWM (its peak) of process `pid`, in bytes.
pub fn memory(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound then released: good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A client certificate and key.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: String,
}

impl ClientCert {
    pub fn generate(name: &str) -> ClientCert {
        let pair = trust::CertPair::generate_client(name).expect("certificate generation");
        let der = trust::cert::pem_to_der(&pair.cert_pem).expect("own pem parses");
        ClientCert {
            fingerprint: trust::fingerprint(&der),
            cert_pem: pair.cert_pem,
            key_pem: pair.key_pem,
        }
    }
}

/// A response, raw.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The envelope's metadata.
    pub fn metadata(&self) -> Value {
        self.json()["metadata"].clone()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Where a request goes.
#[derive(Clone)]
pub enum Target {
    Unix(PathBuf),
    /// HTTPS to `addr` with a ready TLS client configuration.
    Tls {
        addr: String,
        config: Arc<transport::tls::ClientConfigHandle>,
    },
    /// HTTPS after sending raw bytes (a PROXY header) on the new connection.
    TlsAfter {
        addr: String,
        config: Arc<transport::tls::ClientConfigHandle>,
        prefix: Vec<u8>,
    },
}

impl Target {
    /// HTTPS presenting `cert` (or no certificate), accepting any server certificate.
    pub fn tls(addr: &str, cert: Option<&ClientCert>) -> Target {
        Target::tls_with(addr, cert, ServerTrust::Record(Default::default()))
    }

    pub fn tls_with(addr: &str, cert: Option<&ClientCert>, server: ServerTrust) -> Target {
        let pair = cert.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str()));
        let config = transport::tls::client_config(server, pair, &[b"http/1.1"]).expect("client TLS config");
        Target::Tls {
            addr: addr.to_string(),
            config,
        }
    }

    /// HTTPS presenting `cert` (or none), each connection starting with `prefix`.
    pub fn tls_after(addr: &str, cert: Option<&ClientCert>, prefix: &[u8]) -> Target {
        let Target::Tls { addr, config } = Target::tls(addr, cert) else {
            unreachable!()
        };
        Target::TlsAfter {
            addr,
            config,
            prefix: prefix.to_vec(),
        }
    }

    /// HTTPS presenting `cert` but signing with another key.
    pub fn tls_foreign_key(addr: &str, cert: &ClientCert, key_pem: &str) -> Target {
        let config = transport::testing::client_config_with_foreign_key(&cert.cert_pem, key_pem)
            .expect("forged config");
        Target::Tls {
            addr: addr.to_string(),
            config,
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Resp> {
        self.request("GET", path, None, &[]).await
    }

    pub async fn send_json(&self, method: &str, path: &str, body: &Value) -> anyhow::Result<Resp> {
        self.request(method, path, Some(serde_json::to_vec(body)?), &[])
            .await
    }

    /// One request on a new connection, bounded to 15 s.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Resp> {
        self.request_within(method, path, body, headers, Duration::from_secs(15))
            .await
    }

    /// One request on a new connection, bounded to `limit`.
    pub async fn request_within(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
        limit: Duration,
    ) -> anyhow::Result<Resp> {
        let fut = async {
            match self {
                Target::Unix(p) => send(UnixStream::connect(p).await?, method, path, body, headers).await,
                Target::Tls { addr, config } | Target::TlsAfter { addr, config, .. } => {
                    let mut tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    if let Target::TlsAfter { prefix, .. } = self {
                        tokio::io::AsyncWriteExt::write_all(&mut tcp, prefix).await?;
                    }
                    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
                    let tls = transport::tls::TlsConnector::from(config.clone())
                        .connect(transport::tls::server_name(host), tcp)
                        .await?;
                    send(tls, method, path, body, headers).await
                }
            }
        };
        tokio::time::timeout(limit, fut)
            .await
            .context("request timed out")?
    }
}

/// A TLS connection to `addr` offering `alpn`, presenting `cert` (or none), accepting
/// any server certificate: for tests that speak HTTP themselves (h2, raw bytes).
pub async fn tls_stream(
    addr: &str,
    cert: Option<&ClientCert>,
    alpn: &[u8],
) -> anyhow::Result<transport::tls::ClientTlsStream<TcpStream>> {
    let pair = cert.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str()));
    let config = transport::tls::client_config(ServerTrust::Record(Default::default()), pair, &[alpn])?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    Ok(transport::tls::TlsConnector::from(config)
        .connect(transport::tls::server_name(host), tcp)
        .await?)
}

/// An h2 connection to `addr` presenting `cert` (or none); requests go through the
/// returned sender, whose bodies the test controls.
pub async fn h2_connect<B>(
    addr: &str,
    cert: Option<&ClientCert>,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<B>>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = tls_stream(addr, cert, b"h2").await?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await?;
    tokio::spawn(conn);
    Ok(sender)
}

impl ClientCert {
    /// A client certificate valid from `not_before` to `not_after`.
    pub fn valid_between(
        name: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> ClientCert {
        let pair = trust::CertPair::generate_valid(name, &[], not_before, not_after)
            .expect("certificate generation");
        let der = trust::cert::pem_to_der(&pair.cert_pem).expect("own pem parses");
        ClientCert {
            fingerprint: trust::fingerprint(&der),
            cert_pem: pair.cert_pem,
            key_pem: pair.key_pem,
        }
    }
}

/// An HTTP/1.1 connection kept open for several requests (to see whether it survives).
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAlive {
    /// A TLS connection to `addr` presenting `cert`, accepting any server certificate.
    pub async fn open(addr: &str, cert: Option<&ClientCert>) -> anyhow::Result<KeepAlive> {
        let Target::Tls { addr, config } = Target::tls(addr, cert) else {
            unreachable!()
        };
        let tcp = TcpStream::connect(&addr).await?;
        tcp.set_nodelay(true)?;
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&addr);
        let tls = transport::tls::TlsConnector::from(config)
            .connect(transport::tls::server_name(host), tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(KeepAlive { sender })
    }

    /// `GET path` on this connection.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Resp> {
        self.sender.ready().await?;
        let req = http::Request::builder()
            .uri(path)
            .header("host", "stapes.test")
            .body(Full::new(Bytes::new()))?;
        let resp = self.sender.send_request(req).await?;
        read(resp).await
    }
}

async fn send<S>(
    stream: S,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> anyhow::Result<Resp>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", "stapes.test");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = sender.send_request(req).await?;
    read(resp).await
}

/// Reads a whole response.
async fn read(resp: http::Response<hyper::body::Incoming>) -> anyhow::Result<Resp> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A `stapesd` process with its own state directory. Killed when dropped.
pub struct Member {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    log: PathBuf,
    /// `127.0.0.1:PORT` once [`Member::listen`] ran.
    pub https: Option<String>,
    env: Vec<(String, String)>,
    /// The network namespace the daemon runs in (`ip netns exec`), if not the test's.
    netns: Option<String>,
}

impl Member {
    /// Starts a member in a new temporary directory and waits until it is ready.
    pub async fn start() -> Member {
        Self::start_env(&[]).await
    }

    /// As [`Member::start`], with extra environment variables for the daemon.
    pub async fn start_env(env: &[(&str, &str)]) -> Member {
        Self::start_in(None, env).await
    }

    /// As [`Member::start_env`], the daemon running in network namespace `netns`. The
    /// unix socket is a path, so the test still reaches it from its own namespace.
    pub async fn start_in(netns: Option<&str>, env: &[(&str, &str)]) -> Member {
        Self::start_prepared(netns, env, |_| {}).await
    }

    /// As [`Member::start_in`], calling `prepare` with the state directory (created,
    /// empty) before the daemon starts: to mount a small file system there, say.
    pub async fn start_prepared(
        netns: Option<&str>,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> Member {
        let tmp = tempfile::Builder::new()
            .prefix("stapes-test-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().join("state");
        std::fs::create_dir_all(&dir).expect("state dir");
        prepare(&dir);
        let mut m = Member {
            log: tmp.path().join("stapesd.log"),
            dir,
            _tmp: Some(tmp),
            child: None,
            https: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            netns: netns.map(str::to_string),
        };
        m.spawn().await;
        m
    }

    /// The names in the member's image directory (`<state>/images`), sorted; temporary
    /// files of imports under way included.
    pub fn image_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("images"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("unix.socket")
    }

    pub fn unix(&self) -> Target {
        Target::Unix(self.socket())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// The log so far, for assertions and for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once `test` holds for it, waiting at most `limit`. A runtime worker
    /// writes its INFO lines when it runs out of work, so such a line can land just
    /// after the answer of the request that logged it.
    pub async fn log_when(&self, limit: Duration, what: &str, test: impl Fn(&str) -> bool) -> String {
        eventually(limit, what, || async {
            let log = self.log();
            test(&log).then_some(log)
        })
        .await
    }

    async fn spawn(&mut self) {
        self.launch();
        self.wait_ready().await;
    }

    /// Starts the process again on the same state directory without waiting for it to
    /// be ready (a member that cannot rejoin never is): only until its HTTPS address
    /// `https` accepts connections, bounded.
    pub async fn restart_unready(&mut self, https: &str) {
        self.kill9();
        self.launch();
        let addr = https.to_string();
        eventually(
            Duration::from_secs(20),
            "the restarted member accepts connections",
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(&addr).await.ok().map(drop) }
            },
        )
        .await;
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        // `ip netns exec` execs the daemon in place: the child's PID is the daemon's.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new(netns::IP);
                c.args(["netns", "exec", ns]).arg(bin("stapesd"));
                c
            }
            None => Command::new(bin("stapesd")),
        };
        let child = cmd
            .arg("--state-dir")
            .arg(&self.dir)
            .env_remove("STAPES_SOCKET")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build the workspace first)",
                    bin("stapesd").display()
                )
            });
        self.child = Some(child);
    }

    pub async fn wait_ready(&self) {
        let target = self.unix();
        let log = self.log.clone();
        let limit = Duration::from_secs(20);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(r) = target.get("/internal/ready").await {
                if r.status == 200 {
                    return;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "stapesd not ready after {limit:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Opens HTTPS on a free loopback port and returns `127.0.0.1:PORT`.
    pub async fn listen(&mut self) -> String {
        self.listen_on("127.0.0.1").await
    }

    /// Opens HTTPS on a free port of `ip` (a local address, e.g. `127.0.0.2`) and returns
    /// `IP:PORT` (`[IP]:PORT` for IPv6).
    pub async fn listen_on(&mut self, ip: &str) -> String {
        let ip: std::net::IpAddr = ip.parse().unwrap_or_else(|e| panic!("bad IP {ip:?}: {e}"));
        // A port found free may be taken by another test's outgoing connection before the
        // daemon binds it; a few fresh picks make that race harmless.
        let mut attempt = 0;
        let addr = loop {
            attempt += 1;
            let port = std::net::TcpListener::bind((ip, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"));
            let addr = std::net::SocketAddr::new(ip, port).to_string();
            let r = self
                .unix()
                .send_json(
                    "PATCH",
                    "/1.0",
                    &serde_json::json!({"config": {"core.https_address": addr}}),
                )
                .await
                .expect("PATCH /1.0");
            let body = String::from_utf8_lossy(&r.body);
            if r.status == 400 && body.contains("Address already in use") && attempt < 5 {
                continue;
            }
            assert_eq!(r.status, 200, "setting core.https_address: {body}");
            break addr;
        };
        self.https = Some(addr.clone());
        addr
    }

    /// Trusts `cert` through the unix socket.
    pub async fn trust(&self, cert: &ClientCert) {
        self.trust_as(cert, "client").await
    }

    /// Trusts `cert` through the unix socket as a certificate of type `kind`.
    pub async fn trust_as(&self, cert: &ClientCert, kind: &str) {
        let r = self
            .unix()
            .send_json(
                "POST",
                "/1.0/certificates",
                &serde_json::json!({"type": kind, "name": "test", "certificate": cert.cert_pem}),
            )
            .await
            .expect("POST /1.0/certificates");
        assert_eq!(r.status, 201, "trust: {}", String::from_utf8_lossy(&r.body));
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> anyhow::Result<i32> {
        let Some(mut c) = self.child.take() else {
            bail!("not running")
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        for _ in 0..1500 {
            if let Some(status) = c.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
        bail!("stapesd did not exit within 15 s of SIGTERM")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal");
    }

    /// SIGSTOP, and waits (bounded) until the kernel reports the process stopped: the
    /// signal is asynchronous, and a request sent right after it could still be served.
    pub async fn stop_process(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        let stat = format!("/proc/{}/stat", self.pid());
        eventually(Duration::from_secs(5), "the member stopped", || {
            let stopped = std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('T'))
                })
                .unwrap_or(false);
            async move { stopped.then_some(()) }
        })
        .await;
    }

    /// Sets an environment variable for the daemon's next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts the process again on the same state directory.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Waits (bounded by `limit`) for the process to exit by itself; its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> i32 {
        let child = self.child.as_mut().expect("running");
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if tokio::time::Instant::now() > deadline {
                panic!("stapesd did not exit within {limit:?}: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the process again after it exited by itself (no signal sent).
    pub async fn start_again(&mut self) {
        self.child = None;
        self.spawn().await;
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // A stopped process must be continued to die promptly.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        self.kill9();
    }
}

/// Opens `/1.0/events?QUERY` as a websocket over the unix socket.
pub async fn events_unix(
    socket: &Path,
    query: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<UnixStream>> {
    let stream = UnixStream::connect(socket).await?;
    let url = format!("ws://stapes.test/1.0/events?{query}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

/// The next lifecycle event with `action` on an event stream; panics after 10 s.
pub async fn next_lifecycle<S>(ws: &mut S, action: &str) -> Value
where
    S: futures_util::Stream<
            Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
        > + Unpin,
{
    use futures_util::StreamExt;
    let wait = async {
        while let Some(Ok(msg)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).expect("events are JSON");
                if v["metadata"]["action"] == action {
                    return v;
                }
            }
        }
        panic!("the event stream ended before a {action} event");
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no {action} event within 10 s"))
}

/// Starts haproxy in the foreground on `config`, its output discarded; killed when
/// dropped.
pub fn haproxy(config: &Path) -> tokio::process::Child {
    tokio::process::Command::new("haproxy")
        .arg("-f")
        .arg(config)
        .arg("-db")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy starts")
}

/// The join token text for the operation `POST /1.0/cluster/members` returned.
pub fn join_token_from(op: &Value) -> String {
    let md = &op["metadata"];
    trust::token::encode(&trust::token::JoinToken {
        server_name: md["serverName"].as_str().unwrap_or_default().into(),
        fingerprint: md["fingerprint"].as_str().unwrap_or_default().into(),
        addresses: serde_json::from_value(md["addresses"].clone()).unwrap_or_default(),
        secret: md["secret"].as_str().unwrap_or_default().into(),
        expires_at: md["expiresAt"].as_str().unwrap_or(trust::token::NO_EXPIRY).into(),
    })
}

impl Member {
    /// `PUT /1.0/cluster` bootstrapping a one-member cluster named `name`.
    pub async fn enable_cluster(&mut self, name: &str) {
        if self.https.is_none() {
            self.listen().await;
        }
        let r = self
            .unix()
            .send_json(
                "PUT",
                "/1.0/cluster",
                &serde_json::json!({"server_name": name, "enabled": true}),
            )
            .await
            .expect("PUT /1.0/cluster");
        assert_eq!(
            r.status,
            202,
            "cluster enable: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    /// Asks this member for a join token for `name`.
    pub async fn join_token(&self, name: &str) -> String {
        let r = self
            .unix()
            .send_json(
                "POST",
                "/1.0/cluster/members",
                &serde_json::json!({"server_name": name}),
            )
            .await
            .expect("POST /1.0/cluster/members");
        assert_eq!(r.status, 202, "join token: {}", String::from_utf8_lossy(&r.body));
        join_token_from(&r.metadata())
    }

    /// `PUT /1.0/cluster` joining with `token`; returns the raw response.
    pub async fn try_join(&self, name: &str, token: &str) -> Resp {
        self.try_join_at(name, token, &format!("127.0.0.1:{}", free_port()))
            .await
    }

    /// As [`Member::try_join`], listening at `address`. Bounded by the daemon's own
    /// wait for the cluster state, plus a margin.
    pub async fn try_join_at(&self, name: &str, token: &str, address: &str) -> Resp {
        let body = serde_json::json!({"server_name": name, "enabled": true, "server_address": address, "cluster_token": token});
        self.unix()
            .request_within(
                "PUT",
                "/1.0/cluster",
                Some(serde_json::to_vec(&body).expect("JSON")),
                &[],
                Duration::from_secs(150),
            )
            .await
            .expect("PUT /1.0/cluster")
    }

    /// The member list as this member sees it (`recursion=1`).
    pub async fn members(&self) -> Vec<Value> {
        match self.unix().get("/1.0/cluster/members?recursion=1").await {
            Ok(r) if r.status == 200 => r.metadata().as_array().cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The HTTPS address from this member's own configuration.
    pub async fn address(&self) -> String {
        let r = self.unix().get("/1.0").await.expect("GET /1.0");
        r.metadata()["config"]["core.https_address"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Several members in one cluster, started in order: the first bootstraps, the others
/// join with tokens from it.
pub struct Cluster {
    pub members: Vec<Member>,
    env: Vec<(String, String)>,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// As [`Cluster::start`], with global configuration set before the joins.
    pub async fn start_with(n: usize, config: &[(&str, &str)]) -> Cluster {
        Self::start_env(n, config, &[]).await
    }

    /// As [`Cluster::start_with`], every daemon started with extra environment.
    pub async fn start_env(n: usize, config: &[(&str, &str)], env: &[(&str, &str)]) -> Cluster {
        let mut first = Member::start_env(env).await;
        first.enable_cluster("node1").await;
        if !config.is_empty() {
            let cfg: serde_json::Map<String, Value> = config
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            let r = first
                .unix()
                .send_json("PATCH", "/1.0", &serde_json::json!({ "config": cfg }))
                .await
                .expect("PATCH /1.0");
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
        let mut cluster = Cluster {
            members: vec![first],
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        for i in 2..=n {
            cluster.add(&format!("node{i}")).await;
        }
        cluster
    }

    /// Starts a new member and joins it under `name` with a token from the first
    /// member that answers.
    pub async fn add(&mut self, name: &str) -> &Member {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let m = Member::start_env(&env).await;
        let mut token = None;
        for other in &self.members {
            if let Ok(r) = other
                .unix()
                .send_json(
                    "POST",
                    "/1.0/cluster/members",
                    &serde_json::json!({"server_name": name}),
                )
                .await
            {
                if r.status == 202 {
                    token = Some(join_token_from(&r.metadata()));
                    break;
                }
            }
        }
        let token = token.expect("a member issued a join token");
        let r = m.try_join(name, &token).await;
        assert_eq!(
            r.status,
            202,
            "join {name}: {}\n{}",
            String::from_utf8_lossy(&r.body),
            m.log()
        );
        self.members.push(m);
        self.members.last().expect("just pushed")
    }

    /// The index of the member every live member agrees is the leader.
    pub async fn leader(&self, limit: Duration) -> usize {
        let names: Vec<String> = (1..=self.members.len()).map(|i| format!("node{i}")).collect();
        eventually(limit, "a leader", || async {
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                for v in m.members().await {
                    let roles = v["roles"].to_string();
                    if roles.contains("database-leader") {
                        let name = v["server_name"].as_str().unwrap_or_default();
                        return names.iter().position(|n| n == name);
                    }
                }
            }
            None
        })
        .await
    }

    /// Waits until every running member lists every member `Online` with `voters`
    /// members in the `database` role.
    pub async fn wait_healthy(&self, voters: usize, limit: Duration) {
        eventually(limit, "every member online with the expected voters", || async {
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                let list = m.members().await;
                if list.len() != self.members.len() {
                    return None;
                }
                if list.iter().any(|v| v["status"] != "Online") {
                    return None;
                }
                let n = list
                    .iter()
                    .filter(|v| v["roles"].to_string().contains("\"database\""))
                    .count();
                if n != voters {
                    return None;
                }
            }
            Some(())
        })
        .await
    }
}

impl Member {
    /// Whether the process is running (not killed by the test).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Member {
    /// Requests this member answered with 2xx so far, from its own metrics (read over
    /// its socket, which counts as one more).
    pub async fn requests_answered(&self) -> Option<u64> {
        let r = self.unix().get("/1.0/metrics").await.ok()?;
        String::from_utf8_lossy(&r.body)
            .lines()
            .find_map(|l| l.strip_prefix("stapes_api_requests_total{code=\"2xx\"} "))?
            .trim()
            .parse()
            .ok()
    }

    /// Waits (bounded by `limit`) until this member has at least `n` connections open,
    /// counting the one that asks: e.g. until a request sent elsewhere is in flight.
    pub async fn wait_for_open_connections(&self, n: u64, limit: Duration) {
        eventually(limit, &format!("{n} connections open"), || async {
            let r = self.unix().get("/1.0/metrics").await.ok()?;
            let open: u64 = String::from_utf8_lossy(&r.body)
                .lines()
                .find_map(|l| l.strip_prefix("stapes_open_connections "))?
                .trim()
                .parse()
                .ok()?;
            (open >= n).then_some(())
        })
        .await;
    }

    /// Waits (bounded by `limit`) until this member has answered at least `n` requests
    /// besides the metrics reads made here to count them: in an idle cluster, the
    /// members' own traffic (Raft appends, heartbeats, event relays).
    pub async fn wait_for_requests(&self, n: u64, limit: Duration) {
        let start = self.requests_answered().await.expect("metrics over the socket");
        let polls = std::sync::atomic::AtomicU64::new(0);
        eventually(limit, &format!("{n} more requests answered"), || async {
            let now = self.requests_answered().await?;
            let mine = polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            (now.saturating_sub(start).saturating_sub(mine) >= n).then_some(())
        })
        .await;
    }
}

/// One row of a member's route table (`GET /internal/test/routes`).
#[derive(Debug, Clone)]
pub struct RouteRow {
    pub method: String,
    pub path: String,
    pub access: String,
}

/// The route table `via` serves, read as a trusted caller.
pub async fn route_table(via: &Target) -> Vec<RouteRow> {
    let r = via
        .get("/internal/test/routes")
        .await
        .expect("GET /internal/test/routes");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.metadata()
        .as_array()
        .expect("a list of routes")
        .iter()
        .map(|row| RouteRow {
            method: row["method"].as_str().unwrap_or_default().to_string(),
            path: row["path"].as_str().unwrap_or_default().to_string(),
            access: row["access"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

/// Starts a demo operation on `on` (`--test-routes`) that holds until cancelled and
/// offers one websocket; its id.
pub async fn held_websocket_operation(on: &Target) -> String {
    let demo = serde_json::json!({"websockets": ["0"], "hold": true});
    let r = on
        .send_json("POST", "/internal/test/operations", &demo)
        .await
        .expect("POST /internal/test/operations");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["metadata"]["id"]
        .as_str()
        .expect("an operation id")
        .to_string()
}

/// Every route of `table` that is not `Public`, with every method it serves, answers a
/// 403 refusal to `stranger`. Path parameters become `params` (by name) or `x`; `query`
/// is appended; `Secret` routes are asked with a wrong secret.
pub async fn assert_refused_everywhere(
    table: &[RouteRow],
    stranger: &Target,
    params: &[(&str, &str)],
    query: &str,
) {
    let mut checked = 0;
    for row in table.iter().filter(|r| r.access != "Public") {
        let mut path = String::new();
        let mut rest = row.path.as_str();
        while let Some((before, after)) = rest.split_once('{') {
            let (name, after) = after.split_once('}').expect("a closed parameter");
            path.push_str(before);
            path.push_str(params.iter().find(|(k, _)| *k == name).map_or("x", |(_, v)| v));
            rest = after;
        }
        path.push_str(rest);
        let mut query = query.to_string();
        if row.access == "Secret" {
            query.push_str(if query.is_empty() { "?" } else { "&" });
            query.push_str(&format!("secret={}", "0".repeat(64)));
        }
        let methods: &[&str] = match row.method.as_str() {
            "*" => &["GET", "PUT", "DELETE"],
            m => &[m],
        };
        for method in methods {
            let uri = format!("{path}{query}");
            let r = stranger
                .request(method, &uri, None, &[])
                .await
                .expect("a refusal");
            assert_eq!(
                r.status,
                403,
                "{method} {uri}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let body = r.json();
            assert_eq!(body["error_code"], 403, "{method} {uri}: {body}");
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} routes checked");
}
