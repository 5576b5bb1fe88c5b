//! `?target=MEMBER`: the member a client reached hands the request to another member and
//! relays the answer, so a client needs no connection to the target itself.
//!
//! ```text
//!  client ─> member A: auth (Identity) ─> target=B? ─> B offline?  ─> 503 at once
//!                                            │         unknown?   ─> 404
//!                                            └─> pooled mTLS h2 to B, identity in
//!                                                X-Incus-forwarded-* (set, never appended),
//!                                                bodies streamed (tunnel.rs), an upgrade on
//!                                                a fresh HTTP/1.1 connection, the owner's
//!                                                progress bounded by cluster.forward_timeout
//! ```
//!
//! Only per-member endpoints honour `target`; on cluster-wide ones it is ignored, as in
//! Incus. A request about one operation goes to the member its id names, `target` or
//! not ([`operation_owner`]).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use trust::Identity;

use crate::auth::{FWD_ADDRESS, FWD_PROTOCOL, FWD_USERNAME};
use crate::context::Ctx;
use crate::response::{error_response, ApiError};

/// Paths whose answer is one member's own view.
fn per_member(path: &str) -> bool {
    matches!(path, "/1.0" | "/1.0/resources" | "/1.0/metrics") || path.starts_with("/internal/test/")
}

/// The value of `?target=`, if any.
pub fn target_of(uri: &http::Uri) -> Option<String> {
    query_value(uri, "target")
}

/// The (first, non-empty) value of `?key=`.
fn query_value(uri: &http::Uri, key: &str) -> Option<String> {
    let query = uri.query()?;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key && !v.is_empty()).then(|| percent_decode(v))
    })
}

