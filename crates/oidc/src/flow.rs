//! The client side of OAuth 2.0 with an OpenID provider: the device authorization grant
//! (RFC 8628) for command-line clients, the authorization code grant with PKCE (RFC
//! 7636) for browsers, and refresh.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Discovery, OidcError};

/// The longest a device login is waited for, whatever the provider says.
pub const DEVICE_LOGIN_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Tokens from a token endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// Seconds since the Unix epoch at which the access token expires, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl Tokens {
    fn from_response(v: &Value) -> Result<Tokens, OidcError> {
        let text = |f: &str| v.get(f).and_then(Value::as_str).map(str::to_string);
        let access_token = text("access_token")
            .ok_or_else(|| OidcError::Provider("the token response has no access_token".into()))?;
        Ok(Tokens {
            access_token,
            refresh_token: text("refresh_token"),
            id_token: text("id_token"),
            expires_at: v
                .get("expires_in")
                .and_then(Value::as_i64)
                .map(|s| now().saturating_add(s)),
        })
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn endpoint<'a>(field: &'a Option<String>, name: &str) -> Result<&'a str, OidcError> {
    field
        .as_deref()
        .ok_or_else(|| OidcError::Provider(format!("the provider has no {name}")))
}

async fn post(url: &str, form: &[(&str, &str)]) -> Result<(u16, Value), OidcError> {
    let r = transport::web::post_form(url, form)
        .await
        .map_err(|e| OidcError::Provider(e.to_string()))?;
    let v = r
        .json()
        .ok_or_else(|| OidcError::Provider(format!("{url} answered {} without JSON", r.status)))?;
    Ok((r.status, v))
}

fn oauth_error(v: &Value) -> String {
    let code = v.get("error").and_then(Value::as_str).unwrap_or("error");
    match v.get("error_description").and_then(Value::as_str) {
        Some(d) => format!("{code}: {d}"),
        None => code.to_string(),
    }
}

/// A device login in progress: show `verification_uri` and `user_code` to the user.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceLogin {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub interval: Option<u64>,
}

/// Starts a device login.
pub async fn start_device_login(
    d: &Discovery,
    client_id: &str,
    scopes: &[String],
    audience: Option<&str>,
) -> Result<DeviceLogin, OidcError> {
    let url = endpoint(&d.device_authorization_endpoint, "device authorization endpoint")?;
    let scope = scopes.join(" ");
    let mut form = vec![("client_id", client_id), ("scope", scope.as_str())];
    if let Some(a) = audience {
        form.push(("audience", a));
    }
    let (status, v) = post(url, &form).await?;
    if status != 200 {
        return Err(OidcError::Refused(oauth_error(&v)));
    }
    serde_json::from_value(v).map_err(|e| OidcError::Provider(format!("{url}: {e}")))
}

/// Polls until the user has approved the device login, refused it, or it expired.
pub async fn finish_device_login(
    d: &Discovery,
    client_id: &str,
    login: &DeviceLogin,
) -> Result<Tokens, OidcError> {
    let url = endpoint(&d.token_endpoint, "token endpoint")?;
    let mut interval = Duration::from_secs(login.interval.unwrap_or(5).clamp(1, 60));
    let limit = Duration::from_secs(login.expires_in).min(DEVICE_LOGIN_LIMIT);
    let start = Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        if start.elapsed() > limit {
            return Err(OidcError::Refused("the device login expired".into()));
        }
        let (status, v) = post(
            url,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &login.device_code),
                ("client_id", client_id),
            ],
        )
        .await?;
        if status == 200 {
            return Tokens::from_response(&v);
        }
        match v.get("error").and_then(Value::as_str) {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += Duration::from_secs(5),
            _ => return Err(OidcError::Refused(oauth_error(&v))),
        }
    }
}

/// Trades a refresh token for new tokens; the refresh token is kept when the provider
/// does not rotate it.
pub async fn refresh(d: &Discovery, client_id: &str, refresh_token: &str) -> Result<Tokens, OidcError> {
    let url = endpoint(&d.token_endpoint, "token endpoint")?;
    let (status, v) = post(
        url,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ],
    )
    .await?;
    if status != 200 {
        return Err(OidcError::Refused(oauth_error(&v)));
    }
    let mut t = Tokens::from_response(&v)?;
    if t.refresh_token.is_none() {
        t.refresh_token = Some(refresh_token.to_string());
    }
    Ok(t)
}

/// A PKCE pair: the verifier kept by the client and its S256 challenge.
pub fn pkce() -> (String, String) {
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .expect("the system random generator works");
    let verifier = URL_SAFE_NO_PAD.encode(raw);
    (verifier.clone(), challenge(&verifier))
}

pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

/// The provider URL a browser is sent to for an authorization code.
pub fn authorize_url(
    d: &Discovery,
    client_id: &str,
    redirect_uri: &str,
    scopes: &[String],
    state: &str,
    challenge: &str,
    audience: Option<&str>,
) -> Result<String, OidcError> {
    let base = endpoint(&d.authorization_endpoint, "authorization endpoint")?;
    let scope = scopes.join(" ");
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &scope)
        .append_pair("state", state)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(a) = audience {
        q.append_pair("audience", a);
    }
    // OpenID Connect Core §11: offline access is asked for with consent.
    if scopes.iter().any(|s| s == "offline_access") {
        q.append_pair("prompt", "consent");
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{sep}{}", q.finish()))
}

/// Trades an authorization code (and the PKCE verifier) for tokens.
pub async fn exchange_code(
    d: &Discovery,
    client_id: &str,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<Tokens, OidcError> {
    let url = endpoint(&d.token_endpoint, "token endpoint")?;
    let (status, v) = post(
        url,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", client_id),
            ("code_verifier", verifier),
        ],
    )
    .await?;
    if status != 200 {
        return Err(OidcError::Refused(oauth_error(&v)));
    }
    Tokens::from_response(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (v, c) = pkce();
        assert_eq!(v.len(), 43);
        assert_eq!(challenge(&v), c);
    }

    #[test]
    fn the_authorize_url_carries_pkce_and_state() {
        let d = Discovery {
            issuer: "https://idp.test".into(),
            jwks_uri: "https://idp.test/jwks".into(),
            authorization_endpoint: Some("https://idp.test/auth".into()),
            token_endpoint: None,
            device_authorization_endpoint: None,
            end_session_endpoint: None,
        };
        let u = authorize_url(
            &d,
            "cli",
            "https://m:8443/oidc/callback",
            &["openid".into(), "email".into()],
            "st",
            "ch",
            None,
        )
        .unwrap();
        assert!(u.starts_with("https://idp.test/auth?response_type=code&client_id=cli&redirect_uri=https%3A%2F%2Fm%3A8443%2Foidc%2Fcallback"), "{u}");
        assert!(
            u.contains("scope=openid+email")
                && u.contains("state=st")
                && u.contains("code_challenge_method=S256")
        );
        assert!(!u.contains("prompt="));
        let offline = ["openid".to_string(), "offline_access".to_string()];
        let u = authorize_url(&d, "cli", "r", &offline, "s", "c", None).unwrap();
        assert!(u.contains("prompt=consent"), "{u}");
        assert!(authorize_url(
            &Discovery {
                authorization_endpoint: None,
                ..d
            },
            "c",
            "r",
            &[],
            "s",
            "c",
            None
        )
        .is_err());
    }
}
