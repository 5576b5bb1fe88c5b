//! TLS policy: one aws-lc-rs provider, TLS 1.3 only, client certificates requested but
//! optional and verified for real, the served certificate swappable at run time.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
pub use rustls::sign::CertifiedKey;
/// A client TLS configuration, for code outside this crate to hold.
pub use rustls::ClientConfig as ClientConfigHandle;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("Certificate must be base64 encoded PEM certificate")]
    BadCertificatePem,
    #[error("Private key must be a PEM encoded private key")]
    BadKeyPem,
    #[error("The private key does not match the certificate")]
    KeyMismatch,
    #[error("TLS configuration failed: {0}")]
    Config(#[from] rustls::Error),
}

/// The one crypto provider of the process: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Installs [`provider`] as the process default; call first thing in `main`.
pub fn install_default_provider() {
    let _ = CryptoProvider::install_default((*provider()).clone());
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Parses a PEM certificate chain and private key into a checked [`CertifiedKey`].
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::BadCertificatePem)?;
    if chain.is_empty() {
        return Err(TlsError::BadCertificatePem);
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or(TlsError::BadKeyPem)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
        rustls::Error::General(_) => TlsError::BadKeyPem,
        other => TlsError::Config(other),
    })
}

/// The certificate the server presents, swapped whole when it changes: new handshakes
/// see the new one, open connections keep theirs.
///
/// A member dialling another member asks for [`MEMBER_SNI`]; it then gets that member's
/// own server certificate instead of the cluster certificate, so member-to-member trust
/// never depends on the cluster certificate (which an operator may replace).
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
    member: ArcSwap<CertifiedKey>,
}

/// The server name members use when they dial each other.
pub const MEMBER_SNI: &str = "member.stapes.internal";

impl CertResolver {
    /// Serves `key` to everyone (the member's own certificate to members as well).
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        let key = Arc::new(key);
        Arc::new(CertResolver {
            current: ArcSwap::new(key.clone()),
            member: ArcSwap::new(key),
        })
    }

    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    /// DER of the leaf certificate now served.
    pub fn leaf_der(&self) -> Vec<u8> {
        self.current.load().cert[0].as_ref().to_vec()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.server_name() == Some(MEMBER_SNI) {
            return Some(self.member.load_full());
        }
        Some(self.current.load_full())
    }
}

/// Asks every client for a certificate, accepts any well-formed one, and leaves trust to
/// the per-request decision by fingerprint. The handshake signature is still verified,
/// which is what proves the client holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert;

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        trust::cert::inspect(end_entity.as_ref())
            .map(|_| ClientCertVerified::assertion())
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// The server side: TLS 1.3 only, ALPN h2 and http/1.1, optional client certificates.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyClientCert))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How a client decides whether to believe the server's certificate.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Only a certificate with this SHA-256 fingerprint (a pinned remote).
    Pinned(String),
    /// Any certificate; the caller reads [`PeerRecorder`] and decides (first contact).
    Record(Arc<PeerRecorder>),
}

/// Remembers the certificate a server presented, for first-contact prompts.
#[derive(Debug, Default)]
pub struct PeerRecorder {
    seen: std::sync::Mutex<Option<Vec<u8>>>,
}

impl PeerRecorder {
    pub fn seen_der(&self) -> Option<Vec<u8>> {
        self.seen.lock().ok().and_then(|g| g.clone())
    }
}

#[derive(Debug)]
struct ServerVerifier(ServerTrust);

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.0 {
            ServerTrust::Pinned(fp) => {
                let got = trust::fingerprint(end_entity.as_ref());
                if trust::constant_time_eq(got.as_bytes(), fp.as_bytes()) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ApplicationVerificationFailure,
                    ))
                }
            }
            ServerTrust::Record(rec) => {
                if let Ok(mut g) = rec.seen.lock() {
                    *g = Some(end_entity.as_ref().to_vec());
                }
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Whether a failed client handshake failed because the server presented a certificate
/// other than the pinned one ([`ServerTrust::Pinned`]), rather than for any other reason
/// (a reset, a protocol error, a refused client certificate).
pub fn is_pin_mismatch(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
            )
        })
}

/// The client side: the server is trusted by pin (names are not checked: every member
/// presents the one cluster certificate whatever address it is reached at), and the
/// client presents its own certificate when it has one.
pub fn client_config(
    server: ServerTrust,
    client_cert: Option<(&str, &str)>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier(server)));
    let mut config = match client_cert {
        Some((cert_pem, key_pem)) => {
            let key = certified_key(cert_pem, key_pem)?;
            let chain = key.cert.clone();
            let der = rustls_pemfile::private_key(&mut key_pem.as_bytes())
                .ok()
                .flatten()
                .ok_or(TlsError::BadKeyPem)?;
            builder.with_client_auth_cert(chain, der)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client that verifies the server the ordinary way: chained to one of the PEM
/// certificates in `roots_pem` (or being one of them, self-signed), for the host name or
/// IP address dialled, as [`crate::web`] does with the system bundle. No client
/// certificate. For a web service with a private CA (a test OpenID provider).
pub fn client_config_trusting(
    roots_pem: &str,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let bundle = rustls_pemfile::certs(&mut roots_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::BadCertificatePem)?;
    if bundle.is_empty() {
        return Err(TlsError::BadCertificatePem);
    }
    crate::bundle::BundleVerifier::new(bundle)?.client_config(alpn)
}

/// Server name for a dial; a placeholder when the host is not a valid name, since names
/// are not what trust rests on.
pub fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
        .unwrap_or_else(|_| ServerName::try_from("stapes").expect("literal name"))
}

pub use tokio_rustls::{client::TlsStream as ClientTlsStream, TlsAcceptor, TlsConnector};

#[cfg(test)]
mod tests {
    use super::*;

    /// One handshake over loopback: a server presenting `served`, a client pinning
    /// `pinned`'s fingerprint; the client's error, if any.
    async fn handshake(served: &trust::CertPair, pinned: &trust::CertPair) -> Option<std::io::Error> {
        let key = certified_key(&served.cert_pem, &served.key_pem).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(CertResolver::new(key)).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        });
        let der = pem_to_der(&pinned.cert_pem);
        let config = client_config(ServerTrust::Pinned(trust::fingerprint(&der)), None, &[b"h2"]).unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let result = TlsConnector::from(config)
            .connect(server_name("member"), tcp)
            .await;
        server.abort();
        result.err()
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        trust::cert::pem_to_der(pem).unwrap()
    }

    #[tokio::test]
    async fn a_pin_mismatch_is_told_apart() {
        install_default_provider();
        let a = trust::CertPair::generate_server("a").unwrap();
        let b = trust::CertPair::generate_server("b").unwrap();
        assert!(
            handshake(&a, &a).await.is_none(),
            "the pinned certificate is accepted"
        );
        let e = handshake(&a, &b).await.expect("another certificate is refused");
        assert!(is_pin_mismatch(&e), "{e}");
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!is_pin_mismatch(&other));
    }

    /// aws-lc-rs is the only crypto provider: a second one in the build would make
    /// rustls refuse to pick a default at run time. (`ring` appears in Cargo.lock as an
    /// optional dependency of rustls-webpki; what matters is that nothing builds it.)
    #[test]
    fn ring_is_not_in_the_build() {
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "tree",
                "--workspace",
                "--offline",
                "-e",
                "normal,build",
                "-i",
                "ring",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo tree runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "cargo tree failed: {stderr}");
        assert!(stdout.trim().is_empty(), "ring is built by:\n{stdout}");
    }
}
