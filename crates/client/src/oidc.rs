//! OpenID Connect for remotes with `auth_type: oidc`: the bearer token on every request,
//! refresh, and the device authorization grant when the server asks for a login.
//!
//! ```text
//!  request ─ expires_at passed? ─yes─> refresh (if a refresh token) ─┐
//!     │<─────────────────────────────────────────────────────────────┘
//!     ├─ Authorization: Bearer <access token>   (empty before the first login)
//!     v
//!  401 + X-Incus-OIDC-{issuer,clientid,audience,scopes}?
//!     ├─ no ──> the response
//!     └─ yes ─> refresh token? ─> refresh ─ok──────────────────────┐
//!                  │ none / refused                                 │
//!                  v                                                v
//!               device login: LoginPrompt shows URL + code, poll ─> store (0600, atomic)
//!                                                                   └─> the request, once more
//! ```
//!
//! A 401 means the server refused before doing anything, so the retry is safe for any
//! method. The tokens of remote `NAME` live in `<config dir>/oidc-tokens/NAME.json`,
//! along with the issuer and client they came from (so an expired access token can be
//! refreshed before it is sent). One [`OidcAuth`] is shared by a client and its clones;
//! logins are serialised, and a 401 for a token that another clone (or process) has
//! already replaced is retried with the new one instead of logging in again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::ClientError;

/// The headers a server sends with a 401 to say where to log in (as Incus names them).
pub const HEADER_ISSUER: &str = "x-incus-oidc-issuer";
pub const HEADER_CLIENT_ID: &str = "x-incus-oidc-clientid";
pub const HEADER_AUDIENCE: &str = "x-incus-oidc-audience";
pub const HEADER_SCOPES: &str = "x-incus-oidc-scopes";

/// An access token this close to its expiry is refreshed before it is sent.
pub const EXPIRY_MARGIN_SECS: i64 = 10;

/// Where to log in, from the `X-Incus-OIDC-*` headers of a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub issuer: String,
    pub client_id: String,
    pub audience: Option<String>,
    pub scopes: Vec<String>,
}

impl Challenge {
    /// The challenge of a response, when it is a 401 naming an issuer and a client.
    pub fn from_response(status: u16, headers: &HeaderMap) -> Option<Challenge> {
        if status != 401 {
            return None;
        }
        Challenge::from_headers(headers)
    }

    /// The challenge the headers carry (issuer and client id both set).
    pub fn from_headers(headers: &HeaderMap) -> Option<Challenge> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let scopes: Vec<String> = get(HEADER_SCOPES)
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Some(Challenge {
            issuer: get(HEADER_ISSUER)?,
            client_id: get(HEADER_CLIENT_ID)?,
            audience: get(HEADER_AUDIENCE),
            scopes: if scopes.is_empty() {
                oidc::DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect()
            } else {
                scopes
            },
        })
    }
}

/// What is stored per remote: the tokens and where they came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTokens {
    #[serde(flatten)]
    pub tokens: oidc::flow::Tokens,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
}

impl StoredTokens {
    /// Whether the access token's known expiry is past (or within the margin) at `now`.
    pub fn expired(&self, now: i64) -> bool {
        self.tokens
            .expires_at
            .is_some_and(|at| at <= now + EXPIRY_MARGIN_SECS)
    }

    /// Reads a tokens file; a missing one is `None`.
    pub fn load(path: &Path) -> Result<Option<StoredTokens>, ClientError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ClientError::Login(format!("Unable to decode {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::io(format!("Unable to read {}", path.display()), e)),
        }
    }

    /// Writes a tokens file: mode 0600, a temporary file renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = path.parent().expect("a tokens file has a directory");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ClientError::io(format!("Unable to create {}", dir.display()), e))?;
        let text = serde_json::to_vec_pretty(self).expect("tokens serialize");
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("tokens");
        let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
        crate::config::write_file(&tmp, &text, 0o600)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ClientError::io(format!("Unable to write {}", path.display()), e)
        })
    }
}

