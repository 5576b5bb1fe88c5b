//! `stapes profile device ...` and `stapes config device ...`: the devices of a profile
//! or an instance, as `incus` edits them: read the object, change its `devices` map,
//! write the writable part back with the ETag (an instance's update is an operation,
//! waited on).
//!
//! An instance's devices that come from its profiles are in `expanded_devices` only:
//! they cannot be changed on the instance (Incus's messages say so), only overridden
//! (`config device override` copies one into the instance's own devices).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use api::types::DeviceMap;
use clap::Subcommand;

use crate::ctx::Ctx;
use crate::format::go_yaml;
use crate::server::parse_key_values;

#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// Add instance devices
    Add {
        /// [<remote>:]<instance|profile>
        name: String,
        device: String,
        #[arg(value_name = "TYPE")]
        kind: String,
        /// key=value...
        props: Vec<String>,
    },
    /// Get values for device configuration keys
    Get {
        /// [<remote>:]<instance|profile>
        name: String,
        device: String,
        key: String,
    },
    /// List instance devices
    #[command(alias = "ls")]
    List {
        /// [<remote>:]<instance|profile>
        name: String,
    },
    /// Remove instance devices
    #[command(alias = "rm")]
    Remove {
        /// [<remote>:]<instance|profile>
        name: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Set device configuration keys
    Set {
        /// [<remote>:]<instance|profile>
        name: String,
        device: String,
        /// <key>=<value>... (or <key> <value>)
        #[arg(num_args = 1.., required = true)]
        args: Vec<String>,
    },
    /// Show full device configuration
    Show {
        /// [<remote>:]<instance|profile>
        name: String,
    },
    /// Unset device configuration keys
    Unset {
        /// [<remote>:]<instance|profile>
        name: String,
        device: String,
        key: String,
    },
}

/// `config device`: the common commands, and `override` for instances.
#[derive(Debug, Subcommand)]
pub enum InstanceDeviceCmd {
    #[command(flatten)]
    Common(DeviceCmd),
    /// Copy profile inherited devices and override configuration keys
    Override {
        /// [<remote>:]<instance>
        name: String,
        device: String,
        /// key=value...
        props: Vec<String>,
    },
}

/// A change to a devices map (pure), refused with Incus's messages. `expanded` is an
/// instance's `expanded_devices` (`None` for a profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add {
        device: String,
        config: BTreeMap<String, String>,
    },
    Remove(Vec<String>),
    Set {
        device: String,
        keys: BTreeMap<String, String>,
    },
    Override {
        device: String,
        keys: BTreeMap<String, String>,
    },
}

/// `key=value` device properties, with Incus's message for a bare key.
pub fn device_props(props: &[String]) -> Result<BTreeMap<String, String>> {
    props
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("No value found in {p:?}"))
        })
        .collect()
}

/// Applies `change` to `devices` (pure).
pub fn apply(devices: &mut DeviceMap, expanded: Option<&DeviceMap>, change: &Change) -> Result<()> {
    let inherited = |name: &str| expanded.is_some_and(|e| e.contains_key(name));
    match change {
        Change::Add { device, config } => {
            if devices.contains_key(device) {
                bail!("The device already exists");
            }
            devices.insert(device.clone(), config.clone());
        }
        Change::Remove(names) => {
            for name in names {
                if devices.remove(name).is_none() {
                    if inherited(name) {
                        bail!("Device from profile(s) cannot be removed from individual instance. Override device or modify profile instead");
                    }
                    bail!("Device doesn't exist");
                }
            }
        }
        Change::Set { device, keys } => {
            let Some(dev) = devices.get_mut(device) else {
                if inherited(device) {
                    bail!("Device from profile(s) cannot be modified for individual instance. Override device or modify profile instead");
                }
                bail!("Device doesn't exist");
            };
            for (k, v) in keys {
                dev.insert(k.clone(), v.clone());
            }
        }
        Change::Override { device, keys } => {
            if devices.contains_key(device) {
                bail!("The device already exists");
            }
            let mut dev = expanded
                .and_then(|e| e.get(device))
                .cloned()
                .ok_or_else(|| anyhow!("The profile device doesn't exist"))?;
            for (k, v) in keys {
                dev.insert(k.clone(), v.clone());
            }
            devices.insert(device.clone(), dev);
        }
    }
    Ok(())
}

/// Whose devices: a profile's or an instance's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Profile,
    Instance,
}

fn owner_name(ctx: &Ctx, arg: &str) -> Result<(String, String)> {
    let (remote, name) = ctx.parse_remote(arg)?;
    if name.is_empty() {
        bail!("Missing name");
    }
    Ok((remote, name))
}

/// Reads the owner's devices (and an instance's expanded ones), applies `change`, and
/// writes the result back.
async fn change(ctx: &Ctx, owner: Owner, arg: &str, change: Change) -> Result<String> {
    let (remote, name) = owner_name(ctx, arg)?;
    let client = ctx.client(&remote)?;
    match owner {
        Owner::Profile => {
            let (profile, etag) = client.profile(&name).await?;
            let mut put = profile.writable();
            apply(&mut put.devices, None, &change)?;
            client.update_profile(&name, &put, etag.as_deref()).await?;
        }
        Owner::Instance => {
            let (inst, etag) = client.instance(&name).await?;
            let mut put = inst.writable();
            apply(&mut put.devices, Some(&inst.expanded_devices), &change)?;
            let op = client.update_instance(&name, &put, etag.as_deref()).await?;
            ctx.wait(&client, &op, "").await?;
        }
    }
    Ok(name)
}

