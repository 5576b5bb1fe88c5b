//! Instance lifecycle commands, as `incus` (6.0) runs them: `launch`/`create`
//! (`init`), `start`, `stop`, `restart`, `pause` (`freeze`), `resume`, `delete`,
//! `rename`, `move` and `copy`.
//!
//! ```text
//!  create/launch  GET /1.0/images/aliases/IMG (a miss is not an error), GET /1.0/images/FP
//!                 POST /1.0/instances {source: {type: image, fingerprint}, start: launch}
//!                 -> wait ("Retrieving image: ...") -> GET /1.0/instances/N: no NIC -> a notice
//!  start/stop/restart/pause/resume  (GET /1.0/instances/N for start) PUT .../state -> wait
//!  delete         GET, (-f: PUT .../state stop force) DELETE -> wait
//!  rename/move    POST /1.0/instances/N {name} ; --target M: {name, migration: true}?target=M
//!  copy           POST /1.0/instances {source: {type: copy, source: N[/snap]}, ...}
//! ```
//!
//! Images come from the same remote as the instance: copying an image from another
//! remote is not supported by stapes yet, and neither is `--empty` with a network.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use api::types::{
    kind, DeviceMap, InstancePost, InstancePut, InstanceSource, InstanceStatePut, InstancesPost,
};
use clap::Args;
use client::Client;

use crate::ctx::{parse_yaml, read_stdin, stdin_is_terminal, Ctx};

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// [<remote>:]<image> [<remote>:][<name>]
    #[arg(num_args = 0..=2)]
    pub args: Vec<String>,
    /// Config key/value to apply to the new instance
    #[arg(short, long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Profile to apply to the new instance
    #[arg(short, long = "profile")]
    pub profile: Vec<String>,
    /// New key/value to apply to a specific device
    #[arg(short, long = "device", value_name = "DEVICE,KEY=VALUE")]
    pub device: Vec<String>,
    /// Ephemeral instance
    #[arg(short, long)]
    pub ephemeral: bool,
    /// Network name
    #[arg(short, long)]
    pub network: Option<String>,
    /// Storage pool name
    #[arg(short, long)]
    pub storage: Option<String>,
    /// Instance type
    #[arg(short = 't', long = "type", default_value = "")]
    pub instance_type: String,
    /// Create the instance with no profiles applied
    #[arg(long)]
    pub no_profiles: bool,
    /// Create an empty instance
    #[arg(long)]
    pub empty: bool,
    /// Create a virtual machine
    #[arg(long)]
    pub vm: bool,
    /// Instance description
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct LaunchArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Immediately attach to the console
    #[arg(long, num_args = 0..=1, default_missing_value = "console")]
    pub console: Option<String>,
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    /// [<remote>:]<instance> [[<remote>:]<instance>...]
    pub instances: Vec<String>,
    /// Run against all instances
    #[arg(long)]
    pub all: bool,
    /// Store the instance state (stop) / restore it (start)
    #[arg(long)]
    pub stateful: bool,
    /// Ignore the instance state
    #[arg(long)]
    pub stateless: bool,
    /// Force the instance to stop
    #[arg(short, long)]
    pub force: bool,
    /// Time to wait for the instance to shutdown cleanly
    #[arg(long, allow_hyphen_values = true)]
    pub timeout: Option<i64>,
    /// Immediately attach to the console
    #[arg(long, num_args = 0..=1, default_missing_value = "console")]
    pub console: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// [<remote>:]<instance> [[<remote>:]<instance>...]
    #[arg(required = true)]
    pub instances: Vec<String>,
    /// Force the removal of running instances
    #[arg(short, long)]
    pub force: bool,
    /// Require user confirmation
    #[arg(short, long)]
    pub interactive: bool,
    /// Remove the instance even if it is protected
    #[arg(long)]
    pub force_protected: bool,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// [<remote>:]<instance>[/<snapshot>] [<remote>:][<instance>[/<snapshot>]]
    #[arg(num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// Config key/value to apply to the target instance
    #[arg(short, long = "config")]
    pub config: Vec<String>,
    /// New key/value to apply to a specific device
    #[arg(short, long = "device")]
    pub device: Vec<String>,
    /// Profile to apply to the target instance
    #[arg(short, long = "profile")]
    pub profile: Vec<String>,
    /// Unset all profiles on the target instance
    #[arg(long)]
    pub no_profiles: bool,
    /// Move the instance without its snapshots
    #[arg(long)]
    pub instance_only: bool,
    /// Transfer mode. One of pull, push or relay.
    #[arg(long, default_value = "pull")]
    pub mode: String,
    /// Copy a stateful instance stateless
    #[arg(long)]
    pub stateless: bool,
    /// Storage pool name
    #[arg(short, long)]
    pub storage: Option<String>,
    /// Copy to a project different from the source
    #[arg(long)]
    pub target_project: Option<String>,
    /// Ignore copy errors for volatile files
    #[arg(long)]
    pub allow_inconsistent: bool,
}

