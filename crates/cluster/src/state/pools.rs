//! Storage pools: the replicated record of each pool and of its part on every member.
//!
//! A pool is made the Incus cluster way, in two steps. `incus storage create P dir
//! --target M` on each member records M's part as pending, with M's own keys (only the
//! member-specific ones, such as `source`). `incus storage create P dir` then sets the
//! global keys, marks the pool `Errored` (what it stays if a member fails), has each
//! member create its local part (each success recorded here), and marks it `Created`
//! once every part is. A standalone server does the same with one part placed nowhere
//! (`None`), in one request.
//!
//! ```text
//!  pool:   Pending ──Create──> Errored ──every part Created──> Created
//!                                 ^  retry (Create again, no global keys)
//!  part:   Pending ──MemberCreated──> Created
//! ```
//!
//! The member-local work (directories, `statvfs`) belongs to the `storage` crate and the
//! server; this module only keeps the record. A part names its member by id; removing
//! the member removes its part. A pool used by a profile's disk device is not deleted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{MemberId, State, StateError};

/// Config keys that belong to one member's part of a pool, never to the pool as a whole
/// (Incus's `NodeSpecificStorageConfig`).
pub const MEMBER_SPECIFIC_KEYS: &[&str] = &[
    "source",
    "source.wipe",
    "volatile.initial_source",
    "zfs.pool_name",
    "lvm.thinpool_name",
    "lvm.vg_name",
    "lvm.vg.force_reuse",
    "size",
];

/// Whether `key` is member-specific.
pub fn is_member_specific(key: &str) -> bool {
    MEMBER_SPECIFIC_KEYS.contains(&key)
}

/// A pool's or a part's state, named as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolStatus {
    Pending,
    Created,
    Errored,
}

impl PoolStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolStatus::Pending => api::types::pool_status::PENDING,
            PoolStatus::Created => api::types::pool_status::CREATED,
            PoolStatus::Errored => api::types::pool_status::ERRORED,
        }
    }
}

/// One member's part of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolPart {
    /// The member; `None` on a standalone server.
    pub location: Option<MemberId>,
    /// Its member-specific keys (`source` once created, as Incus records it).
    pub config: BTreeMap<String, String>,
    /// `Pending` or `Created`.
    pub status: PoolStatus,
}

/// A storage pool as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub driver: String,
    pub description: String,
    /// The keys that hold on every member.
    pub config: BTreeMap<String, String>,
    pub status: PoolStatus,
    /// The members' parts, in the order they were defined.
    pub parts: Vec<PoolPart>,
    /// A delete has begun (its parts are being removed): nothing may start using it.
    #[serde(default)]
    pub deleting: bool,
}

impl Pool {
    pub fn part(&self, at: Option<MemberId>) -> Option<&PoolPart> {
        self.parts.iter().find(|p| p.location == at)
    }

