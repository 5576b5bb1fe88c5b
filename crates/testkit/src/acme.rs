//! An ACME lab on loopback: Debian's `pebble` (the test ACME server) resolving
//! identifiers through a private `dnsmasq`, both in a temporary directory and killed
//! when the [`Lab`] is dropped.
//!
//! pebble validates HTTP-01 challenges by connecting to port [`Lab::http_port`] (5002)
//! of the addresses the identifier resolves to (pebble prefers AAAA and tries one
//! address only, so give loopback IPv4 addresses). Its API is served with a
//! self-signed certificate made here ([`Lab::tls_ca_pem`], [`Lab::ca_file`]): an ACME
//! client trusts that certificate as its root. Issued certificates chain, through an
//! intermediate, to a root pebble makes anew at every start ([`Lab::issuing_root_pem`]).

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::{ServerTrust, Target};

/// The port pebble connects to for HTTP-01 validation.
pub const HTTP_PORT: u16 = 5002;
/// The port pebble connects to for TLS-ALPN-01 validation.
pub const TLS_PORT: u16 = 5001;

const START_LIMIT: Duration = Duration::from_secs(20);

/// Whether `pebble` and `dnsmasq` are installed (a skip message otherwise, a failure
/// under `CI=true`: see [`crate::have_tool`]).
pub fn tools_available() -> bool {
    // Both checks run so that the messages name every missing tool.
    let pebble = crate::have_tool("pebble");
    let dnsmasq = crate::have_tool(&dnsmasq_bin());
    pebble && dnsmasq
}

