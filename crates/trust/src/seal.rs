//! Sealed values: small secrets a member hands to a browser (in a cookie) and any member
//! can read back, because the key derives from the cluster-wide secret. AES-256-GCM
//! with a random nonce; the key is HMAC-SHA256(secret, purpose), so a value sealed for
//! one purpose never opens as another.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Sealed values longer than this (once encoded) are not opened.
pub const MAX_SEALED: usize = 8 * 1024;

fn key(secret: &[u8], purpose: &str) -> LessSafeKey {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), purpose.as_bytes());
    let unbound = UnboundKey::new(&AES_256_GCM, tag.as_ref()).expect("a 32-byte key");
    LessSafeKey::new(unbound)
}

/// Encrypts and authenticates `plain`; the result is URL- and cookie-safe.
pub fn seal(secret: &[u8], purpose: &str, plain: &[u8]) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).expect("the system random generator failed");
    let mut buf = plain.to_vec();
    key(secret, purpose)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
        .expect("sealing a small value");
    let mut out = nonce.to_vec();
    out.extend(buf);
    URL_SAFE_NO_PAD.encode(out)
}

/// The plaintext of a value sealed with the same secret and purpose, or `None` when it
/// was not (tampered, truncated, another key, another purpose).
pub fn open(secret: &[u8], purpose: &str, sealed: &str) -> Option<Vec<u8>> {
    if sealed.len() > MAX_SEALED {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    if raw.len() < NONCE_LEN {
        return None;
    }
    let (nonce, body) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = body.to_vec();
    let plain = key(secret, purpose)
        .open_in_place(nonce, Aad::empty(), &mut buf)
        .ok()?;
    Some(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_secret_and_purpose() {
        let s = seal(b"secret", "login", b"hello");
        assert_eq!(open(b"secret", "login", &s).as_deref(), Some(&b"hello"[..]));
        assert_eq!(open(b"other", "login", &s), None);
        assert_eq!(open(b"secret", "cookie", &s), None);
        // Every single-character change is caught.
        let bytes = s.as_bytes();
        for i in 0..bytes.len() {
            let mut t = bytes.to_vec();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(t).unwrap();
            if t != s {
                assert_eq!(open(b"secret", "login", &t), None, "changed at {i}");
            }
        }
        for junk in ["", "!!", "AAAA", &"A".repeat(MAX_SEALED + 1)] {
            assert_eq!(open(b"secret", "login", junk), None);
        }
        assert_ne!(seal(b"secret", "login", b"x"), seal(b"secret", "login", b"x"));
    }
}
