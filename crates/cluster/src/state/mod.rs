//! The state machine: plain data and a pure `apply`, split by domain.
//!
//! ```text
//!   Command ──┬─ Config(ConfigCommand)   ─> config::apply    config
//!             ├─ Trust(TrustCommand)     ─> trust::apply     certificates, cluster_certificate,
//!             │                                              acme_*, secret
//!             ├─ Tokens(TokenCommand)    ─> tokens::apply    tokens, spent
//!             ├─ Members(MemberCommand)  ─> members::apply   members
//!             ├─ Warnings(WarningCommand)─> warnings::apply  warnings
//!             ├─ Pools(PoolCommand)      ─> pools::apply     pools
//!             ├─ Profiles(ProfileCommand)─> profiles::apply  profiles
//!             ├─ Images(ImageCommand)    ─> images::apply    images, image_aliases
//!             ├─ Instances(InstanceCommand) ─> instances::apply instances
//!             ├─ Snapshots(SnapshotCommand) ─> snapshots::apply snapshots
//!             └─ Restore { state }       ─> the whole state (the first entry of a cluster)
//! ```
//!
//! Each domain module owns its command enum, its `apply` and the queries about its part
//! of [`State`]; the fields stay on `State` itself, so readers write `state.members`
//! whatever the domain. A command of one domain writes only that domain's fields,
//! except for the steps it must take together with another, named in its module: a
//! redeemed token trusts a certificate, a member comes and goes with its server
//! certificate (and a removed member with its warnings and its parts of pools). Some
//! domains read another's fields to refuse a command (a profile's disk names a pool that
//! must exist; a pool used by a profile is not deleted), which writes nothing there.
//!
//! Invariants, checked by the property test below for random command sequences:
//! - `apply` is deterministic, and a command it refuses changes nothing;
//! - a snapshot (the state's serialized form) restores to the same state;
//! - an object that lives on a member refers to it by [`MemberId`], and the id names a
//!   current member (`None` means "this server, while standalone").
//!
//! Adding a domain: a module here with its
//! record types, a `XCommand` enum with `name()`, `apply(&mut State, &XCommand)` that
//! checks everything before it changes anything, its fields on `State` with
//! `#[serde(default)]`, a variant of [`Command`] and of its `name()`, and generators in
//! the property test. A record placed on a member stores a `MemberId`, checked with
//! `check_member`, and `members::apply` decides what becomes of it when its member is
//! removed.

mod config;
mod images;
mod instances;
mod members;
mod pools;
mod profiles;
#[cfg(test)]
mod proptests;
mod snapshots;
mod tokens;
mod trust;
mod warnings;

use std::collections::{BTreeMap, VecDeque};

use api::types::Certificate;
use serde::{Deserialize, Serialize};

pub use config::ConfigCommand;
pub use images::{AliasRecord, ImageCommand, ImageLookup, ImageRecord};
pub use instances::{
    autostart_order, root_pool_of, should_autostart, valid_instance_name, InstanceCommand, InstanceRecord,
    InstanceStatus, LAST_STATE, POWER_RUNNING, POWER_STOPPED,
};
pub use members::{Member, MemberCommand, MemberSettings, Scheduler};
pub use pools::{is_member_specific, Pool, PoolCommand, PoolPart, PoolStatus, MEMBER_SPECIFIC_KEYS};
pub use profiles::{Profile, ProfileCommand, DEFAULT_PROFILE, EVACUATE_KEY, EVACUATE_MODES};
pub use snapshots::{valid_snapshot_name, SnapshotCommand, SnapshotRecord};
pub use tokens::{
    Spent, SpentToken, Token, TokenCommand, TokenKind, TokenRefusal, MAX_PENDING_TOKENS, SPENT_REMEMBERED,
};
pub use trust::TrustCommand;
pub use warnings::{Warning, WarningCommand};

use crate::Command;

/// How the state refers to a member: its Raft node id, which never changes (its name
/// can).
pub type MemberId = u64;

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
    #[error("Storage pool not found")]
    PoolNotFound,
    #[error("Profile not found")]
    ProfileNotFound,
    #[error("The profile already exists")]
    ProfileExists,
    #[error("Image not found")]
    ImageNotFound,
    #[error("Image with same fingerprint already exists")]
    ImageExists,
    #[error("Image alias not found")]
    AliasNotFound,
    #[error("Alias \"{0}\" already exists")]
    AliasExists(String),
    #[error("Instance \"{0}\" already exists")]
    InstanceExists(String),
    #[error("Instance not found")]
    InstanceNotFound,
    #[error("{0}")]
    Invalid(String),
}