impl MoveArgs {
    /// `rename SRC DST`: a move within the remote, nothing else.
    pub fn rename(instance: String, new_name: String) -> MoveArgs {
        MoveArgs {
            args: vec![instance, new_name],
            config: Vec::new(),
            device: Vec::new(),
            profile: Vec::new(),
            no_profiles: false,
            instance_only: false,
            mode: "pull".into(),
            stateless: false,
            storage: None,
            target_project: None,
            allow_inconsistent: false,
        }
    }
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// [<remote>:]<source>[/<snapshot>] [[<remote>:]<destination>]
    #[arg(num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// Config key/value to apply to the new instance
    #[arg(short, long = "config")]
    pub config: Vec<String>,
    /// New key/value to apply to a specific device
    #[arg(short, long = "device")]
    pub device: Vec<String>,
    /// Profile to apply to the new instance
    #[arg(short, long = "profile")]
    pub profile: Vec<String>,
    /// Ephemeral instance
    #[arg(short, long)]
    pub ephemeral: bool,
    /// Transfer mode. One of pull, push or relay
    #[arg(long, default_value = "pull")]
    pub mode: String,
    /// Copy the instance without its snapshots
    #[arg(long)]
    pub instance_only: bool,
    /// Copy a stateful instance stateless
    #[arg(long)]
    pub stateless: bool,
    /// Storage pool name
    #[arg(short, long)]
    pub storage: Option<String>,
    /// Copy to a project different from the source
    #[arg(long)]
    pub target_project: Option<String>,
    /// Create the instance with no profiles applied
    #[arg(long)]
    pub no_profiles: bool,
    /// Perform an incremental copy
    #[arg(long)]
    pub refresh: bool,
    /// During incremental copy, exclude source snapshots earlier than latest target snapshot
    #[arg(long)]
    pub refresh_exclude_older: bool,
    /// Ignore copy errors for volatile files
    #[arg(long)]
    pub allow_inconsistent: bool,
}

/// `-c key=value` flags, with Incus's message for a bad one.
pub fn config_flags(entries: &[String]) -> Result<BTreeMap<String, String>> {
    entries
        .iter()
        .map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("Bad key=value pair: {e:?}"))
        })
        .collect()
}

/// `-d device,key=value` flags (Incus's `parseDeviceOverrides`).
pub fn device_overrides(entries: &[String]) -> Result<DeviceMap> {
    let mut map = DeviceMap::new();
    for e in entries {
        let parsed = e
            .split_once(',')
            .and_then(|(dev, kv)| kv.split_once('=').map(|(k, v)| (dev, k, v)));
        let Some((dev, k, v)) = parsed else {
            bail!("Bad device override syntax, expecting <device>,<key>=<value>: {e}");
        };
        map.entry(dev.to_string())
            .or_default()
            .insert(k.to_string(), v.to_string());
    }
    Ok(map)
}

