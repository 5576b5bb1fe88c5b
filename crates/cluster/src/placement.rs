//! Where a new instance goes: a pure function of the state (members, their instances,
//! their evacuation and `scheduler.instance`), the `--target` the client gave, and
//! whether this member sees each member online.
//!
//! As Incus: without a target, the candidates are the members that are online, not
//! evacuated and set to `scheduler.instance=all` (the default; `manual` and `group`
//! keep a member out of automatic placement), and the one with the fewest instances
//! wins (ties go to the lowest member id, so every member would choose alike). A
//! target names a member, which is taken as long as it exists, is online and is not
//! evacuated (whatever its scheduler). `@group` names a cluster group; this server has
//! none yet, so every group is unknown, with Incus's message.

use std::collections::BTreeMap;

use api::ApiError;

use crate::state::{Member, MemberId, Scheduler, State};

/// What placement knows of a member: what this member sees (online) and what the state
/// says (evacuated, scheduler). [`facts_of`] fills the last two from the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    pub online: bool,
    pub evacuated: bool,
    /// `scheduler.instance`: anything but `all` keeps automatic placement away.
    pub scheduler: Scheduler,
}

/// The facts of a member from the state, with `online` as this member sees it.
pub fn facts_of(state: &State, m: &Member, online: bool) -> Facts {
    let settings = state.member_settings(m.id);
    Facts {
        online,
        evacuated: settings.evacuated,
        scheduler: settings.scheduler(),
    }
}

/// The member a new instance goes to: `None` while standalone (this server), or a
/// member id; an error in Incus's words and status otherwise.
pub fn place(
    state: &State,
    target: Option<&str>,
    facts: &dyn Fn(&Member) -> Facts,
) -> Result<Option<MemberId>, ApiError> {
    if state.members.is_empty() {
        return match target {
            Some(t) if !t.is_empty() => Err(ApiError::bad_request("Target only allowed when clustered")),
            _ => Ok(None),
        };
    }
    match target.filter(|t| !t.is_empty()) {
        Some(t) => targeted(state, t, facts).map(Some),
        None => fewest(state, facts).map(Some),
    }
}

fn targeted(state: &State, target: &str, facts: &dyn Fn(&Member) -> Facts) -> Result<MemberId, ApiError> {
    if let Some(group) = target.strip_prefix('@') {
        return Err(ApiError::bad_request(format!(
            "Cluster group {group:?} doesn't exist"
        )));
    }
    let member = state
        .members
        .get(target)
        .ok_or_else(|| ApiError::not_found_msg(format!("Cluster member {target:?} not found")))?;
    let f = facts(member);
    if !f.online {
        return Err(ApiError::unavailable(format!(
            "Cluster member {target:?} is offline"
        )));
    }
    if f.evacuated {
        return Err(ApiError::new(403, "Cluster member is evacuated"));
    }
    Ok(member.id)
}

