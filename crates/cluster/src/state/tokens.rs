//! Tokens: pending trust and join tokens (each shown as a running `class: token`
//! operation), and a bounded memory of the ones that stopped being pending, so a holder
//! of a spent secret can be told what became of it.
//!
//! Redeeming a token and trusting the certificate it was redeemed for is one command:
//! a token is spent exactly once even when two members race to redeem it.

use api::types::Certificate;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{trust, MemberId, State, StateError};

/// How many tokens of one kind (trust, join) may be pending at once: each is kept in
/// the replicated state until it is used, revoked or expires.
pub const MAX_PENDING_TOKENS: usize = 1000;

/// How many spent tokens are remembered (the oldest are forgotten first).
pub const SPENT_REMEMBERED: usize = 256;

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
    /// `incus cluster add NAME`: lets a new member join once, under that name. The name
    /// is the one the member will have, not a reference to an existing member.
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

/// Why a presented token secret does not open anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No pending token has this secret, and none that was spent recently had it.
    Unknown,
    /// It was pending once and is no longer: how it ended.
    Spent(Spent),
}

/// A pending token. It is also shown as a running `class: token` operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The operation id.
    pub id: String,
    pub kind: TokenKind,
    pub secret: String,
    /// The member that issued it (the operation's `location`), by id; `None` when it
    /// was issued while standalone.
    #[serde(default)]
    pub location: Option<MemberId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TokenCommand {
    /// Adds a pending token; a join token replaces a pending one for the same name.
    CreateToken { token: Token },
    /// Consumes a trust token and trusts `certificate` in one step.
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
}

impl TokenCommand {
    pub fn name(&self) -> &'static str {
        match self {
            TokenCommand::CreateToken { .. } => "create_token",
            TokenCommand::RedeemTrustToken { .. } => "redeem_trust_token",
            TokenCommand::RedeemJoinToken { .. } => "redeem_join_token",
            TokenCommand::DeleteToken { .. } => "delete_token",
        }
    }
}

pub(super) fn apply(state: &mut State, cmd: &TokenCommand) -> Result<(), StateError> {
    match cmd {
        TokenCommand::CreateToken { token } => create(state, token)?,
        TokenCommand::RedeemTrustToken {
            token_id,
            certificate,
        } => redeem(state, token_id, certificate, |kind| {
            matches!(kind, TokenKind::Trust { .. })
        })?,
        TokenCommand::RedeemJoinToken {
            token_id,
            certificate,
        } => redeem(state, token_id, certificate, |kind| {
            matches!(kind, TokenKind::Join { server_name }
                if server_name == &certificate.name && certificate.kind == "server")
        })?,
        TokenCommand::DeleteToken { token_id, how } => {
            let token = state.tokens.remove(token_id).ok_or(StateError::TokenNotFound)?;
            remember(state, &token, *how);
        }
    }
    Ok(())
}

/// A new join token for a name replaces the pending one, as in Incus; each kind has at
/// most [`MAX_PENDING_TOKENS`] pending. Checked before anything changes.
fn create(state: &mut State, token: &Token) -> Result<(), StateError> {
    state.check_member(token.location)?;
    let replaced: Vec<String> = match &token.kind {
        TokenKind::Join { server_name } => state
            .tokens
            .values()
            .filter(|t| matches!(&t.kind, TokenKind::Join { server_name: n } if n == server_name))
            .filter(|t| t.id != token.id)
            .map(|t| t.id.clone())
            .collect(),
        TokenKind::Trust { .. } => Vec::new(),
    };
    let pending = state
        .tokens
        .values()
        .filter(|t| t.kind.name() == token.kind.name())
        .count()
        - replaced.len();
    if pending >= MAX_PENDING_TOKENS && !state.tokens.contains_key(&token.id) {
        return Err(StateError::TooManyTokens(token.kind.name().into()));
    }
    for id in replaced {
        if let Some(old) = state.tokens.remove(&id) {
            remember(state, &old, Spent::Replaced);
        }
    }
    state.tokens.insert(token.id.clone(), token.clone());
    Ok(())
}

/// Spends the pending token `token_id`, if `fits` its kind, and trusts `certificate`.
fn redeem(
    state: &mut State,
    token_id: &str,
    certificate: &Certificate,
    fits: impl Fn(&TokenKind) -> bool,
) -> Result<(), StateError> {
    if !state.tokens.get(token_id).is_some_and(|t| fits(&t.kind)) {
        return Err(StateError::TokenNotFound);
    }
    trust::trust_certificate(state, certificate)?;
    spend(state, token_id, Spent::Used);
    Ok(())
}

/// Removes the pending token `token_id`, if there is one, remembering how it ended.
pub(super) fn spend(state: &mut State, token_id: &str, how: Spent) {
    if let Some(token) = state.tokens.remove(token_id) {
        remember(state, &token, how);
    }
}

/// Records how `token` stopped being pending, forgetting the oldest record beyond
/// [`SPENT_REMEMBERED`].
fn remember(state: &mut State, token: &Token, how: Spent) {
    state.spent.push_back(SpentToken {
        digest: ::trust::sha256_hex(token.secret.as_bytes()),
        kind: token.kind.name().into(),
        how,
    });
    while state.spent.len() > SPENT_REMEMBERED {
        state.spent.pop_front();
    }
}

impl State {
    /// The pending token of `kind` (`trust` or `join`) whose secret is `secret`,
    /// comparing every pending secret in constant time; else why there is none: expired,
    /// spent (and how, while remembered), or unknown.
    pub fn find_token(&self, kind: &str, secret: &str, now: OffsetDateTime) -> Result<&Token, TokenRefusal> {
        let mut found = None;
        for token in self.tokens.values() {
            let same = ::trust::constant_time_eq(token.secret.as_bytes(), secret.as_bytes());
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
        let digest = ::trust::sha256_hex(secret.as_bytes());
        self.spent
            .iter()
            .rev()
            .find(|s| s.kind == kind && s.digest == digest)
            .map_or(Err(TokenRefusal::Unknown), |s| Err(TokenRefusal::Spent(s.how)))
    }
}
