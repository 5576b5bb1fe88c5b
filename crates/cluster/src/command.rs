//! The commands that change cluster state.

use std::collections::BTreeMap;

use api::types::{Certificate, Warning};
use serde::{Deserialize, Serialize};

use crate::state::{Member, Spent, State, Token};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Sets global configuration keys; an empty value unsets the key.
    SetConfig {
        changes: BTreeMap<String, String>,
    },
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
    CreateToken {
        token: Token,
    },
    /// Consumes a trust token and trusts `certificate` in one step, so a token is spent
    /// exactly once even when two members race to redeem it.
    RedeemTrustToken {
        token_id: String,
        certificate: Certificate,
    },
    /// Consumes a join token and trusts `certificate` (type `server`, named as the
    /// token's member) in one step: the first half of an interactive join, after which
    /// the new member joins by that certificate.
    RedeemJoinToken {
        token_id: String,
        certificate: Certificate,
    },
    /// Removes a pending token, remembering how it ended.
    DeleteToken {
        token_id: String,
        #[serde(default)]
        how: Spent,
    },
    /// Records a warning, or bumps the count of the one with the same type and location.
    RecordWarning {
        warning: Warning,
    },
    UpdateWarningStatus {
        uuid: String,
        status: String,
    },
    DeleteWarning {
        uuid: String,
    },
    /// The first entry of a new cluster: the state the member had while standalone.
    Restore {
        state: Box<State>,
    },
    /// Makes a member part of the cluster, spending its join token when it has one.
    AddMember {
        member: Member,
        token_id: Option<String>,
    },
    /// Edits a member's description and failure domain.
    UpdateMember {
        name: String,
        description: String,
        failure_domain: String,
    },
    RenameMember {
        name: String,
        new_name: String,
    },
    RemoveMember {
        name: String,
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

impl Command {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::SetConfig { .. } => "set_config",
            Command::AddCertificate { .. } => "add_certificate",
            Command::UpdateCertificate { .. } => "update_certificate",
            Command::DeleteCertificate { .. } => "delete_certificate",
            Command::CreateToken { .. } => "create_token",
            Command::RedeemTrustToken { .. } => "redeem_trust_token",
            Command::RedeemJoinToken { .. } => "redeem_join_token",
            Command::DeleteToken { .. } => "delete_token",
            Command::RecordWarning { .. } => "record_warning",
            Command::UpdateWarningStatus { .. } => "update_warning_status",
            Command::DeleteWarning { .. } => "delete_warning",
            Command::Restore { .. } => "restore",
            Command::AddMember { .. } => "add_member",
            Command::UpdateMember { .. } => "update_member",
            Command::RenameMember { .. } => "rename_member",
            Command::RemoveMember { .. } => "remove_member",
            Command::SetClusterCertificate { .. } => "set_cluster_certificate",
            Command::SetSecret { .. } => "set_secret",
            Command::SetAcmeChallenge { .. } => "set_acme_challenge",
            Command::SetAcmeAccount { .. } => "set_acme_account",
        }
    }
}