/// Where a request about one operation (`/1.0/operations/{id}`, `/wait`, `/websocket`)
/// goes: the member its id names ([`crate::ops::owner_of`]) when that is another
/// member, with how long the forwarded call may take (a wait adds its own timeout).
/// Token operations live in the replicated state: answered here, as is an id that
/// names no member (404 here).
fn operation_owner(
    method: &http::Method,
    uri: &http::Uri,
    state: &cluster::State,
    me: u64,
) -> Option<(String, Duration)> {
    let rest = uri.path().strip_prefix("/1.0/operations/")?;
    let (id, wait) = match rest.split_once('/') {
        None => (rest, false),
        Some((id, "wait")) => (id, *method == http::Method::GET),
        Some((id, "websocket")) => (id, false),
        Some(_) => return None,
    };
    if state.tokens.contains_key(id) {
        return None;
    }
    let owner = crate::ops::owner_of(id).filter(|o| *o != me)?;
    let member = state.member_by_id(owner)?;
    let waits = if wait {
        crate::ops::wait_timeout(query_value(uri, "timeout").as_deref())
    } else {
        Duration::ZERO
    };
    Some((member.name.clone(), forward_timeout(state) + waits))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(&bytes[i + 1..(i + 3).min(bytes.len())]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) if hex.len() == 2 => {
                        out.push(b);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn layer(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if req.extensions().get::<crate::auth::ViaMember>().is_none() {
        let state = ctx.store.state();
        if let Some((owner, bound)) = operation_owner(req.method(), req.uri(), &state, ctx.own_id()) {
            // Only the websocket is open to the untrusted: everything else is refused
            // here, without bothering the owner.
            let trusted = req.extensions().get::<Identity>().is_some_and(Identity::trusted);
            if trusted || req.uri().path().ends_with("/websocket") {
                return to_member_within(&ctx, &owner, req, bound).await;
            }
        }
    }
    let Some(target) = target_of(req.uri()) else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_string();
    let member_state = path
        .strip_prefix("/1.0/cluster/members/")
        .and_then(|rest| rest.strip_suffix("/state"))
        .map(str::to_string);
    if !per_member(&path) && member_state.is_none() {
        return next.run(req).await;
    }
    let trusted = req.extensions().get::<Identity>().is_some_and(Identity::trusted);
    if !trusted {
        return next.run(req).await;
    }
    if !ctx.store.clustered() {
        return error_response(&ApiError::bad_request("Target only allowed when clustered"));
    }
    if target == ctx.server_name() {
        return next.run(req).await;
    }
    to_member(&ctx, &target, req).await
}

/// Forwards `req` to the member named `name`, bounded by `cluster.forward_timeout`.
pub async fn to_member(ctx: &Ctx, name: &str, req: Request) -> Response {
    let timeout = forward_timeout(&ctx.store.state());
    to_member_within(ctx, name, req, timeout).await
}

/// As [`to_member`], with an explicit bound (an operation wait asks for its own).
pub async fn to_member_within(ctx: &Ctx, name: &str, mut req: Request, timeout: Duration) -> Response {
    let state = ctx.store.state();
    let Some(member) = state.members.get(name) else {
        return error_response(&ApiError::not_found_msg("Cluster member not found"));
    };
    if !crate::membership::is_online(ctx, &state, name) {
        return error_response(&ApiError::unavailable(format!(
            "Cluster member \"{name}\" is offline"
        )));
    }
    let address = member.address.clone();
    let upgrade = crate::tunnel::take_upgrade(&mut req);
    let identity = req.extensions().get::<Identity>().cloned();
    let (parts, body) = req.into_parts();
    let mut out = http::Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    for (k, v) in parts.headers.iter() {
        // Credentials stay with the member that checked them; the identity travels in
        // the forwarded-identity headers.
        if !is_hop_by_hop(k.as_str()) && k != http::header::AUTHORIZATION && k != http::header::COOKIE {
            out = out.header(k, v);
        }
    }
    if upgrade.is_some() {
        // The one hop-by-hop exchange that must reach the owner: it answers the switch.
        out = out.header(http::header::HOST, address.as_str());
        for k in [http::header::CONNECTION, http::header::UPGRADE] {
            if let Some(v) = parts.headers.get(&k) {
                out = out.header(k.clone(), v);
            }
        }
    }
    let Ok(mut out) = out.body(body) else {
        return error_response(&ApiError::bad_request("Cannot forward this request"));
    };
    if let Some(id) = identity {
        let h = out.headers_mut();
        for (name, value) in [
            (FWD_USERNAME, id.username),
            (FWD_PROTOCOL, id.method.as_str().to_string()),
            (FWD_ADDRESS, id.address),
        ] {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
    }
    match upgrade {
        Some(client) => crate::tunnel::upgrade(ctx, name, &address, out, client, timeout).await,
        None => crate::tunnel::stream(ctx, name, &address, out, timeout).await,
    }
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
    )
}

pub fn forward_timeout(state: &cluster::State) -> Duration {
    let secs: u64 = api::config::effective(&state.config, "cluster.forward_timeout")
        .parse()
        .unwrap_or(10);
    Duration::from_secs(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parameter() {
        let t = |u: &str| target_of(&u.parse().unwrap());
        assert_eq!(t("/1.0?target=node2"), Some("node2".into()));
        assert_eq!(t("/1.0?recursion=1&target=n%2D3"), Some("n-3".into()));
        assert_eq!(t("/1.0?target="), None);
        assert_eq!(t("/1.0"), None);
        assert_eq!(t("/1.0?target=%zz"), Some("%zz".into()));
    }

    #[test]
    fn operations_go_to_the_member_their_id_names() {
        let mut state = cluster::State::default();
        for (name, id) in [("node1", 1), ("node2", 2)] {
            state.members.insert(
                name.into(),
                cluster::Member {
                    name: name.into(),
                    id,
                    address: format!("127.0.0.{id}:8443"),
                    certificate: String::new(),
                    fingerprint: String::new(),
                    description: String::new(),
                    failure_domain: "default".into(),
                    architecture: "x86_64".into(),
                },
            );
        }
        let token_id = crate::ops::new_id(2, 9);
        state.tokens.insert(
            token_id.clone(),
            cluster::Token {
                id: token_id.clone(),
                kind: cluster::TokenKind::Join {
                    server_name: "node3".into(),
                },
                secret: String::new(),
                location: Some(2),
                created_at: time::OffsetDateTime::UNIX_EPOCH,
                expires_at: None,
            },
        );
        let get = http::Method::GET;
        let at = |method: &http::Method, uri: &str| {
            operation_owner(method, &uri.parse().unwrap(), &state, 1)
                .map(|(name, bound)| (name, bound.as_secs()))
        };
        let on2 = crate::ops::new_id(2, 1);
        let base = forward_timeout(&state).as_secs();
        assert_eq!(
            at(&get, &format!("/1.0/operations/{on2}")),
            Some(("node2".into(), base))
        );
        assert_eq!(
            at(&http::Method::DELETE, &format!("/1.0/operations/{on2}")),
            Some(("node2".into(), base))
        );
        assert_eq!(
            at(&get, &format!("/1.0/operations/{on2}/wait?timeout=30")),
            Some(("node2".into(), base + 30))
        );
        assert_eq!(
            at(&get, &format!("/1.0/operations/{on2}/websocket?secret=x")),
            Some(("node2".into(), base))
        );
        // Here, a member that does not exist, a token, other paths, malformed ids.
        assert_eq!(
            at(&get, &format!("/1.0/operations/{}", crate::ops::new_id(1, 1))),
            None
        );
        assert_eq!(
            at(&get, &format!("/1.0/operations/{}", crate::ops::new_id(3, 1))),
            None
        );
        assert_eq!(at(&get, &format!("/1.0/operations/{token_id}")), None);
        assert_eq!(at(&get, &format!("/1.0/operations/{on2}/other")), None);
        assert_eq!(at(&get, "/1.0/operations"), None);
        assert_eq!(at(&get, "/1.0/operations/nonsense"), None);
        assert_eq!(at(&get, &format!("/1.0/instances/{on2}")), None);
    }

    #[test]
    fn only_per_member_paths() {
        assert!(per_member("/1.0") && per_member("/1.0/resources") && per_member("/1.0/metrics"));
        assert!(!per_member("/1.0/cluster/members") && !per_member("/1.0/certificates"));
    }
}
