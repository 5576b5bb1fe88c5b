//! The resource-server side: access tokens checked against the issuer's discovery
//! document and key set, fetched once and kept. A token signed with a key the cache does
//! not know makes one refetch (at most one per [`REFETCH_EVERY`]), so a provider that
//! rotates its keys is followed without a restart.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::jwt::{self, Claims, Expect, JwtError, KeySet};
use crate::{discover, Config, Discovery, OidcError};

/// The least time between two fetches of the key set.
pub const REFETCH_EVERY: Duration = Duration::from_secs(2);
/// Tolerated clock skew between the provider and us.
pub const LEEWAY_SECS: i64 = 30;

/// Why a token was not accepted. Every variant but `Provider` is the token's fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Token(#[from] JwtError),
    #[error("the OpenID provider cannot be used: {0}")]
    Provider(String),
    #[error("token has no usable {0:?} claim")]
    Claim(String),
    #[error("{0}")]
    Subnet(String),
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Verified {
    pub username: String,
    pub claims: Claims,
}

#[derive(Default)]
struct Cache {
    discovery: Option<Arc<Discovery>>,
    keys: Arc<KeySet>,
    fetched: Option<Instant>,
    error: Option<String>,
}

pub struct Verifier {
    config: Config,
    cache: Mutex<Cache>,
    refetch: tokio::sync::Mutex<()>,
}

impl Verifier {
    pub fn new(config: Config) -> Verifier {
        Verifier {
            config,
            cache: Mutex::new(Cache::default()),
            refetch: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn cached(&self) -> (Option<Arc<Discovery>>, Arc<KeySet>) {
        let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        (c.discovery.clone(), c.keys.clone())
    }

    /// The provider's discovery document, fetched on first use.
    pub async fn discovery(&self) -> Result<Arc<Discovery>, OidcError> {
        if let (Some(d), _) = self.cached() {
            return Ok(d);
        }
        let d = Arc::new(discover(&self.config.issuer).await?);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).discovery = Some(d.clone());
        Ok(d)
    }

    /// Fetches discovery (when missing) and the key set, unless another caller did so
    /// within [`REFETCH_EVERY`]; a failure is remembered for as long.
    async fn refetch(&self) -> Result<(), VerifyError> {
        let _one_at_a_time = self.refetch.lock().await;
        {
            let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if c.fetched.is_some_and(|t| t.elapsed() < REFETCH_EVERY) {
                return match &c.error {
                    Some(e) => Err(VerifyError::Provider(e.clone())),
                    None => Ok(()),
                };
            }
        }
        let result = async {
            let d = self.discovery().await?;
            let keys = crate::fetch_json(&d.jwks_uri).await?;
            KeySet::parse(&keys).map_err(|e| OidcError::Provider(format!("{}: {e}", d.jwks_uri)))
        }
        .await;
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        c.fetched = Some(Instant::now());
        match result {
            Ok(keys) => {
                c.keys = Arc::new(keys);
                c.error = None;
                Ok(())
            }
            Err(e) => {
                c.error = Some(e.to_string());
                Err(VerifyError::Provider(e.to_string()))
            }
        }
    }

    /// Verifies an access token and names its holder.
    pub async fn verify(&self, token: &str, now: i64) -> Result<Verified, VerifyError> {
        let expect = Expect {
            issuer: &self.config.issuer,
            audience: self.config.audience.as_deref(),
            now,
            leeway: LEEWAY_SECS,
        };
        // Cheap checks first: garbage never costs a fetch.
        jwt::header(token)?;
        let (_, keys) = self.cached();
        let claims = match (keys.is_empty(), jwt::verify(token, &keys, &expect)) {
            (false, Err(JwtError::UnknownKey(_))) | (true, _) => {
                self.refetch().await?;
                let (_, keys) = self.cached();
                jwt::verify(token, &keys, &expect)?
            }
            (false, r) => r?,
        };
        let username = username(&claims, self.config.claim.as_deref())?;
        Ok(Verified { username, claims })
    }
}

/// The identity a token stands for: the configured claim, else `email` when present,
/// else `sub`.
pub fn username(claims: &Claims, claim: Option<&str>) -> Result<String, VerifyError> {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    match claim {
        Some(c) => text(c).ok_or_else(|| VerifyError::Claim(c.to_string())),
        None => text("email")
            .or_else(|| text("sub"))
            .ok_or_else(|| VerifyError::Claim("sub".into())),
    }
}

/// The `incus.allowed_subnets` claim: when present, the caller's address must be in one
/// of its ranges (an empty list lets nobody in).
pub fn check_subnets(claims: &Claims, addr: IpAddr) -> Result<(), VerifyError> {
    const CLAIM: &str = "incus.allowed_subnets";
    let Some(value) = claims.get(CLAIM) else {
        return Ok(());
    };
    let list = value
        .as_array()
        .ok_or_else(|| VerifyError::Subnet(format!("the {CLAIM} claim is not a list")))?;
    for item in list {
        let text = item
            .as_str()
            .ok_or_else(|| VerifyError::Subnet(format!("the {CLAIM} claim has a non-string entry")))?;
        let cidr = api::config::parse_cidr(text)
            .map_err(|e| VerifyError::Subnet(format!("bad subnet in the {CLAIM} claim: {e}")))?;
        if cidr.contains(addr) {
            return Ok(());
        }
    }
    Err(VerifyError::Subnet(format!(
        "the client address {addr} is not in the token's allowed subnets"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_username_comes_from_the_claim_then_email_then_sub() {
        let c = claims(json!({"sub": "s1", "email": "e@x", "name": "N", "empty": ""}));
        assert_eq!(username(&c, None).unwrap(), "e@x");
        assert_eq!(username(&c, Some("name")).unwrap(), "N");
        assert!(matches!(username(&c, Some("empty")), Err(VerifyError::Claim(_))));
        assert!(matches!(
            username(&c, Some("missing")),
            Err(VerifyError::Claim(_))
        ));
        let c = claims(json!({"sub": "s1", "email": ""}));
        assert_eq!(username(&c, None).unwrap(), "s1");
    }

    #[test]
    fn allowed_subnets_are_enforced() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let none = claims(json!({}));
        assert!(check_subnets(&none, ip("198.51.100.1")).is_ok());
        let c = claims(json!({"incus.allowed_subnets": ["203.0.113.0/24", "2001:db8::/32"]}));
        assert!(check_subnets(&c, ip("203.0.113.9")).is_ok());
        assert!(check_subnets(&c, ip("::ffff:203.0.113.9")).is_ok());
        assert!(check_subnets(&c, ip("2001:db8::5")).is_ok());
        assert!(check_subnets(&c, ip("198.51.100.1")).is_err());
        let empty = claims(json!({"incus.allowed_subnets": []}));
        assert!(check_subnets(&empty, ip("203.0.113.9")).is_err());
        for bad in [json!("203.0.113.0/24"), json!([5]), json!(["nonsense"])] {
            let c = claims(json!({ "incus.allowed_subnets": bad }));
            assert!(check_subnets(&c, ip("203.0.113.9")).is_err());
        }
    }
}
