//! OpenID Connect on a member: bearer tokens (or the `oidc_access` cookie) verified
//! here, the `X-Incus-OIDC-*` headers that tell clients where to log in, and the browser
//! login (`/oidc/login`, `/oidc/callback`, `/oidc/logout`).
//!
//! ```text
//!  browser ──/oidc/login (member A)──> 302 provider, cookie oidc_login = seal(state, PKCE verifier)
//!  browser <──provider login──> 302 /oidc/callback?code&state (member B: any member)
//!  member B: open(oidc_login) ─ state matches ─> code + verifier ─> tokens ─> cookies
//! ```
//!
//! The login cookie is sealed with a key derived from the cluster-wide secret in the
//! replicated state, so the member that finishes a login need not be the one that began
//! it, and a restart in between changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use oidc::{Config, Verifier, VerifyError};
use serde::{Deserialize, Serialize};
use trust::{AuthMethod, Identity};

use crate::context::Ctx;
use crate::response::{error_response, ApiError};

/// How long a browser has between `/oidc/login` and `/oidc/callback`.
const LOGIN_TTL_SECS: i64 = 600;
const LOGIN_COOKIE: &str = "oidc_login";
const LOGIN_PURPOSE: &str = "stapes oidc login v1";

/// The verifier for the current `oidc.*` settings, rebuilt when they change.
#[derive(Default)]
pub struct Oidc {
    current: Mutex<Option<Arc<Verifier>>>,
}

/// The OpenID settings, when `oidc.issuer` and `oidc.client.id` are both set.
pub fn config(settings: &api::Settings) -> Option<Config> {
    settings.oidc.clone()
}

impl Oidc {
    pub fn verifier(&self, settings: &api::Settings) -> Option<Arc<Verifier>> {
        let config = config(settings)?;
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match cur.as_ref() {
            Some(v) if *v.config() == config => {}
            _ => *cur = Some(Arc::new(Verifier::new(config))),
        }
        cur.clone()
    }
}

/// Tells a client where to log in, as Incus does on 401 and 403 answers.
pub fn write_headers(headers: &mut HeaderMap, config: &Config) {
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set("x-incus-oidc-issuer", &config.issuer);
    set("x-incus-oidc-clientid", &config.client_id);
    set("x-incus-oidc-audience", config.audience.as_deref().unwrap_or(""));
    set("x-incus-oidc-scopes", &config.scopes.join(","));
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Where a request's access token came from.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    Header,
    Cookie,
}

/// The access token a request presents: `Some(Err)` for an `Authorization` header that
/// is not a bearer token.
fn presented(headers: &HeaderMap) -> Option<Result<(String, Source), &'static str>> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let text = auth.to_str().unwrap_or("");
        return Some(match text.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("bearer ") => {
                Ok((text[7..].trim().to_string(), Source::Header))
            }
            _ => Err("Bad authorization token, expected a Bearer token"),
        });
    }
    cookie(headers, "oidc_access").map(|t| Ok((t.to_string(), Source::Cookie)))
}

/// A caller authenticated by an access token, and the cookies to send back when a
/// browser's tokens were refreshed on the way.
pub struct Authenticated {
    pub identity: Identity,
    pub set_cookies: Vec<String>,
}

/// A browser whose access cookie no longer verifies but which holds a refresh cookie:
/// new tokens from the provider, verified, and the cookies that carry them.
async fn refresh_cookies(
    verifier: &Verifier,
    refresh_token: &str,
) -> Result<(oidc::Verified, Vec<String>), String> {
    let discovery = verifier.discovery().await.map_err(|e| e.to_string())?;
    let tokens = oidc::flow::refresh(&discovery, &verifier.config().client_id, refresh_token)
        .await
        .map_err(|e| e.to_string())?;
    let verified = verifier
        .verify(&tokens.access_token, oidc::flow::now())
        .await
        .map_err(|e| e.to_string())?;
    let mut cookies = vec![cookie_header(
        "oidc_access",
        &tokens.access_token,
        "/",
        "Strict",
        None,
    )];
    if let Some(r) = tokens.refresh_token.as_deref().filter(|r| *r != refresh_token) {
        cookies.push(cookie_header("oidc_refresh", r, "/", "Strict", None));
    }
    Ok((verified, cookies))
}