/// The `POST /1.0/instances` body of `create`/`launch` (pure, but for the profiles'
/// devices, passed in when overrides need them: `profile_devices`).
pub fn create_request(
    args: &CreateArgs,
    base: InstancePut,
    name: &str,
    launch: bool,
    profile_devices: &DeviceMap,
) -> Result<InstancesPost> {
    let mut devices = base.devices.clone();
    let mut config = base.config.clone();
    config.extend(config_flags(&args.config)?);
    if let Some(pool) = &args.storage {
        devices.insert(
            "root".into(),
            BTreeMap::from([
                ("type".to_string(), "disk".to_string()),
                ("path".to_string(), "/".to_string()),
                ("pool".to_string(), pool.clone()),
            ]),
        );
    }
    let profiles = if args.no_profiles {
        Some(Vec::new())
    } else if !args.profile.is_empty() {
        Some(args.profile.clone())
    } else {
        base.profiles.clone().filter(|p| !p.is_empty())
    };
    for (dev, keys) in device_overrides(&args.device)? {
        match devices.get_mut(&dev) {
            Some(local) => local.extend(keys),
            None => {
                let mut from_profile = profile_devices.get(&dev).cloned().ok_or_else(|| {
                    anyhow!("Cannot override config for device {dev:?}: Device not found in profile devices")
                })?;
                from_profile.extend(keys);
                devices.insert(dev, from_profile);
            }
        }
    }
    Ok(InstancesPost {
        put: InstancePut {
            config,
            devices,
            ephemeral: args.ephemeral,
            profiles,
            description: args
                .description
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or(base.description),
            ..Default::default()
        },
        name: name.to_string(),
        source: InstanceSource::default(),
        instance_type: args.instance_type.clone(),
        kind: if args.vm {
            kind::VIRTUAL_MACHINE.into()
        } else {
            kind::CONTAINER.into()
        },
        start: launch,
    })
}

/// Incus's `create`: returns the remote's client and the instance's name.
pub async fn create(ctx: &Ctx, args: &CreateArgs, launch: bool) -> Result<(Client, String)> {
    let base: InstancePut = if stdin_is_terminal() {
        InstancePut::default()
    } else {
        parse_yaml(&read_stdin()?)?
    };
    let (mut iremote, mut image) = match args.args.first() {
        Some(a) => ctx.parse_remote(a)?,
        None => (String::new(), String::new()),
    };
    let (mut remote, mut name) = ctx.parse_remote(args.args.get(1).map(String::as_str).unwrap_or(""))?;
    if args.empty {
        if args.args.len() > 1 {
            bail!("--empty cannot be combined with an image name");
        }
        if args.args.len() == 1 {
            (remote, name) = (iremote.clone(), image.clone());
            image.clear();
            iremote.clear();
        }
    }
    if args.network.is_some() {
        bail!("Networks are not supported by this server yet");
    }
    let client = ctx.client(&remote)?;
    if !ctx.globals.quiet {
        match (launch, name.is_empty()) {
            (true, true) => println!("Launching the instance"),
            (true, false) => println!("Launching {name}"),
            (false, true) => println!("Creating the instance"),
            (false, false) => println!("Creating {name}"),
        }
    }
    if let Some(pool) = &args.storage {
        client
            .storage_pool(pool)
            .await
            .map_err(|e| anyhow!("Failed loading storage pool {pool:?}: {e}"))?;
    }
    // Profile devices, only when an override names a device the request lacks.
    let overrides = device_overrides(&args.device)?;
    let mut profile_devices = DeviceMap::new();
    if overrides.keys().any(|d| !base.devices.contains_key(d)) {
        let names = if args.no_profiles {
            Vec::new()
        } else if !args.profile.is_empty() {
            args.profile.clone()
        } else {
            vec!["default".to_string()]
        };
        for p in names {
            let (profile, _) = client
                .profile(&p)
                .await
                .map_err(|e| anyhow!("Failed loading profile {p:?} for device override: {e}"))?;
            profile_devices.extend(profile.put.devices);
        }
    }
    let mut req = create_request(args, base, &name, launch, &profile_devices)?;
    if args.empty {
        req.source.kind = "none".into();
    } else {
        if !iremote.is_empty() && iremote != remote {
            bail!("Images from another remote are not supported by stapes yet");
        }
        let image = if image.is_empty() { "default".into() } else { image };
        let fingerprint = match client.image_alias(&image).await {
            Ok((alias, _)) => alias.put.target,
            Err(_) => image.clone(),
        };
        let (info, _) = client.image(&fingerprint).await?;
        if info.kind != kind::VIRTUAL_MACHINE && args.vm {
            bail!("Asked for a VM but image is of type container");
        }
        if !info.kind.is_empty() {
            req.kind = info.kind.clone();
        }
        req.source.kind = "image".into();
        req.source.fingerprint = info.fingerprint;
    }
    let op = client.create_instance(&req).await?;
    let done = ctx.wait(&client, &op, "Retrieving image").await?;
    if name.is_empty() {
        let created = done
            .resources
            .as_ref()
            .and_then(|r| r.get("instances"))
            .and_then(|l| l.as_ref())
            .and_then(|l| l.first())
            .ok_or_else(|| anyhow!("Didn't get name of new instance from the server"))?;
        name = created.rsplit('/').next().unwrap_or_default().to_string();
        println!("Instance name is: {name}");
    }
    check_network(&client, &name).await;
    Ok((client, name))
}

