//! Verifying a third-party server against a bundle of trusted certificates (the system
//! roots, or `SSL_CERT_FILE`), with one exception to the usual path rules.
//!
//! `openssl req -x509` makes a self-signed certificate marked as a CA. Put in the trust
//! bundle, Incus (Go's TLS) accepts a server presenting it; webpki refuses it as
//! `CaUsedAsEndEntity`. [`BundleVerifier`] accepts exactly that case: the server
//! presents a certificate that is byte for byte one of the bundle's, and webpki's only
//! objection is that it is a CA. The name, the validity period and the extended key
//! usage are still checked, and the handshake signature is verified with its key as
//! always. Every other failure is webpki's verdict, unchanged; [`plain_words`] says it
//! in words a user can act on.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

use crate::tls::{provider, TlsError};

/// See the module documentation.
#[derive(Debug)]
pub struct BundleVerifier {
    inner: Arc<WebPkiServerVerifier>,
    bundle: Vec<CertificateDer<'static>>,
}

impl BundleVerifier {
    /// A verifier trusting `bundle` (roots, and self-signed server certificates).
    pub fn new(bundle: Vec<CertificateDer<'static>>) -> Result<Arc<BundleVerifier>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &bundle {
            // A certificate webpki cannot take as a root may still be one a server presents.
            let _ = roots.add(cert.clone());
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        Ok(Arc::new(BundleVerifier { inner, bundle }))
    }

    /// A client configuration (TLS 1.2 and 1.3, no client certificate) using this verifier.
    pub fn client_config(self: Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Whether webpki refused the certificate only for being a CA.
fn is_ca_used_as_end_entity(e: &Error) -> bool {
    match e {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => matches!(
            inner.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// The checks that still apply to a self-signed certificate taken from the bundle.
fn check_self_signed(der: &CertificateDer<'_>, name: &ServerName<'_>, now: UnixTime) -> Result<(), Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(der)?;
    rustls::client::verify_server_name(&parsed, name)?;
    let info = trust::cert::inspect(der.as_ref())
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now_secs < info.not_before.unix_timestamp() {
        return Err(CertificateError::NotValidYet.into());
    }
    if now_secs > info.not_after.unix_timestamp() {
        return Err(CertificateError::Expired.into());
    }
    if !trust::cert::allows_server_auth(der.as_ref()).unwrap_or(false) {
        return Err(CertificateError::InvalidPurpose.into());
    }
    Ok(())
}

impl ServerCertVerifier for BundleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(e)
                if is_ca_used_as_end_entity(&e)
                    && self.bundle.iter().any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                check_self_signed(end_entity, server_name, now)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A TLS failure talking to a web service, in words that say what is wrong and what to
/// do; `None` when it is not a certificate problem.
pub fn plain_words(e: &Error) -> Option<String> {
    let Error::InvalidCertificate(cert) = e else {
        return None;
    };
    Some(match cert {
        CertificateError::UnknownIssuer => {
            "its certificate is not signed by an authority this server trusts (add the CA certificate, or the server's own certificate, to SSL_CERT_FILE)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "its certificate is not valid for the name or address in the URL".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "its certificate has expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "its certificate is not valid yet (check the clocks)".into()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "its certificate is not meant for a TLS server (extended key usage)".into()
        }
        CertificateError::BadSignature => "its certificate's signature does not verify".into(),
        CertificateError::Revoked => "its certificate was revoked".into(),
        other if is_ca_used_as_end_entity(e) => {
            let _ = other;
            "it presents a CA certificate as its own; trust it by putting that very certificate in SSL_CERT_FILE".into()
        }
        other => format!("its certificate was refused: {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};

    fn cert(
        ca: bool,
        ip: [u8; 4],
        eku: Option<ExtendedKeyUsagePurpose>,
        days: (i64, i64),
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("test {}", trust::random_hex(4)),
        );
        p.subject_alt_names = vec![SanType::IpAddress(ip.into())];
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        p.extended_key_usages = eku.into_iter().collect();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(days.0);
        p.not_after = now + time::Duration::days(days.1);
        p.self_signed(&key).unwrap().der().clone()
    }

    fn verify(
        bundle: &[CertificateDer<'static>],
        presented: &CertificateDer<'static>,
        host: &str,
    ) -> Result<(), Error> {
        let v = BundleVerifier::new(bundle.to_vec()).unwrap();
        let name = ServerName::try_from(host.to_string()).unwrap();
        v.verify_server_cert(presented, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn a_self_signed_ca_certificate_in_the_bundle_is_accepted_for_its_name() {
        let c = cert(true, [127, 0, 0, 1], None, (-1, 30));
        verify(std::slice::from_ref(&c), &c, "127.0.0.1").unwrap();
        // The name still counts.
        let e = verify(std::slice::from_ref(&c), &c, "127.0.0.2").unwrap_err();
        assert!(
            plain_words(&e).unwrap().contains("not valid for the name"),
            "{e:?}"
        );
    }

    #[test]
    fn only_that_very_certificate_and_only_while_usable() {
        let c = cert(true, [127, 0, 0, 1], None, (-1, 30));
        let other = cert(true, [127, 0, 0, 1], None, (-1, 30));
        let e = verify(&[other], &c, "127.0.0.1").unwrap_err();
        assert!(
            is_ca_used_as_end_entity(&e)
                || matches!(e, Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            "{e:?}"
        );
        assert!(plain_words(&e).is_some());
        let expired = cert(true, [127, 0, 0, 1], None, (-30, -1));
        let e = verify(std::slice::from_ref(&expired), &expired, "127.0.0.1").unwrap_err();
        assert_eq!(plain_words(&e).unwrap(), "its certificate has expired");
        let future = cert(true, [127, 0, 0, 1], None, (1, 30));
        let e = verify(std::slice::from_ref(&future), &future, "127.0.0.1").unwrap_err();
        assert!(plain_words(&e)
            .unwrap()
            .starts_with("its certificate is not valid yet"));
        let client_only = cert(
            true,
            [127, 0, 0, 1],
            Some(ExtendedKeyUsagePurpose::ClientAuth),
            (-1, 30),
        );
        let e = verify(std::slice::from_ref(&client_only), &client_only, "127.0.0.1").unwrap_err();
        assert!(plain_words(&e).unwrap().contains("not meant for a TLS server"));
        let server = cert(
            true,
            [127, 0, 0, 1],
            Some(ExtendedKeyUsagePurpose::ServerAuth),
            (-1, 30),
        );
        verify(std::slice::from_ref(&server), &server, "127.0.0.1").unwrap();
    }

    #[test]
    fn an_unknown_issuer_is_said_in_plain_words() {
        let c = cert(false, [127, 0, 0, 1], None, (-1, 30));
        let root = cert(true, [127, 0, 0, 9], None, (-1, 30));
        let e = verify(&[root], &c, "127.0.0.1").unwrap_err();
        assert!(
            plain_words(&e).unwrap().contains("not signed by an authority"),
            "{e:?}"
        );
    }
}