/// The replicated state. Fields are grouped by the domain that writes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    // config
    /// Global configuration; unset keys are absent.
    pub config: BTreeMap<String, String>,
    // trust
    /// The trust store, by fingerprint.
    pub certificates: BTreeMap<String, Certificate>,
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
    // tokens
    /// Pending tokens, by operation id.
    pub tokens: BTreeMap<String, Token>,
    /// The last [`SPENT_REMEMBERED`] tokens that stopped being pending, oldest first.
    #[serde(default)]
    pub spent: VecDeque<SpentToken>,
    // warnings
    /// Warnings, by uuid.
    pub warnings: BTreeMap<String, Warning>,
    // members
    /// Cluster members, by name. Empty while standalone.
    #[serde(default)]
    pub members: BTreeMap<String, Member>,
    /// Members' config and evacuation, by id (absent: the defaults).
    #[serde(default)]
    pub member_settings: BTreeMap<MemberId, MemberSettings>,
    // pools
    /// Storage pools, by name, each with its members' parts.
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    // profiles
    /// Profiles, by name; `default` only once changed (see [`State::profile`]).
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    // images
    /// Images, by fingerprint.
    #[serde(default)]
    pub images: BTreeMap<String, ImageRecord>,
    /// Image aliases, by name.
    #[serde(default)]
    pub image_aliases: BTreeMap<String, AliasRecord>,
    // instances
    /// Instances, by name: one name space for the whole cluster.
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceRecord>,
    // snapshots
    /// Instance snapshots: by instance, then by snapshot name.
    #[serde(default)]
    pub snapshots: BTreeMap<String, BTreeMap<String, SnapshotRecord>>,
}

