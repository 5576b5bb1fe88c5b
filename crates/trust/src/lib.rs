//! Trust, as pure functions over plain data: certificate fingerprints and generation,
//! trust and join tokens, constant-time secret comparison, and the decision that turns
//! the facts of a connection into an [`Identity`].
//!
//! Architecture invariant: no I/O and no TLS library types here. `transport` hands this
//! crate DER bytes and peer credentials; the trust store itself lives in replicated
//! state and is passed in as a lookup.

pub mod cert;
pub mod identity;
pub mod seal;
pub mod token;

pub use cert::{fingerprint, sha256_hex, CertError, CertPair};
pub use identity::{AuthMethod, ConnFacts, Identity};

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `n` random bytes from the system's CSPRNG, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut buf).expect("the system random generator failed");
    hex::encode(buf)
}

/// 16 random bytes.
pub fn random_bytes16() -> [u8; 16] {
    let mut buf = [0u8; 16];
    aws_lc_rs::rand::fill(&mut buf).expect("the system random generator failed");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert_eq!(random_hex(32).len(), 64);
    }
}
