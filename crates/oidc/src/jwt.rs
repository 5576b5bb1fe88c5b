//! JSON Web Token verification, sans I/O: a compact JWS, a JSON Web Key Set, the
//! expected issuer and audience, and the time are all passed in.
//!
//! Only asymmetric algorithms are accepted (RS*, PS*, ES256, ES384, EdDSA), and each
//! only with a key of its own type, so neither `none` nor an HMAC keyed with a public
//! key can pass.

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN: usize = 16 * 1024;

/// The claims of a verified token.
pub type Claims = Map<String, Value>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token signing algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("token type {0:?} is not an access token")]
    Type(String),
    #[error("token signed with an unknown key (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has no expiry time")]
    NoExpiry,
    #[error("token issuer {got:?} is not the configured issuer {want:?}")]
    Issuer { got: String, want: String },
    #[error("token audience does not include {0:?}")]
    Audience(String),
}

/// What the claims must say, and when "now" is.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub audience: Option<&'a str>,
    /// Seconds since the Unix epoch.
    pub now: i64,
    /// Tolerated clock skew for `exp` and `nbf`, in seconds.
    pub leeway: i64,
}

/// The part of the JOSE header that verification reads.
#[derive(Debug, Clone)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// One public key from a JWKS.
#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    key: PublicKey,
}

#[derive(Debug, Clone)]
enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { crv: Curve, point: Vec<u8> },
    Ed25519(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

/// A JSON Web Key Set: the signature keys usable for verification. Keys of unknown
/// types, or marked for encryption only, are left out.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    pub fn parse(jwks: &Value) -> Result<KeySet, &'static str> {
        let list = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the key set has no \"keys\" list")?;
        let keys = list.iter().filter_map(parse_jwk).collect();
        Ok(KeySet { keys })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn b64(v: &Value, field: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(v.get(field)?.as_str()?.trim_end_matches('='))
        .ok()
}

fn parse_jwk(v: &Value) -> Option<Jwk> {
    if v.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
        return None;
    }
    let key = match v.get("kty")?.as_str()? {
        "RSA" => {
            let strip = |b: Vec<u8>| {
                let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                b[first..].to_vec()
            };
            PublicKey::Rsa {
                n: strip(b64(v, "n")?),
                e: strip(b64(v, "e")?),
            }
        }
        "EC" => {
            let (crv, len) = match v.get("crv")?.as_str()? {
                "P-256" => (Curve::P256, 32),
                "P-384" => (Curve::P384, 48),
                _ => return None,
            };
            let (x, y) = (b64(v, "x")?, b64(v, "y")?);
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = vec![0x04];
            point.extend(x);
            point.extend(y);
            PublicKey::Ec { crv, point }
        }
        "OKP" if v.get("crv")?.as_str()? == "Ed25519" => PublicKey::Ed25519(b64(v, "x")?),
        _ => return None,
    };
    Some(Jwk {
        kid: v.get("kid").and_then(Value::as_str).map(str::to_string),
        alg: v.get("alg").and_then(Value::as_str).map(str::to_string),
        key,
    })
}

/// Reads the header without verifying anything (to pick a key or notice a new `kid`).
pub fn header(token: &str) -> Result<Header, JwtError> {
    if token.len() > MAX_TOKEN {
        return Err(JwtError::Malformed("too large"));
    }
    let head = token.split('.').next().ok_or(JwtError::Malformed("no header"))?;
    let raw = URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| JwtError::Malformed("the header is not base64url"))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| JwtError::Malformed("the header is not JSON"))?;
    let text = |f: &str| v.get(f).and_then(Value::as_str).map(str::to_string);
    Ok(Header {
        alg: text("alg").ok_or(JwtError::Malformed("the header has no alg"))?,
        kid: text("kid"),
        typ: text("typ"),
    })
}

