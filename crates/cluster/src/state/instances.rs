//! Instances: one name space for the whole cluster, each instance placed on one member.
//!
//! The record is what every member must agree on: the name, the member that holds the
//! instance (by [`MemberId`]), its own config, devices and profiles, and the status of
//! the last state its member reported. What only the owner knows (the process, its
//! memory, its rootfs) stays with the owner and its driver; the record's `status` is
//! what a list shows when the owner does not answer.
//!
//! The name check is here, in `apply`, so two launches of one name through two members
//! at once give one instance and one refusal, whatever the timing: the second `Create`
//! to commit finds the name taken. A launch records the instance `Creating` before its
//! member builds anything, and `SetStatus` moves it on once the rootfs and container
//! exist; a launch that dies on the way leaves a `Creating` record that `Delete` clears.
//!
//! Steps taken with other domains: a profile in use cannot be deleted and a rename of
//! one follows into the instances using it ([`super::profiles`]); a pool holding an
//! instance's root disk is in use ([`State::pool_used_by`]); a member holding instances
//! is not removed unless forced, and a forced removal drops its instances' records, as
//! Incus's forced removal does ([`super::members`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{profiles, MemberId, Profile, State, StateError};

/// The last known state of an instance, as its member reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Recorded, being built on its member: a launch that did not finish.
    Creating,
    Stopped,
    Running,
    Frozen,
    /// The member could not build or read it.
    Error,
}

impl InstanceStatus {
    /// Incus's status word (`Creating` shows as `Error` once nobody is building it; the
    /// owner, which knows, shows it while it builds).
    pub fn incus(self) -> &'static str {
        match self {
            InstanceStatus::Creating | InstanceStatus::Error => "Error",
            InstanceStatus::Stopped => "Stopped",
            InstanceStatus::Running => "Running",
            InstanceStatus::Frozen => "Frozen",
        }
    }

    /// Incus's status code for the word.
    pub fn code(self) -> i32 {
        match self {
            InstanceStatus::Creating | InstanceStatus::Error => 400,
            InstanceStatus::Stopped => 102,
            InstanceStatus::Running => 103,
            InstanceStatus::Frozen => 110,
        }
    }
}

/// An instance as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub name: String,
    /// The member that holds it (`None`: this server while standalone).
    pub location: Option<MemberId>,
    /// `container` (virtual machines need a hypervisor this server does not drive).
    #[serde(rename = "type")]
    pub kind: String,
    pub architecture: String,
    pub description: String,
    /// Its own config, without what its profiles give it.
    pub config: BTreeMap<String, String>,
    /// Its own devices, without what its profiles give it.
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
    /// Applied in order, later ones winning.
    pub profiles: Vec<String>,
    #[serde(default)]
    pub ephemeral: bool,
    pub status: InstanceStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl InstanceRecord {
    /// The config with its profiles' under it (Incus's `expanded_config`).
    pub fn expanded_config(&self, state: &State) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for p in self.profiles.iter().filter_map(|p| state.profile(p)) {
            out.extend(p.config);
        }
        out.extend(self.config.clone());
        out
    }

    /// The devices with its profiles' under it, by device name (Incus's
    /// `expanded_devices`).
    pub fn expanded_devices(&self, state: &State) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for p in self.profiles.iter().filter_map(|p| state.profile(p)) {
            out.extend(p.devices);
        }
        out.extend(self.devices.clone());
        out
    }

    /// The pool of its root disk (`path=/`), once expanded.
    pub fn root_pool(&self, state: &State) -> Option<String> {
        root_pool_of(&self.expanded_devices(state))
    }
}

