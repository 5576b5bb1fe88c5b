//! The state machine: plain data and a pure `apply`.

use std::collections::{BTreeMap, VecDeque};

use api::types::{Certificate, Warning};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Command;

/// How many tokens of one kind (trust, join) may be pending at once: each is kept in
/// the replicated state until it is used, revoked or expires.
pub const MAX_PENDING_TOKENS: usize = 1000;

/// What a pending token is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TokenKind {
    /// `incus config trust add NAME`: lets a new client trust itself once.
    Trust {
        client_name: String,
        #[serde(default)]
        restricted: bool,
        #[serde(default)]
        projects: Vec<String>,
    },
    /// `incus cluster add NAME`: lets a new member join once, under that name.
    Join { server_name: String },
}

impl TokenKind {
    /// `trust` or `join`.
    pub fn name(&self) -> &'static str {
        match self {
            TokenKind::Trust { .. } => "trust",
            TokenKind::Join { .. } => "join",
        }
    }
}

/// How a token stopped being pending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spent {
    /// Redeemed: a client was trusted, or a member joined.
    Used,
    /// Removed by the leader once past its expiry.
    Expired,
    /// Deleted by an administrator (`revoke-token`).
    #[default]
    Revoked,
    /// A newer join token was issued for the same member name.
    Replaced,
}

/// What is remembered of a token that is no longer pending: enough to tell someone who
/// presents it again what became of it, and nothing that would make it usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpentToken {
    /// SHA-256 (hex) of its secret.
    pub digest: String,
    /// `trust` or `join`.
    pub kind: String,
    pub how: Spent,
}

/// How many spent tokens are remembered (the oldest are forgotten first).
pub const SPENT_REMEMBERED: usize = 256;

/// Why a presented token secret does not open anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No pending token has this secret, and none that was spent recently had it.
    Unknown,
    /// It was pending once and is no longer: how it ended.
    Spent(Spent),
}

/// A cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// The Raft node id.
    pub id: u64,
    /// `host:port` of its HTTPS listener (API and member traffic alike).
    pub address: String,
    /// Its own server certificate (PEM) and fingerprint: what it presents to members.
    pub certificate: String,
    pub fingerprint: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_failure_domain")]
    pub failure_domain: String,
    pub architecture: String,
}