/// A device login that has started: what the user must be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLoginInfo {
    /// The remote being logged in to (or the client's first URL).
    pub remote: String,
    pub issuer: String,
    /// Where to go: the provider's complete verification URL when it gives one (the
    /// code is then filled in), else the plain one.
    pub url: String,
    pub user_code: String,
    /// How long the code stays valid.
    pub expires_in: Duration,
}

/// Shows a device login to the user. The client then polls the provider until the login
/// is approved, refused or expired.
pub trait LoginPrompt: Send + Sync {
    fn device_login(&self, login: &DeviceLoginInfo);
}

impl<F: Fn(&DeviceLoginInfo) + Send + Sync> LoginPrompt for F {
    fn device_login(&self, login: &DeviceLoginInfo) {
        self(login)
    }
}

/// The default prompt: `URL: ...` and `Code: ...` on stderr, as the `incus` client
/// prints them.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrPrompt;

impl LoginPrompt for StderrPrompt {
    fn device_login(&self, login: &DeviceLoginInfo) {
        eprintln!("URL: {}\nCode: {}\n", login.url, login.user_code);
    }
}

/// A shared [`LoginPrompt`] (`Debug` so that clients stay `Debug`).
#[derive(Clone)]
pub struct Prompt(pub Arc<dyn LoginPrompt>);

impl std::fmt::Debug for Prompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prompt")
    }
}

impl Default for Prompt {
    fn default() -> Prompt {
        Prompt(Arc::new(StderrPrompt))
    }
}

/// The OpenID tokens of one remote, shared by a client and its clones. Its `Debug`
/// output shows no token.
pub struct OidcAuth {
    /// Where the tokens are stored (`None`: kept in memory only).
    path: Option<PathBuf>,
    current: Mutex<Option<StoredTokens>>,
    /// Held while refreshing or logging in, so that only one runs at a time.
    login: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for OidcAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcAuth")
            .field("path", &self.path)
            .field("logged_in", &self.lock().is_some())
            .finish()
    }
}