/// Authenticates an otherwise untrusted request by its access token. `Ok(None)`: it
/// presents none (or OpenID is not configured); `Err`: the answer to send instead.
pub async fn authenticate(
    ctx: &Ctx,
    headers: &HeaderMap,
    address: &str,
) -> Result<Option<Authenticated>, Response> {
    // Cheap first: most untrusted requests carry no token at all.
    let Some(token) = presented(headers) else {
        return Ok(None);
    };
    let Some(verifier) = ctx.oidc.verifier(&ctx.settings()) else {
        return Ok(None);
    };
    let refuse = |status: u16, why: String| {
        tracing::info!(address, status, reason = %why, "refused an OpenID access token");
        let mut r = error_response(&ApiError::new(status, format!("Failed to authenticate: {why}")));
        write_headers(r.headers_mut(), verifier.config());
        r
    };
    let (token, source) = token.map_err(|why| refuse(401, why.to_string()))?;
    let (verified, set_cookies) = match verifier.verify(&token, oidc::flow::now()).await {
        Ok(v) => (v, Vec::new()),
        Err(VerifyError::Provider(e)) => {
            tracing::warn!(error = %e, "cannot verify an OpenID token");
            return Err(refuse(503, format!("the OpenID provider cannot be used: {e}")));
        }
        // A browser with a refresh cookie gets new tokens instead of a new login.
        Err(e) => match (source, cookie(headers, "oidc_refresh")) {
            (Source::Cookie, Some(refresh)) => refresh_cookies(&verifier, refresh).await.map_err(|why| {
                tracing::debug!(error = %why, "cannot refresh a browser's OpenID tokens");
                refuse(401, e.to_string())
            })?,
            _ => return Err(refuse(401, e.to_string())),
        },
    };
    if let Ok(ip) = address.parse() {
        oidc::check_subnets(&verified.claims, ip).map_err(|e| refuse(403, e.to_string()))?;
    }
    Ok(Some(Authenticated {
        identity: Identity {
            method: AuthMethod::Oidc,
            username: verified.username,
            address: address.to_string(),
            cert_type: None,
        },
        set_cookies,
    }))
}

/// What the login cookie carries from `/oidc/login` to `/oidc/callback`.
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    verifier: String,
    redirect_uri: String,
    expires: i64,
}

