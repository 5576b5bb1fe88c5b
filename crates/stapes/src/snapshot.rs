//! `stapes snapshot ...`: instance snapshots, as `incus snapshot` (6.0) does them.
//!
//! ```text
//!  create  POST /1.0/instances/N/snapshots {name, stateful, expires_at}
//!          (--no-expiry: expires_at zero; stdin YAML's expires_at otherwise)
//!  list    GET .../snapshots?recursion=1     columns nTEs, unsorted as in Incus
//!  show    GET .../snapshots/S               rename  POST .../snapshots/S {name}
//!  delete  DELETE .../snapshots/S            restore PUT /1.0/instances/N {restore: N/S}
//! ```

use anyhow::{anyhow, bail, Result};
use api::types::{
    InstancePut, InstanceSnapshot, InstanceSnapshotPost, InstanceSnapshotPut, InstanceSnapshotsPost,
    Timestamp,
};
use clap::Subcommand;

use crate::ctx::{parse_yaml, read_stdin, stdin_is_terminal, Ctx};
use crate::format::{date, go_yaml, render_objects, ListFormat};

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Create instance snapshots
    Create {
        /// [<remote>:]<instance>
        instance: String,
        /// The snapshot's name (the server picks one when absent)
        snapshot: Option<String>,
        /// Whether or not to snapshot the instance's running state
        #[arg(long)]
        stateful: bool,
        /// Ignore any configured auto-expiry for the instance
        #[arg(long)]
        no_expiry: bool,
        /// If the snapshot name already exists, delete and create a new one
        #[arg(long)]
        reuse: bool,
    },
    /// Delete instance snapshots
    #[command(alias = "rm")]
    Delete {
        /// [<remote>:]<instance>
        instance: String,
        snapshot: String,
        /// Require user confirmation
        #[arg(short, long)]
        interactive: bool,
    },
    /// List instance snapshots
    #[command(alias = "ls")]
    List {
        /// [<remote>:]<instance>
        instance: String,
        /// Format (csv|json|table|yaml|compact), with ",noheader" or ",header"
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Columns
        #[arg(short, long, default_value = "nTEs")]
        columns: String,
    },
    /// Rename instance snapshots
    Rename {
        /// [<remote>:]<instance>
        instance: String,
        old_name: String,
        new_name: String,
    },
    /// Restore instance snapshots
    Restore {
        /// [<remote>:]<instance>
        instance: String,
        snapshot: String,
        /// Whether or not to restore the instance's running state from snapshot (if available)
        #[arg(long)]
        stateful: bool,
    },
    /// Show instance snapshot configuration
    Show {
        /// [<remote>:]<instance>
        instance: String,
        snapshot: String,
    },
}

/// `snapshot list` as Incus renders it (pure; rows in the server's order).
pub fn render_snapshots(snaps: &[InstanceSnapshot], format: ListFormat, columns: &str) -> Result<String> {
    let blank_or_date = |t: &Timestamp| {
        if t.is_zero() {
            " ".to_string()
        } else {
            date(t.0)
        }
    };
    let cell = |s: &InstanceSnapshot, c: char| match c {
        'n' => s.name.clone(),
        'T' => blank_or_date(&s.created_at),
        'E' => blank_or_date(&s.put.expires_at),
        _ if s.stateful => "YES".into(),
        _ => "NO".into(),
    };
    let header = |c: char| match c {
        'n' => "NAME",
        'T' => "TAKEN AT",
        'E' => "EXPIRES AT",
        _ => "STATEFUL",
    };
    render_objects(format, snaps, columns, "nTEs", cell, header, false).map_err(|e| anyhow!(e))
}

/// The instance and snapshot names of `create` (`c1 s1`, or `c1/s1`).
pub fn snapshot_target(name: &str, snapshot: Option<&str>) -> Result<(String, String)> {
    match (name.split_once('/'), snapshot) {
        (Some((inst, snap)), None) => Ok((inst.to_string(), snap.to_string())),
        (Some(_), Some(_)) => bail!("Invalid instance name: {name}"),
        (None, s) => Ok((name.to_string(), s.unwrap_or_default().to_string())),
    }
}