/// Which verification algorithm an `alg` names, and which key type it needs.
enum Alg {
    Rsa(&'static signature::RsaParameters),
    Ec(Curve, &'static signature::EcdsaVerificationAlgorithm),
    EdDsa,
}

fn algorithm(alg: &str) -> Result<Alg, JwtError> {
    Ok(match alg {
        "RS256" => Alg::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => Alg::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Alg::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => Alg::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => Alg::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => Alg::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
        "ES256" => Alg::Ec(Curve::P256, &signature::ECDSA_P256_SHA256_FIXED),
        "ES384" => Alg::Ec(Curve::P384, &signature::ECDSA_P384_SHA384_FIXED),
        "EdDSA" => Alg::EdDsa,
        other => return Err(JwtError::Algorithm(other.to_string())),
    })
}

fn check_signature(alg: &Alg, key: &PublicKey, message: &[u8], sig: &[u8]) -> Option<bool> {
    let ok = match (alg, key) {
        (Alg::Rsa(params), PublicKey::Rsa { n, e }) => RsaPublicKeyComponents { n, e }
            .verify(params, message, sig)
            .is_ok(),
        (Alg::Ec(want, algorithm), PublicKey::Ec { crv, point }) if want == crv => {
            UnparsedPublicKey::new(*algorithm, point)
                .verify(message, sig)
                .is_ok()
        }
        (Alg::EdDsa, PublicKey::Ed25519(x)) => UnparsedPublicKey::new(&signature::ED25519, x)
            .verify(message, sig)
            .is_ok(),
        _ => return None,
    };
    Some(ok)
}

/// Verifies `token` against `keys` and `expect`, returning its claims.
pub fn verify(token: &str, keys: &KeySet, expect: &Expect<'_>) -> Result<Claims, JwtError> {
    let header = header(token)?;
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    let alg = algorithm(&header.alg)?;
    if let Some(typ) = &header.typ {
        let t = typ.to_ascii_lowercase();
        if !matches!(t.as_str(), "jwt" | "at+jwt" | "application/at+jwt") {
            return Err(JwtError::Type(typ.clone()));
        }
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| JwtError::Malformed("the signature is not base64url"))?;
    let message = &token.as_bytes()[..head.len() + 1 + body.len()];

    // Keys with the token's kid, or every key when the token names none; a key that
    // declares its own alg is used only for that alg.
    let candidates = keys.keys.iter().filter(|k| {
        header
            .kid
            .as_deref()
            .is_none_or(|kid| k.kid.as_deref() == Some(kid))
            && k.alg.as_deref().is_none_or(|a| a == header.alg)
    });
    let mut usable = false;
    let mut verified = false;
    for k in candidates {
        if let Some(ok) = check_signature(&alg, &k.key, message, &sig) {
            usable = true;
            if ok {
                verified = true;
                break;
            }
        }
    }
    if !usable {
        return Err(JwtError::UnknownKey(header.kid));
    }
    if !verified {
        return Err(JwtError::Signature);
    }

    let raw = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| JwtError::Malformed("the claims are not base64url"))?;
    let claims: Claims =
        serde_json::from_slice(&raw).map_err(|_| JwtError::Malformed("the claims are not a JSON object"))?;
    check_claims(&claims, expect)?;
    Ok(claims)
}

fn check_claims(claims: &Claims, expect: &Expect<'_>) -> Result<(), JwtError> {
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    if iss != expect.issuer {
        return Err(JwtError::Issuer {
            got: iss.to_string(),
            want: expect.issuer.to_string(),
        });
    }
    let time = |name: &str| claims.get(name).and_then(Value::as_f64).map(|t| t as i64);
    let exp = time("exp").ok_or(JwtError::NoExpiry)?;
    if expect.now > exp.saturating_add(expect.leeway) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = time("nbf") {
        if expect.now < nbf.saturating_sub(expect.leeway) {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(want) = expect.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => a == want,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::Audience(want.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
    use serde_json::json;

    pub(crate) fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    /// A test signer with an RSA key, and its JWKS.
    pub(crate) struct Signer {
        key: RsaKeyPair,
        pub kid: String,
    }

    impl Signer {
        pub(crate) fn new(kid: &str) -> Signer {
            Signer {
                key: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
                kid: kid.into(),
            }
        }

        pub(crate) fn jwk(&self) -> Value {
            let public = self.key.public_key();
            json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            })
        }

        pub(crate) fn jwks(&self) -> Value {
            json!({ "keys": [self.jwk()] })
        }

        pub(crate) fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
            let input = format!("{}.{}", enc(header), enc(claims));
            let mut sig = vec![0; self.key.public_modulus_len()];
            self.key
                .sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
        }

        pub(crate) fn sign(&self, claims: &Value) -> String {
            self.sign_with_header(&json!({"alg": "RS256", "typ": "at+jwt", "kid": self.kid}), claims)
        }
    }

    pub(crate) const ISS: &str = "https://idp.test";
    const NOW: i64 = 1_800_000_000;

    fn claims() -> Value {
        json!({"iss": ISS, "aud": ["https://api.test"], "sub": "u1", "email": "u1@test",
               "exp": NOW + 3600, "iat": NOW})
    }

    fn expect() -> Expect<'static> {
        Expect {
            issuer: ISS,
            audience: Some("https://api.test"),
            now: NOW,
            leeway: 30,
        }
    }

    fn keys(s: &Signer) -> KeySet {
        KeySet::parse(&s.jwks()).unwrap()
    }

    #[test]
    fn a_good_token_verifies() {
        let s = Signer::new("k1");
        let c = verify(&s.sign(&claims()), &keys(&s), &expect()).unwrap();
        assert_eq!(c["email"], "u1@test");
    }

