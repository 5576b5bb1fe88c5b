//! Warnings: problems a member reports (`/1.0/warnings`), one record per type and
//! member, its count bumped when the problem recurs.
//!
//! The record names its member by id; [`Warning::render`] gives the API shape, with the
//! member's name as it is when rendered.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{MemberId, State, StateError};

/// A warning as replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    pub uuid: String,
    /// `new`, `acknowledged` or `resolved`.
    pub status: String,
    /// The member it was recorded on; `None` when recorded while standalone.
    #[serde(default)]
    pub location: Option<MemberId>,
    pub project: String,
    /// The warning type, e.g. "Cluster certificate renewal failed".
    pub kind: String,
    pub count: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    pub last_message: String,
    pub severity: String,
    pub entity_url: String,
}

impl Warning {
    /// The API object, at `location` (the name of the member it was recorded on).
    pub fn render(&self, location: String) -> api::types::Warning {
        api::types::Warning {
            status: self.status.clone(),
            uuid: self.uuid.clone(),
            location,
            project: self.project.clone(),
            kind: self.kind.clone(),
            count: self.count,
            first_seen_at: self.first_seen_at,
            last_seen_at: self.last_seen_at,
            last_message: self.last_message.clone(),
            severity: self.severity.clone(),
            entity_url: self.entity_url.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WarningCommand {
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
}

impl WarningCommand {
    pub fn name(&self) -> &'static str {
        match self {
            WarningCommand::RecordWarning { .. } => "record_warning",
            WarningCommand::UpdateWarningStatus { .. } => "update_warning_status",
            WarningCommand::DeleteWarning { .. } => "delete_warning",
        }
    }
}

pub(super) fn apply(state: &mut State, cmd: &WarningCommand) -> Result<(), StateError> {
    match cmd {
        WarningCommand::RecordWarning { warning } => {
            state.check_member(warning.location)?;
            let existing = state
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
                    state.warnings.insert(warning.uuid.clone(), warning.clone());
                }
            }
        }
        WarningCommand::UpdateWarningStatus { uuid, status } => {
            if !matches!(status.as_str(), "new" | "acknowledged" | "resolved") {
                return Err(StateError::Invalid(format!("Invalid warning status {status:?}")));
            }
            state
                .warnings
                .get_mut(uuid)
                .ok_or(StateError::WarningNotFound)?
                .status = status.clone();
        }
        WarningCommand::DeleteWarning { uuid } => {
            state.warnings.remove(uuid).ok_or(StateError::WarningNotFound)?;
        }
    }
    Ok(())
}