fn fewest(state: &State, facts: &dyn Fn(&Member) -> Facts) -> Result<MemberId, ApiError> {
    let mut count: BTreeMap<MemberId, usize> = BTreeMap::new();
    for i in state.instances.values() {
        if let Some(at) = i.location {
            *count.entry(at).or_default() += 1;
        }
    }
    state
        .members
        .values()
        .filter(|m| {
            let f = facts(m);
            f.online && !f.evacuated && f.scheduler == Scheduler::All
        })
        .min_by_key(|m| (count.get(&m.id).copied().unwrap_or(0), m.id))
        .map(|m| m.id)
        .ok_or_else(|| ApiError::internal("Couldn't find a cluster member for the instance"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{InstanceRecord, InstanceStatus};
    use proptest::prelude::*;
    use time::OffsetDateTime;

    fn state(members: u64, instances: &[(u64, usize)]) -> State {
        let mut s = State::default();
        for id in 1..=members {
            s.members.insert(
                format!("node{id}"),
                Member {
                    name: format!("node{id}"),
                    id,
                    address: format!("a{id}"),
                    certificate: String::new(),
                    fingerprint: String::new(),
                    description: String::new(),
                    failure_domain: "default".into(),
                    architecture: "x86_64".into(),
                },
            );
        }
        for &(at, n) in instances {
            for k in 0..n {
                let name = format!("c{at}-{k}");
                s.instances.insert(
                    name.clone(),
                    InstanceRecord {
                        name,
                        location: Some(at),
                        kind: "container".into(),
                        architecture: "x86_64".into(),
                        description: String::new(),
                        config: Default::default(),
                        devices: Default::default(),
                        profiles: vec![],
                        ephemeral: false,
                        status: InstanceStatus::Stopped,
                        created_at: OffsetDateTime::UNIX_EPOCH,
                    },
                );
            }
        }
        s
    }

    fn all_online(_: &Member) -> Facts {
        Facts {
            online: true,
            ..Facts::default()
        }
    }

    #[test]
    fn t10_fewest_instances_wins() {
        let s = state(3, &[(1, 2), (2, 1), (3, 1)]);
        assert_eq!(
            place(&s, None, &all_online).unwrap(),
            Some(2),
            "tie to the lowest id"
        );
        let s = state(3, &[(1, 0), (2, 1), (3, 1)]);
        assert_eq!(place(&s, None, &all_online).unwrap(), Some(1));
        assert_eq!(
            place(&s, Some(""), &all_online).unwrap(),
            Some(1),
            "empty target is none"
        );
    }

    #[test]
    fn t11_standalone_places_here() {
        let s = State::default();
        assert_eq!(place(&s, None, &all_online).unwrap(), None);
        let e = place(&s, Some("node1"), &all_online).unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (400, "Target only allowed when clustered")
        );
    }

    #[test]
    fn t12_offline_evacuated_and_manual_members_are_skipped() {
        let s = state(3, &[(3, 5)]);
        let facts = |m: &Member| Facts {
            online: m.id != 1,
            evacuated: false,
            scheduler: if m.id == 2 {
                Scheduler::Manual
            } else {
                Scheduler::All
            },
        };
        assert_eq!(place(&s, None, &facts).unwrap(), Some(3));
        let group = |m: &Member| Facts {
            online: true,
            evacuated: false,
            scheduler: if m.id == 3 {
                Scheduler::All
            } else {
                Scheduler::Group
            },
        };
        assert_eq!(
            place(&s, None, &group).unwrap(),
            Some(3),
            "group scheduling is not automatic"
        );
        let evac = |m: &Member| Facts {
            online: true,
            evacuated: m.id != 2,
            scheduler: Scheduler::All,
        };
        assert_eq!(place(&s, None, &evac).unwrap(), Some(2));
        let none = |_: &Member| Facts::default();
        let e = place(&s, None, &none).unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (500, "Couldn't find a cluster member for the instance")
        );
    }

    #[test]
    fn t20_target_is_honoured_or_refused_in_incus_words() {
        let s = state(3, &[(2, 9)]);
        let facts = |m: &Member| Facts {
            online: m.id != 3,
            evacuated: m.id == 1,
            scheduler: if m.id == 2 {
                Scheduler::Manual
            } else {
                Scheduler::All
            },
        };
        assert_eq!(
            place(&s, Some("node2"), &facts).unwrap(),
            Some(2),
            "manual takes a target"
        );
        for (target, status, msg) in [
            ("node1", 403, "Cluster member is evacuated"),
            ("node3", 503, "Cluster member \"node3\" is offline"),
            ("node9", 404, "Cluster member \"node9\" not found"),
            ("@gpu", 400, "Cluster group \"gpu\" doesn't exist"),
        ] {
            let e = place(&s, Some(target), &facts).unwrap_err();
            assert_eq!((e.status, e.message.as_str()), (status, msg), "{target}");
        }
    }

    fn sched(n: u8) -> Scheduler {
        match n {
            0 => Scheduler::All,
            1 => Scheduler::Manual,
            _ => Scheduler::Group,
        }
    }

    /// The facts come from the replicated settings: an evacuation or a scheduler set
    /// through commands changes where the next instance goes.
    #[test]
    fn t13_settings_in_the_state_steer_placement() {
        use crate::state::MemberCommand;
        let mut s = state(3, &[(3, 1)]);
        let online = |s: &State| {
            let s = s.clone();
            move |m: &Member| facts_of(&s, m, true)
        };
        assert_eq!(place(&s, None, &online(&s)).unwrap(), Some(1));
        s.apply(
            &MemberCommand::SetEvacuated {
                name: "node1".into(),
                evacuated: true,
            }
            .into(),
        )
        .unwrap();
        s.apply(
            &MemberCommand::SetMemberConfig {
                name: "node2".into(),
                config: [("scheduler.instance".to_string(), "manual".to_string())].into(),
            }
            .into(),
        )
        .unwrap();
        assert_eq!(place(&s, None, &online(&s)).unwrap(), Some(3));
        assert_eq!(place(&s, Some("node2"), &online(&s)).unwrap(), Some(2));
        let e = place(&s, Some("node1"), &online(&s)).unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (403, "Cluster member is evacuated")
        );
        let e = s
            .apply(
                &MemberCommand::SetEvacuated {
                    name: "node1".into(),
                    evacuated: true,
                }
                .into(),
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "Cluster member is already evacuated");
        s.apply(
            &MemberCommand::SetEvacuated {
                name: "node1".into(),
                evacuated: false,
            }
            .into(),
        )
        .unwrap();
        assert_eq!(place(&s, None, &online(&s)).unwrap(), Some(1));
        let e = s
            .apply(
                &MemberCommand::SetEvacuated {
                    name: "node1".into(),
                    evacuated: false,
                }
                .into(),
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "Cluster member is already restored");
        let bad = s.apply(
            &MemberCommand::SetMemberConfig {
                name: "node2".into(),
                config: [("scheduler.instance".to_string(), "sometimes".to_string())].into(),
            }
            .into(),
        );
        assert!(bad.is_err());
    }

    proptest! {
        /// Whatever the counts and facts, an automatic choice is an eligible member with
        /// no eligible member holding fewer instances, and a refusal means none is
        /// eligible.
        #[test]
        fn p_automatic_choice_is_an_eligible_least_loaded_member(
            counts in proptest::collection::vec(0..4usize, 1..6),
            flags in proptest::collection::vec((any::<bool>(), any::<bool>(), 0..3u8), 6),
        ) {
            let n = counts.len() as u64;
            let load: Vec<(u64, usize)> = counts.iter().enumerate().map(|(i, c)| (i as u64 + 1, *c)).collect();
            let s = state(n, &load);
            let facts = |m: &Member| {
                let (online, evacuated, scheduler) = flags[(m.id - 1) as usize];
                Facts { online, evacuated, scheduler: sched(scheduler) }
            };
            let eligible: Vec<&(u64, usize)> = load
                .iter()
                .filter(|(id, _)| {
                    let (online, evacuated, scheduler) = flags[(*id - 1) as usize];
                    online && !evacuated && scheduler == 0
                })
                .collect();
            match place(&s, None, &facts) {
                Ok(Some(id)) => {
                    let chosen = eligible.iter().find(|(i, _)| *i == id);
                    prop_assert!(chosen.is_some(), "chose an ineligible member {id}");
                    let least = eligible.iter().map(|(_, c)| *c).min();
                    prop_assert_eq!(chosen.map(|(_, c)| *c), least);
                }
                Ok(None) => prop_assert!(false, "a cluster never places on the standalone server"),
                Err(_) => prop_assert!(eligible.is_empty()),
            }
        }
    }
}
