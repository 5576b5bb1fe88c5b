//! Instance snapshots: records replicated with their instance.
//!
//! A snapshot is a frozen copy of its instance's record (config, devices, profiles)
//! taken with a copy of its volume on the instance's member
//! (`containers-snapshots/<instance>/<snapshot>`, as Incus's `dir` driver). The record is
//! the cluster's, so any member can list and show snapshots and name the member that
//! holds their files; the files are the owner's.
//!
//! The record is written only once the files are whole (the owner copies first, then
//! commits), so a snapshot that is listed can be restored. Names are checked here, in
//! `apply`, as Incus checks them (`validate.IsAPIName`: no `/`, no white space, at most
//! 64 characters, alphanumeric at both ends), so two snapshots of one name made through
//! two members at once give one snapshot and one refusal.
//!
//! Steps taken with another domain: an instance's snapshots go with it when it is
//! deleted (or its member removed by force) and follow it when it is renamed
//! ([`follow_instances`], called after every instance or member command).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{State, StateError};

/// One snapshot of an instance, as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Its own name (`s1`, not `c1/s1`).
    pub name: String,
    pub architecture: String,
    pub description: String,
    /// The instance's own config when the snapshot was taken.
    pub config: BTreeMap<String, String>,
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
    pub profiles: Vec<String>,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default)]
    pub stateful: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the owner deletes it; `None`: never.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SnapshotCommand {
    /// Records a snapshot whose files exist; refused if the name is taken or invalid.
    Create {
        instance: String,
        snapshot: Box<SnapshotRecord>,
    },
    Rename {
        instance: String,
        name: String,
        new_name: String,
    },
    SetExpiry {
        instance: String,
        name: String,
        #[serde(default, with = "time::serde::rfc3339::option")]
        expires_at: Option<OffsetDateTime>,
    },
    Delete {
        instance: String,
        name: String,
    },
}

impl SnapshotCommand {
    pub fn name(&self) -> &'static str {
        match self {
            SnapshotCommand::Create { .. } => "create_snapshot",
            SnapshotCommand::Rename { .. } => "rename_snapshot",
            SnapshotCommand::SetExpiry { .. } => "set_snapshot_expiry",
            SnapshotCommand::Delete { .. } => "delete_snapshot",
        }
    }
}

/// Incus's snapshot name rule (`validate.IsAPIName` without slashes), with its
/// message.
pub fn valid_snapshot_name(name: &str) -> Result<(), String> {
    let why = if name.is_empty() {
        "No name provided".to_string()
    } else if name.len() > 64 {
        "Maximum name length is 64 characters".to_string()
    } else if name.chars().any(char::is_whitespace) {
        "Name cannot contain white space".to_string()
    } else if let Some(c) = ['$', '?', '&', '+', '"', '\'', '`', '*', '/']
        .into_iter()
        .find(|c| name.contains(*c))
    {
        format!("Name contains invalid character {:?}", c.to_string())
    } else if name == ".." || name == "." {
        "Invalid name".to_string()
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        "Names must start and end with an alphanumeric character".to_string()
    } else {
        return Ok(());
    };
    Err(format!("Invalid snapshot name: {why}"))
}

fn snapshot_taken(instance: &str, name: &str) -> StateError {
    StateError::Invalid(format!("Name '{instance}/{name}' already in use"))
}

fn not_found() -> StateError {
    StateError::Invalid("Snapshot not found".into())
}

pub(super) fn apply(state: &mut State, cmd: &SnapshotCommand) -> Result<(), StateError> {
    match cmd {
        SnapshotCommand::Create { instance, snapshot } => {
            if !state.instances.contains_key(instance) {
                return Err(StateError::InstanceNotFound);
            }
            valid_snapshot_name(&snapshot.name).map_err(StateError::Invalid)?;
            let snaps = state.snapshots.entry(instance.clone()).or_default();
            if snaps.contains_key(&snapshot.name) {
                return Err(snapshot_taken(instance, &snapshot.name));
            }
            snaps.insert(snapshot.name.clone(), (**snapshot).clone());
        }
        SnapshotCommand::Rename {
            instance,
            name,
            new_name,
        } => {
            valid_snapshot_name(new_name).map_err(StateError::Invalid)?;
            let snaps = state.snapshots.get_mut(instance).ok_or_else(not_found)?;
            if !snaps.contains_key(name) {
                return Err(not_found());
            }
            if snaps.contains_key(new_name) {
                return Err(snapshot_taken(instance, new_name));
            }
            if let Some(mut s) = snaps.remove(name) {
                s.name = new_name.clone();
                snaps.insert(new_name.clone(), s);
            }
        }
        SnapshotCommand::SetExpiry {
            instance,
            name,
            expires_at,
        } => {
            state
                .snapshots
                .get_mut(instance)
                .and_then(|s| s.get_mut(name))
                .ok_or_else(not_found)?
                .expires_at = *expires_at;
        }
        SnapshotCommand::Delete { instance, name } => {
            let snaps = state.snapshots.get_mut(instance).ok_or_else(not_found)?;
            snaps.remove(name).ok_or_else(not_found)?;
            if snaps.is_empty() {
                state.snapshots.remove(instance);
            }
        }
    }
    Ok(())
}

