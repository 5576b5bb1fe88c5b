//! Clients that break the rules, for adversarial tests only (feature `testing`).

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::tls::{provider, ServerTrust, TlsError};

/// Presents `cert_pem` but signs the handshake with `key_pem`, a different key: what
/// an attacker who copied someone's public certificate can do. A correct server must
/// refuse the handshake.
pub fn client_config_with_foreign_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::BadCertificatePem)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or(TlsError::BadKeyPem)?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| TlsError::BadKeyPem)?;
    // `CertifiedKey::new` does not check that key and certificate belong together.
    let forged = Arc::new(CertifiedKey::new(chain, signer));
    let mut config =
        (*crate::tls::client_config(ServerTrust::Record(Default::default()), None, &[b"http/1.1"])?).clone();
    config.client_auth_cert_resolver = Arc::new(Forged(forged));
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Forged(Arc<CertifiedKey>);

impl ResolvesClientCert for Forged {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