/// The pool of the root disk among expanded devices.
pub fn root_pool_of(devices: &BTreeMap<String, BTreeMap<String, String>>) -> Option<String> {
    devices
        .values()
        .find(|d| d.get("type").is_some_and(|t| t == "disk") && d.get("path").is_some_and(|p| p == "/"))
        .and_then(|d| d.get("pool").cloned())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum InstanceCommand {
    /// Records a new instance; refused if the name is taken.
    Create {
        instance: Box<InstanceRecord>,
    },
    /// Replaces description, config, devices, profiles and the ephemeral flag.
    Update {
        name: String,
        description: String,
        config: BTreeMap<String, String>,
        devices: BTreeMap<String, BTreeMap<String, String>>,
        profiles: Vec<String>,
        ephemeral: bool,
    },
    /// The state its member last saw.
    SetStatus {
        name: String,
        status: InstanceStatus,
    },
    /// Sets (`Some`) or removes (`None`) server-owned keys (`volatile.*`) of its config.
    SetVolatile {
        name: String,
        keys: BTreeMap<String, Option<String>>,
    },
    /// Renames a stopped instance.
    Rename {
        name: String,
        new_name: String,
    },
    Delete {
        name: String,
    },
    /// Hands a stopped instance from one member to another once its data is whole
    /// there: refused unless it is still on `from` (so a move applied twice, or racing
    /// another, changes the owner once).
    Move {
        name: String,
        from: Option<MemberId>,
        to: Option<MemberId>,
    },
}

impl InstanceCommand {
    pub fn name(&self) -> &'static str {
        match self {
            InstanceCommand::Create { .. } => "create_instance",
            InstanceCommand::Update { .. } => "update_instance",
            InstanceCommand::SetStatus { .. } => "set_instance_status",
            InstanceCommand::SetVolatile { .. } => "set_instance_volatile",
            InstanceCommand::Rename { .. } => "rename_instance",
            InstanceCommand::Delete { .. } => "delete_instance",
            InstanceCommand::Move { .. } => "move_instance",
        }
    }
}

/// The key holding the power state an instance was last left in (as Incus).
pub const LAST_STATE: &str = "volatile.last_state.power";
pub const POWER_RUNNING: &str = "RUNNING";
pub const POWER_STOPPED: &str = "STOPPED";

/// Whether an instance starts with its member (Incus's rule): `boot.autostart` true,
/// or unset (or `last-state`) and the instance was running when last seen.
pub fn should_autostart(expanded: &BTreeMap<String, String>) -> bool {
    let auto = expanded.get("boot.autostart").map(String::as_str).unwrap_or("");
    let last = expanded.get(LAST_STATE).map(String::as_str).unwrap_or("");
    is_true(auto) || ((auto.is_empty() || auto == "last-state") && last == POWER_RUNNING)
}

fn is_true(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on")
}

/// The order a member starts its autostart instances in, as Incus: those with neither
/// `boot.autostart.delay` nor `boot.autostart.priority` first, all at once; then the
/// others one after another, highest priority first (ties by name), each followed by
/// its delay in seconds. Takes `(name, expanded config)` of the instances to start.
pub fn autostart_order(
    instances: Vec<(String, BTreeMap<String, String>)>,
) -> (Vec<String>, Vec<(String, u64)>) {
    let (bulk, rest): (Vec<_>, Vec<_>) = instances.into_iter().partition(|(_, c)| {
        !c.contains_key("boot.autostart.delay") && !c.contains_key("boot.autostart.priority")
    });
    let int =
        |c: &BTreeMap<String, String>, k: &str| c.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let mut rest: Vec<(String, i64, u64)> = rest
        .into_iter()
        .map(|(n, c)| {
            let delay = int(&c, "boot.autostart.delay").max(0) as u64;
            (n, int(&c, "boot.autostart.priority"), delay)
        })
        .collect();
    rest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    (
        bulk.into_iter().map(|(n, _)| n).collect(),
        rest.into_iter().map(|(n, _, d)| (n, d)).collect(),
    )
}

/// Incus's instance name rule (a host name, no snapshot delimiter), with its messages.
pub fn valid_instance_name(name: &str) -> Result<(), String> {
    if name.contains('/') {
        return Err("The character \"/\" is reserved for snapshots".into());
    }
    let why = if name.is_empty() || name.len() > 63 {
        "Name must be 1-63 characters long"
    } else if name.starts_with('-') {
        "Name must not start with \"-\" character"
    } else if name.ends_with('-') {
        "Name must not end with \"-\" character"
    } else if name.parse::<u64>().is_ok() {
        "Name cannot be a number"
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        "Name can only contain alphanumeric and hyphen characters"
    } else {
        return Ok(());
    };
    Err(format!("Invalid instance name: {why}"))
}

/// Config keys an instance may hold beyond a profile's: what the server records about
/// it (`volatile.*`) and about its image (`image.*`).
const OWN_PREFIXES: &[&str] = &["volatile.", "image."];

