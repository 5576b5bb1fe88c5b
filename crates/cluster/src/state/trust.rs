//! Trust: the trust store (certificates by fingerprint) and the credentials the cluster
//! holds as one: the certificate every member presents to clients, the ACME account and
//! its pending HTTP-01 answers, and the secret browser-login cookies derive from.
//!
//! Other domains change the trust store as part of their own commands, in one step with
//! their own change: a redeemed token trusts a client ([`trust_certificate`]), and a
//! member's own server certificate comes, is renamed and goes with the member.

use api::types::Certificate;
use serde::{Deserialize, Serialize};

use super::{State, StateError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TrustCommand {
    /// Adds a trusted certificate; fails if the fingerprint is already trusted.
    AddCertificate {
        certificate: Certificate,
    },
    /// Replaces the trusted certificate stored under `fingerprint`.
    UpdateCertificate {
        fingerprint: String,
        certificate: Certificate,
    },
    DeleteCertificate {
        fingerprint: String,
    },
    /// An HTTP-01 challenge answer every member serves (`None` removes it).
    SetAcmeChallenge {
        token: String,
        key_authorization: Option<String>,
    },
    /// The ACME account credentials (JSON), so any future leader reuses the account.
    SetAcmeAccount {
        credentials: String,
    },
    /// The certificate every member presents to clients, with its key (PEM).
    SetClusterCertificate {
        cert_pem: String,
        key_pem: String,
    },
    /// Sets the cluster-wide secret (hex) that keys browser-login cookies, unless one is
    /// set already: the first proposal wins, so racing members agree.
    SetSecret {
        secret: String,
    },
}

impl TrustCommand {
    pub fn name(&self) -> &'static str {
        match self {
            TrustCommand::AddCertificate { .. } => "add_certificate",
            TrustCommand::UpdateCertificate { .. } => "update_certificate",
            TrustCommand::DeleteCertificate { .. } => "delete_certificate",
            TrustCommand::SetAcmeChallenge { .. } => "set_acme_challenge",
            TrustCommand::SetAcmeAccount { .. } => "set_acme_account",
            TrustCommand::SetClusterCertificate { .. } => "set_cluster_certificate",
            TrustCommand::SetSecret { .. } => "set_secret",
        }
    }
}

pub(super) fn apply(state: &mut State, cmd: &TrustCommand) -> Result<(), StateError> {
    match cmd {
        TrustCommand::AddCertificate { certificate } => trust_certificate(state, certificate)?,
        TrustCommand::UpdateCertificate {
            fingerprint,
            certificate,
        } => {
            if !state.certificates.contains_key(fingerprint) {
                return Err(StateError::CertificateNotFound);
            }
            if fingerprint != &certificate.fingerprint
                && state.certificates.contains_key(&certificate.fingerprint)
            {
                return Err(StateError::CertificateExists);
            }
            state.certificates.remove(fingerprint);
            state
                .certificates
                .insert(certificate.fingerprint.clone(), certificate.clone());
        }
        TrustCommand::DeleteCertificate { fingerprint } => {
            state
                .certificates
                .remove(fingerprint)
                .ok_or(StateError::CertificateNotFound)?;
        }
        TrustCommand::SetClusterCertificate { cert_pem, key_pem } => {
            state.cluster_certificate = Some((cert_pem.clone(), key_pem.clone()));
        }
        TrustCommand::SetAcmeChallenge {
            token,
            key_authorization,
        } => match key_authorization {
            Some(k) => {
                state.acme_challenges.insert(token.clone(), k.clone());
            }
            None => {
                state.acme_challenges.remove(token);
            }
        },
        TrustCommand::SetAcmeAccount { credentials } => {
            state.acme_account = Some(credentials.clone());
        }
        TrustCommand::SetSecret { secret } => {
            if state.secret.is_none() {
                state.secret = Some(secret.clone());
            }
        }
    }
    Ok(())
}

/// Trusts `certificate`, unless its fingerprint is trusted already.
pub(super) fn trust_certificate(state: &mut State, certificate: &Certificate) -> Result<(), StateError> {
    if state.certificates.contains_key(&certificate.fingerprint) {
        return Err(StateError::CertificateExists);
    }
    state
        .certificates
        .insert(certificate.fingerprint.clone(), certificate.clone());
    Ok(())
}

impl State {
    /// The type of the trusted certificate with this fingerprint.
    pub fn certificate_type(&self, fingerprint: &str) -> Option<String> {
        self.certificates.get(fingerprint).map(|c| c.kind.clone())
    }
}
