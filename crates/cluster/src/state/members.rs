//! Members: the cluster's members, by name (the API addresses them by name), each with
//! the Raft node id that everything else in the state refers to it by.
//!
//! A member can be renamed, so objects that belong to a member (a token it issued, a
//! warning about it) hold its id ([`MemberId`]), never its name; names are looked up
//! where the state is rendered for clients. Removing a member removes what only made
//! sense on it (its server certificate, its warnings) and leaves no reference to it
//! behind: tokens it issued stay usable cluster-wide and lose their location, and its
//! parts of storage pools go. A member holding instances is kept unless the removal is
//! forced, which drops their records too.

use std::collections::BTreeMap;

use api::types::Certificate;
use serde::{Deserialize, Serialize};

use super::{tokens, MemberId, Spent, State, StateError, TokenKind};

/// A cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// The Raft node id: how the rest of the state refers to this member.
    pub id: MemberId,
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

/// What is set on a member beside its identity: its config (`scheduler.instance`,
/// `user.*`) and whether it is evacuated. Kept apart from [`Member`], by id, so a
/// member record stays what joining made it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSettings {
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Evacuated: no new instance is placed there, and its instances were stopped.
    #[serde(default)]
    pub evacuated: bool,
}

/// How new instances may land on a member (`scheduler.instance`, as Incus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Automatic placement and targets (the default).
    #[default]
    All,
    /// Only a `--target` naming the member.
    Manual,
    /// Only a target naming the member or one of its groups.
    Group,
}

impl MemberSettings {
    pub fn scheduler(&self) -> Scheduler {
        match self.config.get(SCHEDULER_KEY).map(String::as_str) {
            Some("manual") => Scheduler::Manual,
            Some("group") => Scheduler::Group,
            _ => Scheduler::All,
        }
    }
}

pub const SCHEDULER_KEY: &str = "scheduler.instance";

/// Checks a member's config as Incus does: `scheduler.instance` and `user.*` only.
pub fn check_member_config(config: &BTreeMap<String, String>) -> Result<(), StateError> {
    for (k, v) in config {
        if k == SCHEDULER_KEY {
            if !["all", "manual", "group", ""].contains(&v.as_str()) {
                return Err(StateError::Invalid(format!(
                    "Invalid value for config key {k:?}: Invalid value {v:?} (not one of [all group manual])"
                )));
            }
        } else if !k.starts_with("user.") {
            return Err(StateError::Invalid(format!(
                "Invalid cluster member configuration key {k:?}"
            )));
        }
    }
    Ok(())
}

impl State {
    /// A member's settings (the defaults if none were ever set).
    pub fn member_settings(&self, id: MemberId) -> MemberSettings {
        self.member_settings.get(&id).cloned().unwrap_or_default()
    }
}

fn default_failure_domain() -> String {
    "default".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MemberCommand {
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
    /// Refused while the member holds instances, unless `force` (then their records
    /// go with it, as in Incus).
    RemoveMember {
        name: String,
        #[serde(default)]
        force: bool,
    },
    /// Replaces a member's config.
    SetMemberConfig {
        name: String,
        config: BTreeMap<String, String>,
    },
    /// Marks a member evacuated or restored; refused if it already is, in Incus's words.
    SetEvacuated {
        name: String,
        evacuated: bool,
    },
}

impl MemberCommand {
    pub fn name(&self) -> &'static str {
        match self {
            MemberCommand::AddMember { .. } => "add_member",
            MemberCommand::UpdateMember { .. } => "update_member",
            MemberCommand::RenameMember { .. } => "rename_member",
            MemberCommand::RemoveMember { .. } => "remove_member",
            MemberCommand::SetMemberConfig { .. } => "set_member_config",
            MemberCommand::SetEvacuated { .. } => "set_member_evacuated",
        }
    }
}

