//! Cluster state: typed commands applied to a deterministic state machine, kept on disk
//! crash-safely.
//!
//! ```text
//!   handler ──Command──> Store::apply ──append to log (fsync)──> StateMachine::apply
//!                                                         └──> publish Arc<State> (readers)
//! ```
//!
//! Every change of shared state is a [`Command`], grouped by domain (trust, tokens,
//! members, config, warnings, pools, profiles, images, instances; see [`state`]). [`state::State::apply`] is pure and
//! deterministic: the same commands in the same order give the same state on every
//! member, which is what lets a consensus log replicate it. The store keeps a log of
//! applied commands plus a snapshot, like a Raft log, so a crash at any point replays to
//! the last acknowledged write.
//!
//! Architecture invariant: handlers never mutate state in place; they send commands and
//! read published snapshots (`Arc<State>`).

pub mod command;
pub mod placement;
pub mod raft;
pub mod state;
pub mod store;

pub use command::Command;
pub use state::{autostart_order, should_autostart, MemberSettings, Scheduler};
pub use state::{
    AliasRecord, ConfigCommand, ImageCommand, ImageLookup, ImageRecord, InstanceCommand, InstanceRecord,
    InstanceStatus, Member, MemberCommand, MemberId, Pool, PoolCommand, PoolPart, PoolStatus, Profile,
    ProfileCommand, SnapshotCommand, SnapshotRecord, Spent, State, StateError, Token, TokenCommand,
    TokenKind, TokenRefusal, TrustCommand, Warning, WarningCommand, DEFAULT_PROFILE,
};
pub use store::{LeaderReply, LeaderRequest, MemberIdentity, Store, StoreError};
