//! `stapes config get/set/unset/show/edit` on an instance (or a snapshot,
//! `c1/snap0`), as `incus config` does: read the instance, change its writable part,
//! `PUT` it back with the ETag and wait for the operation. The server's own
//! configuration is in `server`.

use anyhow::{anyhow, bail, Result};
use api::types::{InstancePut, InstanceSnapshotPut};

use crate::ctx::{parse_yaml, read_stdin, stdin_is_terminal, Ctx};
use crate::format::go_yaml;
use crate::props;

const EDIT_HEADER: &str = "### This is a YAML representation of the configuration.
### Any line starting with a '# will be ignored.
###
### A sample configuration looks like:
### name: instance1
### profiles:
### - default
### config:
###   volatile.eth0.hwaddr: 10:66:6a:e9:f8:7f
### devices:
###   homedir:
###     path: /extra
###     source: /home/user
###     type: disk
### ephemeral: false
###
### Note that the name is shown but cannot be changed";

fn client(ctx: &Ctx, remote: &str) -> Result<client::Client> {
    if ctx.globals.target.is_some() {
        bail!("--target cannot be used with instances");
    }
    ctx.client(remote)
}

/// `config get [remote:]instance[/snapshot] key`.
pub async fn get(
    ctx: &Ctx,
    remote: &str,
    name: &str,
    key: &str,
    expanded: bool,
    property: bool,
) -> Result<()> {
    let client = client(ctx, remote)?;
    if let Some((inst, snap)) = name.split_once('/') {
        let (s, _) = client.instance_snapshot(inst, snap).await?;
        if property {
            let v = serde_json::to_value(&s)?;
            let table: props::Table = &[
                ("expires_at", props::Kind::Time),
                ("architecture", props::Kind::Text),
                ("config", props::Kind::Map),
                ("created_at", props::Kind::Time),
                ("devices", props::Kind::Map),
                ("ephemeral", props::Kind::Bool),
                ("expanded_config", props::Kind::Map),
                ("expanded_devices", props::Kind::Map),
                ("last_used_at", props::Kind::Time),
                ("name", props::Kind::Text),
                ("profiles", props::Kind::List),
                ("stateful", props::Kind::Bool),
            ];
            let out = props::get(&v, table, key).map_err(|e| {
                anyhow!("The property {key:?} does not exist on the instance snapshot {inst}/{snap}: {e}")
            })?;
            println!("{out}");
        } else {
            let map = if expanded { &s.expanded_config } else { &s.config };
            println!("{}", map.get(key).cloned().unwrap_or_default());
        }
        return Ok(());
    }
    let (inst, _) = client.instance(name).await?;
    if property {
        let w = serde_json::to_value(inst.writable())?;
        let out = props::get(&w, props::INSTANCE, key)
            .map_err(|e| anyhow!("The property {key:?} does not exist on the instance {name:?}: {e}"))?;
        println!("{out}");
    } else {
        let map = if expanded {
            &inst.expanded_config
        } else {
            &inst.put.config
        };
        println!("{}", map.get(key).cloned().unwrap_or_default());
    }
    Ok(())
}

/// `config set/unset [remote:]instance[/snapshot] key=value...` (`keys` already parsed).
pub async fn set(
    ctx: &Ctx,
    remote: &str,
    name: &str,
    keys: std::collections::BTreeMap<String, String>,
    unset: bool,
    property: bool,
) -> Result<()> {
    let client = client(ctx, remote)?;
    if let Some((inst, snap)) = name.split_once('/') {
        if !property {
            bail!("The is no config key to set on an instance snapshot.");
        }
        let (s, etag) = client.instance_snapshot(inst, snap).await?;
        let mut w = serde_json::to_value(&s.put)?;
        apply_properties(&mut w, props::SNAPSHOT, &keys, unset)?;
        let put: InstanceSnapshotPut = serde_json::from_value(w)?;
        let op = client
            .update_instance_snapshot(inst, snap, &put, etag.as_deref())
            .await?;
        ctx.wait(&client, &op, "").await?;
        return Ok(());
    }
    let (inst, etag) = client.instance(name).await?;
    let mut put = inst.writable();
    if property {
        let mut w = serde_json::to_value(&put)?;
        apply_properties(&mut w, props::INSTANCE, &keys, unset)?;
        put = serde_json::from_value(w)?;
    } else {
        for (k, v) in keys {
            if unset {
                if put.config.remove(&k).is_none() {
                    bail!("Can't unset key '{k}', it's not currently set");
                }
            } else {
                put.config.insert(k, v);
            }
        }
    }
    let op = client.update_instance(name, &put, etag.as_deref()).await?;
    ctx.wait(&client, &op, "").await?;
    Ok(())
}

