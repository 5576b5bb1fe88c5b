//! `stapes profile ...`: profiles, as `incus profile` (6.0) does them.
//!
//! ```text
//!  create   POST /1.0/profiles {name, config, description, devices} (stdin YAML as base)
//!  copy     GET the source, POST it under the new name (--refresh: PUT when it exists)
//!  rename   POST /1.0/profiles/P {name}          delete  DELETE /1.0/profiles/P
//!  list     GET /1.0/profiles?recursion=1  columns ndu (+e project)
//!  show/get/set/unset/edit   GET, then PUT the writable part with the ETag
//!  device ...                see `device`
//! ```

use anyhow::{anyhow, bail, Result};
use api::types::{Profile, ProfilePut, ProfilesPost};
use clap::{Args, Subcommand};

use crate::ctx::{parse_yaml, read_stdin, stdin_is_terminal, Ctx};
use crate::device::{DeviceCmd, Owner};
use crate::format::{go_yaml, render_objects, ListFormat};
use crate::props;
use crate::server::parse_key_values;

#[derive(Debug, Subcommand)]
pub enum ProfileCmd {
    /// Copy profiles
    #[command(alias = "cp")]
    Copy {
        /// [<remote>:]<profile>
        source: String,
        /// [<remote>:]<profile>
        destination: String,
        /// Update the target profile from the source if it already exists
        #[arg(long)]
        refresh: bool,
    },
    /// Create profiles
    Create {
        /// [<remote>:]<profile>
        profile: String,
        /// Profile description
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete profiles
    #[command(alias = "rm")]
    Delete {
        /// [<remote>:]<profile>
        profile: String,
    },
    /// Manage devices
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Edit profile configurations as YAML
    Edit {
        /// [<remote>:]<profile>
        profile: String,
    },
    /// Get values for profile configuration keys
    Get {
        /// [<remote>:]<profile>
        profile: String,
        key: String,
        /// Get the key as a profile property
        #[arg(short, long)]
        property: bool,
    },
    /// List profiles
    #[command(alias = "ls")]
    List(ListArgs),
    /// Rename profiles
    #[command(alias = "mv")]
    Rename {
        /// [<remote>:]<profile>
        profile: String,
        new_name: String,
    },
    /// Set profile configuration keys
    Set {
        /// [<remote>:]<profile>
        profile: String,
        /// <key>=<value>... (or <key> <value>)
        #[arg(num_args = 1.., required = true)]
        args: Vec<String>,
        /// Set the key as a profile property
        #[arg(short, long)]
        property: bool,
    },
    /// Show profile configurations
    Show {
        /// [<remote>:]<profile>
        profile: String,
    },
    /// Unset profile configuration keys
    Unset {
        /// [<remote>:]<profile>
        profile: String,
        key: String,
        /// Unset the key as a profile property
        #[arg(short, long)]
        property: bool,
    },
}

#[derive(Debug, Args)]
pub struct ListArgs {
    pub remote: Option<String>,
    /// Format (csv|json|table|yaml|compact), with ",noheader" or ",header"
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Columns
    #[arg(short, long, default_value = DEFAULT_COLUMNS)]
    pub columns: String,
    /// Display profiles from all projects
    #[arg(long)]
    pub all_projects: bool,
}

const DEFAULT_COLUMNS: &str = "ndu";

const EDIT_HEADER: &str = "### This is a YAML representation of the profile.
### Any line starting with a '# will be ignored.
###
### A profile consists of a set of configuration items followed by a set of
### devices.
###
### An example would look like:
### name: onenic
### config:
###   raw.lxc: lxc.aa_profile=unconfined
### devices:
###   eth0:
###     nictype: bridged
###     parent: mybr0
###     type: nic
###
### Note that the name is shown but cannot be changed";

/// `profile list` as Incus renders it (pure).
pub fn render_profiles(
    profiles: &[Profile],
    format: ListFormat,
    columns: &str,
    all_projects: bool,
) -> Result<String> {
    let spec = if all_projects && columns == DEFAULT_COLUMNS {
        "endu"
    } else {
        columns
    };
    let cell = |p: &Profile, c: char| match c {
        'n' => p.name.clone(),
        'e' => p.project.clone(),
        'd' => p.put.description.clone(),
        _ => p.used_by.len().to_string(),
    };
    let header = |c: char| match c {
        'n' => "NAME",
        'e' => "PROJECT",
        'd' => "DESCRIPTION",
        _ => "USED BY",
    };
    render_objects(format, profiles, spec, "nedu", cell, header, true).map_err(|e| anyhow!(e))
}

fn profile_name(ctx: &Ctx, arg: &str) -> Result<(String, String)> {
    let (remote, name) = ctx.parse_remote(arg)?;
    if name.is_empty() {
        bail!("Missing profile name");
    }
    Ok((remote, name))
}

pub async fn run(ctx: &Ctx, cmd: ProfileCmd) -> Result<()> {
    match cmd {
        ProfileCmd::Copy {
            source,
            destination,
            refresh,
        } => {
            let (src_remote, src) = ctx.parse_remote(&source)?;
            if src.is_empty() {
                bail!("Missing source profile name");
            }
            let (dst_remote, mut dst) = ctx.parse_remote(&destination)?;
            if dst.is_empty() {
                dst = src.clone();
            }
            let (profile, _) = ctx.client(&src_remote)?.profile(&src).await?;
            let target = ctx.client(&dst_remote)?;
            if refresh {
                match target.update_profile(&dst, &profile.writable(), None).await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.status() == Some(404) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            target
                .create_profile(&ProfilesPost {
                    put: profile.writable(),
                    name: dst,
                })
                .await?;
            Ok(())
        }
        ProfileCmd::Create { profile, description } => {
            let base: ProfilePut = if stdin_is_terminal() {
                ProfilePut::default()
            } else {
                parse_yaml(&read_stdin()?)?
            };
            let (remote, name) = profile_name(ctx, &profile)?;
            let mut post = ProfilesPost {
                put: base,
                name: name.clone(),
            };
            if let Some(d) = description.filter(|d| !d.is_empty()) {
                post.put.description = d;
            }
            ctx.client(&remote)?.create_profile(&post).await?;
            if !ctx.globals.quiet {
                println!("Profile {name} created");
            }
            Ok(())
        }
        ProfileCmd::Delete { profile } => {
            let (remote, name) = profile_name(ctx, &profile)?;
            ctx.client(&remote)?.delete_profile(&name).await?;
            if !ctx.globals.quiet {
                println!("Profile {name} deleted");
            }
            Ok(())
        }
        ProfileCmd::Device(cmd) => crate::device::run(ctx, Owner::Profile, cmd).await,
        ProfileCmd::Edit { profile } => {
            let (remote, name) = profile_name(ctx, &profile)?;
            let client = ctx.client(&remote)?;
            if !stdin_is_terminal() {
                let put: ProfilePut = parse_yaml(&read_stdin()?)?;
                client.update_profile(&name, &put, None).await?;
                return Ok(());
            }
            let (p, etag) = client.profile(&name).await?;
            let text = format!("{EDIT_HEADER}\n\n{}", go_yaml(&p).map_err(|e| anyhow!(e))?);
            let path = format!("/1.0/profiles/{}", client::typed::seg(&name));
            crate::ctx::edit_in_editor(&client, &path, etag.as_deref(), &text, |t| {
                Ok(serde_json::to_value(parse_yaml::<ProfilePut>(t)?)?)
            })
            .await
        }
        ProfileCmd::Get {
            profile,
            key,
            property,
        } => {
            let (remote, name) = profile_name(ctx, &profile)?;
            let (p, _) = ctx.client(&remote)?.profile(&name).await?;
            if property {
                let w = serde_json::to_value(p.writable())?;
                let v = props::get(&w, props::PROFILE, &key).map_err(|e| {
                    anyhow!("The property {key:?} does not exist on the profile {name:?}: {e}")
                })?;
                println!("{v}");
            } else {
                println!("{}", p.put.config.get(&key).cloned().unwrap_or_default());
            }
            Ok(())
        }
        ProfileCmd::List(args) => {
            let format = ListFormat::parse(&args.format).map_err(|e| anyhow!(e))?;
            let (remote, _) = ctx.remote_arg(args.remote.as_deref())?;
            let client = ctx.client(&remote)?;
            let profiles: Vec<Profile> = if args.all_projects {
                client
                    .get_typed("/1.0/profiles?recursion=1&all-projects=true")
                    .await?
                    .0
            } else {
                client.profiles().await?
            };
            print!(
                "{}",
                render_profiles(&profiles, format, &args.columns, args.all_projects)?
            );
            Ok(())
        }
        ProfileCmd::Rename { profile, new_name } => {
            let (remote, name) = profile_name(ctx, &profile)?;
            ctx.client(&remote)?.rename_profile(&name, &new_name).await?;
            if !ctx.globals.quiet {
                println!("Profile {name} renamed to {new_name}");
            }
            Ok(())
        }
        ProfileCmd::Set {
            profile,
            args,
            property,
        } => set(ctx, &profile, &args, property, false).await,
        ProfileCmd::Show { profile } => {
            let (remote, name) = profile_name(ctx, &profile)?;
            let (p, _) = ctx.client(&remote)?.profile(&name).await?;
            print!("{}", go_yaml(&p).map_err(|e| anyhow!(e))?);
            Ok(())
        }
        ProfileCmd::Unset {
            profile,
            key,
            property,
        } => set(ctx, &profile, &[key, String::new()], property, true).await,
    }
}

async fn set(ctx: &Ctx, profile: &str, args: &[String], property: bool, unset: bool) -> Result<()> {
    let (remote, name) = profile_name(ctx, profile)?;
    let client = ctx.client(&remote)?;
    let (p, etag) = client.profile(&name).await?;
    let keys = parse_key_values(args)?;
    let mut writable = p.writable();
    props::apply_keys(&mut writable, props::PROFILE, keys, property, unset, |w| {
        &mut w.config
    })?;
    client.update_profile(&name, &writable, etag.as_deref()).await?;
    Ok(())
}