pub(super) fn apply(state: &mut State, cmd: &MemberCommand) -> Result<(), StateError> {
    match cmd {
        MemberCommand::AddMember { member, token_id } => add(state, member, token_id.as_deref())?,
        MemberCommand::UpdateMember {
            name,
            description,
            failure_domain,
        } => {
            let m = state.members.get_mut(name).ok_or(StateError::MemberNotFound)?;
            m.description = description.clone();
            m.failure_domain = failure_domain.clone();
        }
        MemberCommand::RenameMember { name, new_name } => {
            if state.members.contains_key(new_name) {
                return Err(StateError::MemberExists(new_name.clone()));
            }
            let mut m = state.members.remove(name).ok_or(StateError::MemberNotFound)?;
            m.name = new_name.clone();
            if let Some(c) = state.certificates.get_mut(&m.fingerprint) {
                c.name = new_name.clone();
            }
            state.members.insert(new_name.clone(), m);
        }
        MemberCommand::RemoveMember { name, force } => {
            let id = state.members.get(name).ok_or(StateError::MemberNotFound)?.id;
            let held = state.instances_on(Some(id));
            if !held.is_empty() && !force {
                return Err(StateError::Invalid(format!(
                    "Node still has the following instances: {}",
                    held.join(", ")
                )));
            }
            let m = state.members.remove(name).ok_or(StateError::MemberNotFound)?;
            state.instances.retain(|_, i| i.location != Some(m.id));
            state.member_settings.remove(&m.id);
            state.certificates.remove(&m.fingerprint);
            state.warnings.retain(|_, w| w.location != Some(m.id));
            for pool in state.pools.values_mut() {
                pool.parts.retain(|p| p.location != Some(m.id));
            }
            super::images::forget_member(&mut state.images, m.id);
            for t in state.tokens.values_mut() {
                if t.location == Some(m.id) {
                    t.location = None;
                }
            }
        }
        MemberCommand::SetMemberConfig { name, config } => {
            let id = state.members.get(name).ok_or(StateError::MemberNotFound)?.id;
            check_member_config(config)?;
            state.member_settings.entry(id).or_default().config = config.clone();
        }
        MemberCommand::SetEvacuated { name, evacuated } => {
            let id = state.members.get(name).ok_or(StateError::MemberNotFound)?.id;
            let s = state.member_settings.entry(id).or_default();
            if s.evacuated == *evacuated {
                return Err(StateError::Invalid(
                    if *evacuated {
                        "Cluster member is already evacuated"
                    } else {
                        "Cluster member is already restored"
                    }
                    .into(),
                ));
            }
            s.evacuated = *evacuated;
        }
    }
    Ok(())
}

fn add(state: &mut State, member: &Member, token_id: Option<&str>) -> Result<(), StateError> {
    if state.members.contains_key(&member.name) {
        return Err(StateError::MemberExists(member.name.clone()));
    }
    if state.members.values().any(|m| m.address == member.address) {
        return Err(StateError::Invalid(format!(
            "The address {} is already used by another member",
            member.address
        )));
    }
    if state.member_by_id(member.id).is_some() {
        return Err(StateError::Invalid(format!(
            "The member id {} is already used by another member",
            member.id
        )));
    }
    if let Some(id) = token_id {
        match state.tokens.get(id).map(|t| &t.kind) {
            Some(TokenKind::Join { server_name }) if server_name == &member.name => {}
            _ => return Err(StateError::TokenNotFound),
        }
        tokens::spend(state, id, Spent::Used);
    }
    // Replaces the entry a redeemed join token made for the same certificate.
    state
        .certificates
        .insert(member.fingerprint.clone(), member.server_certificate());
    state.members.insert(member.name.clone(), member.clone());
    Ok(())
}

impl State {
    /// The member whose own server certificate has this fingerprint.
    pub fn member_by_fingerprint(&self, fingerprint: &str) -> Option<&Member> {
        self.members.values().find(|m| m.fingerprint == fingerprint)
    }

    pub fn member_by_id(&self, id: MemberId) -> Option<&Member> {
        self.members.values().find(|m| m.id == id)
    }

    /// Checks that a reference to a member, about to be stored, names a current one
    /// (`None`, "this server while standalone", always does).
    pub(super) fn check_member(&self, at: Option<MemberId>) -> Result<(), StateError> {
        match at {
            Some(id) if self.member_by_id(id).is_none() => Err(StateError::MemberNotFound),
            _ => Ok(()),
        }
    }
}