/// Checks an instance's own config and devices, its profiles, and that it ends up with
/// a root disk on a pool that exists.
fn check(state: &State, i: &InstanceRecord) -> Result<(), StateError> {
    for p in &i.profiles {
        if state.profile(p).is_none() {
            return Err(StateError::Invalid(format!(
                "Requested profile {p:?} doesn't exist"
            )));
        }
    }
    if i.profiles
        .iter()
        .enumerate()
        .any(|(n, p)| i.profiles[..n].contains(p))
    {
        return Err(StateError::Invalid("Duplicate profile found in request".into()));
    }
    let as_profile = Profile {
        name: i.name.clone(),
        description: String::new(),
        config: i
            .config
            .iter()
            .filter(|(k, _)| !OWN_PREFIXES.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        devices: i.devices.clone(),
    };
    profiles::validate(state, &as_profile)?;
    if i.root_pool(state).is_none() {
        return Err(StateError::Invalid(
            "Failed detecting root disk device: No root device could be found".into(),
        ));
    }
    Ok(())
}

pub(super) fn apply(state: &mut State, cmd: &InstanceCommand) -> Result<(), StateError> {
    match cmd {
        InstanceCommand::Create { instance } => {
            valid_instance_name(&instance.name).map_err(StateError::Invalid)?;
            if state.instances.contains_key(&instance.name) {
                return Err(StateError::InstanceExists(instance.name.clone()));
            }
            state.check_member(instance.location)?;
            if instance.kind != "container" {
                return Err(StateError::Invalid(format!(
                    "Instance type {:?} is not supported by this server",
                    instance.kind
                )));
            }
            check(state, instance)?;
            state
                .instances
                .insert(instance.name.clone(), (**instance).clone());
        }
        InstanceCommand::Update {
            name,
            description,
            config,
            devices,
            profiles,
            ephemeral,
        } => {
            let mut i = state
                .instances
                .get(name)
                .ok_or(StateError::InstanceNotFound)?
                .clone();
            i.description = description.clone();
            i.config = config.clone();
            i.devices = devices.clone();
            i.profiles = profiles.clone();
            i.ephemeral = *ephemeral;
            check(state, &i)?;
            state.instances.insert(name.clone(), i);
        }
        InstanceCommand::SetStatus { name, status } => {
            let i = state
                .instances
                .get_mut(name)
                .ok_or(StateError::InstanceNotFound)?;
            i.status = *status;
            let power = match status {
                InstanceStatus::Running | InstanceStatus::Frozen => Some(POWER_RUNNING),
                InstanceStatus::Stopped => Some(POWER_STOPPED),
                InstanceStatus::Creating | InstanceStatus::Error => None,
            };
            if let Some(power) = power {
                i.config.insert(LAST_STATE.into(), power.into());
            }
        }
        InstanceCommand::SetVolatile { name, keys } => {
            if let Some(k) = keys.keys().find(|k| !k.starts_with("volatile.")) {
                return Err(StateError::Invalid(format!(
                    "Only volatile keys can be set this way, not {k:?}"
                )));
            }
            let i = state
                .instances
                .get_mut(name)
                .ok_or(StateError::InstanceNotFound)?;
            for (k, v) in keys {
                match v {
                    Some(v) => i.config.insert(k.clone(), v.clone()),
                    None => i.config.remove(k),
                };
            }
        }
        InstanceCommand::Rename { name, new_name } => {
            valid_instance_name(new_name).map_err(StateError::Invalid)?;
            let i = state.instances.get(name).ok_or(StateError::InstanceNotFound)?;
            if !matches!(i.status, InstanceStatus::Stopped | InstanceStatus::Error) {
                return Err(StateError::Invalid(
                    "Renaming of running instance not allowed".into(),
                ));
            }
            if state.instances.contains_key(new_name) {
                return Err(StateError::Invalid(format!("Name {new_name:?} already in use")));
            }
            if let Some(mut i) = state.instances.remove(name) {
                i.name = new_name.clone();
                state.instances.insert(new_name.clone(), i);
            }
        }
        InstanceCommand::Delete { name } => {
            state.instances.remove(name).ok_or(StateError::InstanceNotFound)?;
        }
        InstanceCommand::Move { name, from, to } => {
            state.check_member(*to)?;
            let i = state.instances.get(name).ok_or(StateError::InstanceNotFound)?;
            if i.location != *from {
                return Err(StateError::Invalid(
                    "The instance is no longer on the member it was moved from".into(),
                ));
            }
            if !matches!(i.status, InstanceStatus::Stopped | InstanceStatus::Error) {
                return Err(StateError::Invalid("Instance must be stopped to be moved".into()));
            }
            if let Some(i) = state.instances.get_mut(name) {
                i.location = *to;
            }
        }
    }
    Ok(())
}

impl State {
    /// The names of the instances on a member, sorted.
    pub fn instances_on(&self, at: Option<MemberId>) -> Vec<String> {
        self.instances
            .values()
            .filter(|i| i.location == at)
            .map(|i| i.name.clone())
            .collect()
    }

    /// The instances using a profile, as API paths.
    pub fn profile_used_by(&self, profile: &str) -> Vec<String> {
        self.instances
            .values()
            .filter(|i| i.profiles.iter().any(|p| p == profile))
            .map(|i| format!("/1.0/instances/{}", i.name))
            .collect()
    }
}

/// A profile renamed: the instances using it follow.
pub(super) fn rename_profile(state: &mut State, name: &str, new_name: &str) {
    for i in state.instances.values_mut() {
        for p in i.profiles.iter_mut().filter(|p| *p == name) {
            *p = new_name.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Member, MemberCommand, PoolCommand, ProfileCommand};
    use crate::Command;

    fn ap(s: &mut State, c: impl Into<Command>) -> Result<(), StateError> {
        s.apply(&c.into())
    }

    fn member(name: &str, id: MemberId) -> MemberCommand {
        MemberCommand::AddMember {
            member: Member {
                name: name.into(),
                id,
                address: format!("a{id}"),
                certificate: String::new(),
                fingerprint: format!("fp{id}"),
                description: String::new(),
                failure_domain: "default".into(),
                architecture: "x86_64".into(),
            },
            token_id: None,
        }
    }

    /// Two members, a pool, and a `default` profile with its root disk on it.
    fn cluster() -> State {
        let mut s = State::default();
        ap(
            &mut s,
            PoolCommand::Create {
                name: "pool1".into(),
                driver: "dir".into(),
                description: String::new(),
                config: BTreeMap::new(),
                standalone_part: Some(BTreeMap::new()),
            },
        )
        .unwrap();
        ap(&mut s, member("node1", 1)).unwrap();
        ap(&mut s, member("node2", 2)).unwrap();
        let mut default = Profile::initial_default();
        default.devices.insert(
            "root".into(),
            [("type", "disk"), ("path", "/"), ("pool", "pool1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        ap(&mut s, ProfileCommand::Update { profile: default }).unwrap();
        s
    }

    fn instance(name: &str, at: MemberId) -> InstanceRecord {
        InstanceRecord {
            name: name.into(),
            location: Some(at),
            kind: "container".into(),
            architecture: "x86_64".into(),
            description: String::new(),
            config: BTreeMap::new(),
            devices: BTreeMap::new(),
            profiles: vec!["default".into()],
            ephemeral: false,
            status: InstanceStatus::Creating,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn create(name: &str, at: MemberId) -> InstanceCommand {
        InstanceCommand::Create {
            instance: Box::new(instance(name, at)),
        }
    }

    #[test]
    fn t10_one_name_one_instance() {
        let mut s = cluster();
        ap(&mut s, create("c1", 2)).unwrap();
        // The same name from another member, committed second, is refused whole.
        let before = s.clone();
        assert_eq!(
            ap(&mut s, create("c1", 1)).unwrap_err().to_string(),
            "Instance \"c1\" already exists"
        );
        assert_eq!(s, before);
        assert_eq!(s.instances["c1"].location, Some(2));
        assert_eq!(s.instances_on(Some(2)), ["c1"]);
        assert!(s.instances_on(Some(1)).is_empty());
        assert_eq!(s.instances["c1"].root_pool(&s).as_deref(), Some("pool1"));
    }

    #[test]
    fn t12_a_move_changes_the_owner_once() {
        let mut s = cluster();
        ap(&mut s, create("c1", 1)).unwrap();
        let mv = |from, to| InstanceCommand::Move {
            name: "c1".into(),
            from: Some(from),
            to: Some(to),
        };
        // Only a stopped instance moves.
        assert!(ap(&mut s, mv(1, 2)).is_err());
        ap(
            &mut s,
            InstanceCommand::SetStatus {
                name: "c1".into(),
                status: InstanceStatus::Stopped,
            },
        )
        .unwrap();
        assert!(ap(&mut s, mv(1, 9)).is_err(), "to a member that does not exist");
        ap(&mut s, mv(1, 2)).unwrap();
        assert_eq!(s.instances["c1"].location, Some(2));
        // Applied again (a retry whose first answer was lost): refused, nothing changes.
        let before = s.clone();
        assert!(ap(&mut s, mv(1, 2)).is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn t11_status_and_rename() {
        let mut s = cluster();
        ap(&mut s, create("c1", 1)).unwrap();
        let set = |status| InstanceCommand::SetStatus {
            name: "c1".into(),
            status,
        };
        ap(&mut s, set(InstanceStatus::Running)).unwrap();
        let rename = |to: &str| InstanceCommand::Rename {
            name: "c1".into(),
            new_name: to.into(),
        };
        assert_eq!(
            ap(&mut s, rename("c2")).unwrap_err().to_string(),
            "Renaming of running instance not allowed"
        );
        ap(&mut s, set(InstanceStatus::Stopped)).unwrap();
        ap(&mut s, rename("c2")).unwrap();
        assert!(s.instances.contains_key("c2") && !s.instances.contains_key("c1"));
        assert_eq!(s.instances["c2"].name, "c2");
        ap(&mut s, InstanceCommand::Delete { name: "c2".into() }).unwrap();
        assert_eq!(
            ap(&mut s, InstanceCommand::Delete { name: "c2".into() }),
            Err(StateError::InstanceNotFound)
        );
    }

    #[test]
    fn t30_bad_records_are_refused_whole() {
        let mut s = cluster();
        let before = s.clone();
        let mut no_root = instance("c1", 1);
        no_root.profiles.clear();
        let mut bad_profile = instance("c1", 1);
        bad_profile.profiles.push("nope".into());
        let mut twice = instance("c1", 1);
        twice.profiles.push("default".into());
        let mut vm = instance("c1", 1);
        vm.kind = "virtual-machine".into();
        let mut bad_key = instance("c1", 1);
        bad_key.config.insert("bogus.key".into(), "1".into());
        for (i, msg) in [
            (
                instance("-c", 1),
                "Invalid instance name: Name must not start with \"-\" character",
            ),
            (
                instance("123", 1),
                "Invalid instance name: Name cannot be a number",
            ),
            (
                instance("a_b", 1),
                "Invalid instance name: Name can only contain alphanumeric and hyphen characters",
            ),
            (
                instance("a/b", 1),
                "The character \"/\" is reserved for snapshots",
            ),
            (instance("c1", 9), "Cluster member not found"),
            (
                no_root,
                "Failed detecting root disk device: No root device could be found",
            ),
            (bad_profile, "Requested profile \"nope\" doesn't exist"),
            (twice, "Duplicate profile found in request"),
            (
                vm,
                "Instance type \"virtual-machine\" is not supported by this server",
            ),
            (bad_key, "Unknown configuration key: bogus.key"),
        ] {
            let e = ap(
                &mut s,
                InstanceCommand::Create {
                    instance: Box::new(i),
                },
            )
            .unwrap_err();
            assert_eq!(e.to_string(), msg);
            assert_eq!(s, before);
        }
        // Volatile and image keys are the server's own, and accepted.
        let mut own = instance("c1", 1);
        own.config.insert("volatile.base_image".into(), "abc".into());
        own.config.insert("image.os".into(), "busybox".into());
        own.config.insert("limits.memory".into(), "64MiB".into());
        ap(
            &mut s,
            InstanceCommand::Create {
                instance: Box::new(own),
            },
        )
        .unwrap();
    }

    #[test]
    fn t31_profiles_pools_and_members_in_use() {
        let mut s = cluster();
        let mut p = Profile::initial_default();
        p.name = "small".into();
        p.config.insert("limits.memory".into(), "64MiB".into());
        ap(&mut s, ProfileCommand::Create { profile: p }).unwrap();
        let mut i = instance("c1", 2);
        i.profiles.push("small".into());
        i.config.insert("limits.memory".into(), "128MiB".into());
        ap(
            &mut s,
            InstanceCommand::Create {
                instance: Box::new(i),
            },
        )
        .unwrap();
        assert_eq!(
            s.instances["c1"].expanded_config(&s)["limits.memory"],
            "128MiB",
            "own wins"
        );
        assert!(s.instances["c1"].expanded_devices(&s).contains_key("root"));

        assert!(ap(&mut s, ProfileCommand::Delete { name: "small".into() }).is_err());
        ap(
            &mut s,
            ProfileCommand::Rename {
                name: "small".into(),
                new_name: "tiny".into(),
            },
        )
        .unwrap();
        assert_eq!(s.instances["c1"].profiles, ["default", "tiny"]);
        assert_eq!(s.profile_used_by("tiny"), ["/1.0/instances/c1"]);

        assert!(s.pool_used_by("pool1").contains(&"/1.0/instances/c1".to_string()));
        assert!(ap(&mut s, PoolCommand::BeginDelete { name: "pool1".into() }).is_err());

        let before = s.clone();
        assert_eq!(
            ap(
                &mut s,
                MemberCommand::RemoveMember {
                    name: "node2".into(),
                    force: false,
                }
            )
            .unwrap_err()
            .to_string(),
            "Node still has the following instances: c1"
        );
        assert_eq!(s, before);
        ap(
            &mut s,
            MemberCommand::RemoveMember {
                name: "node2".into(),
                force: true,
            },
        )
        .unwrap();
        assert!(
            s.instances.is_empty(),
            "a forced removal takes its instances' records"
        );
    }

    #[test]
    fn t12_last_state_follows_status_and_volatile_keys_are_the_only_settable() {
        let mut s = cluster();
        ap(&mut s, create("c1", 1)).unwrap();
        let set = |status| InstanceCommand::SetStatus {
            name: "c1".into(),
            status,
        };
        ap(&mut s, set(InstanceStatus::Running)).unwrap();
        assert_eq!(s.instances["c1"].config[LAST_STATE], "RUNNING");
        ap(&mut s, set(InstanceStatus::Error)).unwrap();
        assert_eq!(
            s.instances["c1"].config[LAST_STATE], "RUNNING",
            "an error keeps it"
        );
        ap(&mut s, set(InstanceStatus::Stopped)).unwrap();
        assert_eq!(s.instances["c1"].config[LAST_STATE], "STOPPED");
        let vol = |k: &str, v: Option<&str>| InstanceCommand::SetVolatile {
            name: "c1".into(),
            keys: [(k.to_string(), v.map(str::to_string))].into(),
        };
        ap(&mut s, vol(LAST_STATE, Some("RUNNING"))).unwrap();
        assert_eq!(s.instances["c1"].config[LAST_STATE], "RUNNING");
        ap(&mut s, vol(LAST_STATE, None)).unwrap();
        assert!(!s.instances["c1"].config.contains_key(LAST_STATE));
        let before = s.clone();
        assert!(ap(&mut s, vol("limits.memory", Some("1GiB"))).is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn t13_autostart_as_incus() {
        let c = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(should_autostart(&c(&[("boot.autostart", "true")])));
        assert!(should_autostart(&c(&[(LAST_STATE, "RUNNING")])));
        assert!(should_autostart(&c(&[
            ("boot.autostart", "last-state"),
            (LAST_STATE, "RUNNING")
        ])));
        assert!(!should_autostart(&c(&[
            ("boot.autostart", "false"),
            (LAST_STATE, "RUNNING")
        ])));
        assert!(!should_autostart(&c(&[(LAST_STATE, "STOPPED")])));
        assert!(!should_autostart(&c(&[])));
        let (bulk, seq) = autostart_order(vec![
            ("a".into(), c(&[])),
            ("b".into(), c(&[("boot.autostart.priority", "1")])),
            (
                "c".into(),
                c(&[("boot.autostart.priority", "5"), ("boot.autostart.delay", "2")]),
            ),
            ("d".into(), c(&[("boot.autostart.delay", "1")])),
            ("e".into(), c(&[])),
            ("f".into(), c(&[("boot.autostart.priority", "1")])),
        ]);
        assert_eq!(bulk, ["a", "e"]);
        assert_eq!(
            seq,
            [
                ("c".to_string(), 2),
                ("b".to_string(), 0),
                ("f".to_string(), 0),
                ("d".to_string(), 1)
            ]
        );
    }
}
