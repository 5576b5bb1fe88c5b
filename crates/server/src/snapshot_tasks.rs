//! The owner's snapshot duties, once a minute: delete its instances' snapshots whose
//! `expires_at` has passed, and take the snapshots `snapshots.schedule` asks for.
//!
//! ```text
//!  every minute (at its start) on every member
//!    plan(state, this member, now, running?) ─> [Expire{c1,s0}, Take{c2,snap3,expiry}]
//!      only this member's instances: the member that holds the files does the work,
//!      so a schedule fires once in the cluster whatever member the client used
//!    each action as the API does it (records and files, lifecycle events)
//! ```
//!
//! `plan` is pure: which snapshots expire, which instances are due (a stopped one only
//! with `snapshots.schedule.stopped=true`, as in Incus), under what name
//! (`snapshots.pattern`) and until when (`snapshots.expiry`).

use std::time::Duration;

use time::OffsetDateTime;

use crate::context::Ctx;

/// What a tick does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Expire {
        instance: String,
        snapshot: String,
    },
    Take {
        instance: String,
        snapshot: String,
        expires_at: Option<OffsetDateTime>,
    },
}

/// The actions due at `now` for the instances on member `me`.
pub fn plan(
    state: &cluster::State,
    me: Option<cluster::MemberId>,
    now: OffsetDateTime,
    running: &dyn Fn(&str) -> bool,
) -> Vec<Action> {
    let mut out = Vec::new();
    for rec in state
        .instances
        .values()
        .filter(|r| r.location == me && r.status != cluster::InstanceStatus::Creating)
    {
        let snaps = state.snapshots_of(&rec.name);
        for s in &snaps {
            if s.expires_at.is_some_and(|t| t <= now) {
                out.push(Action::Expire {
                    instance: rec.name.clone(),
                    snapshot: s.name.clone(),
                });
            }
        }
        let expanded = rec.expanded_config(state);
        let spec = expanded
            .get("snapshots.schedule")
            .map(String::as_str)
            .unwrap_or("");
        let schedule = match api::schedule::parse(spec, &rec.name) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(instance = %rec.name, error = %e, "snapshot schedule ignored");
                continue;
            }
        };
        if schedule.is_empty() || !schedule.due(now) {
            continue;
        }
        let stopped_too = expanded
            .get("snapshots.schedule.stopped")
            .is_some_and(|v| v == "true");
        if !stopped_too && !running(&rec.name) {
            continue;
        }
        let taken: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
        let name = crate::routes::snapshots::next_name(
            expanded
                .get("snapshots.pattern")
                .map(String::as_str)
                .unwrap_or(""),
            &taken,
        );
        match crate::routes::snapshots::expiry(&expanded, None, true, now) {
            Ok(expires_at) => out.push(Action::Take {
                instance: rec.name.clone(),
                snapshot: name,
                expires_at,
            }),
            Err(e) => tracing::warn!(instance = %rec.name, error = %e, "snapshots.expiry ignored"),
        }
    }
    out
}

/// Runs one tick now (also what `POST /internal/test/snapshots/tick` calls).
pub async fn tick(ctx: &Ctx, now: OffsetDateTime) -> Vec<Action> {
    let state = ctx.store.state();
    let mut running = std::collections::HashSet::new();
    for rec in state.instances.values().filter(|r| r.location == ctx.member_id()) {
        let up = tokio::time::timeout(Duration::from_secs(5), ctx.driver.state(&rec.name))
            .await
            .ok()
            .and_then(|r| r.ok())
            .is_some_and(|s| s.status != instance::Status::Stopped);
        if up {
            running.insert(rec.name.clone());
        }
    }
    let actions = plan(&state, ctx.member_id(), now, &|n| running.contains(n));
    for a in &actions {
        match a {
            Action::Expire { instance, snapshot } => {
                match crate::routes::snapshots::remove(ctx, instance, snapshot).await {
                    Ok(()) => ctx.events.lifecycle(
                        "instance-snapshot-deleted",
                        &format!("/1.0/instances/{instance}/snapshots/{snapshot}"),
                        None,
                        None,
                    ),
                    Err(e) => {
                        tracing::warn!(%instance, %snapshot, error = %e, "expired snapshot not deleted")
                    }
                }
            }
            Action::Take {
                instance,
                snapshot,
                expires_at,
            } => match crate::routes::snapshots::take(ctx, instance, snapshot, *expires_at).await {
                Ok(()) => ctx.events.lifecycle(
                    "instance-snapshot-created",
                    &format!("/1.0/instances/{instance}/snapshots/{snapshot}"),
                    None,
                    None,
                ),
                Err(e) => tracing::warn!(%instance, %snapshot, error = %e, "scheduled snapshot failed"),
            },
        }
    }
    actions
}