/// `dnsmasq`, or `/usr/sbin/dnsmasq` when `/usr/sbin` is not on `PATH`.
fn dnsmasq_bin() -> String {
    let on_path = Command::new("sh")
        .args(["-c", "command -v dnsmasq"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !on_path && Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq".to_string()
    } else {
        "dnsmasq".to_string()
    }
}

/// A running pebble + dnsmasq pair.
pub struct Lab {
    tmp: tempfile::TempDir,
    pebble: Option<Child>,
    dnsmasq: Option<Child>,
    listen: String,
    management: String,
    dns: String,
    tls: trust::CertPair,
    ca_file: PathBuf,
}

impl Lab {
    /// Starts dnsmasq, resolving `name` to every address of `ips`, and pebble using it;
    /// returns once pebble's directory answers. Panics (with the logs) when either does
    /// not come up within 20 s.
    pub async fn start(name: &str, ips: &[&str]) -> Lab {
        assert!(!ips.is_empty(), "acme::Lab needs at least one address for {name}");
        let addrs: Vec<IpAddr> = ips
            .iter()
            .map(|ip| ip.parse().unwrap_or_else(|e| panic!("bad IP {ip:?}: {e}")))
            .collect();
        let tmp = tempfile::Builder::new()
            .prefix("stapes-acme-")
            .tempdir()
            .expect("temp dir");
        // dnsmasq started as root reads its files as `nobody`.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");

        let now = time::OffsetDateTime::now_utc();
        let tls = trust::CertPair::generate_valid(
            "pebble",
            &[IpAddr::from([127, 0, 0, 1])],
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        )
        .expect("pebble TLS certificate");
        let ca_file = tmp.path().join("pebble-tls.pem");
        let key_file = tmp.path().join("pebble-tls.key");
        std::fs::write(&ca_file, &tls.cert_pem).expect("write pebble cert");
        std::fs::write(&key_file, &tls.key_pem).expect("write pebble key");

        let hosts = tmp.path().join("hosts");
        let lines: String = addrs.iter().map(|ip| format!("{ip} {name}\n")).collect();
        std::fs::write(&hosts, lines).expect("write hosts file");
        std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o644)).expect("chmod hosts");

        let mut lab = Lab {
            tmp,
            pebble: None,
            dnsmasq: None,
            listen: format!("127.0.0.1:{}", crate::free_port()),
            management: format!("127.0.0.1:{}", crate::free_port()),
            dns: String::new(),
            tls,
            ca_file,
        };
        let qtype = if addrs.iter().any(IpAddr::is_ipv4) { 1 } else { 28 };
        lab.start_dnsmasq(name, &hosts, qtype).await;
        lab.start_pebble(&key_file).await;
        lab
    }

    async fn start_dnsmasq(&mut self, name: &str, hosts: &Path, qtype: u16) {
        let bin = dnsmasq_bin();
        // The port is probed then released, so another process may take it first: retry.
        for attempt in 0..3 {
            let port = free_udp_tcp_port();
            let child = Command::new(&bin)
                .arg(format!("--port={port}"))
                .args([
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--log-queries",
                ])
                .arg(format!("--addn-hosts={}", hosts.display()))
                // Authoritative for `name`: a missing AAAA is "no data", not REFUSED.
                .arg(format!("--local=/{name}/"))
                .arg(format!(
                    "--pid-file={}",
                    self.tmp.path().join("dnsmasq.pid").display()
                ))
                .stdin(Stdio::null())
                .stdout(self.log_file("dnsmasq.log"))
                .stderr(self.log_file("dnsmasq.log"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
            self.dnsmasq = Some(child);
            self.dns = format!("127.0.0.1:{port}");
            let server: SocketAddr = self.dns.parse().expect("dns address");
            let deadline = tokio::time::Instant::now() + START_LIMIT;
            loop {
                if let Some((rcode, answers)) = dns_query(server, name, qtype).await {
                    assert!(
                        rcode == 0 && answers > 0,
                        "dnsmasq answers {name} with rcode {rcode} and {answers} answers; log:\n{}",
                        self.log()
                    );
                    return;
                }
                if exited(&mut self.dnsmasq) {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    panic!(
                        "dnsmasq does not answer on {} after {START_LIMIT:?}; log:\n{}",
                        self.dns,
                        self.log()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            eprintln!(
                "dnsmasq exited at start (attempt {}), retrying on another port",
                attempt + 1
            );
        }
        panic!("dnsmasq keeps exiting at start; log:\n{}", self.log());
    }

    async fn start_pebble(&mut self, key_file: &Path) {
        let config = serde_json::json!({ "pebble": {
            "listenAddress": self.listen,
            "managementListenAddress": self.management,
            "certificate": self.ca_file,
            "privateKey": key_file,
            "httpPort": HTTP_PORT,
            "tlsPort": TLS_PORT,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let conf = self.tmp.path().join("pebble.json");
        std::fs::write(&conf, serde_json::to_vec_pretty(&config).expect("json"))
            .expect("write pebble config");
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&conf)
            .args(["-dnsserver", &self.dns, "-strict=false"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(self.log_file("pebble.log"))
            .stderr(self.log_file("pebble.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pebble: {e}"));
        self.pebble = Some(child);
        let target = Target::tls(&self.listen, None);
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        loop {
            if let Ok(r) = target.get("/dir").await {
                if r.status == 200 {
                    return;
                }
            }
            if exited(&mut self.pebble) {
                panic!("pebble exited at start; log:\n{}", self.log());
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "pebble /dir does not answer after {START_LIMIT:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join(name))
            .expect("log file")
    }

    /// `https://127.0.0.1:PORT/dir`, the ACME directory.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// `127.0.0.1:PORT` of the ACME API.
    pub fn api_addr(&self) -> &str {
        &self.listen
    }

    /// `127.0.0.1:PORT` of pebble's management API (`/roots/0`, `/intermediates/0`, ...).
    pub fn management_addr(&self) -> &str {
        &self.management
    }

    /// `127.0.0.1:PORT` of the lab's DNS server.
    pub fn dns_addr(&self) -> &str {
        &self.dns
    }

    /// The self-signed certificate pebble's API presents (PEM): an ACME client must
    /// trust it as a root.
    pub fn tls_ca_pem(&self) -> &str {
        &self.tls.cert_pem
    }

    /// A file holding [`Lab::tls_ca_pem`].
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The port pebble validates HTTP-01 challenges on (5002).
    pub fn http_port(&self) -> u16 {
        HTTP_PORT
    }

    /// The temporary directory holding the configuration and logs.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The root issued certificates chain to (PEM), new at every pebble start.
    pub async fn issuing_root_pem(&self) -> String {
        self.management_get("/roots/0").await
    }

    /// The intermediate that signs issued certificates (PEM).
    pub async fn intermediate_pem(&self) -> String {
        self.management_get("/intermediates/0").await
    }

    async fn management_get(&self, path: &str) -> String {
        let r = Target::tls(&self.management, None)
            .get(path)
            .await
            .unwrap_or_else(|e| panic!("pebble management GET {path}: {e:#}; log:\n{}", self.log()));
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 200, "pebble management GET {path}: {body}");
        body
    }

    /// pebble's and dnsmasq's output so far, for failure messages.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.tmp.path().join(f)).unwrap_or_default();
        format!(
            "--- pebble.log\n{}--- dnsmasq.log\n{}",
            read("pebble.log"),
            read("dnsmasq.log")
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in [self.pebble.take(), self.dnsmasq.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether the process has exited (reaped, and the slot cleared).
fn exited(child: &mut Option<Child>) -> bool {
    match child.as_mut().map(Child::try_wait) {
        Some(Ok(None)) => false,
        Some(_) => {
            *child = None;
            true
        }
        None => true,
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP (probed, then released).
fn free_udp_tcp_port() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let port = udp.local_addr().expect("UDP address").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// One DNS query over UDP, bounded to 500 ms: `(rcode, answer count)`, or `None` when
/// nothing answered.
async fn dns_query(server: SocketAddr, name: &str, qtype: u16) -> Option<(u8, u16)> {
    let id: u16 = 0x5354;
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    sock.send_to(&q, server).await.ok()?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    if n < 12 || buf[..2] != id.to_be_bytes() || buf[2] & 0x80 == 0 {
        return None;
    }
    Some((buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]])))
}

/// The certificates the TLS server at `addr` (`HOST:PORT`) presents, as DER, leaf
/// first. The testkit's recording verifier keeps only the leaf, so this is the leaf
/// alone. Panics when no TLS handshake completes within 10 s.
pub async fn served_chain(addr: &str) -> Vec<Vec<u8>> {
    let rec = Arc::new(transport::tls::PeerRecorder::default());
    let config = transport::tls::client_config(ServerTrust::Record(rec.clone()), None, &[b"http/1.1"])
        .expect("client TLS config");
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        transport::tls::TlsConnector::from(config)
            .connect(transport::tls::server_name(host), tcp)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(_stream)) => {}
        Ok(Err(e)) => panic!("TLS handshake with {addr}: {e}"),
        Err(_) => panic!("TLS handshake with {addr} timed out"),
    }
    vec![rec.seen_der().expect("the server presented a certificate")]
}

/// Whether `leaf_der`'s issuer name is the subject name of a certificate in
/// `issuer_pem` (one certificate or a bundle). For a pebble certificate, the issuer is
/// [`Lab::intermediate_pem`], itself issued by [`Lab::issuing_root_pem`]. Names only:
/// signatures are not checked.
pub fn issued_by(leaf_der: &[u8], issuer_pem: &str) -> bool {
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(leaf_der) else {
        return false;
    };
    let want = leaf.issuer().as_raw();
    x509_parser::pem::Pem::iter_from_buffer(issuer_pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .any(|p| p.parse_x509().is_ok_and(|c| c.subject().as_raw() == want))
}
