//! A real OpenID provider for tests: panva's `oidc-provider` (npm) run by node from
//! `crates/testkit/oidc/`, serving HTTPS on a loopback port with a certificate from a
//! CA made here, plus a scripted "browser" that approves logins without a human.
//!
//! ```text
//!  test ──start──> node provider.mjs  (https://127.0.0.1:PORT, leaf signed by ca.pem)
//!   │                 ^  discovery, JWKS, /device/auth, /token, /auth, /session/end
//!   │  CLI side:      │  POST /device/auth, POST /token (poll, refresh, code exchange)
//!   └─ Browser ───────┘  GET/POST the built-in HTML pages with a cookie jar:
//!                          /device (user code, confirm) -> /interaction/UID (login, consent)
//! ```
//!
//! The provider has one public client ([`CLIENT_ID`], no secret) allowed the device
//! authorization grant, refresh tokens and, when redirect URIs are given, the
//! authorization code flow with PKCE (S256, required). Access tokens are RS256 JWTs with
//! `typ: at+jwt` for the audience ([`AUDIENCE`] unless [`Options::audience`]), carrying
//! `email` (`LOGIN@stapes.test`) and, for the logins in [`Options::allowed_subnets`],
//! `incus.allowed_subnets`. Any login and password is accepted.
//!
//! Things worth knowing about oidc-provider (9.13):
//! - Its device authorization response has no `interval` (RFC 8628 then says 5 s); the
//!   provider script adds `interval: 1` so clients poll quickly.
//! - `offline_access` (hence a refresh token) is granted for the device flow as asked;
//!   in the authorization code flow only with `prompt=consent` in the request.
//! - Refresh tokens of a public client rotate: each refresh returns a new one and the
//!   old one stops working.
//! - The userinfo endpoint refuses these JWT access tokens (they are for the resource
//!   server): take identity from the access token's claims.
//!
//! Key rotation ([`Provider::rotate_keys`]) happens in the running process: from then on
//! tokens are signed with a new key (new `kid`) and the JWKS lists the new key first,
//! the old ones after it. Sessions, grants and refresh tokens survive it. For negative
//! tests, [`Provider::sign`] signs any claims with the current key, and [`forge_token`],
//! [`tamper`] and [`Provider::sign_foreign`] make tokens the provider never issued.
//!
//! The node packages must be installed (`npm ci` in `crates/testkit/oidc`, which
//! `scripts/install-test-deps.sh` does): see [`available`].

mod browser;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use serde_json::{json, Value};

pub use browser::{form_body, query_param, Browser, Walk};
use browser::{https, Fill, Page};

/// The client id of the provider's one client.
pub const CLIENT_ID: &str = "stapes-test";
/// The default audience of access tokens.
pub const AUDIENCE: &str = "https://stapes.test";
/// The scopes the helpers ask for.
pub const SCOPES: &str = "openid profile email offline_access";

/// How long one provider process may take to answer discovery: about a second even on
/// a busy machine. A process that stalls (seen rarely: modules loaded, never listening)
/// is replaced, with its log and scheduler state printed.
const START_LIMIT: Duration = Duration::from_secs(15);

/// The node project: `package.json`, `package-lock.json`, `provider.mjs`.
pub fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// The command that installs the provider's packages.
pub fn install_command() -> String {
    format!("npm ci --prefix {}", project_dir().display())
}

/// Whether node and the provider's packages are installed. Missing locally: a skip
/// message naming the command to run, and `false`. Missing under `CI=true`: a panic.
pub fn available() -> bool {
    if !crate::have_tool("node") {
        return false;
    }
    let installed = project_dir()
        .join("node_modules/oidc-provider/package.json")
        .exists();
    if !installed {
        let msg = format!(
            "the test OpenID provider's packages are not installed: run `{}` (or scripts/install-test-deps.sh)",
            install_command()
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIP: {msg}");
    }
    installed
}

/// How to start the provider. `Options::default()` is the device flow only, default
/// audience, one-hour access tokens.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Redirect URIs of the client (`https://HOST:PORT/oidc/callback` of each member).
    /// Empty: no authorization code flow.
    pub redirect_uris: Vec<String>,
    /// Where the end-session endpoint may send the browser after logout.
    pub post_logout_redirect_uris: Vec<String>,
    /// `incus.allowed_subnets` (CIDRs) in the access tokens of these logins.
    pub allowed_subnets: Vec<(String, Vec<String>)>,
    /// The access tokens' `aud`; [`AUDIENCE`] when `None`.
    pub audience: Option<String>,
    /// Access token lifetime (whole seconds, at least 1); one hour when `None`.
    pub access_token_ttl: Option<Duration>,
    /// The certificate the provider serves.
    pub certificate: ProviderCertificate,
}

