//! Profiles: named sets of config keys and devices that instances take on.
//!
//! The `default` profile exists from the start, as in Incus: it is never stored until it
//! is first changed ([`State::profile`] gives it empty before that), and it can be
//! neither renamed nor deleted. Devices are checked here, against the pools that exist
//! when the command applies, so two members cannot race a profile onto a pool being
//! deleted: a `disk` needs a `path` and a `pool` that exists (one root disk, `path=/`,
//! at most); other device types wait for the parts of the server that would give them
//! meaning (networks, GPUs, ...), and are refused with a message that says so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{State, StateError};

/// The profile every server has.
pub const DEFAULT_PROFILE: &str = "default";

/// A profile as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub config: BTreeMap<String, String>,
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
}

impl Profile {
    /// The `default` profile before anyone changed it.
    pub fn initial_default() -> Profile {
        Profile {
            name: DEFAULT_PROFILE.into(),
            description: "Default Incus profile".into(),
            config: BTreeMap::new(),
            devices: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ProfileCommand {
    Create {
        profile: Profile,
    },
    /// Replaces a profile's description, config and devices.
    Update {
        profile: Profile,
    },
    Rename {
        name: String,
        new_name: String,
    },
    Delete {
        name: String,
    },
}

impl ProfileCommand {
    pub fn name(&self) -> &'static str {
        match self {
            ProfileCommand::Create { .. } => "create_profile",
            ProfileCommand::Update { .. } => "update_profile",
            ProfileCommand::Rename { .. } => "rename_profile",
            ProfileCommand::Delete { .. } => "delete_profile",
        }
    }
}

/// Config keys a profile may set now: the instance key families Incus has. The
/// instance code checks values when it applies them.
const CONFIG_PREFIXES: &[&str] = &[
    "boot.",
    "cloud-init.",
    "cluster.evacuate",
    "environment.",
    "limits.",
    "linux.",
    "raw.",
    "security.",
    "snapshots.",
    "user.",
];

/// What an instance does when its member is evacuated, and its values (as Incus).
pub const EVACUATE_KEY: &str = "cluster.evacuate";
pub const EVACUATE_MODES: &[&str] = &[
    "auto",
    "migrate",
    "live-migrate",
    "stop",
    "stateful-stop",
    "force-stop",
];

/// When the instance's member takes scheduled snapshots (`api::schedule`).
const SCHEDULE_KEY: &str = "snapshots.schedule";

/// Keys a disk device may have.
const DISK_KEYS: &[&str] = &[
    "type",
    "path",
    "pool",
    "size",
    "readonly",
    "required",
    "boot.priority",
    "limits.read",
    "limits.write",
    "limits.max",
];

/// Checks config keys and devices (Incus's messages where it has them).
pub fn validate(state: &State, profile: &Profile) -> Result<(), StateError> {
    for key in profile.config.keys() {
        if !CONFIG_PREFIXES.iter().any(|p| key.starts_with(p)) {
            return Err(StateError::Invalid(format!("Unknown configuration key: {key}")));
        }
    }
    if let Some(v) = profile.config.get(EVACUATE_KEY) {
        if !EVACUATE_MODES.contains(&v.as_str()) {
            return Err(StateError::Invalid(format!(
                "Invalid value for config key {EVACUATE_KEY:?}: Invalid value {v:?} (not one of {EVACUATE_MODES:?})"
            )));
        }
    }
    if let Some(v) = profile.config.get(SCHEDULE_KEY) {
        // As Incus: each of the comma+space separated triggers is an alias or a cron
        // expression, case aside.
        let v = v.to_lowercase();
        if let Some(bad) = v.split(", ").find(|t| api::schedule::parse(t, "").is_err()) {
            return Err(StateError::Invalid(format!(
                "Invalid value for config key {SCHEDULE_KEY:?}: Error parsing cron expr: {bad}"
            )));
        }
    }
    let mut roots = 0;
    for (name, device) in &profile.devices {
        let fail = |why: String| {
            StateError::Invalid(format!(
                "Invalid devices: Device validation failed for {name:?}: {why}"
            ))
        };
        if name.is_empty() || name.contains('/') {
            return Err(StateError::Invalid(format!("Invalid device name {name:?}")));
        }
        match device.get("type").map(String::as_str) {
            None | Some("") => return Err(fail("Missing device type".into())),
            Some("disk") => {}
            Some(t @ ("nic" | "infiniband")) => {
                return Err(fail(format!(
                    "Unsupported device type {t:?}: this server has no networks yet"
                )))
            }
            Some(
                t @ ("unix-char" | "unix-block" | "unix-hotplug" | "usb" | "gpu" | "proxy" | "tpm" | "pci"
                | "none"),
            ) => {
                return Err(fail(format!(
                    "Unsupported device type {t:?}: only \"disk\" devices are supported by this server yet"
                )))
            }
            Some(_) => return Err(fail("Unsupported device type".into())),
        }
        if let Some(key) = device.keys().find(|k| !DISK_KEYS.contains(&k.as_str())) {
            let why = if key == "source" {
                "Disks from host paths or custom volumes (\"source\") are not supported by this server yet"
                    .into()
            } else {
                format!("Invalid device option {key:?}")
            };
            return Err(fail(why));
        }
        let path = device.get("path").map(String::as_str).unwrap_or("");
        if path.is_empty() {
            return Err(fail(
                "Disk entry is missing the required \"path\" property".into(),
            ));
        }
        if path == "/" {
            roots += 1;
        } else {
            return Err(fail(
                "Only the root disk (path \"/\") is supported by this server yet".into(),
            ));
        }
        match device.get("pool").map(String::as_str) {
            None | Some("") => return Err(fail("Root disk entry must have a \"pool\" property set".into())),
            Some(pool) => state.pool_usable(pool).map_err(fail)?,
        }
    }
    if roots > 1 {
        return Err(StateError::Invalid(
            "Invalid devices: More than one root device found".into(),
        ));
    }
    Ok(())
}

pub(super) fn apply(state: &mut State, cmd: &ProfileCommand) -> Result<(), StateError> {
    match cmd {
        ProfileCommand::Create { profile } => {
            if state.profile(&profile.name).is_some() {
                return Err(StateError::ProfileExists);
            }
            validate(state, profile)?;
            state.profiles.insert(profile.name.clone(), profile.clone());
        }
        ProfileCommand::Update { profile } => {
            if state.profile(&profile.name).is_none() {
                return Err(StateError::ProfileNotFound);
            }
            validate(state, profile)?;
            let old = state.profiles.insert(profile.name.clone(), profile.clone());
            let rootless = state
                .instances
                .values()
                .find(|i| i.profiles.contains(&profile.name) && i.root_pool(state).is_none())
                .map(|i| i.name.clone());
            if let Some(name) = rootless {
                match old {
                    Some(old) => state.profiles.insert(profile.name.clone(), old),
                    None => state.profiles.remove(&profile.name),
                };
                return Err(StateError::Invalid(format!(
                    "Instance {name:?} would have no root disk device"
                )));
            }
        }
        ProfileCommand::Rename { name, new_name } => {
            if name == DEFAULT_PROFILE {
                return Err(StateError::Invalid(
                    "The \"default\" profile cannot be renamed".into(),
                ));
            }
            if state.profile(new_name).is_some() {
                return Err(StateError::Invalid(format!(
                    "Profile {new_name:?} already exists"
                )));
            }
            let mut p = state.profiles.remove(name).ok_or(StateError::ProfileNotFound)?;
            p.name = new_name.clone();
            state.profiles.insert(new_name.clone(), p);
            super::instances::rename_profile(state, name, new_name);
        }
        ProfileCommand::Delete { name } => {
            if name == DEFAULT_PROFILE {
                return Err(StateError::Invalid(
                    "The \"default\" profile cannot be deleted".into(),
                ));
            }
            if !state.profiles.contains_key(name) {
                return Err(StateError::ProfileNotFound);
            }
            if !state.profile_used_by(name).is_empty() {
                return Err(StateError::Invalid("Profile is currently in use".into()));
            }
            state.profiles.remove(name);
        }
    }
    Ok(())
}

impl State {
    /// A profile by name (`default` always exists).
    pub fn profile(&self, name: &str) -> Option<Profile> {
        match self.profiles.get(name) {
            Some(p) => Some(p.clone()),
            None if name == DEFAULT_PROFILE => Some(Profile::initial_default()),
            None => None,
        }
    }

    /// Every profile, by name (`default` included).
    pub fn all_profiles(&self) -> impl Iterator<Item = Profile> + '_ {
        let default = (!self.profiles.contains_key(DEFAULT_PROFILE)).then(Profile::initial_default);
        let mut all: Vec<Profile> = self.profiles.values().cloned().chain(default).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PoolCommand;

    fn ap(s: &mut State, c: ProfileCommand) -> Result<(), StateError> {
        s.apply(&c.into())
    }

    fn profile(name: &str, devices: &[(&str, &[(&str, &str)])]) -> Profile {
        Profile {
            name: name.into(),
            description: String::new(),
            config: BTreeMap::new(),
            devices: devices
                .iter()
                .map(|(n, kv)| {
                    (
                        n.to_string(),
                        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    )
                })
                .collect(),
        }
    }

    fn with_pool() -> State {
        let mut s = State::default();
        s.apply(
            &PoolCommand::Create {
                name: "pool1".into(),
                driver: "dir".into(),
                description: String::new(),
                config: BTreeMap::new(),
                standalone_part: Some(BTreeMap::new()),
            }
            .into(),
        )
        .unwrap();
        s
    }

    #[test]
    fn t10_default_exists_and_stays() {
        let mut s = State::default();
        assert_eq!(s.profile("default").unwrap().description, "Default Incus profile");
        assert_eq!(s.all_profiles().count(), 1);
        assert_eq!(
            ap(
                &mut s,
                ProfileCommand::Create {
                    profile: profile("default", &[])
                }
            ),
            Err(StateError::ProfileExists)
        );
        for c in [
            ProfileCommand::Delete {
                name: "default".into(),
            },
            ProfileCommand::Rename {
                name: "default".into(),
                new_name: "x".into(),
            },
        ] {
            assert!(ap(&mut s, c).is_err());
        }
        ap(
            &mut s,
            ProfileCommand::Create {
                profile: profile("p1", &[]),
            },
        )
        .unwrap();
        ap(
            &mut s,
            ProfileCommand::Rename {
                name: "p1".into(),
                new_name: "p2".into(),
            },
        )
        .unwrap();
        let names: Vec<String> = s.all_profiles().map(|p| p.name).collect();
        assert_eq!(names, ["default", "p2"]);
    }

    #[test]
    fn t20_snapshot_schedules_are_checked() {
        let mut s = State::default();
        let set = |v: &str| {
            let mut p = profile("p", &[]);
            p.config.insert("snapshots.schedule".into(), v.into());
            validate(&State::default(), &p)
        };
        for ok in [
            "",
            "@daily",
            "@HOURLY",
            "@startup, @daily",
            "0 6 * * *",
            "*/15 * * * 1-5",
            "@never",
        ] {
            assert_eq!(set(ok), Ok(()), "{ok}");
        }
        for (bad, trigger) in [
            ("sometimes", "sometimes"),
            ("@fortnightly", "@fortnightly"),
            ("0 6 * *", "0 6 * *"),
            ("@daily, 61 * * * *", "61 * * * *"),
        ] {
            assert_eq!(
                set(bad),
                Err(StateError::Invalid(format!(
                    "Invalid value for config key \"snapshots.schedule\": Error parsing cron expr: {trigger}"
                ))),
                "{bad}"
            );
        }
        // Refused whole: nothing changes.
        let before = s.clone();
        let mut p = profile("p1", &[]);
        p.config.insert("snapshots.schedule".into(), "sometimes".into());
        assert!(ap(&mut s, ProfileCommand::Create { profile: p }).is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn t30_devices_are_checked() {
        let mut s = with_pool();
        let root = [("type", "disk"), ("path", "/"), ("pool", "pool1")];
        ap(
            &mut s,
            ProfileCommand::Update {
                profile: profile("default", &[("root", &root)]),
            },
        )
        .unwrap();
        for (devices, msg) in [
            (
                &[("root", &[("type", "disk"), ("path", "/"), ("pool", "nope")][..])][..],
                "Invalid devices: Device validation failed for \"root\": Failed loading storage pool \"nope\": Storage pool not found",
            ),
            (
                &[("root", &[("type", "disk"), ("path", "/")][..])][..],
                "Invalid devices: Device validation failed for \"root\": Root disk entry must have a \"pool\" property set",
            ),
            (
                &[("eth0", &[("type", "nic"), ("network", "incusbr0")][..])][..],
                "Invalid devices: Device validation failed for \"eth0\": Unsupported device type \"nic\": this server has no networks yet",
            ),
            (
                &[("x", &[("type", "bogus")][..])][..],
                "Invalid devices: Device validation failed for \"x\": Unsupported device type",
            ),
            (
                &[("r", &root[..]), ("s", &root[..])][..],
                "Invalid devices: More than one root device found",
            ),
        ] {
            let before = s.clone();
            let e = ap(&mut s, ProfileCommand::Create { profile: profile("p", devices) }).unwrap_err();
            assert_eq!(e.to_string(), msg);
            assert_eq!(s, before);
        }
        let mut bad = profile("p", &[]);
        bad.config.insert("nonsense".into(), "1".into());
        assert_eq!(
            ap(&mut s, ProfileCommand::Create { profile: bad })
                .unwrap_err()
                .to_string(),
            "Unknown configuration key: nonsense"
        );
    }
}