fn apply_properties(
    w: &mut serde_json::Value,
    table: props::Table,
    keys: &std::collections::BTreeMap<String, String>,
    unset: bool,
) -> Result<()> {
    if unset {
        for k in keys.keys() {
            props::unset_field(w, table, k).map_err(|e| {
                anyhow!(
                    "Error unsetting properties: {}",
                    e.trim_start_matches("Error unsetting property: ")
                )
            })?;
        }
        Ok(())
    } else {
        props::set(w, table, keys).map_err(|e| anyhow!(e))
    }
}

/// The YAML `config show` prints for an instance (its writable part, `--expanded`: with
/// the expanded config and devices) or a snapshot.
pub async fn show_text(ctx: &Ctx, remote: &str, name: &str, expanded: bool) -> Result<String> {
    let client = client(ctx, remote)?;
    if let Some((inst, snap)) = name.split_once('/') {
        let (mut s, _) = client.instance_snapshot(inst, snap).await?;
        if expanded {
            s.config = s.expanded_config.clone();
            s.devices = s.expanded_devices.clone();
        }
        return go_yaml(&s).map_err(|e| anyhow!(e));
    }
    let (inst, _) = client.instance(name).await?;
    render_show(&inst, expanded)
}

/// `config show` of an instance (pure).
pub fn render_show(inst: &api::types::Instance, expanded: bool) -> Result<String> {
    let mut put = inst.writable();
    if expanded {
        put.config = inst.expanded_config.clone();
        put.devices = inst.expanded_devices.clone();
    }
    go_yaml(&put).map_err(|e| anyhow!(e))
}

/// `config edit` of an instance or snapshot: stdin YAML when it is not a terminal, else
/// the editor.
pub async fn edit(ctx: &Ctx, remote: &str, name: &str) -> Result<()> {
    let client = client(ctx, remote)?;
    if let Some((inst, snap)) = name.split_once('/') {
        let put: InstanceSnapshotPut = if stdin_is_terminal() {
            let (s, _) = client.instance_snapshot(inst, snap).await?;
            let text = crate::ctx::text_editor(&format!(
                "{EDIT_HEADER}\n\n{}",
                go_yaml(&s).map_err(|e| anyhow!(e))?
            ))?;
            parse_yaml(&text)?
        } else {
            parse_yaml(&read_stdin()?)?
        };
        let op = client.update_instance_snapshot(inst, snap, &put, None).await?;
        ctx.wait(&client, &op, "").await?;
        return Ok(());
    }
    if !stdin_is_terminal() {
        let put: InstancePut = parse_yaml(&read_stdin()?)?;
        let op = client.update_instance(name, &put, None).await?;
        ctx.wait(&client, &op, "").await?;
        return Ok(());
    }
    let (inst, etag) = client.instance(name).await?;
    let mut content = crate::ctx::text_editor(&format!("{EDIT_HEADER}\n\n{}", render_show(&inst, false)?))?;
    loop {
        let result = async {
            let put: InstancePut = parse_yaml(&content)?;
            let op = client.update_instance(name, &put, etag.as_deref()).await?;
            ctx.wait(&client, &op, "").await?;
            Ok::<(), anyhow::Error>(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) => {
                eprintln!("Config parsing error: {e}");
                crate::ctx::ask_line("Press enter to open the editor again or ctrl+c to abort change")?;
                content = crate::ctx::text_editor(&content)?;
            }
        }
    }
}