    /// The config as one member sees it: the global keys and its own.
    pub fn config_at(&self, at: Option<MemberId>) -> BTreeMap<String, String> {
        let mut config = self.config.clone();
        if let Some(part) = self.part(at) {
            config.extend(part.config.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        config
    }

    /// Whether a create ran before and failed somewhere (Incus's "partially created"):
    /// then a retry brings no global keys.
    pub fn partially_created(&self) -> bool {
        self.status == PoolStatus::Errored || !self.config.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PoolCommand {
    /// `POST /1.0/storage-pools?target=M`: M's part, pending, with its own keys.
    DefinePart {
        name: String,
        driver: String,
        location: MemberId,
        config: BTreeMap<String, String>,
    },
    /// `POST /1.0/storage-pools`: the global step. On a cluster every current member must
    /// have a part; standalone (`standalone_part`), the record and its one part are made
    /// here if absent. The pool becomes `Errored` until every part is created.
    Create {
        name: String,
        driver: String,
        description: String,
        config: BTreeMap<String, String>,
        /// Standalone only: this server's own keys.
        standalone_part: Option<BTreeMap<String, String>>,
    },
    /// A member created its part; `config` is its keys as they now are.
    PartCreated {
        name: String,
        location: Option<MemberId>,
        config: BTreeMap<String, String>,
    },
    /// Every part is created: the pool is.
    MarkCreated { name: String },
    /// A member that joined after the pool was created made its part (with its own
    /// keys, from the join's `member_config`).
    AddPart {
        name: String,
        location: MemberId,
        config: BTreeMap<String, String>,
    },
    /// Replaces the description and global keys.
    Update {
        name: String,
        description: String,
        config: BTreeMap<String, String>,
    },
    /// Replaces one member's keys.
    UpdatePart {
        name: String,
        location: Option<MemberId>,
        config: BTreeMap<String, String>,
    },
    /// The first step of a delete, checked against the latest state: refused while the
    /// pool is used; from then on no profile may start using it.
    BeginDelete { name: String },
    /// The last step, once every member removed its part.
    Delete { name: String },
}

impl PoolCommand {
    pub fn name(&self) -> &'static str {
        match self {
            PoolCommand::DefinePart { .. } => "define_pool_part",
            PoolCommand::Create { .. } => "create_pool",
            PoolCommand::PartCreated { .. } => "pool_part_created",
            PoolCommand::MarkCreated { .. } => "mark_pool_created",
            PoolCommand::AddPart { .. } => "add_pool_part",
            PoolCommand::Update { .. } => "update_pool",
            PoolCommand::UpdatePart { .. } => "update_pool_part",
            PoolCommand::BeginDelete { .. } => "begin_delete_pool",
            PoolCommand::Delete { .. } => "delete_pool",
        }
    }
}

fn being_deleted() -> StateError {
    invalid("The storage pool is being deleted")
}

fn invalid(msg: impl Into<String>) -> StateError {
    StateError::Invalid(msg.into())
}

fn only_member_specific(config: &BTreeMap<String, String>, msg: &str) -> Result<(), StateError> {
    match config.keys().find(|k| !is_member_specific(k)) {
        Some(k) => Err(invalid(msg.replace("{}", k))),
        None => Ok(()),
    }
}

fn no_member_specific(config: &BTreeMap<String, String>) -> Result<(), StateError> {
    match config.keys().find(|k| is_member_specific(k)) {
        Some(k) => Err(invalid(format!("Config key {k:?} is cluster member specific"))),
        None => Ok(()),
    }
}

pub(super) fn apply(state: &mut State, cmd: &PoolCommand) -> Result<(), StateError> {
    match cmd {
        PoolCommand::DefinePart {
            name,
            driver,
            location,
            config,
        } => {
            state.check_member(Some(*location))?;
            only_member_specific(config, "Config key \"{}\" may not be used as member-specific key")?;
            match state.pools.get(name) {
                Some(p) if &p.driver != driver => {
                    return Err(invalid("Storage pool already exists with a different driver"))
                }
                Some(p) if p.status != PoolStatus::Pending => {
                    return Err(invalid("Storage pool is not in pending state"))
                }
                Some(p) if p.part(Some(*location)).is_some() => {
                    let member = state.location_name(Some(*location), "");
                    return Err(invalid(format!(
                        "The storage pool already defined on member {member:?}"
                    )));
                }
                _ => {}
            }
            let pool = state.pools.entry(name.clone()).or_insert_with(|| Pool {
                name: name.clone(),
                driver: driver.clone(),
                description: String::new(),
                config: BTreeMap::new(),
                status: PoolStatus::Pending,
                parts: Vec::new(),
                deleting: false,
            });
            pool.parts.push(PoolPart {
                location: Some(*location),
                config: config.clone(),
                status: PoolStatus::Pending,
            });
        }
        PoolCommand::Create {
            name,
            driver,
            description,
            config,
            standalone_part,
        } => {
            no_member_specific(config)?;
            match (state.pools.get(name), standalone_part) {
                (None, Some(part)) => {
                    if !state.members.is_empty() {
                        return Err(invalid(
                            "Pool not pending on any node (use --target <node> first)",
                        ));
                    }
                    only_member_specific(part, "Config key \"{}\" may not be used as member-specific key")?;
                    state.pools.insert(
                        name.clone(),
                        Pool {
                            name: name.clone(),
                            driver: driver.clone(),
                            description: description.clone(),
                            config: config.clone(),
                            status: PoolStatus::Errored,
                            parts: vec![PoolPart {
                                location: None,
                                config: part.clone(),
                                status: PoolStatus::Pending,
                            }],
                            deleting: false,
                        },
                    );
                }
                (None, None) => {
                    return Err(invalid(
                        "Pool not pending on any node (use --target <node> first)",
                    ))
                }
                (Some(p), _) => {
                    if p.deleting {
                        return Err(being_deleted());
                    }
                    if p.status == PoolStatus::Created {
                        return Err(invalid("The storage pool is already created"));
                    }
                    if &p.driver != driver {
                        return Err(invalid(format!(
                            "Requested storage pool driver {driver:?} doesn't match driver in existing database record {:?}",
                            p.driver
                        )));
                    }
                    let partial = p.partially_created();
                    if partial && !config.is_empty() {
                        return Err(invalid(
                            "Storage pool already partially created. Please do not specify any global config when re-running create",
                        ));
                    }
                    let missing: Vec<&str> = state
                        .members
                        .values()
                        .filter(|m| p.part(Some(m.id)).is_none())
                        .map(|m| m.name.as_str())
                        .collect();
                    if !missing.is_empty() {
                        return Err(invalid(format!(
                            "Pool not defined on nodes: {}",
                            missing.join(", ")
                        )));
                    }
                    let p = state.pools.get_mut(name).ok_or(StateError::PoolNotFound)?;
                    if !partial {
                        p.config = config.clone();
                        p.description = description.clone();
                    }
                    p.status = PoolStatus::Errored;
                }
            }
        }
        PoolCommand::PartCreated {
            name,
            location,
            config,
        } => {
            let pool = state.pools.get_mut(name).ok_or(StateError::PoolNotFound)?;
            only_member_specific(config, "Config key \"{}\" may not be used as member-specific key")?;
            let part = pool
                .parts
                .iter_mut()
                .find(|p| p.location == *location)
                .ok_or_else(|| invalid("The storage pool is not defined on this member"))?;
            part.status = PoolStatus::Created;
            part.config = config.clone();
        }
        PoolCommand::MarkCreated { name } => {
            let pool = state.pools.get_mut(name).ok_or(StateError::PoolNotFound)?;
            if pool.parts.iter().any(|p| p.status != PoolStatus::Created) {
                return Err(invalid("The storage pool is not created on every member yet"));
            }
            pool.status = PoolStatus::Created;
        }
        PoolCommand::AddPart {
            name,
            location,
            config,
        } => {
            state.check_member(Some(*location))?;
            only_member_specific(config, "Config key \"{}\" may not be used as member-specific key")?;
            let pool = state.pools.get_mut(name).ok_or(StateError::PoolNotFound)?;
            if pool.status != PoolStatus::Created || pool.deleting {
                return Err(invalid("The storage pool is not created"));
            }
            if pool.part(Some(*location)).is_some() {
                return Err(invalid("The storage pool is already defined on this member"));
            }
            pool.parts.push(PoolPart {
                location: Some(*location),
                config: config.clone(),
                status: PoolStatus::Created,
            });
        }
        PoolCommand::Update {
            name,
            description,
            config,
        } => {
            no_member_specific(config)?;
            let pool = state.pools.get_mut(name).ok_or(StateError::PoolNotFound)?;
            pool.description = description.clone();
            pool.config = config.clone();
        }
        PoolCommand::UpdatePart {
            name,
            location,
            config,
        } => {
            only_member_specific(
                config,
                "Config key \"{}\" may not be used as cluster member specific key",
            )?;
            let pool = state.pools.get_mut(name).ok_or(StateError::PoolNotFound)?;
            let part = pool
                .parts
                .iter_mut()
                .find(|p| p.location == *location)
                .ok_or_else(|| invalid("The storage pool is not defined on this member"))?;
            part.config = config.clone();
        }
        PoolCommand::BeginDelete { name } => {
            if !state.pools.contains_key(name) {
                return Err(StateError::PoolNotFound);
            }
            if !state.pool_used_by(name).is_empty() {
                return Err(invalid("The storage pool is currently in use"));
            }
            if let Some(p) = state.pools.get_mut(name) {
                p.deleting = true;
            }
        }
        PoolCommand::Delete { name } => {
            if !state.pools.contains_key(name) {
                return Err(StateError::PoolNotFound);
            }
            if !state.pool_used_by(name).is_empty() {
                return Err(invalid("The storage pool is currently in use"));
            }
            state.pools.remove(name);
        }
    }
    Ok(())
}

impl State {
    /// Whether a profile may put a disk on `pool` now.
    pub(super) fn pool_usable(&self, pool: &str) -> Result<(), String> {
        match self.pools.get(pool) {
            None => Err(format!(
                "Failed loading storage pool {pool:?}: Storage pool not found"
            )),
            Some(p) if p.deleting => Err(format!("Storage pool {pool:?} is being deleted")),
            Some(_) => Ok(()),
        }
    }

    /// What uses a pool, as API paths: the profiles whose disk devices are on it, and
    /// the instances whose root disk is.
    pub fn pool_used_by(&self, pool: &str) -> Vec<String> {
        let instances = self
            .instances
            .values()
            .filter(|i| i.root_pool(self).is_some_and(|p| p == pool))
            .map(|i| format!("/1.0/instances/{}", i.name));
        self.all_profiles()
            .filter(|p| {
                p.devices
                    .values()
                    .any(|d| d.get("pool").is_some_and(|v| v == pool))
            })
            .map(|p| format!("/1.0/profiles/{}", p.name))
            .chain(instances)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Member, MemberCommand, Profile, ProfileCommand};
    use crate::Command;

    fn ap(s: &mut State, c: impl Into<Command>) -> Result<(), StateError> {
        s.apply(&c.into())
    }

    fn cluster(n: u64) -> State {
        let mut s = State::default();
        for id in 1..=n {
            let member = Member {
                name: format!("node{id}"),
                id,
                address: format!("a{id}"),
                certificate: String::new(),
                fingerprint: format!("fp{id}"),
                description: String::new(),
                failure_domain: "default".into(),
                architecture: "x86_64".into(),
            };
            ap(
                &mut s,
                MemberCommand::AddMember {
                    member,
                    token_id: None,
                },
            )
            .unwrap();
        }
        s
    }

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn define(name: &str, at: MemberId, config: &[(&str, &str)]) -> PoolCommand {
        PoolCommand::DefinePart {
            name: name.into(),
            driver: "dir".into(),
            location: at,
            config: keys(config),
        }
    }

    fn create(name: &str, config: &[(&str, &str)]) -> PoolCommand {
        PoolCommand::Create {
            name: name.into(),
            driver: "dir".into(),
            description: "d".into(),
            config: keys(config),
            standalone_part: None,
        }
    }

    fn refused(s: &mut State, c: impl Into<Command>, msg: &str) {
        let before = s.clone();
        let e = ap(s, c).expect_err(msg);
        assert_eq!(e.to_string(), msg);
        assert_eq!(*s, before, "{msg}: refused but changed");
    }

    #[test]
    fn t10_pending_on_every_member_then_created() {
        let mut s = cluster(2);
        refused(
            &mut s,
            create("p1", &[]),
            "Pool not pending on any node (use --target <node> first)",
        );
        refused(
            &mut s,
            define("p1", 1, &[("rsync.bwlimit", "1")]),
            "Config key \"rsync.bwlimit\" may not be used as member-specific key",
        );
        ap(&mut s, define("p1", 1, &[("source", "/a")])).unwrap();
        refused(
            &mut s,
            define("p1", 1, &[]),
            "The storage pool already defined on member \"node1\"",
        );
        refused(&mut s, create("p1", &[]), "Pool not defined on nodes: node2");
        ap(&mut s, define("p1", 2, &[])).unwrap();
        assert_eq!(s.pools["p1"].status, PoolStatus::Pending);
        refused(
            &mut s,
            create("p1", &[("source", "/x")]),
            "Config key \"source\" is cluster member specific",
        );
        ap(&mut s, create("p1", &[("user.k", "v")])).unwrap();
        assert_eq!(
            s.pools["p1"].status,
            PoolStatus::Errored,
            "until every part is made"
        );
        assert_eq!(
            s.pools["p1"].config_at(Some(1)),
            keys(&[("source", "/a"), ("user.k", "v")])
        );
        ap(
            &mut s,
            PoolCommand::PartCreated {
                name: "p1".into(),
                location: Some(1),
                config: keys(&[("source", "/a")]),
            },
        )
        .unwrap();
        refused(
            &mut s,
            PoolCommand::MarkCreated { name: "p1".into() },
            "The storage pool is not created on every member yet",
        );
        // A retry brings no global keys, and keeps those of the first attempt.
        refused(
            &mut s,
            create("p1", &[("user.k", "w")]),
            "Storage pool already partially created. Please do not specify any global config when re-running create",
        );
        ap(&mut s, create("p1", &[])).unwrap();
        assert_eq!(s.pools["p1"].config, keys(&[("user.k", "v")]));
        ap(
            &mut s,
            PoolCommand::PartCreated {
                name: "p1".into(),
                location: Some(2),
                config: keys(&[("source", "/b")]),
            },
        )
        .unwrap();
        ap(&mut s, PoolCommand::MarkCreated { name: "p1".into() }).unwrap();
        assert_eq!(s.pools["p1"].status, PoolStatus::Created);
        refused(&mut s, create("p1", &[]), "The storage pool is already created");
        refused(
            &mut s,
            define("p1", 2, &[]),
            "Storage pool is not in pending state",
        );
        // A member that leaves takes its part with it.
        ap(
            &mut s,
            MemberCommand::RemoveMember {
                name: "node2".into(),
                force: false,
            },
        )
        .unwrap();
        assert_eq!(s.pools["p1"].parts.len(), 1);
    }

    #[test]
    fn t10_standalone_create_and_delete_refused_while_used() {
        let mut s = State::default();
        let mut c = create("default", &[]);
        if let PoolCommand::Create { standalone_part, .. } = &mut c {
            *standalone_part = Some(keys(&[("source", "/srv")]));
        }
        ap(&mut s, c).unwrap();
        ap(
            &mut s,
            PoolCommand::PartCreated {
                name: "default".into(),
                location: None,
                config: keys(&[("source", "/srv")]),
            },
        )
        .unwrap();
        ap(
            &mut s,
            PoolCommand::MarkCreated {
                name: "default".into(),
            },
        )
        .unwrap();
        let mut p = Profile::initial_default();
        p.devices.insert(
            "root".into(),
            keys(&[("type", "disk"), ("path", "/"), ("pool", "default")]),
        );
        ap(&mut s, ProfileCommand::Update { profile: p.clone() }).unwrap();
        assert_eq!(s.pool_used_by("default"), vec!["/1.0/profiles/default"]);
        refused(
            &mut s,
            PoolCommand::Delete {
                name: "default".into(),
            },
            "The storage pool is currently in use",
        );
        refused(
            &mut s,
            PoolCommand::BeginDelete {
                name: "default".into(),
            },
            "The storage pool is currently in use",
        );
        let root = p.clone();
        p.devices.clear();
        ap(&mut s, ProfileCommand::Update { profile: p }).unwrap();
        ap(
            &mut s,
            PoolCommand::BeginDelete {
                name: "default".into(),
            },
        )
        .unwrap();
        // Once a delete has begun, no profile may start using the pool.
        refused(
            &mut s,
            ProfileCommand::Update { profile: root },
            "Invalid devices: Device validation failed for \"root\": Storage pool \"default\" is being deleted",
        );
        ap(
            &mut s,
            PoolCommand::Delete {
                name: "default".into(),
            },
        )
        .unwrap();
        refused(
            &mut s,
            PoolCommand::Delete {
                name: "default".into(),
            },
            "Storage pool not found",
        );
        // Becoming a cluster places the standalone part on the first member.
        let mut s2 = State::default();
        let mut c = create("p", &[]);
        if let PoolCommand::Create { standalone_part, .. } = &mut c {
            *standalone_part = Some(BTreeMap::new());
        }
        ap(&mut s2, c).unwrap();
        s2.adopt_standalone(4);
        assert_eq!(s2.pools["p"].parts[0].location, Some(4));
    }
}