/// Ticks at the start of every minute until the member stops.
pub async fn run(ctx: Ctx) {
    let mut stop = ctx.closing.subscribe();
    loop {
        let now = OffsetDateTime::now_utc();
        let into = u64::from(now.second()) * 1000 + u64::from(now.millisecond());
        let wait = Duration::from_millis(60_000u64.saturating_sub(into).max(1) + 200);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = transport::listen::stopped(&mut stop) => return,
        }
        tick(&ctx, OffsetDateTime::now_utc()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use time::macros::datetime;

    fn state(config: &[(&str, &str)], snaps: &[(&str, Option<OffsetDateTime>)]) -> cluster::State {
        let mut s = cluster::State::default();
        let rec = cluster::InstanceRecord {
            name: "c1".into(),
            location: Some(1),
            kind: "container".into(),
            architecture: "x86_64".into(),
            description: String::new(),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            devices: BTreeMap::new(),
            profiles: vec![],
            ephemeral: false,
            status: cluster::InstanceStatus::Stopped,
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        s.instances.insert("c1".into(), rec);
        let snaps = snaps
            .iter()
            .map(|(n, e)| {
                (
                    n.to_string(),
                    cluster::SnapshotRecord {
                        name: n.to_string(),
                        architecture: String::new(),
                        description: String::new(),
                        config: BTreeMap::new(),
                        devices: BTreeMap::new(),
                        profiles: vec![],
                        ephemeral: false,
                        stateful: false,
                        created_at: OffsetDateTime::UNIX_EPOCH,
                        expires_at: *e,
                    },
                )
            })
            .collect();
        s.snapshots.insert("c1".into(), snaps);
        s
    }

    const NOW: OffsetDateTime = datetime!(2026-01-01 10:30 UTC);

    #[test]
    fn t10_expired_snapshots_go_on_their_member_only() {
        let s = state(
            &[],
            &[
                ("old", Some(datetime!(2026-01-01 10:29 UTC))),
                ("new", Some(datetime!(2026-01-01 10:31 UTC))),
                ("kept", None),
            ],
        );
        let expire = vec![Action::Expire {
            instance: "c1".into(),
            snapshot: "old".into(),
        }];
        assert_eq!(plan(&s, Some(1), NOW, &|_| true), expire);
        assert_eq!(plan(&s, Some(2), NOW, &|_| true), vec![]);
    }

    #[test]
    fn t10_schedule_pattern_expiry_and_stopped_instances() {
        let cfg = [
            ("snapshots.schedule", "30 10 * * *"),
            ("snapshots.pattern", "auto-%d"),
            ("snapshots.expiry", "1H"),
        ];
        let s = state(&cfg, &[("auto-3", None)]);
        let take = vec![Action::Take {
            instance: "c1".into(),
            snapshot: "auto-4".into(),
            expires_at: Some(datetime!(2026-01-01 11:30 UTC)),
        }];
        assert_eq!(plan(&s, Some(1), NOW, &|_| true), take);
        // Not the minute; a stopped instance unless asked.
        assert_eq!(
            plan(&s, Some(1), datetime!(2026-01-01 10:31 UTC), &|_| true),
            vec![]
        );
        assert_eq!(plan(&s, Some(1), NOW, &|_| false), vec![]);
        let mut stopped = cfg.to_vec();
        stopped.push(("snapshots.schedule.stopped", "true"));
        assert_eq!(
            plan(&state(&stopped, &[("auto-3", None)]), Some(1), NOW, &|_| false),
            take
        );
        // A schedule that does not parse takes nothing.
        let bad = state(&[("snapshots.schedule", "sometimes")], &[]);
        assert_eq!(plan(&bad, Some(1), NOW, &|_| true), vec![]);
    }
}