pub async fn run(ctx: &Ctx, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Create {
            instance,
            snapshot,
            stateful,
            no_expiry,
            reuse,
        } => {
            let stdin: InstanceSnapshotPut = if stdin_is_terminal() {
                InstanceSnapshotPut::default()
            } else {
                parse_yaml(&read_stdin()?)?
            };
            let (remote, name) = ctx.parse_remote(&instance)?;
            let (name, snap) = snapshot_target(&name, snapshot.as_deref())?;
            let client = ctx.client(&remote)?;
            if reuse && !snap.is_empty() && client.instance_snapshot(&name, &snap).await.is_ok() {
                let op = client.delete_instance_snapshot(&name, &snap).await?;
                ctx.wait(&client, &op, "").await?;
            }
            let expires_at = if no_expiry {
                Some(Timestamp::ZERO)
            } else if !stdin.expires_at.is_zero() {
                Some(stdin.expires_at)
            } else {
                None
            };
            let post = InstanceSnapshotsPost {
                name: snap,
                stateful,
                expires_at,
            };
            let op = client.create_instance_snapshot(&name, &post).await?;
            ctx.wait(&client, &op, "").await?;
            Ok(())
        }
        SnapshotCmd::Delete {
            instance,
            snapshot,
            interactive,
        } => {
            let (remote, name) = ctx.parse_remote(&instance)?;
            if interactive {
                let answer =
                    crate::ctx::ask_line(&format!("Remove snapshot {snapshot} from {name} (yes/no): "))?;
                if answer.to_lowercase() != "yes" {
                    bail!("User aborted delete operation");
                }
            }
            let client = ctx.client(&remote)?;
            let op = client.delete_instance_snapshot(&name, &snapshot).await?;
            ctx.wait(&client, &op, "").await?;
            Ok(())
        }
        SnapshotCmd::List {
            instance,
            format,
            columns,
        } => {
            let format = ListFormat::parse(&format).map_err(|e| anyhow!(e))?;
            let (remote, name) = ctx.parse_remote(&instance)?;
            let snaps = ctx.client(&remote)?.instance_snapshots(&name).await?;
            print!("{}", render_snapshots(&snaps, format, &columns)?);
            Ok(())
        }
        SnapshotCmd::Rename {
            instance,
            old_name,
            new_name,
        } => {
            let (remote, name) = ctx.parse_remote(&instance)?;
            let client = ctx.client(&remote)?;
            let post = InstanceSnapshotPost {
                name: new_name,
                ..Default::default()
            };
            let op = client.rename_instance_snapshot(&name, &old_name, &post).await?;
            ctx.wait(&client, &op, "").await?;
            Ok(())
        }
        SnapshotCmd::Restore {
            instance,
            snapshot,
            stateful,
        } => {
            let (remote, name) = ctx.parse_remote(&instance)?;
            let client = ctx.client(&remote)?;
            let restore = if snapshot.contains('/') {
                snapshot
            } else {
                format!("{name}/{snapshot}")
            };
            let put = InstancePut {
                restore,
                stateful,
                ..Default::default()
            };
            let op = client.update_instance(&name, &put, None).await?;
            ctx.wait(&client, &op, "").await?;
            Ok(())
        }
        SnapshotCmd::Show { instance, snapshot } => {
            let (remote, name) = ctx.parse_remote(&instance)?;
            let (snap, _) = ctx.client(&remote)?.instance_snapshot(&name, &snapshot).await?;
            print!("{}", go_yaml(&snap).map_err(|e| anyhow!(e))?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_snapshot_names() {
        assert_eq!(
            snapshot_target("c1", Some("s1")).unwrap(),
            ("c1".into(), "s1".into())
        );
        assert_eq!(
            snapshot_target("c1/s1", None).unwrap(),
            ("c1".into(), "s1".into())
        );
        assert_eq!(snapshot_target("c1", None).unwrap(), ("c1".into(), String::new()));
        assert_eq!(
            snapshot_target("c1/s1", Some("s2")).unwrap_err().to_string(),
            "Invalid instance name: c1/s1"
        );
    }
}