/// Incus's notice for an instance without a NIC (on stderr).
async fn check_network(client: &Client, name: &str) {
    let Ok((inst, _)) = client.instance(name).await else {
        return;
    };
    if inst
        .expanded_devices
        .values()
        .any(|d| d.get("type").map(String::as_str) == Some("nic"))
    {
        return;
    }
    eprintln!("\nThe instance you are starting doesn't have any network attached to it.");
    eprintln!("  To create a new network, use: incus network create");
    eprintln!("  To attach a network to an instance, use: incus network attach\n");
}

pub async fn launch(ctx: &Ctx, args: LaunchArgs) -> Result<()> {
    let (client, name) = create(ctx, &args.create, true).await?;
    if let Some(kind) = args.console {
        return crate::exec::console_attach(ctx, &client, &name, &kind, false).await;
    }
    Ok(())
}

/// The `state` action a command sends (`pause` is `freeze`, `resume` is `unfreeze`).
pub fn state_action(command: &str) -> &str {
    match command {
        "pause" => "freeze",
        "resume" => "unfreeze",
        other => other,
    }
}

/// The state change of one instance (Incus's `doAction`).
async fn do_action(ctx: &Ctx, command: &str, args: &ActionArgs, target: &str) -> Result<()> {
    let mut action = state_action(command).to_string();
    let mut stateful = action == "stop" && args.stateful;
    if action == "stop" && args.force && args.console.is_some() {
        bail!("--console can't be used while forcing instance shutdown");
    }
    let (remote, name) = ctx.parse_remote(target)?;
    if name.is_empty() {
        bail!("Must supply instance name for: \"{target}\"");
    }
    let client = ctx.client(&remote)?;
    if action == "start" {
        let (current, _) = client.instance(&name).await?;
        if current.status_code == api::types::status::FROZEN {
            action = "unfreeze".into();
        }
        if action == "start" && current.put.stateful && !args.stateless {
            stateful = true;
        }
    }
    let default_timeout = if matches!(action.as_str(), "stop" | "restart") {
        -1
    } else {
        0
    };
    let req = InstanceStatePut {
        action: action.clone(),
        timeout: args.timeout.unwrap_or(default_timeout),
        force: args.force,
        stateful,
    };
    let op = client.update_instance_state(&name, &req, None).await?;
    if let Err(e) = ctx.wait(&client, &op, "").await {
        return Err(anyhow!(
            "{e}\nTry `stapes info --show-log {target}` for more info"
        ));
    }
    if let Some(kind) = &args.console {
        return crate::exec::console_attach(ctx, &client, &name, kind, false).await;
    }
    Ok(())
}