/// After an instance or member command: snapshots follow a renamed instance and go
/// with a deleted one.
pub(super) fn follow_instances(state: &mut State, renamed: Option<(&str, &str)>) {
    if let Some((from, to)) = renamed {
        if state.instances.contains_key(to) && !state.instances.contains_key(from) {
            if let Some(snaps) = state.snapshots.remove(from) {
                state.snapshots.insert(to.to_string(), snaps);
            }
        }
    }
    let instances = &state.instances;
    state
        .snapshots
        .retain(|i, s| instances.contains_key(i) && !s.is_empty());
}

impl State {
    /// The snapshots of an instance, by name (empty when it has none).
    pub fn snapshots_of(&self, instance: &str) -> Vec<&SnapshotRecord> {
        self.snapshots
            .get(instance)
            .map(|s| s.values().collect())
            .unwrap_or_default()
    }

    /// One snapshot of an instance.
    pub fn snapshot(&self, instance: &str, name: &str) -> Option<&SnapshotRecord> {
        self.snapshots.get(instance).and_then(|s| s.get(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{InstanceCommand, InstanceRecord, InstanceStatus};
    use crate::Command;

    fn with_instance(name: &str) -> State {
        let mut s = State::default();
        s.pools.insert(
            "default".into(),
            crate::state::Pool {
                name: "default".into(),
                driver: "dir".into(),
                description: String::new(),
                config: BTreeMap::new(),
                status: crate::state::PoolStatus::Created,
                parts: vec![],
                deleting: false,
            },
        );
        s.apply(&Command::Instances(InstanceCommand::Create {
            instance: Box::new(InstanceRecord {
                name: name.into(),
                location: None,
                kind: "container".into(),
                architecture: "x86_64".into(),
                description: String::new(),
                config: BTreeMap::new(),
                devices: BTreeMap::from([(
                    "root".into(),
                    BTreeMap::from([
                        ("type".into(), "disk".into()),
                        ("path".into(), "/".into()),
                        ("pool".into(), "default".into()),
                    ]),
                )]),
                profiles: vec![],
                ephemeral: false,
                status: InstanceStatus::Stopped,
                created_at: OffsetDateTime::UNIX_EPOCH,
            }),
        }))
        .unwrap();
        s
    }

    fn snap(name: &str) -> Box<SnapshotRecord> {
        Box::new(SnapshotRecord {
            name: name.into(),
            architecture: "x86_64".into(),
            description: String::new(),
            config: BTreeMap::new(),
            devices: BTreeMap::new(),
            profiles: vec![],
            ephemeral: false,
            stateful: false,
            created_at: OffsetDateTime::UNIX_EPOCH,
            expires_at: None,
        })
    }

    fn create(s: &mut State, i: &str, n: &str) -> Result<(), StateError> {
        s.apply(&Command::Snapshots(SnapshotCommand::Create {
            instance: i.into(),
            snapshot: snap(n),
        }))
    }

    #[test]
    fn t10_names_are_checked_and_unique_per_instance() {
        let mut s = with_instance("c1");
        create(&mut s, "c1", "s1").unwrap();
        assert_eq!(
            create(&mut s, "c1", "s1"),
            Err(StateError::Invalid("Name 'c1/s1' already in use".into()))
        );
        for bad in ["a/b", "..", ".", "", "a b", &"x".repeat(65), "-a"] {
            let before = s.clone();
            assert!(create(&mut s, "c1", bad).is_err(), "{bad:?} accepted");
            assert_eq!(s, before);
        }
        assert_eq!(create(&mut s, "nosuch", "s1"), Err(StateError::InstanceNotFound));
        create(&mut s, "c1", &"x".repeat(64)).unwrap();
    }

    #[test]
    fn t10_rename_expiry_delete() {
        let mut s = with_instance("c1");
        create(&mut s, "c1", "s1").unwrap();
        create(&mut s, "c1", "s2").unwrap();
        let rename = |from: &str, to: &str| {
            Command::Snapshots(SnapshotCommand::Rename {
                instance: "c1".into(),
                name: from.into(),
                new_name: to.into(),
            })
        };
        assert!(s.apply(&rename("s1", "s2")).is_err());
        assert!(s.apply(&rename("s1", "a/b")).is_err());
        s.apply(&rename("s1", "s3")).unwrap();
        assert!(s.snapshot("c1", "s3").is_some_and(|r| r.name == "s3"));
        s.apply(&Command::Snapshots(SnapshotCommand::SetExpiry {
            instance: "c1".into(),
            name: "s3".into(),
            expires_at: Some(OffsetDateTime::UNIX_EPOCH),
        }))
        .unwrap();
        assert_eq!(
            s.snapshot("c1", "s3").unwrap().expires_at,
            Some(OffsetDateTime::UNIX_EPOCH)
        );
        for n in ["s2", "s3"] {
            s.apply(&Command::Snapshots(SnapshotCommand::Delete {
                instance: "c1".into(),
                name: n.into(),
            }))
            .unwrap();
        }
        assert!(s.snapshots.is_empty());
    }

    #[test]
    fn t10_snapshots_follow_their_instance() {
        let mut s = with_instance("c1");
        create(&mut s, "c1", "s1").unwrap();
        s.apply(&Command::Instances(InstanceCommand::Rename {
            name: "c1".into(),
            new_name: "c2".into(),
        }))
        .unwrap();
        assert!(s.snapshot("c2", "s1").is_some());
        assert!(s.snapshot("c1", "s1").is_none());
        s.apply(&Command::Instances(InstanceCommand::Delete { name: "c2".into() }))
            .unwrap();
        assert!(s.snapshots.is_empty());
    }
}