impl Member {
    /// The trust-store entry for its own server certificate (`type: server`).
    pub fn server_certificate(&self) -> Certificate {
        Certificate {
            name: self.name.clone(),
            kind: "server".into(),
            restricted: false,
            projects: Vec::new(),
            certificate: self.certificate.clone(),
            description: String::new(),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

fn default_failure_domain() -> String {
    "default".into()
}

/// A pending token. It is also shown as a running `class: token` operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The operation id.
    pub id: String,
    pub kind: TokenKind,
    pub secret: String,
    /// The member that issued it (the operation's `location`).
    pub location: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// Why a command could not be applied. Deterministic: every member agrees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StateError {
    #[error("Certificate already in trust store")]
    CertificateExists,
    #[error("Certificate not found")]
    CertificateNotFound,
    #[error("Operation not found")]
    TokenNotFound,
    #[error("Warning not found")]
    WarningNotFound,
    #[error("The cluster already has a member named \"{0}\"")]
    MemberExists(String),
    #[error("Cluster member not found")]
    MemberNotFound,
    #[error("Too many pending {0} tokens (at most {MAX_PENDING_TOKENS}): revoke some, or let them expire")]
    TooManyTokens(String),
    #[error("{0}")]
    Invalid(String),
}

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Global configuration; unset keys are absent.
    pub config: BTreeMap<String, String>,
    /// The trust store, by fingerprint.
    pub certificates: BTreeMap<String, Certificate>,
    /// Pending tokens, by operation id.
    pub tokens: BTreeMap<String, Token>,
    /// Warnings, by uuid.
    pub warnings: BTreeMap<String, Warning>,
    /// Cluster members, by name. Empty while standalone.
    #[serde(default)]
    pub members: BTreeMap<String, Member>,
    /// The cluster certificate and key (PEM), once clustered.
    #[serde(default)]
    pub cluster_certificate: Option<(String, String)>,
    /// Pending ACME HTTP-01 answers, by token.
    #[serde(default)]
    pub acme_challenges: BTreeMap<String, String>,
    /// ACME account credentials (JSON).
    #[serde(default)]
    pub acme_account: Option<String>,
    /// The cluster-wide secret (hex) that browser-login state and cookies derive from.
    #[serde(default)]
    pub secret: Option<String>,
    /// The last [`SPENT_REMEMBERED`] tokens that stopped being pending, oldest first.
    #[serde(default)]
    pub spent: VecDeque<SpentToken>,
}

impl State {
    /// Applies one command; on error the state is unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), StateError> {
        match cmd {
            Command::SetConfig { changes } => {
                for (k, v) in changes {
                    if v.is_empty() {
                        self.config.remove(k);
                    } else {
                        self.config.insert(k.clone(), v.clone());
                    }
                }
            }
            Command::AddCertificate { certificate } => {
                if self.certificates.contains_key(&certificate.fingerprint) {
                    return Err(StateError::CertificateExists);
                }
                self.certificates
                    .insert(certificate.fingerprint.clone(), certificate.clone());
            }
            Command::UpdateCertificate {
                fingerprint,
                certificate,
            } => {
                if !self.certificates.contains_key(fingerprint) {
                    return Err(StateError::CertificateNotFound);
                }
                if fingerprint != &certificate.fingerprint
                    && self.certificates.contains_key(&certificate.fingerprint)
                {
                    return Err(StateError::CertificateExists);
                }
                self.certificates.remove(fingerprint);
                self.certificates
                    .insert(certificate.fingerprint.clone(), certificate.clone());
            }
            Command::DeleteCertificate { fingerprint } => {
                self.certificates
                    .remove(fingerprint)
                    .ok_or(StateError::CertificateNotFound)?;
            }
            Command::CreateToken { token } => {
                // A new join token for a name replaces the pending one, as in Incus.
                if let TokenKind::Join { server_name } = &token.kind {
                    let replaced: Vec<Token> = self
                        .tokens
                        .values()
                        .filter(|t| matches!(&t.kind, TokenKind::Join { server_name: n } if n == server_name))
                        .filter(|t| t.id != token.id)
                        .cloned()
                        .collect();
                    for old in replaced {
                        self.tokens.remove(&old.id);
                        self.remember(&old, Spent::Replaced);
                    }
                }
                let pending = self
                    .tokens
                    .values()
                    .filter(|t| t.kind.name() == token.kind.name())
                    .count();
                if pending >= MAX_PENDING_TOKENS && !self.tokens.contains_key(&token.id) {
                    return Err(StateError::TooManyTokens(token.kind.name().into()));
                }
                self.tokens.insert(token.id.clone(), token.clone());
            }
            Command::RedeemTrustToken {
                token_id,
                certificate,
            } => self.redeem(token_id, certificate, |kind| {
                matches!(kind, TokenKind::Trust { .. })
            })?,
            Command::RedeemJoinToken {
                token_id,
                certificate,
            } => self.redeem(token_id, certificate, |kind| {
                matches!(kind, TokenKind::Join { server_name }
                    if server_name == &certificate.name && certificate.kind == "server")
            })?,
            Command::DeleteToken { token_id, how } => {
                let token = self.tokens.remove(token_id).ok_or(StateError::TokenNotFound)?;
                self.remember(&token, *how);
            }
            Command::RecordWarning { warning } => {
                let existing = self
                    .warnings
                    .values_mut()
                    .find(|w| w.kind == warning.kind && w.location == warning.location);
                match existing {
                    Some(w) => {
                        w.count += 1;
                        w.last_seen_at = warning.last_seen_at;
                        w.last_message = warning.last_message.clone();
                        if w.status == "resolved" {
                            w.status = "new".into();
                        }
                    }
                    None => {
                        self.warnings.insert(warning.uuid.clone(), warning.clone());
                    }
                }
            }
            Command::UpdateWarningStatus { uuid, status } => {
                if !matches!(status.as_str(), "new" | "acknowledged" | "resolved") {
                    return Err(StateError::Invalid(format!("Invalid warning status {status:?}")));
                }
                self.warnings
                    .get_mut(uuid)
                    .ok_or(StateError::WarningNotFound)?
                    .status = status.clone();
            }
            Command::DeleteWarning { uuid } => {
                self.warnings.remove(uuid).ok_or(StateError::WarningNotFound)?;
            }
            Command::Restore { state } => *self = (**state).clone(),
            Command::AddMember { member, token_id } => {
                if self.members.contains_key(&member.name) {
                    return Err(StateError::MemberExists(member.name.clone()));
                }
                if self.members.values().any(|m| m.address == member.address) {
                    return Err(StateError::Invalid(format!(
                        "The address {} is already used by another member",
                        member.address
                    )));
                }
                if let Some(id) = token_id {
                    match self.tokens.get(id).map(|t| &t.kind) {
                        Some(TokenKind::Join { server_name }) if server_name == &member.name => {}
                        _ => return Err(StateError::TokenNotFound),
                    }
                    if let Some(token) = self.tokens.remove(id) {
                        self.remember(&token, Spent::Used);
                    }
                }
                self.certificates
                    .insert(member.fingerprint.clone(), member.server_certificate());
                self.members.insert(member.name.clone(), member.clone());
            }
            Command::UpdateMember {
                name,
                description,
                failure_domain,
            } => {
                let m = self.members.get_mut(name).ok_or(StateError::MemberNotFound)?;
                m.description = description.clone();
                m.failure_domain = failure_domain.clone();
            }
            Command::RenameMember { name, new_name } => {
                if self.members.contains_key(new_name) {
                    return Err(StateError::MemberExists(new_name.clone()));
                }
                let mut m = self.members.remove(name).ok_or(StateError::MemberNotFound)?;
                m.name = new_name.clone();
                if let Some(c) = self.certificates.get_mut(&m.fingerprint) {
                    c.name = new_name.clone();
                }
                self.members.insert(new_name.clone(), m);
            }
            Command::RemoveMember { name } => {
                let m = self.members.remove(name).ok_or(StateError::MemberNotFound)?;
                self.certificates.remove(&m.fingerprint);
            }
            Command::SetClusterCertificate { cert_pem, key_pem } => {
                self.cluster_certificate = Some((cert_pem.clone(), key_pem.clone()));
            }
            Command::SetAcmeChallenge {
                token,
                key_authorization,
            } => match key_authorization {
                Some(k) => {
                    self.acme_challenges.insert(token.clone(), k.clone());
                }
                None => {
                    self.acme_challenges.remove(token);
                }
            },
            Command::SetAcmeAccount { credentials } => self.acme_account = Some(credentials.clone()),
            Command::SetSecret { secret } => {
                if self.secret.is_none() {
                    self.secret = Some(secret.clone());
                }
            }
        }
        Ok(())
    }

