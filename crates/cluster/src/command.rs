//! The commands that change cluster state, grouped by the domain that applies them
//! (see [`crate::state`]).

use serde::{Deserialize, Serialize};

use crate::state::{
    ConfigCommand, ImageCommand, InstanceCommand, MemberCommand, PoolCommand, ProfileCommand,
    SnapshotCommand, State, TokenCommand, TrustCommand, WarningCommand,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Config(ConfigCommand),
    Trust(TrustCommand),
    Tokens(TokenCommand),
    Members(MemberCommand),
    Warnings(WarningCommand),
    Pools(PoolCommand),
    Profiles(ProfileCommand),
    Images(ImageCommand),
    Instances(InstanceCommand),
    Snapshots(SnapshotCommand),
    /// The first entry of a new cluster: the state the member had while standalone.
    Restore {
        state: Box<State>,
    },
}

impl Command {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Config(c) => c.name(),
            Command::Trust(c) => c.name(),
            Command::Tokens(c) => c.name(),
            Command::Members(c) => c.name(),
            Command::Warnings(c) => c.name(),
            Command::Pools(c) => c.name(),
            Command::Profiles(c) => c.name(),
            Command::Images(c) => c.name(),
            Command::Instances(c) => c.name(),
            Command::Snapshots(c) => c.name(),
            Command::Restore { .. } => "restore",
        }
    }
}

macro_rules! domain {
    ($($variant:ident($ty:ty)),*) => {$(
        impl From<$ty> for Command {
            fn from(c: $ty) -> Command {
                Command::$variant(c)
            }
        }
    )*};
}
domain!(
    Config(ConfigCommand),
    Trust(TrustCommand),
    Tokens(TokenCommand),
    Members(MemberCommand),
    Warnings(WarningCommand),
    Pools(PoolCommand),
    Profiles(ProfileCommand),
    Images(ImageCommand),
    Instances(InstanceCommand),
    Snapshots(SnapshotCommand)
);