/// The owner's own devices (an instance's `devices`, not the expanded ones), and an
/// instance's expanded ones.
async fn devices(ctx: &Ctx, owner: Owner, arg: &str) -> Result<(DeviceMap, Option<DeviceMap>)> {
    let (remote, name) = owner_name(ctx, arg)?;
    let client = ctx.client(&remote)?;
    Ok(match owner {
        Owner::Profile => (client.profile(&name).await?.0.put.devices, None),
        Owner::Instance => {
            let inst = client.instance(&name).await?.0;
            (inst.put.devices, Some(inst.expanded_devices))
        }
    })
}

pub async fn run(ctx: &Ctx, owner: Owner, cmd: DeviceCmd) -> Result<()> {
    match cmd {
        DeviceCmd::Add {
            name,
            device,
            kind,
            props,
        } => {
            let mut config = BTreeMap::from([("type".to_string(), kind)]);
            config.extend(device_props(&props)?);
            let n = change(
                ctx,
                owner,
                &name,
                Change::Add {
                    device: device.clone(),
                    config,
                },
            )
            .await?;
            if !ctx.globals.quiet {
                println!("Device {device} added to {n}");
            }
        }
        DeviceCmd::Get { name, device, key } => {
            let (devs, expanded) = devices(ctx, owner, &name).await?;
            match devs.get(&device) {
                Some(d) => println!("{}", d.get(&key).cloned().unwrap_or_default()),
                None if expanded.as_ref().is_some_and(|e| e.contains_key(&device)) => {
                    bail!("Device from profile(s) cannot be retrieved for individual instance")
                }
                None => bail!("Device doesn't exist"),
            }
        }
        DeviceCmd::List { name } => {
            let (devs, _) = devices(ctx, owner, &name).await?;
            println!("{}", devs.keys().cloned().collect::<Vec<_>>().join("\n"));
        }
        DeviceCmd::Remove { name, devices } => {
            let list = devices.join(", ");
            let n = change(ctx, owner, &name, Change::Remove(devices)).await?;
            if !ctx.globals.quiet {
                println!("Device {list} removed from {n}");
            }
        }
        DeviceCmd::Set { name, device, args } => {
            let keys = parse_key_values(&args)?;
            change(ctx, owner, &name, Change::Set { device, keys }).await?;
        }
        DeviceCmd::Show { name } => {
            let (devs, _) = devices(ctx, owner, &name).await?;
            print!("{}", go_yaml(&devs).map_err(|e| anyhow!(e))?);
        }
        DeviceCmd::Unset { name, device, key } => {
            let keys = BTreeMap::from([(key, String::new())]);
            change(ctx, owner, &name, Change::Set { device, keys }).await?;
        }
    }
    Ok(())
}

pub async fn run_instance(ctx: &Ctx, cmd: InstanceDeviceCmd) -> Result<()> {
    match cmd {
        InstanceDeviceCmd::Common(cmd) => run(ctx, Owner::Instance, cmd).await,
        InstanceDeviceCmd::Override { name, device, props } => {
            let keys = device_props(&props)?;
            let n = change(
                ctx,
                Owner::Instance,
                &name,
                Change::Override {
                    device: device.clone(),
                    keys,
                },
            )
            .await?;
            if !ctx.globals.quiet {
                println!("Device {device} overridden for {n}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn t10_device_changes() {
        let mut devs = DeviceMap::new();
        let expanded = DeviceMap::from([("root".to_string(), map(&[("type", "disk"), ("path", "/")]))]);
        let add = Change::Add {
            device: "data".into(),
            config: map(&[("type", "disk"), ("path", "/data")]),
        };
        apply(&mut devs, Some(&expanded), &add).unwrap();
        assert_eq!(
            apply(&mut devs, Some(&expanded), &add).unwrap_err().to_string(),
            "The device already exists"
        );
        let set = Change::Set {
            device: "data".into(),
            keys: map(&[("readonly", "true")]),
        };
        apply(&mut devs, Some(&expanded), &set).unwrap();
        assert_eq!(devs["data"]["readonly"], "true");
        let set_root = Change::Set {
            device: "root".into(),
            keys: map(&[("size", "1GiB")]),
        };
        assert!(apply(&mut devs, Some(&expanded), &set_root)
            .unwrap_err()
            .to_string()
            .starts_with("Device from profile(s) cannot be modified"));
        assert_eq!(
            apply(&mut devs, None, &set_root).unwrap_err().to_string(),
            "Device doesn't exist"
        );
        let ov = Change::Override {
            device: "root".into(),
            keys: map(&[("size", "1GiB")]),
        };
        apply(&mut devs, Some(&expanded), &ov).unwrap();
        assert_eq!(
            devs["root"],
            map(&[("type", "disk"), ("path", "/"), ("size", "1GiB")])
        );
        apply(
            &mut devs,
            Some(&expanded),
            &Change::Remove(vec!["data".into(), "root".into()]),
        )
        .unwrap();
        assert!(devs.is_empty());
        assert_eq!(
            device_props(&["novalue".into()]).unwrap_err().to_string(),
            "No value found in \"novalue\""
        );
    }
}