    /// The type of the trusted certificate with this fingerprint.
    pub fn certificate_type(&self, fingerprint: &str) -> Option<String> {
        self.certificates.get(fingerprint).map(|c| c.kind.clone())
    }

    /// The member whose own server certificate has this fingerprint.
    pub fn member_by_fingerprint(&self, fingerprint: &str) -> Option<&Member> {
        self.members.values().find(|m| m.fingerprint == fingerprint)
    }

    pub fn member_by_id(&self, id: u64) -> Option<&Member> {
        self.members.values().find(|m| m.id == id)
    }

    /// Spends the pending token `token_id`, if `fits` its kind, and trusts `certificate`.
    fn redeem(
        &mut self,
        token_id: &str,
        certificate: &Certificate,
        fits: impl Fn(&TokenKind) -> bool,
    ) -> Result<(), StateError> {
        if !self.tokens.get(token_id).is_some_and(|t| fits(&t.kind)) {
            return Err(StateError::TokenNotFound);
        }
        if self.certificates.contains_key(&certificate.fingerprint) {
            return Err(StateError::CertificateExists);
        }
        if let Some(token) = self.tokens.remove(token_id) {
            self.remember(&token, Spent::Used);
        }
        self.certificates
            .insert(certificate.fingerprint.clone(), certificate.clone());
        Ok(())
    }

    /// Records how `token` stopped being pending, forgetting the oldest record beyond
    /// [`SPENT_REMEMBERED`].
    fn remember(&mut self, token: &Token, how: Spent) {
        self.spent.push_back(SpentToken {
            digest: trust::sha256_hex(token.secret.as_bytes()),
            kind: token.kind.name().into(),
            how,
        });
        while self.spent.len() > SPENT_REMEMBERED {
            self.spent.pop_front();
        }
    }