impl State {
    /// Applies one command; on error the state is unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), StateError> {
        match cmd {
            Command::Config(c) => config::apply(self, c),
            Command::Trust(c) => trust::apply(self, c),
            Command::Tokens(c) => tokens::apply(self, c),
            Command::Members(c) => {
                members::apply(self, c)?;
                snapshots::follow_instances(self, None);
                Ok(())
            }
            Command::Warnings(c) => warnings::apply(self, c),
            Command::Pools(c) => pools::apply(self, c),
            Command::Profiles(c) => profiles::apply(self, c),
            Command::Images(c) => images::apply(self, c),
            Command::Instances(c) => {
                instances::apply(self, c)?;
                let renamed = match c {
                    InstanceCommand::Rename { name, new_name } => Some((name.as_str(), new_name.as_str())),
                    _ => None,
                };
                snapshots::follow_instances(self, renamed);
                Ok(())
            }
            Command::Snapshots(c) => snapshots::apply(self, c),
            Command::Restore { state } => {
                *self = (**state).clone();
                Ok(())
            }
        }
    }

    /// The name of the member `at` refers to, for rendering: `standalone` (this
    /// server's own name) for `None`, empty for a member that is gone.
    pub fn location_name(&self, at: Option<MemberId>, standalone: &str) -> String {
        match at {
            None => standalone.to_string(),
            Some(id) => self.member_by_id(id).map(|m| m.name.clone()).unwrap_or_default(),
        }
    }

    /// What a standalone server had becomes member `id`'s when it starts a cluster:
    /// tokens it issued and warnings recorded on it are placed on that member.
    pub fn adopt_standalone(&mut self, id: MemberId) {
        for t in self.tokens.values_mut() {
            t.location.get_or_insert(id);
        }
        for w in self.warnings.values_mut() {
            w.location.get_or_insert(id);
        }
        for part in self.pools.values_mut().flat_map(|p| p.parts.iter_mut()) {
            part.location.get_or_insert(id);
        }
        images::adopt_standalone(&mut self.images, id);
        for i in self.instances.values_mut() {
            i.location.get_or_insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn ap(s: &mut State, c: impl Into<Command>) -> Result<(), StateError> {
        s.apply(&c.into())
    }

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
            location: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            expires_at,
        }
    }

    #[test]
    fn failed_command_changes_nothing() {
        let mut s = State::default();
        ap(
            &mut s,
            TrustCommand::AddCertificate {
                certificate: cert("a"),
            },
        )
        .unwrap();
        let before = s.clone();
        assert_eq!(
            ap(
                &mut s,
                TrustCommand::AddCertificate {
                    certificate: cert("a")
                }
            ),
            Err(StateError::CertificateExists)
        );
        assert_eq!(s, before);
    }

    #[test]
    fn trust_token_redeems_once() {
        let mut s = State::default();
        ap(
            &mut s,
            TokenCommand::CreateToken {
                token: token("t1", "sec", None),
            },
        )
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
        let redeem = TokenCommand::RedeemTrustToken {
            token_id: "t1".into(),
            certificate: cert("f"),
        };
        ap(&mut s, redeem.clone()).unwrap();
        assert!(s.certificates.contains_key("f"));
        assert_eq!(ap(&mut s, redeem.clone()), Err(StateError::TokenNotFound));
        assert_eq!(
            s.find_token("trust", "sec", now).unwrap_err(),
            TokenRefusal::Spent(Spent::Used)
        );
    }

    #[test]
    fn pending_tokens_are_capped_per_kind() {
        let mut s = State::default();
        for i in 0..MAX_PENDING_TOKENS {
            ap(
                &mut s,
                TokenCommand::CreateToken {
                    token: token(&format!("t{i}"), &format!("s{i}"), None),
                },
            )
            .unwrap();
        }
        let before = s.clone();
        let one_more = TokenCommand::CreateToken {
            token: token("extra", "x", None),
        };
        assert_eq!(
            ap(&mut s, one_more.clone()),
            Err(StateError::TooManyTokens("trust".into()))
        );
        assert_eq!(s, before);
        // Join tokens are counted apart.
        let mut join = token("j", "j", None);
        join.kind = TokenKind::Join {
            server_name: "node9".into(),
        };
        ap(&mut s, TokenCommand::CreateToken { token: join }).unwrap();
        // A spent one makes room.
        ap(
            &mut s,
            TokenCommand::DeleteToken {
                token_id: "t0".into(),
                how: Spent::Revoked,
            },
        )
        .unwrap();
        ap(&mut s, one_more.clone()).unwrap();
    }

    #[test]
    fn expired_token_never_matches() {
        let mut s = State::default();
        let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        ap(
            &mut s,
            TokenCommand::CreateToken {
                token: token("t", "sec", Some(past)),
            },
        )
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
        ap(
            &mut s,
            TokenCommand::CreateToken {
                token: token("r", "revoked", None),
            },
        )
        .unwrap();
        ap(
            &mut s,
            TokenCommand::DeleteToken {
                token_id: "r".into(),
                how: Spent::Revoked,
            },
        )
        .unwrap();
        ap(
            &mut s,
            TokenCommand::CreateToken {
                token: token("e", "expired", None),
            },
        )
        .unwrap();
        ap(
            &mut s,
            TokenCommand::DeleteToken {
                token_id: "e".into(),
                how: Spent::Expired,
            },
        )
        .unwrap();
        ap(
            &mut s,
            TokenCommand::CreateToken {
                token: join("j1", "first", "node2"),
            },
        )
        .unwrap();
        ap(
            &mut s,
            TokenCommand::CreateToken {
                token: join("j2", "second", "node2"),
            },
        )
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
            ap(
                &mut s,
                TokenCommand::CreateToken {
                    token: token(&format!("t{i}"), &format!("s{i}"), None),
                },
            )
            .unwrap();
            ap(
                &mut s,
                TokenCommand::DeleteToken {
                    token_id: format!("t{i}"),
                    how: Spent::Revoked,
                },
            )
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
        ap(
            &mut s,
            TokenCommand::CreateToken {
                token: join("j", "sec", "node2"),
            },
        )
        .unwrap();
        let mut c = cert("f");
        c.kind = "server".into();
        c.name = "node3".into();
        let redeem = |c: &Certificate| TokenCommand::RedeemJoinToken {
            token_id: "j".into(),
            certificate: c.clone(),
        };
        assert_eq!(
            ap(&mut s, redeem(&c)),
            Err(StateError::TokenNotFound),
            "another name"
        );
        c.name = "node2".into();
        c.kind = "client".into();
        assert_eq!(
            ap(&mut s, redeem(&c)),
            Err(StateError::TokenNotFound),
            "another type"
        );
        c.kind = "server".into();
        ap(&mut s, redeem(&c)).unwrap();
        assert_eq!(s.certificate_type("f").as_deref(), Some("server"));
        assert!(s.tokens.is_empty());
        assert_eq!(ap(&mut s, redeem(&c)), Err(StateError::TokenNotFound), "spent");
    }

    #[test]
    fn empty_value_unsets_config() {
        let mut s = State::default();
        let set = |k: &str, v: &str| ConfigCommand::SetConfig {
            changes: [(k.to_string(), v.to_string())].into(),
        };
        ap(&mut s, set("core.https_trusted_proxy", "127.0.0.1")).unwrap();
        ap(&mut s, set("core.https_trusted_proxy", "")).unwrap();
        assert!(s.config.is_empty());
    }
}
