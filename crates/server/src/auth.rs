//! Authentication: turns the connection's facts into the request's [`Identity`].
//!
//! Identity headers that only members may set (`X-Incus-forwarded-*`, `X-Stapes-*`) are
//! stripped from every request here, before any handler can see them: no client can
//! claim to be someone else by sending them.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use trust::{ConnFacts, Identity};

use crate::context::Ctx;

/// Header prefixes that carry identity between members, never from clients.
const RESERVED_PREFIXES: [&str; 2] = ["x-incus-forwarded-", "x-stapes-"];

pub async fn layer(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    strip_reserved_headers(req.headers_mut());
    let facts = req.extensions().get::<ConnFacts>().cloned().unwrap_or_default();
    let state = ctx.store.state();
    let identity = trust::identity::decide(&facts, |fp| {
        if ctx.is_member(&state, fp) {
            Some("member".to_string())
        } else {
            state.certificate_type(fp)
        }
    });
    req.extensions_mut().insert(identity);
    next.run(req).await
}

fn strip_reserved_headers(headers: &mut http::HeaderMap) {
    let reserved: Vec<_> = headers
        .keys()
        .filter(|k| RESERVED_PREFIXES.iter().any(|p| k.as_str().starts_with(p)))
        .cloned()
        .collect();
    for name in reserved {
        headers.remove(name);
    }
}

/// Full access (admin) or 403.
pub fn require_full(id: &Identity) -> crate::response::Result<()> {
    if id.full_access() {
        Ok(())
    } else {
        Err(api::ApiError::forbidden().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_headers_are_stripped() {
        let mut h = http::HeaderMap::new();
        h.insert("X-Incus-forwarded-protocol", "unix".parse().unwrap());
        h.insert("x-stapes-identity", "root".parse().unwrap());
        h.insert("user-agent", "x".parse().unwrap());
        strip_reserved_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("user-agent"));
    }
}