/// The certificate the provider serves, and so what [`Provider::ca_file`] holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProviderCertificate {
    /// A leaf for 127.0.0.1 and `localhost`, signed by a test CA (the CA file).
    #[default]
    CaSigned,
    /// One self-signed certificate for 127.0.0.1 and `localhost`, marked as a CA, as
    /// `openssl req -x509` makes it; the CA file is that certificate.
    SelfSignedCa,
    /// A leaf signed by the test CA for another name (`wrong.example`) only.
    WrongName,
}

/// Tokens from the token endpoint.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
}

impl Tokens {
    fn from_json(v: &Value) -> anyhow::Result<Tokens> {
        let s = |k: &str| v[k].as_str().map(str::to_string);
        Ok(Tokens {
            access_token: s("access_token").with_context(|| format!("no access_token in {v}"))?,
            refresh_token: s("refresh_token"),
            id_token: s("id_token"),
        })
    }
}

/// A device authorization response (RFC 8628 §3.2).
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub interval: u64,
    pub expires_in: u64,
}

/// A running provider: a node child process, killed (by PID) when dropped, and a
/// temporary directory with its certificates and log.
pub struct Provider {
    _tmp: tempfile::TempDir,
    child: Option<Child>,
    issuer: String,
    audience: String,
    ca_file: PathBuf,
    log: PathBuf,
    tls: Arc<transport::tls::ClientConfigHandle>,
}

impl Provider {
    /// Starts a provider whose client accepts `redirect_uris` (may be empty) and waits
    /// until discovery answers. Panics, with the log, when three processes in a row do
    /// not answer within [`START_LIMIT`] each.
    pub async fn start(redirect_uris: &[String]) -> Provider {
        Self::start_with(Options {
            redirect_uris: redirect_uris.to_vec(),
            ..Options::default()
        })
        .await
    }