/// `start`, `stop`, `restart`, `pause`, `resume` on the instances named (or `--all`).
pub async fn action(ctx: &Ctx, command: &str, args: ActionArgs) -> Result<()> {
    let mut names = Vec::new();
    if args.all {
        let remotes = if args.instances.is_empty() {
            vec![format!("{}:", ctx.config.default_remote)]
        } else {
            args.instances.clone()
        };
        for r in remotes {
            let (remote, name) = ctx.parse_remote(&r)?;
            if !name.is_empty() {
                bail!("Both --all and instance name given");
            }
            for inst in ctx.client(&remote)?.instances(&[], false).await? {
                let skip = match command {
                    "start" => inst.status_code == api::types::status::RUNNING,
                    "stop" => inst.status_code == api::types::status::STOPPED,
                    _ => false,
                };
                if !skip {
                    names.push(format!("{remote}:{}", inst.name));
                }
            }
        }
    } else {
        if args.instances.is_empty() {
            bail!("Missing instance name");
        }
        names = args.instances.clone();
    }
    if args.console.is_some() {
        if args.all {
            bail!("--console can't be used with --all");
        }
        if names.len() != 1 {
            bail!("--console only works with a single instance");
        }
    }
    let results =
        futures_util::future::join_all(names.iter().map(|n| do_action(ctx, command, &args, n))).await;
    if results.len() == 1 {
        return results.into_iter().next().unwrap_or(Ok(()));
    }
    let mut success = true;
    for (name, r) in names.iter().zip(results) {
        if let Err(e) = r {
            success = false;
            for line in format!("error: {e}").lines() {
                eprintln!("{name}: {line}");
            }
        }
    }
    if !success {
        eprintln!();
        bail!("Some instances failed to {command}");
    }
    Ok(())
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> Result<()> {
    let mut targets = Vec::new();
    for arg in &args.instances {
        let (remote, name) = ctx.parse_remote(arg)?;
        let client = ctx.client(&remote)?;
        client.instance(&name).await?;
        targets.push((client, name));
    }
    for (client, name) in targets {
        if args.interactive {
            let answer = crate::ctx::ask_line(&format!("Remove {name} (yes/no): "))?;
            if answer.to_lowercase() != "yes" {
                bail!("User aborted delete operation");
            }
        }
        let (inst, _) = client.instance(&name).await?;
        if inst.status_code != 0 && inst.status_code != api::types::status::STOPPED {
            if !args.force {
                bail!("The instance is currently running, stop it first or pass --force");
            }
            let req = InstanceStatePut {
                action: "stop".into(),
                timeout: -1,
                force: true,
                stateful: false,
            };
            let op = client.update_instance_state(&name, &req, None).await?;
            if let Err(e) = ctx.wait(&client, &op, "").await {
                bail!("Stopping the instance failed: {e}");
            }
            if inst.put.ephemeral {
                continue;
            }
        }
        if args.force_protected
            && inst
                .expanded_config
                .get("security.protection.delete")
                .is_some_and(|v| matches!(v.to_lowercase().as_str(), "true" | "1" | "yes" | "on"))
        {
            let (fresh, etag) = client.instance(&name).await?;
            let mut put = fresh.writable();
            put.config
                .insert("security.protection.delete".into(), "false".into());
            let op = client.update_instance(&name, &put, etag.as_deref()).await?;
            ctx.wait(&client, &op, "").await?;
        }
        let op = client.delete_instance(&name).await;
        let result = match op {
            Ok(op) => ctx.wait(&client, &op, "").await.map(|_| ()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            bail!("Failed deleting instance {name:?} in project \"default\": {e}");
        }
    }
    Ok(())
}

/// `rename SRC DST` and `move SRC [DST]` (same remote: a rename; `--target`, `-s` or
/// `--target-project`: a server-side move).
pub async fn move_instance(ctx: &Ctx, args: MoveArgs) -> Result<()> {
    let target = ctx.globals.target.clone();
    if target.is_none() && args.target_project.is_none() && args.storage.is_none() && args.args.len() != 2 {
        bail!("Invalid number of arguments");
    }
    let (src_remote, src) = ctx.parse_remote(&args.args[0])?;
    let (dst_remote, mut dst) = match args.args.get(1) {
        Some(d) => ctx.parse_remote(d)?,
        None => (src_remote.clone(), String::new()),
    };
    if src_remote != dst_remote {
        bail!("Moving instances between remotes is not supported by stapes yet");
    }
    if src.is_empty() {
        bail!("You must specify a source instance name");
    }
    let client = ctx.client_untargeted(&src_remote)?;
    if target.is_none() && args.storage.is_none() && args.target_project.is_none() {
        if !args.config.is_empty() || !args.device.is_empty() || !args.profile.is_empty() || args.no_profiles
        {
            bail!("Can't override configuration or profiles in local rename");
        }
        return rename(ctx, &client, &src, &dst).await;
    }
    if dst.is_empty() {
        dst = src.clone();
    }
    let (server, _) = client.server().await?;
    if target.is_some() && !crate::ctx::is_clustered(&server) {
        bail!("--target can only be used with clusters");
    }
    let mut req = InstancePost {
        name: dst,
        migration: true,
        instance_only: args.instance_only,
        pool: args.storage.clone().unwrap_or_default(),
        project: args.target_project.clone().unwrap_or_default(),
        live: !args.stateless,
        allow_inconsistent: args.allow_inconsistent,
        ..Default::default()
    };
    if !args.profile.is_empty() {
        req.profiles = Some(args.profile.clone());
    } else if args.no_profiles {
        req.profiles = Some(Vec::new());
    }
    req.config = config_flags(&args.config)?;
    if !args.device.is_empty() {
        let (inst, _) = client.instance(&src).await?;
        for (dev, keys) in device_overrides(&args.device)? {
            let mut full = inst.expanded_devices.get(&dev).cloned().unwrap_or_default();
            full.extend(keys);
            req.devices.insert(dev, full);
        }
    }
    let client = client.with_target(target);
    let op = client
        .rename_instance(&src, &req)
        .await
        .map_err(|e| anyhow!("Migration API failure: {e}"))?;
    ctx.wait(&client, &op, "Transferring instance")
        .await
        .map_err(|e| anyhow!("Migration operation failure: {e}"))?;
    Ok(())
}

/// `rename SRC DST`: the destination is on the source's remote unless it names one.
pub async fn rename_cmd(ctx: &Ctx, instance: String, new_name: String) -> Result<()> {
    let (src_remote, _) = ctx.parse_remote(&instance)?;
    let (dst_remote, _) = ctx.parse_remote(&new_name)?;
    let new_name = if src_remote != dst_remote {
        if new_name.contains(':') {
            bail!("Can't specify a different remote for rename");
        }
        format!("{src_remote}:{new_name}")
    } else {
        new_name
    };
    move_instance(ctx, MoveArgs::rename(instance, new_name)).await
}

/// A rename: `POST /1.0/instances/N {name}`, or of a snapshot (`c1/s1 c1/s2`).
async fn rename(ctx: &Ctx, client: &Client, src: &str, dst: &str) -> Result<()> {
    match (src.split_once('/'), dst.split_once('/')) {
        (Some((inst, snap)), Some((_, new_snap))) => {
            let op = client
                .rename_instance_snapshot(
                    inst,
                    snap,
                    &api::types::InstanceSnapshotPost {
                        name: new_snap.to_string(),
                        ..Default::default()
                    },
                )
                .await?;
            ctx.wait(client, &op, "").await?;
        }
        _ => {
            let op = client
                .rename_instance(
                    src,
                    &InstancePost {
                        name: dst.to_string(),
                        ..Default::default()
                    },
                )
                .await?;
            ctx.wait(client, &op, "").await?;
        }
    }
    Ok(())
}

/// The `POST /1.0/instances` body of a same-server copy (pure): the source's writable
/// part with the overrides, volatile keys but the base image dropped.
pub fn copy_request(
    source: &api::types::Instance,
    from: &str,
    dest: &str,
    args: &CopyArgs,
) -> Result<InstancesPost> {
    let mut put = source.writable();
    if !args.profile.is_empty() {
        put.profiles = Some(args.profile.clone());
    } else if args.no_profiles {
        put.profiles = Some(Vec::new());
    }
    put.config.extend(config_flags(&args.config)?);
    for (dev, keys) in device_overrides(&args.device)? {
        if keys.get("type").map(String::as_str) == Some("none") {
            put.devices
                .insert(dev, BTreeMap::from([("type".to_string(), "none".to_string())]));
            continue;
        }
        put.devices.entry(dev).or_default().extend(keys);
    }
    if args.ephemeral {
        put.ephemeral = true;
    }
    if let Some(pool) = &args.storage {
        let root = put
            .devices
            .iter()
            .find(|(_, d)| {
                d.get("type").map(String::as_str) == Some("disk")
                    && d.get("path").map(String::as_str) == Some("/")
            })
            .map(|(n, _)| n.clone());
        match root {
            Some(r) => {
                if let Some(d) = put.devices.get_mut(&r) {
                    d.insert("pool".into(), pool.clone());
                }
            }
            None => {
                put.devices.insert(
                    "root".into(),
                    BTreeMap::from([
                        ("type".to_string(), "disk".to_string()),
                        ("path".to_string(), "/".to_string()),
                        ("pool".to_string(), pool.clone()),
                    ]),
                );
            }
        }
    }
    let base_image = put.config.get("volatile.base_image").cloned().unwrap_or_default();
    put.config
        .retain(|k, _| !k.starts_with("volatile.") || k == "volatile.base_image");
    Ok(InstancesPost {
        put,
        name: dest.to_string(),
        source: InstanceSource {
            kind: "copy".into(),
            source: from.to_string(),
            base_image,
            live: !args.stateless && source.status_code == api::types::status::RUNNING,
            instance_only: args.instance_only,
            refresh: args.refresh,
            refresh_exclude_older: args.refresh_exclude_older,
            allow_inconsistent: args.allow_inconsistent,
            ..Default::default()
        },
        kind: source.kind.clone(),
        ..Default::default()
    })
}

pub async fn copy(ctx: &Ctx, args: CopyArgs) -> Result<()> {
    let (src_remote, src) = ctx.parse_remote(&args.args[0])?;
    let (dst_remote, dst) = match args.args.get(1) {
        Some(d) => ctx.parse_remote(d)?,
        None => (src_remote.clone(), String::new()),
    };
    if src_remote != dst_remote {
        bail!("Copying instances between remotes is not supported by stapes yet");
    }
    if args.mode != "pull" {
        bail!("Only the pull transfer mode is supported by stapes");
    }
    if src.is_empty() {
        bail!("You must specify a source instance name");
    }
    let client = ctx.client_untargeted(&src_remote)?;
    let (parent, snapshot) = match src.split_once('/') {
        Some((p, s)) => (p.to_string(), Some(s.to_string())),
        None => (src.clone(), None),
    };
    let mut source = client.instance(&parent).await?.0;
    if let Some(s) = &snapshot {
        let (snap, _) = client.instance_snapshot(&parent, s).await?;
        source.put.config = snap.config;
        source.put.devices = snap.devices;
        source.put.profiles = Some(snap.profiles);
        source.put.ephemeral = snap.ephemeral;
        source.put.stateful = snap.stateful;
        source.status_code = api::types::status::STOPPED;
    }
    let req = copy_request(&source, &src, &dst, &args)?;
    let client = client.with_target(ctx.globals.target.clone());
    let op = client.create_instance(&req).await?;
    ctx.wait(&client, &op, "Transferring instance").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create_args(extra: &[&str]) -> CreateArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: CreateArgs,
        }
        let mut argv = vec!["x"];
        argv.extend_from_slice(extra);
        <P as clap::Parser>::parse_from(argv).a
    }

    /// What `incus launch bb c1` sends (lab trace), with the fingerprint filled in later.
    #[test]
    fn t10_launch_request_as_the_official_client_sends_it() {
        let args = create_args(&["bb", "c1"]);
        let mut req = create_request(&args, InstancePut::default(), "c1", true, &DeviceMap::new()).unwrap();
        req.source.kind = "image".into();
        req.source.fingerprint = "e60cf18bb29d5fd21aefe8a069e9a2ba6080d8e4b9975fcd4d6a3ed8718cd1e6".into();
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"architecture":"","config":{},"devices":{},"ephemeral":false,"profiles":null,"stateful":false,"description":"","name":"c1","source":{"type":"image","certificate":"","fingerprint":"e60cf18bb29d5fd21aefe8a069e9a2ba6080d8e4b9975fcd4d6a3ed8718cd1e6","allow_inconsistent":false},"instance_type":"","type":"container","start":true}"#
        );
    }

    #[test]
    fn t10_create_flags() {
        let args = create_args(&[
            "bb",
            "c1",
            "-c",
            "limits.memory=64MiB",
            "-p",
            "default",
            "-p",
            "p1",
            "-s",
            "pool2",
            "-d",
            "root,size=1GiB",
            "-e",
            "--description",
            "web",
        ]);
        let req = create_request(&args, InstancePut::default(), "c1", false, &DeviceMap::new()).unwrap();
        assert_eq!(req.put.config["limits.memory"], "64MiB");
        assert_eq!(req.put.profiles, Some(vec!["default".into(), "p1".into()]));
        assert_eq!(req.put.devices["root"]["pool"], "pool2");
        assert_eq!(req.put.devices["root"]["size"], "1GiB");
        assert!(req.put.ephemeral && !req.start);
        assert_eq!(req.put.description, "web");
        let args = create_args(&["bb", "c1", "--no-profiles"]);
        let req = create_request(&args, InstancePut::default(), "c1", false, &DeviceMap::new()).unwrap();
        assert_eq!(req.put.profiles, Some(vec![]));
        let args = create_args(&["bb", "c1", "-d", "eth0,mtu=9000"]);
        assert_eq!(
            create_request(&args, InstancePut::default(), "c1", false, &DeviceMap::new())
                .unwrap_err()
                .to_string(),
            "Cannot override config for device \"eth0\": Device not found in profile devices"
        );
        assert_eq!(
            config_flags(&["novalue".into()]).unwrap_err().to_string(),
            "Bad key=value pair: \"novalue\""
        );
        assert!(device_overrides(&["root=1".into()]).is_err());
    }

    #[test]
    fn t10_copy_drops_volatile_keys_but_the_base_image() {
        let mut src = api::types::Instance {
            kind: "container".into(),
            ..Default::default()
        };
        src.put.config.insert("volatile.base_image".into(), "fp".into());
        src.put.config.insert("volatile.uuid".into(), "u".into());
        src.put.config.insert("user.a".into(), "b".into());
        let args = CopyArgs {
            args: vec!["c1".into(), "c2".into()],
            config: vec![],
            device: vec![],
            profile: vec![],
            ephemeral: false,
            mode: "pull".into(),
            instance_only: true,
            stateless: false,
            storage: None,
            target_project: None,
            no_profiles: false,
            refresh: false,
            refresh_exclude_older: false,
            allow_inconsistent: false,
        };
        let req = copy_request(&src, "c1", "c2", &args).unwrap();
        assert_eq!(req.source.kind, "copy");
        assert_eq!(req.source.base_image, "fp");
        assert!(req.source.instance_only);
        assert!(!req.put.config.contains_key("volatile.uuid"));
        assert_eq!(req.put.config["user.a"], "b");
        assert_eq!(req.name, "c2");
    }
}