    #[test]
    fn claims_are_checked() {
        let s = Signer::new("k1");
        let k = keys(&s);
        let with = |f: &str, v: Value| {
            let mut c = claims();
            c[f] = v;
            verify(&s.sign(&c), &k, &expect())
        };
        assert_eq!(with("exp", json!(NOW - 31)), Err(JwtError::Expired));
        assert!(with("exp", json!(NOW - 29)).is_ok(), "within the leeway");
        assert_eq!(with("nbf", json!(NOW + 60)), Err(JwtError::NotYetValid));
        assert!(matches!(
            with("iss", json!("https://evil.test")),
            Err(JwtError::Issuer { .. })
        ));
        assert!(matches!(with("aud", json!("other")), Err(JwtError::Audience(_))));
        assert!(with("aud", json!("https://api.test")).is_ok());
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(verify(&s.sign(&c), &k, &expect()), Err(JwtError::NoExpiry));
        // Without a configured audience, any audience passes.
        let e = Expect {
            audience: None,
            ..expect()
        };
        assert!(verify(&s.sign(&with_aud(&claims(), "other")), &k, &e).is_ok());
    }

    fn with_aud(c: &Value, aud: &str) -> Value {
        let mut c = c.clone();
        c["aud"] = json!(aud);
        c
    }

    #[test]
    fn forged_and_broken_tokens_are_refused() {
        let s = Signer::new("k1");
        let k = keys(&s);
        let good = s.sign(&claims());
        // alg none, with an empty or a copied signature.
        let none = format!("{}.{}.", enc(&json!({"alg": "none"})), enc(&claims()));
        assert_eq!(
            verify(&none, &k, &expect()),
            Err(JwtError::Algorithm("none".into()))
        );
        // HS256 "signed" with the public key bytes: the classic confusion attack.
        let hs = format!(
            "{}.{}.{}",
            enc(&json!({"alg": "HS256", "kid": "k1"})),
            enc(&claims()),
            good.rsplit('.').next().unwrap()
        );
        assert_eq!(
            verify(&hs, &k, &expect()),
            Err(JwtError::Algorithm("HS256".into()))
        );
        // Claims changed after signing.
        let mut parts: Vec<&str> = good.split('.').collect();
        let tampered = enc(&with_aud(&claims(), "https://api.test"));
        parts[1] = &tampered;
        assert_eq!(verify(&parts.join("."), &k, &expect()), Err(JwtError::Signature));
        // Signed by another key under the same kid.
        let other = Signer::new("k1");
        assert_eq!(
            verify(&other.sign(&claims()), &k, &expect()),
            Err(JwtError::Signature)
        );
        // A kid the key set does not have.
        let stranger = Signer::new("k2");
        assert_eq!(
            verify(&stranger.sign(&claims()), &k, &expect()),
            Err(JwtError::UnknownKey(Some("k2".into())))
        );
        // A key declared for RS256 is not used for PS256.
        let ps = s.sign_with_header(&json!({"alg": "PS256", "kid": "k1"}), &claims());
        assert_eq!(
            verify(&ps, &k, &expect()),
            Err(JwtError::UnknownKey(Some("k1".into())))
        );
        // An ID token type or a refresh token type is not an access token.
        let odd = s.sign_with_header(
            &json!({"alg": "RS256", "kid": "k1", "typ": "refresh+jwt"}),
            &claims(),
        );
        assert!(matches!(verify(&odd, &k, &expect()), Err(JwtError::Type(_))));
        for junk in ["", "a", "a.b", "a.b.c.d", "!!!.b.c", &"x".repeat(MAX_TOKEN + 1)] {
            assert!(
                matches!(verify(junk, &k, &expect()), Err(JwtError::Malformed(_))),
                "{junk:.20}"
            );
        }
    }

    #[test]
    fn ec_keys_verify_and_must_match_the_curve() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = key.public_key().as_ref();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "e1",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}]});
        let k = KeySet::parse(&jwks).unwrap();
        let sign = |alg: &str| {
            let input = format!("{}.{}", enc(&json!({"alg": alg, "kid": "e1"})), enc(&claims()));
            let sig = key.sign(&rng, input.as_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        };
        assert!(verify(&sign("ES256"), &k, &expect()).is_ok());
        assert_eq!(
            verify(&sign("ES384"), &k, &expect()),
            Err(JwtError::UnknownKey(Some("e1".into())))
        );
        assert_eq!(
            verify(&sign("RS256"), &k, &expect()),
            Err(JwtError::UnknownKey(Some("e1".into())))
        );
    }

    #[test]
    fn odd_key_sets_are_tolerated() {
        let k = KeySet::parse(&json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            "junk"
        ]}))
        .unwrap();
        assert!(k.is_empty());
        assert!(KeySet::parse(&json!({"nokeys": 1})).is_err());
    }
}