impl OidcAuth {
    /// Tokens stored at `path` (read now; a missing file means no login yet, an
    /// unreadable one is reported and then treated as missing).
    pub fn from_file(path: PathBuf) -> OidcAuth {
        let current = StoredTokens::load(&path).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the stored OpenID tokens");
            None
        });
        OidcAuth {
            path: Some(path),
            current: Mutex::new(current),
            login: tokio::sync::Mutex::new(()),
        }
    }

    /// Tokens kept in memory only.
    pub fn in_memory(tokens: Option<StoredTokens>) -> OidcAuth {
        OidcAuth {
            path: None,
            current: Mutex::new(tokens),
            login: tokio::sync::Mutex::new(()),
        }
    }

    /// The stored tokens, if any.
    pub fn tokens(&self) -> Option<StoredTokens> {
        self.lock().clone()
    }

    /// The access token sent now (empty before the first login).
    pub fn access_token(&self) -> String {
        self.lock()
            .as_ref()
            .map(|t| t.tokens.access_token.clone())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<StoredTokens>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self, tokens: StoredTokens) -> Result<(), ClientError> {
        if let Some(path) = &self.path {
            tokens.save(path)?;
        }
        *self.lock() = Some(tokens);
        Ok(())
    }

    /// Picks up tokens another process stored since we read the file.
    fn reload(&self) {
        if let Some(path) = &self.path {
            if let Ok(Some(t)) = StoredTokens::load(path) {
                *self.lock() = Some(t);
            }
        }
    }

    /// The access token to send: refreshed first when its expiry has passed and a
    /// refresh token and the issuer are known. A failed refresh is not an error here: the
    /// token is sent anyway and the server's 401 leads to [`OidcAuth::reauthenticate`].
    pub async fn fresh_token(&self) -> String {
        let due = self
            .tokens()
            .is_some_and(|t| t.expired(oidc::flow::now()) && t.tokens.refresh_token.is_some());
        if !due {
            return self.access_token();
        }
        let _guard = self.login.lock().await;
        self.reload();
        let Some(stored) = self.tokens() else {
            return String::new();
        };
        if !stored.expired(oidc::flow::now()) || stored.issuer.is_empty() || stored.client_id.is_empty() {
            return stored.tokens.access_token;
        }
        let challenge = Challenge {
            issuer: stored.issuer.clone(),
            client_id: stored.client_id.clone(),
            audience: None,
            scopes: Vec::new(),
        };
        match self.try_refresh(&challenge, &stored).await {
            Ok(Some(token)) => token,
            Ok(None) | Err(_) => stored.tokens.access_token,
        }
    }

    /// Refreshes with the stored refresh token. `Ok(None)`: there is none, or the
    /// provider refused it (it is then forgotten); `Err`: the provider could not be used.
    async fn try_refresh(
        &self,
        challenge: &Challenge,
        stored: &StoredTokens,
    ) -> Result<Option<String>, ClientError> {
        let Some(refresh_token) = stored.tokens.refresh_token.as_deref() else {
            return Ok(None);
        };
        let discovery = oidc::discover(&challenge.issuer)
            .await
            .map_err(|e| ClientError::Login(e.to_string()))?;
        match oidc::flow::refresh(&discovery, &challenge.client_id, refresh_token).await {
            Ok(tokens) => {
                tracing::debug!(issuer = %challenge.issuer, "refreshed the OpenID access token");
                self.keep(challenge, tokens).map(Some)
            }
            Err(oidc::OidcError::Refused(why)) => {
                tracing::debug!(reason = %why, "the OpenID refresh token was refused");
                let mut spent = stored.clone();
                spent.tokens.refresh_token = None;
                let _ = self.store(spent);
                Ok(None)
            }
            Err(e) => Err(ClientError::Login(e.to_string())),
        }
    }

    /// After the server refused `rejected` with `challenge`: a newer token if someone
    /// already got one, else a refresh, else (when `interactive`) a device login shown
    /// through `prompt`. Returns the access token to retry with.
    pub async fn reauthenticate(
        &self,
        remote: &str,
        challenge: &Challenge,
        rejected: &str,
        interactive: bool,
        prompt: &dyn LoginPrompt,
    ) -> Result<String, ClientError> {
        let _guard = self.login.lock().await;
        self.reload();
        let stored = self.tokens();
        if let Some(s) = &stored {
            if !s.tokens.access_token.is_empty() && s.tokens.access_token != rejected {
                return Ok(s.tokens.access_token.clone());
            }
        }
        // Tokens from another provider or client are of no use for this one.
        let usable = stored.filter(|s| {
            (s.issuer.is_empty() || s.issuer.trim_end_matches('/') == challenge.issuer.trim_end_matches('/'))
                && (s.client_id.is_empty() || s.client_id == challenge.client_id)
        });
        let mut refresh_error = None;
        if let Some(s) = &usable {
            match self.try_refresh(challenge, s).await {
                Ok(Some(token)) => return Ok(token),
                Ok(None) => {}
                Err(e) => refresh_error = Some(e),
            }
        }
        if !interactive {
            return Err(refresh_error.unwrap_or_else(|| {
                ClientError::Login(format!("remote {remote} needs an OpenID Connect login"))
            }));
        }
        self.device_login(remote, challenge, prompt).await
    }

    /// The device authorization grant (RFC 8628): show the URL and code, poll, store.
    async fn device_login(
        &self,
        remote: &str,
        challenge: &Challenge,
        prompt: &dyn LoginPrompt,
    ) -> Result<String, ClientError> {
        let failed = |e: oidc::OidcError| ClientError::Login(e.to_string());
        let discovery = oidc::discover(&challenge.issuer).await.map_err(failed)?;
        let login = oidc::flow::start_device_login(
            &discovery,
            &challenge.client_id,
            &challenge.scopes,
            challenge.audience.as_deref(),
        )
        .await
        .map_err(failed)?;
        prompt.device_login(&DeviceLoginInfo {
            remote: remote.to_string(),
            issuer: challenge.issuer.clone(),
            url: login
                .verification_uri_complete
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| login.verification_uri.clone()),
            user_code: login.user_code.clone(),
            expires_in: Duration::from_secs(login.expires_in),
        });
        let tokens = oidc::flow::finish_device_login(&discovery, &challenge.client_id, &login)
            .await
            .map_err(failed)?;
        self.keep(challenge, tokens)
    }

    /// Stores `tokens` from the provider `challenge` names; their access token.
    fn keep(&self, challenge: &Challenge, tokens: oidc::flow::Tokens) -> Result<String, ClientError> {
        let access = tokens.access_token.clone();
        self.store(StoredTokens {
            tokens,
            issuer: challenge.issuer.clone(),
            client_id: challenge.client_id.clone(),
        })?;
        Ok(access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn t10_challenge_from_incus_headers() {
        let h = headers(&[
            ("X-Incus-OIDC-issuer", "https://idp.test"),
            ("X-Incus-OIDC-clientid", "cli"),
            ("X-Incus-OIDC-audience", ""),
            ("X-Incus-OIDC-scopes", "openid, email,offline_access"),
        ]);
        let c = Challenge::from_response(401, &h).unwrap();
        assert_eq!(c.issuer, "https://idp.test");
        assert_eq!(c.client_id, "cli");
        assert_eq!(c.audience, None);
        assert_eq!(c.scopes, vec!["openid", "email", "offline_access"]);
        assert_eq!(Challenge::from_response(403, &h), None);
        let no_client = headers(&[("X-Incus-OIDC-issuer", "https://idp.test")]);
        assert_eq!(Challenge::from_response(401, &no_client), None);
        let no_scopes = headers(&[
            ("X-Incus-OIDC-issuer", "https://idp.test"),
            ("X-Incus-OIDC-clientid", "cli"),
            ("X-Incus-OIDC-audience", "https://aud"),
        ]);
        let c = Challenge::from_response(401, &no_scopes).unwrap();
        assert_eq!(c.audience.as_deref(), Some("https://aud"));
        assert_eq!(c.scopes, oidc::DEFAULT_SCOPES);
    }

    #[test]
    fn t10_tokens_file_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oidc-tokens").join("c1.json");
        assert_eq!(StoredTokens::load(&path).unwrap(), None);
        let t = StoredTokens {
            tokens: oidc::flow::Tokens {
                access_token: "a".into(),
                refresh_token: Some("r".into()),
                id_token: None,
                expires_at: Some(100),
            },
            issuer: "https://idp.test".into(),
            client_id: "cli".into(),
        };
        t.save(&path).unwrap();
        assert_eq!(StoredTokens::load(&path).unwrap(), Some(t.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("c1.json")],
            "no temporary file left"
        );
        assert!(t.expired(95));
        assert!(!t.expired(80));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"access_token\": \"a\""), "{text}");
    }

    #[tokio::test]
    async fn t10_a_token_replaced_meanwhile_is_used_without_a_login() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let auth = OidcAuth::from_file(path.clone());
        assert_eq!(auth.access_token(), "");
        // Another process logged in after we read the (missing) file.
        StoredTokens {
            tokens: oidc::flow::Tokens {
                access_token: "new".into(),
                refresh_token: None,
                id_token: None,
                expires_at: None,
            },
            issuer: String::new(),
            client_id: String::new(),
        }
        .save(&path)
        .unwrap();
        let challenge = Challenge {
            issuer: "https://127.0.0.1:9".into(),
            client_id: "cli".into(),
            audience: None,
            scopes: vec![],
        };
        let prompt = |_: &DeviceLoginInfo| panic!("no login expected");
        let token = auth
            .reauthenticate("r", &challenge, "", false, &prompt)
            .await
            .unwrap();
        assert_eq!(token, "new");
        // Not interactive and nothing newer: an error, no prompt.
        let e = auth
            .reauthenticate("r", &challenge, "new", false, &prompt)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "OpenID Connect login failed: remote r needs an OpenID Connect login"
        );
    }
}