/// Why a browser login failed (mapped to the envelope in `response.rs`).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("OpenID Connect is not configured")]
    NotConfigured,
    #[error("The request has no usable Host header")]
    NoHost,
    #[error("The callback needs code and state parameters")]
    MissingParameters,
    /// The provider cannot be reached or used (its discovery document, say).
    #[error("The OpenID provider cannot be used: {0}")]
    Provider(#[source] oidc::OidcError),
    /// The provider's authorization endpoint is unusable.
    #[error("{0}")]
    AuthorizeUrl(#[source] oidc::OidcError),
    /// The login itself is refused: the browser is told to log in again.
    #[error("Failed to authenticate: {0}")]
    Refused(String),
    /// The cluster-wide secret could not be made.
    #[error("{0}")]
    Secret(#[source] cluster::StoreError),
    #[error("the cluster secret was not recorded")]
    SecretMissing,
}

/// The cluster-wide secret, made on first use (the first proposal wins cluster-wide).
async fn secret(ctx: &Ctx) -> Result<Vec<u8>, LoginError> {
    if let Some(s) = ctx.store.state().secret.clone() {
        return Ok(s.into_bytes());
    }
    let candidate = trust::random_hex(32);
    ctx.store
        .apply(cluster::TrustCommand::SetSecret { secret: candidate })
        .await
        .map_err(LoginError::Secret)?;
    ctx.store
        .state()
        .secret
        .clone()
        .map(String::into_bytes)
        .ok_or(LoginError::SecretMissing)
}

fn host_of(headers: &HeaderMap) -> Result<String, LoginError> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', '\\', '@', ' ']))
        .map(str::to_string)
        .ok_or(LoginError::NoHost)
}

fn cookie_header(name: &str, value: &str, path: &str, same_site: &str, max_age: Option<i64>) -> String {
    let age = max_age.map(|a| format!("; Max-Age={a}")).unwrap_or_default();
    format!("{name}={value}; Path={path}; Secure; HttpOnly; SameSite={same_site}{age}")
}

fn set_cookie(
    resp: &mut Response,
    name: &str,
    value: &str,
    path: &str,
    same_site: &str,
    max_age: Option<i64>,
) {
    if let Ok(v) = HeaderValue::from_str(&cookie_header(name, value, path, same_site, max_age)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn not_configured() -> Response {
    error_response(&LoginError::NotConfigured.into())
}

/// `GET /oidc/login`: off to the provider, with PKCE and a sealed state cookie.
pub async fn login(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let Some(verifier) = ctx.oidc.verifier(&ctx.settings()) else {
        return not_configured();
    };
    let result = async {
        let host = host_of(&headers)?;
        let secret = secret(&ctx).await?;
        let discovery = verifier.discovery().await.map_err(LoginError::Provider)?;
        let config = verifier.config();
        let (code_verifier, challenge) = oidc::flow::pkce();
        let pending = Pending {
            state: trust::random_hex(16),
            verifier: code_verifier,
            redirect_uri: format!("https://{host}/oidc/callback"),
            expires: oidc::flow::now() + LOGIN_TTL_SECS,
        };
        let url = oidc::flow::authorize_url(
            &discovery,
            &config.client_id,
            &pending.redirect_uri,
            &config.scopes,
            &pending.state,
            &challenge,
            config.audience.as_deref(),
        )
        .map_err(LoginError::AuthorizeUrl)?;
        let sealed = trust::seal::seal(
            &secret,
            LOGIN_PURPOSE,
            &serde_json::to_vec(&pending).expect("serializable"),
        );
        let mut r = redirect(&url);
        // Lax: the cookie must come back on the provider's top-level redirect.
        set_cookie(
            &mut r,
            LOGIN_COOKIE,
            &sealed,
            "/oidc",
            "Lax",
            Some(LOGIN_TTL_SECS),
        );
        Ok::<_, LoginError>(r)
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e.into()))
}

/// `GET /oidc/callback?code&state`: finishes a login begun on any member.
pub async fn callback(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(verifier) = ctx.oidc.verifier(&ctx.settings()) else {
        return not_configured();
    };
    let result = async {
        let unauthorized = |m: &str| LoginError::Refused(m.to_string());
        if let Some(e) = q.get("error") {
            let why = q.get("error_description").unwrap_or(e);
            return Err(unauthorized(&format!(
                "the OpenID provider refused the login: {why}"
            )));
        }
        let (Some(code), Some(state)) = (q.get("code"), q.get("state")) else {
            return Err(LoginError::MissingParameters);
        };
        let sealed = cookie(&headers, LOGIN_COOKIE)
            .ok_or_else(|| unauthorized("no login in progress (the login cookie is missing)"))?;
        let secret = secret(&ctx).await?;
        let pending: Pending = trust::seal::open(&secret, LOGIN_PURPOSE, sealed)
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| unauthorized("the login cookie is invalid"))?;
        if !trust::constant_time_eq(pending.state.as_bytes(), state.as_bytes()) {
            return Err(unauthorized("the login state does not match"));
        }
        if oidc::flow::now() > pending.expires {
            return Err(unauthorized("the login took too long; start again"));
        }
        let discovery = verifier.discovery().await.map_err(LoginError::Provider)?;
        let tokens = oidc::flow::exchange_code(
            &discovery,
            &verifier.config().client_id,
            code,
            &pending.redirect_uri,
            &pending.verifier,
        )
        .await
        .map_err(|e| unauthorized(&e.to_string()))?;
        let who = verifier
            .verify(&tokens.access_token, oidc::flow::now())
            .await
            .map_err(|e| unauthorized(&e.to_string()))?;
        tracing::info!(user = %who.username, "OpenID browser login");
        let mut r = redirect("/");
        set_cookie(&mut r, LOGIN_COOKIE, "", "/oidc", "Lax", Some(0));
        set_cookie(&mut r, "oidc_access", &tokens.access_token, "/", "Strict", None);
        if let Some(t) = &tokens.refresh_token {
            set_cookie(&mut r, "oidc_refresh", t, "/", "Strict", None);
        }
        if let Some(t) = &tokens.id_token {
            set_cookie(&mut r, "oidc_id", t, "/", "Strict", None);
        }
        Ok(r)
    }
    .await;
    result.unwrap_or_else(|e| {
        let relogin = matches!(e, LoginError::Refused(_));
        let mut r = error_response(&e.into());
        if relogin {
            write_headers(r.headers_mut(), verifier.config());
        }
        r
    })
}

/// `GET /oidc/logout`: forgets the browser's tokens and ends the provider session when
/// the provider offers that.
pub async fn logout(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let end_session = match ctx.oidc.verifier(&ctx.settings()) {
        Some(v) => v
            .discovery()
            .await
            .ok()
            .and_then(|d| d.end_session_endpoint.clone()),
        None => None,
    };
    let target = match (end_session, cookie(&headers, "oidc_id")) {
        (Some(url), Some(id)) => {
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("id_token_hint", id)
                .finish();
            format!("{url}{}{q}", if url.contains('?') { '&' } else { '?' })
        }
        _ => "/".to_string(),
    };
    let mut r = redirect(&target);
    for name in ["oidc_access", "oidc_refresh", "oidc_id"] {
        set_cookie(&mut r, name, "", "/", "Strict", Some(0));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn tokens_come_from_the_bearer_header_or_the_cookie() {
        let header = |t: &str| Some(Ok((t.to_string(), Source::Header)));
        assert_eq!(
            presented(&headers(&[("authorization", "Bearer abc")])),
            header("abc")
        );
        assert_eq!(
            presented(&headers(&[("authorization", "bearer abc")])),
            header("abc")
        );
        // The official client sends an empty bearer token to ask for the login details.
        assert_eq!(presented(&headers(&[("authorization", "Bearer ")])), header(""));
        assert!(matches!(
            presented(&headers(&[("authorization", "Basic eDp5")])),
            Some(Err(_))
        ));
        assert_eq!(
            presented(&headers(&[("cookie", "a=1; oidc_access=tok; b=2")])),
            Some(Ok(("tok".into(), Source::Cookie)))
        );
        assert_eq!(presented(&headers(&[("cookie", "oidc_accessx=1")])), None);
        assert_eq!(presented(&HeaderMap::new()), None);
    }

    #[test]
    fn settings_need_an_issuer_and_a_client_id() {
        let mut s = std::collections::BTreeMap::new();
        let settings = |s: &_| api::Settings::new(s, &Default::default());
        assert!(config(&settings(&s)).is_none());
        s.insert("oidc.issuer".to_string(), "https://idp.test".to_string());
        assert!(config(&settings(&s)).is_none());
        s.insert("oidc.client.id".into(), "cli".into());
        s.insert("oidc.scopes".into(), "openid, email,,".into());
        let c = config(&settings(&s)).unwrap();
        assert_eq!(c.scopes, ["openid", "email"]);
        assert_eq!(c.audience, None);
        let mut h = HeaderMap::new();
        write_headers(&mut h, &c);
        assert_eq!(h["x-incus-oidc-issuer"], "https://idp.test");
        assert_eq!(h["x-incus-oidc-clientid"], "cli");
        assert_eq!(h["x-incus-oidc-scopes"], "openid,email");
    }

    #[test]
    fn host_headers_that_could_redirect_elsewhere_are_refused() {
        assert_eq!(
            host_of(&headers(&[("host", "127.0.0.1:8443")])).unwrap(),
            "127.0.0.1:8443"
        );
        for bad in ["evil.test/x", "a@b", ""] {
            assert!(host_of(&headers(&[("host", bad)])).is_err(), "{bad}");
        }
    }
}