    /// As [`Provider::start`], with every option.
    pub async fn start_with(options: Options) -> Provider {
        assert!(
            project_dir().join("node_modules/oidc-provider").exists(),
            "the test OpenID provider's packages are not installed: run `{}` (tests call oidc::available() first)",
            install_command()
        );
        let tmp = tempfile::Builder::new()
            .prefix("stapes-oidc-")
            .tempdir()
            .expect("temp dir");
        let (ca_pem, leaf) = provider_certificate(options.certificate).expect("test certificates");
        let ca_file = tmp.path().join("ca.pem");
        let cert_file = tmp.path().join("provider.pem");
        let key_file = tmp.path().join("provider.key");
        std::fs::write(&ca_file, &ca_pem).expect("write ca.pem");
        std::fs::write(&cert_file, &leaf.cert_pem).expect("write provider.pem");
        std::fs::write(&key_file, &leaf.key_pem).expect("write provider.key");
        // The harness talks to the provider whatever its certificate; what the member
        // makes of it is the test's business.
        let tls = match options.certificate {
            ProviderCertificate::WrongName => transport::tls::client_config(
                crate::ServerTrust::Record(Default::default()),
                None,
                &[b"http/1.1"],
            ),
            _ => transport::tls::client_config_trusting(&ca_pem, &[b"http/1.1"]),
        }
        .expect("client TLS config");

        let subnets: serde_json::Map<String, Value> = options
            .allowed_subnets
            .iter()
            .map(|(login, cidrs)| (login.clone(), json!(cidrs)))
            .collect();
        let audience = options.audience.clone().unwrap_or_else(|| AUDIENCE.to_string());
        let ttl = options.access_token_ttl.map_or(3600, |d| d.as_secs().max(1));
        let env: Vec<(&str, String)> = vec![
            ("TLS_CERT", cert_file.display().to_string()),
            ("TLS_KEY", key_file.display().to_string()),
            ("CLIENT_ID", CLIENT_ID.to_string()),
            ("AUDIENCE", audience.clone()),
            ("REDIRECT_URIS", options.redirect_uris.join(",")),
            (
                "POST_LOGOUT_REDIRECT_URIS",
                options.post_logout_redirect_uris.join(","),
            ),
            ("SUBNETS_JSON", Value::Object(subnets).to_string()),
            ("ACCESS_TOKEN_TTL", ttl.to_string()),
            ("DEVICE_POLL_INTERVAL", "1".to_string()),
        ];
        let log = tmp.path().join("provider.log");
        let mut provider = Provider {
            _tmp: tmp,
            child: None,
            issuer: String::new(),
            audience,
            ca_file,
            log,
            tls,
        };
        // The port is probed then released, so another process may take it first; and
        // on a loaded machine node has, rarely, stalled after loading its modules and
        // never listened. Either way: a new process on a new port, three times at most.
        for attempt in 0..3 {
            let port = crate::free_port();
            provider.issuer = format!("https://127.0.0.1:{port}");
            provider.spawn(port, &env);
            match provider.wait_ready().await {
                Ok(()) => return provider,
                Err(e) if attempt < 2 => {
                    eprintln!(
                        "oidc provider on port {port} did not start ({e:#}; process state: {}), retrying\nlog:\n{}",
                        provider.process_state(),
                        provider.log()
                    );
                    provider.kill();
                }
                Err(e) => panic!(
                    "the OpenID provider did not start: {e:#}\nlog:\n{}",
                    provider.log()
                ),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn spawn(&mut self, port: u16, env: &[(&str, String)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let dir = project_dir();
        let child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node: {e}"));
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("node exited with {status}");
            }
            if let Ok(r) = self.http("GET", &url, None).await {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("discovery did not answer within {START_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node process's scheduler state and wait channel, for diagnosing a stall.
    fn process_state(&self) -> String {
        let Some(pid) = self.pid() else {
            return "no process".into();
        };
        let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or("State: ?")
            .to_string();
        format!("{state}, wchan {}", read("wchan"))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `https://127.0.0.1:PORT`, without a trailing slash (as in discovery).
    pub fn issuer(&self) -> String {
        self.issuer.clone()
    }

    pub fn client_id(&self) -> &str {
        CLIENT_ID
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The CA certificate (PEM) that the provider's certificate chains to: give it to
    /// clients as `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The provider's output so far: one line per request, grants, errors.
    /// Points `member` at this provider (`oidc.issuer`, `oidc.client.id`,
    /// `oidc.audience`: global keys, so a whole cluster through one member).
    pub async fn configure(&self, member: &crate::Member) {
        let r = member
            .unix()
            .send_json(
                "PATCH",
                "/1.0",
                &json!({"config": {
                    "oidc.issuer": self.issuer(),
                    "oidc.client.id": self.client_id(),
                    "oidc.audience": self.audience(),
                }}),
            )
            .await
            .expect("PATCH /1.0");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }

    /// A member that trusts this provider's CA (`SSL_CERT_FILE`), listening on HTTPS
    /// and configured for the provider; and its address.
    pub async fn member(&self) -> (crate::Member, String) {
        let ca = self.ca_file().display().to_string();
        let mut m = crate::Member::start_env(&[("SSL_CERT_FILE", &ca)]).await;
        let addr = m.listen().await;
        self.configure(&m).await;
        (m, addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id of node, for tests that stop or kill the provider.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The discovery document.
    pub async fn discovery(&self) -> Value {
        self.get_json("/.well-known/openid-configuration").await
    }

    /// The published keys.
    pub async fn jwks(&self) -> Value {
        self.get_json("/jwks").await
    }

    async fn get_json(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.issuer);
        let r = self
            .http("GET", &url, None)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
        assert_eq!(r.status, 200, "GET {url}: {}", r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {}", r.body))
    }

    /// Signs with a new key (a new `kid`) from now on; the JWKS keeps the old keys
    /// after the new one. Returns the new `kid`.
    pub async fn rotate_keys(&self) -> String {
        self.rotate("").await
    }

    /// As [`Provider::rotate_keys`], but the JWKS publishes only the new key: tokens
    /// signed before no longer verify.
    pub async fn replace_keys(&self) -> String {
        self.rotate("?retire=1").await
    }

    async fn rotate(&self, query: &str) -> String {
        let url = format!("{}/_test/rotate{query}", self.issuer);
        let r = self
            .http("POST", &url, Some(String::new()))
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e:#}"));
        assert_eq!(r.status, 200, "rotate: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).expect("rotate answers JSON");
        v["kid"].as_str().expect("rotate answers the kid").to_string()
    }

    /// `claims`, exactly as given, signed like an access token with the provider's
    /// current key (`alg` RS256, `typ` at+jwt, the published `kid`): for the checks a
    /// verifier makes behind a valid signature (expiry, audience, issuer).
    pub async fn sign(&self, claims: &Value) -> String {
        let url = format!("{}/_test/sign", self.issuer);
        let r = self
            .http("POST", &url, Some(claims.to_string()))
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e:#}"));
        assert_eq!(r.status, 200, "sign: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).expect("sign answers JSON");
        v["token"].as_str().expect("sign answers a token").to_string()
    }

    /// `claims` signed with RS256 by a fresh key that no JWKS publishes, under a `kid`
    /// the provider never used.
    pub async fn sign_foreign(&self, claims: &Value) -> String {
        let kid = format!("unknown-{}", trust::random_hex(8));
        forge_token(json!({ "kid": kid }), claims.clone(), "RS256")
    }

    /// POSTs `form` to the token endpoint; the status and the JSON answer.
    pub async fn token_endpoint(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let url = format!("{}/token", self.issuer);
        let r = self
            .http("POST", &url, Some(form_body(form)))
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e:#}"));
        let v = serde_json::from_str(&r.body).unwrap_or_else(|_| json!({"raw": r.body}));
        (r.status, v)
    }

    /// The CLI side of the device flow, step one: `POST /device/auth`.
    pub async fn device_authorization(&self) -> DeviceAuthorization {
        let url = format!("{}/device/auth", self.issuer);
        let body = form_body(&[("client_id", CLIENT_ID), ("scope", SCOPES)]);
        let r = self
            .http("POST", &url, Some(body))
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e:#}"));
        assert_eq!(r.status, 200, "device authorization: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).expect("device authorization JSON");
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        DeviceAuthorization {
            device_code: s("device_code"),
            user_code: s("user_code"),
            verification_uri: s("verification_uri"),
            verification_uri_complete: v["verification_uri_complete"].as_str().map(str::to_string),
            interval: v["interval"].as_u64().unwrap_or(5),
            expires_in: v["expires_in"].as_u64().unwrap_or_default(),
        }
    }

    /// The CLI side of the device flow, step two: polls the token endpoint at the
    /// given interval until the tokens come, for at most `limit`.
    pub async fn poll_device_token(&self, da: &DeviceAuthorization, limit: Duration) -> Tokens {
        let deadline = tokio::time::Instant::now() + limit;
        let mut interval = Duration::from_secs(da.interval);
        loop {
            let (status, v) = self
                .token_endpoint(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", &da.device_code),
                    ("client_id", CLIENT_ID),
                ])
                .await;
            if status == 200 {
                return Tokens::from_json(&v).expect("device token response");
            }
            match v["error"].as_str() {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += Duration::from_secs(5),
                _ => panic!("device token: HTTP {status} {v}\nlog:\n{}", self.log()),
            }
            if tokio::time::Instant::now() + interval > deadline {
                panic!("no device token within {limit:?}\nlog:\n{}", self.log());
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// The whole device flow for `login`: device authorization, approval in the
    /// browser, then the token request. Access, refresh and ID tokens.
    pub async fn device_login(&self, login: &str) -> Tokens {
        let da = self.device_authorization().await;
        self.approve_device(&da.user_code, login).await;
        self.poll_device_token(&da, Duration::from_secs(15)).await
    }

    /// The browser side of a device flow that another program started (it printed the
    /// verification URL and `user_code`): enter the code, confirm, log in as `login`,
    /// consent. Panics, with the provider's log, when that does not end on the
    /// provider's success page.
    pub async fn approve_device(&self, user_code: &str, login: &str) {
        if let Err(e) = self.try_approve_device(user_code, login).await {
            panic!("device approval: {e:#}\nlog:\n{}", self.log());
        }
    }

    /// As [`Provider::approve_device`], returning the failure (a wrong code, say).
    pub async fn try_approve_device(&self, user_code: &str, login: &str) -> anyhow::Result<()> {
        let url = format!("{}/device", self.issuer);
        let fill = Fill {
            login,
            user_code: Some(user_code),
        };
        match self.browser().walk(&url, &fill).await? {
            Walk::Page(page) if page.to_ascii_lowercase().contains("success") => Ok(()),
            other => bail!("the approval did not end on the success page: {other:?}"),
        }
    }

    /// Exchanges a refresh token. The answer carries a new refresh token: the old one
    /// is spent (public clients' refresh tokens rotate).
    pub async fn refresh(&self, refresh_token: &str) -> Tokens {
        let (status, v) = self
            .token_endpoint(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", CLIENT_ID),
            ])
            .await;
        assert_eq!(status, 200, "refresh: {v}\nlog:\n{}", self.log());
        Tokens::from_json(&v).expect("refresh response")
    }

    /// The browser side of the authorization code flow: follows `authorize_url` (the
    /// `Location` a stapes member's `/oidc/login` answered), logs in as `login`,
    /// consents, and returns the URL the provider redirects to (`.../oidc/callback?code=
    /// ..&state=..`) without following it.
    pub async fn authorize(&self, authorize_url: &str, login: &str) -> String {
        self.browser()
            .authorize(authorize_url, login)
            .await
            .unwrap_or_else(|e| panic!("authorize: {e:#}\nlog:\n{}", self.log()))
    }

    /// An authorization URL for this provider's client, as a relying party builds it
    /// (response_type code, PKCE S256, `prompt=consent` so that `offline_access` holds).
    pub fn authorize_url(&self, redirect_uri: &str, state: &str, code_challenge: &str) -> String {
        format!(
            "{}/auth?{}",
            self.issuer,
            form_body(&[
                ("client_id", CLIENT_ID),
                ("response_type", "code"),
                ("scope", SCOPES),
                ("redirect_uri", redirect_uri),
                ("state", state),
                ("code_challenge", code_challenge),
                ("code_challenge_method", "S256"),
                ("prompt", "consent"),
            ])
        )
    }

    /// Exchanges an authorization code (the relying party's side of the callback).
    pub async fn exchange_code(&self, code: &str, code_verifier: &str, redirect_uri: &str) -> Tokens {
        let (status, v) = self
            .token_endpoint(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("code_verifier", code_verifier),
                ("redirect_uri", redirect_uri),
                ("client_id", CLIENT_ID),
            ])
            .await;
        assert_eq!(status, 200, "code exchange: {v}\nlog:\n{}", self.log());
        Tokens::from_json(&v).expect("code exchange response")
    }

    /// A browser with an empty cookie jar, for flows that span several pages or
    /// requests (log in, then log out).
    pub fn browser(&self) -> Browser {
        Browser::new(self.tls.clone(), &self.issuer)
    }

    async fn http(&self, method: &str, url: &str, form: Option<String>) -> anyhow::Result<Page> {
        https(&self.tls, method, url, form, None, "application/json").await
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bundle to trust (PEM) and the provider's certificate and key.
fn provider_certificate(which: ProviderCertificate) -> anyhow::Result<(String, trust::CertPair)> {
    match which {
        ProviderCertificate::CaSigned => test_ca(&["127.0.0.1", "localhost"]),
        ProviderCertificate::WrongName => test_ca(&["wrong.example"]),
        ProviderCertificate::SelfSignedCa => {
            use rcgen::{
                BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType, PKCS_ECDSA_P256_SHA256,
            };
            let now = time::OffsetDateTime::now_utc();
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.subject_alt_names = vec![
                SanType::IpAddress([127, 0, 0, 1].into()),
                SanType::DnsName("localhost".try_into()?),
            ];
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(30);
            let pem = params.self_signed(&key)?.pem();
            Ok((
                pem.clone(),
                trust::CertPair {
                    cert_pem: pem,
                    key_pem: key.serialize_pem(),
                },
            ))
        }
    }
}

/// The test CA (PEM) and a leaf it signed for `names` (IP addresses or DNS names).
fn test_ca(names: &[&str]) -> anyhow::Result<(String, trust::CertPair)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
        Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
    };
    let now = time::OffsetDateTime::now_utc();
    let name = |cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "stapes tests");
        dn.push(DnType::CommonName, cn);
        dn
    };
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name("stapes test OpenID CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(30);
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = name("127.0.0.1");
    leaf.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
        })
        .collect::<anyhow::Result<_>>()?;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time::Duration::days(1);
    leaf.not_after = now + time::Duration::days(30);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((
        ca_pem,
        trust::CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
    ))
}

/// A PKCE pair: a random `code_verifier` and its S256 `code_challenge`.
pub fn pkce_pair() -> (String, String) {
    let verifier = trust::random_hex(32);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    (verifier, b64url(digest.as_ref()))
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// The header and claims of a JWT, unverified. Panics on anything else.
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let part = |s: &str| -> Value {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .unwrap_or_else(|e| panic!("JWT part is not base64url ({e}): {s}"));
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("JWT part is not JSON ({e})"))
    };
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {token}");
    (part(parts[0]), part(parts[1]))
}

/// Whether `token` is an RS256 JWT whose signature verifies with the key of `jwks`
/// named by its `kid`. Checks nothing else.
pub fn rs256_signature_ok(token: &str, jwks: &Value) -> bool {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok();
    let Some((input, sig)) = token.rsplit_once('.') else {
        return false;
    };
    let (header, _) = decode_jwt(token);
    if header["alg"] != "RS256" {
        return false;
    }
    let Some(key) = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == header["kid"]))
    else {
        return false;
    };
    let (Some(n), Some(e), Some(sig)) = (
        key["n"].as_str().and_then(b64),
        key["e"].as_str().and_then(b64),
        b64(sig),
    ) else {
        return false;
    };
    aws_lc_rs::signature::RsaPublicKeyComponents { n, e }
        .verify(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            input.as_bytes(),
            &sig,
        )
        .is_ok()
}

/// A JWT the provider never issued, for negative tests: `alg` `none` (no signature),
/// `HS256` (an HMAC with a key the provider never had) or `RS256` (signed by a fresh
/// RSA key that no JWKS publishes). `header` is merged into `{"alg", "typ": "at+jwt"}`,
/// e.g. to borrow a published `kid`.
pub fn forge_token(header: Value, claims: Value, alg: &str) -> String {
    let mut h = json!({"alg": alg, "typ": "at+jwt"});
    if let (Some(h), Value::Object(extra)) = (h.as_object_mut(), header) {
        h.extend(extra);
    }
    let signing_input = format!(
        "{}.{}",
        b64url(h.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = match alg {
        "none" => Vec::new(),
        "HS256" => hs256(b"not the provider's key", signing_input.as_bytes()),
        "RS256" => {
            let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
            let mut sig = vec![0; key.public_modulus_len()];
            key.sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .expect("RSA signature");
            sig
        }
        other => panic!("forge_token: unsupported alg {other:?}"),
    };
    format!("{signing_input}.{}", b64url(&signature))
}

/// A JWT signed with HS256 under `secret`: e.g. the provider's public key, for the
/// algorithm-confusion attack.
pub fn forge_hs256(header: Value, claims: Value, secret: &[u8]) -> String {
    let mut h = json!({"alg": "HS256", "typ": "at+jwt"});
    if let (Some(h), Value::Object(extra)) = (h.as_object_mut(), header) {
        h.extend(extra);
    }
    let signing_input = format!(
        "{}.{}",
        b64url(h.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = hs256(secret, signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(&sig))
}

fn hs256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&key, data).as_ref().to_vec()
}

/// `token` with its claims changed by `patch` (merged over them) and the original
/// header and signature kept: a tampered token.
pub fn tamper(token: &str, patch: Value) -> String {
    let (_, mut claims) = decode_jwt(token);
    if let (Some(c), Value::Object(p)) = (claims.as_object_mut(), patch) {
        c.extend(p);
    }
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims.to_string().as_bytes()),
        parts[2]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_tokens_decode() {
        let claims = json!({"iss": "https://i", "sub": "x"});
        for alg in ["none", "HS256", "RS256"] {
            let t = forge_token(json!({"kid": "k"}), claims.clone(), alg);
            let (h, c) = decode_jwt(&t);
            assert_eq!(h["alg"], alg);
            assert_eq!(h["kid"], "k");
            assert_eq!(c, claims);
        }
        assert!(forge_token(json!({}), claims.clone(), "none").ends_with('.'));
        let t = tamper(&forge_token(json!({}), claims, "HS256"), json!({"sub": "y"}));
        assert_eq!(decode_jwt(&t).1["sub"], "y");
    }
}