    /// The pending token of `kind` (`trust` or `join`) whose secret is `secret`,
    /// comparing every pending secret in constant time; else why there is none: expired,
    /// spent (and how, while remembered), or unknown.
    pub fn find_token(&self, kind: &str, secret: &str, now: OffsetDateTime) -> Result<&Token, TokenRefusal> {
        let mut found = None;
        for token in self.tokens.values() {
            let same = trust::constant_time_eq(token.secret.as_bytes(), secret.as_bytes());
            if same && token.kind.name() == kind {
                found = Some(token);
            }
        }
        if let Some(token) = found {
            return match token.expires_at {
                Some(at) if at <= now => Err(TokenRefusal::Spent(Spent::Expired)),
                _ => Ok(token),
            };
        }
        let digest = trust::sha256_hex(secret.as_bytes());
        self.spent
            .iter()
            .rev()
            .find(|s| s.kind == kind && s.digest == digest)
            .map_or(Err(TokenRefusal::Unknown), |s| Err(TokenRefusal::Spent(s.how)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(fp: &str) -> Certificate {
        Certificate {
            name: "c".into(),
            kind: "client".into(),
            restricted: false,
            projects: vec![],
            certificate: String::new(),
            description: String::new(),
            fingerprint: fp.into(),
        }
    }

    fn token(id: &str, secret: &str, expires_at: Option<OffsetDateTime>) -> Token {
        Token {
            id: id.into(),
            kind: TokenKind::Trust {
                client_name: "x".into(),
                restricted: false,
                projects: vec![],
            },
            secret: secret.into(),
            location: "none".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            expires_at,
        }
    }

    #[test]
    fn failed_command_changes_nothing() {
        let mut s = State::default();
        s.apply(&Command::AddCertificate {
            certificate: cert("a"),
        })
        .unwrap();
        let before = s.clone();
        assert_eq!(
            s.apply(&Command::AddCertificate {
                certificate: cert("a")
            }),
            Err(StateError::CertificateExists)
        );
        assert_eq!(s, before);
    }

    #[test]
    fn trust_token_redeems_once() {
        let mut s = State::default();
        s.apply(&Command::CreateToken {
            token: token("t1", "sec", None),
        })
        .unwrap();
        let now = OffsetDateTime::now_utc();
        assert_eq!(s.find_token("trust", "sec", now).unwrap().id, "t1");
        assert_eq!(
            s.find_token("trust", "sed", now).unwrap_err(),
            TokenRefusal::Unknown
        );
        assert_eq!(
            s.find_token("join", "sec", now).unwrap_err(),
            TokenRefusal::Unknown
        );
        let redeem = Command::RedeemTrustToken {
            token_id: "t1".into(),
            certificate: cert("f"),
        };
        s.apply(&redeem).unwrap();
        assert!(s.certificates.contains_key("f"));
        assert_eq!(s.apply(&redeem), Err(StateError::TokenNotFound));
        assert_eq!(
            s.find_token("trust", "sec", now).unwrap_err(),
            TokenRefusal::Spent(Spent::Used)
        );
    }

    #[test]
    fn pending_tokens_are_capped_per_kind() {
        let mut s = State::default();
        for i in 0..MAX_PENDING_TOKENS {
            s.apply(&Command::CreateToken {
                token: token(&format!("t{i}"), &format!("s{i}"), None),
            })
            .unwrap();
        }
        let before = s.clone();
        let one_more = Command::CreateToken {
            token: token("extra", "x", None),
        };
        assert_eq!(s.apply(&one_more), Err(StateError::TooManyTokens("trust".into())));
        assert_eq!(s, before);
        // Join tokens are counted apart.
        let mut join = token("j", "j", None);
        join.kind = TokenKind::Join {
            server_name: "node9".into(),
        };
        s.apply(&Command::CreateToken { token: join }).unwrap();
        // A spent one makes room.
        s.apply(&Command::DeleteToken {
            token_id: "t0".into(),
            how: Spent::Revoked,
        })
        .unwrap();
        s.apply(&one_more).unwrap();
    }

    #[test]
    fn expired_token_never_matches() {
        let mut s = State::default();
        let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        s.apply(&Command::CreateToken {
            token: token("t", "sec", Some(past)),
        })
        .unwrap();
        assert_eq!(
            s.find_token("trust", "sec", OffsetDateTime::now_utc())
                .unwrap_err(),
            TokenRefusal::Spent(Spent::Expired)
        );
    }

    fn join(id: &str, secret: &str, name: &str) -> Token {
        let mut t = token(id, secret, None);
        t.kind = TokenKind::Join {
            server_name: name.into(),
        };
        t
    }

    /// A token presented after it stopped being pending is told what became of it,
    /// for the last SPENT_REMEMBERED tokens.
    #[test]
    fn spent_tokens_are_remembered_by_digest() {
        let mut s = State::default();
        let now = OffsetDateTime::now_utc();
        s.apply(&Command::CreateToken {
            token: token("r", "revoked", None),
        })
        .unwrap();
        s.apply(&Command::DeleteToken {
            token_id: "r".into(),
            how: Spent::Revoked,
        })
        .unwrap();
        s.apply(&Command::CreateToken {
            token: token("e", "expired", None),
        })
        .unwrap();
        s.apply(&Command::DeleteToken {
            token_id: "e".into(),
            how: Spent::Expired,
        })
        .unwrap();
        s.apply(&Command::CreateToken {
            token: join("j1", "first", "node2"),
        })
        .unwrap();
        s.apply(&Command::CreateToken {
            token: join("j2", "second", "node2"),
        })
        .unwrap();
        assert_eq!(
            s.find_token("trust", "revoked", now).unwrap_err(),
            TokenRefusal::Spent(Spent::Revoked)
        );
        assert_eq!(
            s.find_token("trust", "expired", now).unwrap_err(),
            TokenRefusal::Spent(Spent::Expired)
        );
        assert_eq!(
            s.find_token("join", "first", now).unwrap_err(),
            TokenRefusal::Spent(Spent::Replaced)
        );
        assert_eq!(s.find_token("join", "second", now).unwrap().id, "j2");
        assert!(s
            .spent
            .iter()
            .all(|t| !t.digest.contains("revoked") && t.digest.len() == 64));
        for i in 0..SPENT_REMEMBERED {
            s.apply(&Command::CreateToken {
                token: token(&format!("t{i}"), &format!("s{i}"), None),
            })
            .unwrap();
            s.apply(&Command::DeleteToken {
                token_id: format!("t{i}"),
                how: Spent::Revoked,
            })
            .unwrap();
        }
        assert_eq!(s.spent.len(), SPENT_REMEMBERED);
        assert_eq!(
            s.find_token("trust", "revoked", now).unwrap_err(),
            TokenRefusal::Unknown,
            "forgotten"
        );
    }

    #[test]
    fn a_join_token_trusts_one_server_certificate_under_its_name() {
        let mut s = State::default();
        s.apply(&Command::CreateToken {
            token: join("j", "sec", "node2"),
        })
        .unwrap();
        let mut c = cert("f");
        c.kind = "server".into();
        c.name = "node3".into();
        let redeem = |c: &Certificate| Command::RedeemJoinToken {
            token_id: "j".into(),
            certificate: c.clone(),
        };
        assert_eq!(
            s.apply(&redeem(&c)),
            Err(StateError::TokenNotFound),
            "another name"
        );
        c.name = "node2".into();
        c.kind = "client".into();
        assert_eq!(
            s.apply(&redeem(&c)),
            Err(StateError::TokenNotFound),
            "another type"
        );
        c.kind = "server".into();
        s.apply(&redeem(&c)).unwrap();
        assert_eq!(s.certificate_type("f").as_deref(), Some("server"));
        assert!(s.tokens.is_empty());
        assert_eq!(s.apply(&redeem(&c)), Err(StateError::TokenNotFound), "spent");
    }

    #[test]
    fn empty_value_unsets_config() {
        let mut s = State::default();
        let set = |k: &str, v: &str| Command::SetConfig {
            changes: [(k.to_string(), v.to_string())].into(),
        };
        s.apply(&set("core.https_trusted_proxy", "127.0.0.1")).unwrap();
        s.apply(&set("core.https_trusted_proxy", "")).unwrap();
        assert!(s.config.is_empty());
    }
}
