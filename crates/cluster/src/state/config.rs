//! Global configuration: the cluster-wide keys (`Scope::Global` in `api::config::KEYS`).
//! Member-local keys are not replicated; they live in the store's local map.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{State, StateError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ConfigCommand {
    /// Sets global configuration keys; an empty value unsets the key. Values were
    /// checked against the key table before the command was made.
    SetConfig { changes: BTreeMap<String, String> },
}

impl ConfigCommand {
    pub fn name(&self) -> &'static str {
        match self {
            ConfigCommand::SetConfig { .. } => "set_config",
        }
    }
}

pub(super) fn apply(state: &mut State, cmd: &ConfigCommand) -> Result<(), StateError> {
    match cmd {
        ConfigCommand::SetConfig { changes } => {
            for (k, v) in changes {
                if v.is_empty() {
                    state.config.remove(k);
                } else {
                    state.config.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Ok(())
}
