//! Certificates: the fingerprint Incus uses, generation of server and client
//! certificates, and parsing PEM into what the API and the CLI show.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType, PKCS_ECDSA_P384_SHA384};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("Certificate must be base64 encoded PEM certificate")]
    NotPem,
    #[error("Invalid certificate: {0}")]
    Invalid(String),
    #[error("Certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The lowercase hex SHA-256 of a certificate's DER: Incus's fingerprint.
pub fn fingerprint(der: &[u8]) -> String {
    sha256_hex(der)
}

/// Lowercase hex SHA-256 of any bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertPair {
    /// A self-signed ECDSA P-384 server certificate valid for ten years, for the host
    /// name, 127.0.0.1 and ::1.
    pub fn generate_server(hostname: &str) -> Result<CertPair, CertError> {
        let mut sans = vec![
            SanType::IpAddress("127.0.0.1".parse().expect("literal")),
            SanType::IpAddress("::1".parse().expect("literal")),
        ];
        if let Ok(dns) = hostname.to_string().try_into() {
            sans.insert(0, SanType::DnsName(dns));
        }
        Self::generate(&format!("root@{hostname}"), sans, Duration::days(3650))
    }

    /// A self-signed ECDSA P-384 client certificate valid for ten years.
    pub fn generate_client(common_name: &str) -> Result<CertPair, CertError> {
        Self::generate(common_name, Vec::new(), Duration::days(3650))
    }

    /// A self-signed certificate valid from `not_before` to `not_after` for the given IP
    /// addresses: for a cluster certificate supplied by an operator, or an expired one
    /// in tests.
    pub fn generate_valid(
        cn: &str,
        ips: &[std::net::IpAddr],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertPair, CertError> {
        let sans = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        Self::build(cn, sans, not_before, not_after)
    }

    /// As [`CertPair::generate_valid`], for DNS names.
    pub fn generate_named(
        cn: &str,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertPair, CertError> {
        let sans = names
            .iter()
            .filter_map(|n| n.to_string().try_into().ok().map(SanType::DnsName))
            .collect();
        Self::build(cn, sans, not_before, not_after)
    }

    fn generate(cn: &str, sans: Vec<SanType>, validity: Duration) -> Result<CertPair, CertError> {
        let now = OffsetDateTime::now_utc();
        Self::build(cn, sans, now - Duration::minutes(5), now + validity)
    }

    fn build(
        cn: &str,
        sans: Vec<SanType>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertPair, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "stapes");
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Decodes the first `CERTIFICATE` block of a PEM text into DER.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, CertError> {
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.trim_start().as_bytes()).map_err(|_| CertError::NotPem)?;
    if parsed.label != "CERTIFICATE" {
        return Err(CertError::NotPem);
    }
    Ok(parsed.contents)
}

/// Encodes DER as a PEM `CERTIFICATE` block with 64-column lines.
pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The DNS names in a certificate's subject alternative names, lowercase.
pub fn dns_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// What the API and CLI show of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub fingerprint: String,
    pub common_name: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// A certificate outside its validity period, with the date (RFC 3339) it is out by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutOfDate {
    NotYetValid(String),
    Expired(String),
}

/// Whether `now` is outside `not_before..=not_after`.
pub fn out_of_date(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Option<OutOfDate> {
    let date = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    if now < not_before {
        Some(OutOfDate::NotYetValid(date(not_before)))
    } else if now > not_after {
        Some(OutOfDate::Expired(date(not_after)))
    } else {
        None
    }
}

/// Why a certificate cannot be used at `now`, in words.
pub fn outside_validity(info: &CertInfo, now: OffsetDateTime) -> Option<String> {
    out_of_date(info.not_before, info.not_after, now).map(|o| match o {
        OutOfDate::NotYetValid(d) => format!("Certificate is not valid before {d}"),
        OutOfDate::Expired(d) => format!("Certificate has expired (on {d})"),
    })
}

/// Parses DER, checking it is a well-formed X.509 certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, CertError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Invalid(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Invalid("trailing bytes after the certificate".into()));
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(CertInfo {
        fingerprint: fingerprint(der),
        common_name,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// Whether a certificate may authenticate a TLS server: it has no extended key usage
/// (no restriction), or its extended key usage allows server authentication.
pub fn allows_server_auth(der: &[u8]) -> Result<bool, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Invalid(e.to_string()))?;
    match cert.extended_key_usage() {
        Ok(None) => Ok(true),
        Ok(Some(eku)) => Ok(eku.value.server_auth || eku.value.any),
        Err(e) => Err(CertError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_server_cert_round_trips() {
        let pair = CertPair::generate_server("node1").unwrap();
        let der = pem_to_der(&pair.cert_pem).unwrap();
        let info = inspect(&der).unwrap();
        assert_eq!(info.common_name, "root@node1");
        assert_eq!(info.fingerprint.len(), 64);
        assert!(info.not_after - info.not_before > Duration::days(3000));
        assert_eq!(der_to_pem(&der), pair.cert_pem.replace("\r\n", "\n"));
    }

    #[test]
    fn garbage_is_not_pem() {
        assert!(matches!(pem_to_der("hello"), Err(CertError::NotPem)));
        assert!(inspect(b"\x30\x03\x02\x01\x01").is_err());
    }
}
