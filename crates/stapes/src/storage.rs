//! `stapes storage ...`: storage pools, as `incus storage` (6.0) does them.
//!
//! ```text
//!  create  POST /1.0/storage-pools [?target=M]  {name, driver, config, description}
//!          (stdin YAML, when not a terminal, is the base of the request)
//!  list    GET /1.0/storage-pools?recursion=1           columns nDdus (+S source)
//!  show    GET /1.0/storage-pools/P [?target=M]         (--resources: .../resources)
//!  info    GET /1.0/storage-pools/P and .../resources   YAML "info" and "used by"
//!  get/set/unset/edit   GET, then PUT the writable part with the ETag
//!  delete  DELETE /1.0/storage-pools/P
//! ```
//!
//! On a cluster, `--target MEMBER` makes `create` define the pool as pending on that
//! member (member-specific keys such as `source` go there), and shows one member's view
//! in `show`, `get` and `info`.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use api::types::{StoragePool, StoragePoolPut, StoragePoolState, StoragePoolsPost};
use clap::{Args, Subcommand};

use crate::ctx::{parse_yaml, read_stdin, stdin_is_terminal, Ctx};
use crate::format::{go_yaml, render_objects, size_iec, ListFormat};
use crate::props;
use crate::server::parse_key_values;

#[derive(Debug, Subcommand)]
pub enum StorageCmd {
    /// Create storage pools
    Create {
        /// [<remote>:]<pool>
        pool: String,
        driver: String,
        /// key=value...
        config: Vec<String>,
        /// Storage pool description
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete storage pools
    #[command(alias = "rm")]
    Delete {
        /// [<remote>:]<pool>
        pool: String,
    },
    /// Edit storage pool configurations as YAML
    Edit {
        /// [<remote>:]<pool>
        pool: String,
    },
    /// Get values for storage pool configuration keys
    Get {
        /// [<remote>:]<pool>
        pool: String,
        key: String,
        /// Get the key as a storage property
        #[arg(short, long)]
        property: bool,
    },
    /// Show useful information about storage pools
    Info {
        /// [<remote>:]<pool>
        pool: String,
        /// Show the used and free space in bytes
        #[arg(long)]
        bytes: bool,
    },
    /// List available storage pools
    #[command(alias = "ls")]
    List(ListArgs),
    /// Set storage pool configuration keys
    Set {
        /// [<remote>:]<pool>
        pool: String,
        /// <key>=<value>... (or <key> <value>)
        #[arg(num_args = 1.., required = true)]
        args: Vec<String>,
        /// Set the key as a storage property
        #[arg(short, long)]
        property: bool,
    },
    /// Show storage pool configurations and resources
    Show {
        /// [<remote>:]<pool>
        pool: String,
        /// Show the resources available to the storage pool
        #[arg(long)]
        resources: bool,
    },
    /// Unset storage pool configuration keys
    Unset {
        /// [<remote>:]<pool>
        pool: String,
        key: String,
        /// Unset the key as a storage property
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
    #[arg(short, long, default_value = "nDdus")]
    pub columns: String,
}

const EDIT_HEADER: &str = "### This is a YAML representation of a storage pool.
### Any line starting with a '#' will be ignored.
###
### A storage pool consists of a set of configuration items.
###
### An example would look like:
### name: default
### driver: zfs
### used_by: []
### config:
###   size: \"61203283968\"
###   source: default
###   zfs.pool_name: default";

/// One cell of `storage list`.
fn pool_cell(pool: &StoragePool, c: char) -> String {
    match c {
        'n' => pool.name.clone(),
        'D' => pool.driver.clone(),
        'd' => pool.put.description.clone(),
        'S' => pool.put.config.get("source").cloned().unwrap_or_default(),
        'u' => pool.used_by.len().to_string(),
        _ => pool.status.to_uppercase(),
    }
}

fn pool_header(c: char) -> &'static str {
    match c {
        'n' => "NAME",
        'D' => "DRIVER",
        'd' => "DESCRIPTION",
        'S' => "SOURCE",
        'u' => "USED BY",
        _ => "STATE",
    }
}

/// `storage list` as Incus renders it (pure).
pub fn render_pools(pools: &[StoragePool], format: ListFormat, columns: &str) -> Result<String> {
    render_objects(format, pools, columns, "nDdSus", pool_cell, pool_header, true).map_err(|e| anyhow!(e))
}

/// `storage info` (pure): the pool's "info" and what uses it, grouped by kind.
pub fn render_info(pool: &StoragePool, res: &StoragePoolState, bytes: bool) -> Result<String> {
    let mut info = BTreeMap::new();
    info.insert("name", pool.name.clone());
    info.insert("driver", pool.driver.clone());
    info.insert("description", pool.put.description.clone());
    let (total, used) = if bytes {
        (res.space.total.to_string(), res.space.used.to_string())
    } else {
        (
            size_iec(i64::try_from(res.space.total).unwrap_or(i64::MAX), 2),
            size_iec(i64::try_from(res.space.used).unwrap_or(i64::MAX), 2),
        )
    };
    info.insert("total space", total);
    info.insert("space used", used);
    let mut used_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for url in &pool.used_by {
        if let Some((kind, entry)) = used_by_entry(url) {
            used_by.entry(kind).or_default().push(entry);
        }
    }
    let info_doc = BTreeMap::from([("info", info)]);
    let used_doc = BTreeMap::from([("used by", used_by)]);
    let mut out = crate::format::yaml(&info_doc).map_err(|e| anyhow!(e))?;
    out.push_str(&crate::format::yaml(&used_doc).map_err(|e| anyhow!(e))?);
    Ok(out)
}

/// The kind and name of a `used_by` URL, as `storage info` lists them; snapshots are
/// left out (their parent is listed).
pub fn used_by_entry(url: &str) -> Option<(String, String)> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let fields: Vec<&str> = path.trim_start_matches("/1.0/").split('/').collect();
    let n = fields.len();
    let (mut kind, mut name) = ("unrecognized".to_string(), path.to_string());
    if n > 1 {
        kind = fields[0].to_string();
        name = fields[1].to_string();
        if fields[n - 2] == "snapshots" {
            return None;
        }
        if fields[0] == "storage-pools" && n > 3 {
            kind = fields[2].to_string();
            name = fields[3].to_string();
            if kind == "volumes" && n > 4 {
                name = fields[4].to_string();
            }
        }
    }
    let param = |key: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    };
    let mut attribs = Vec::new();
    if let Some(p) = param("project").filter(|p| !p.is_empty()) {
        attribs.push(format!("project {p:?}"));
    }
    if let Some(t) = param("target").filter(|t| !t.is_empty()) {
        attribs.push(format!("location {t:?}"));
    }
    if !attribs.is_empty() {
        name = format!("{name} ({})", attribs.join(", "));
    }
    Some((kind, name))
}

fn pool_name(ctx: &Ctx, arg: &str) -> Result<(String, String)> {
    let (remote, name) = ctx.parse_remote(arg)?;
    if name.is_empty() {
        bail!("Missing pool name");
    }
    Ok((remote, name))
}

pub async fn run(ctx: &Ctx, cmd: StorageCmd) -> Result<()> {
    match cmd {
        StorageCmd::Create {
            pool,
            driver,
            config,
            description,
        } => create(ctx, &pool, &driver, &config, description).await,
        StorageCmd::Delete { pool } => {
            let (remote, name) = pool_name(ctx, &pool)?;
            ctx.client(&remote)?.delete_storage_pool(&name).await?;
            if !ctx.globals.quiet {
                println!("Storage pool {name} deleted");
            }
            Ok(())
        }
        StorageCmd::Edit { pool } => edit(ctx, &pool).await,
        StorageCmd::Get { pool, key, property } => {
            let (remote, name) = pool_name(ctx, &pool)?;
            let (p, _) = ctx.client(&remote)?.storage_pool(&name).await?;
            if property {
                let w = serde_json::to_value(p.writable())?;
                let v = props::get(&w, props::STORAGE_POOL, &key).map_err(|e| {
                    anyhow!("The property {key:?} does not exist on the storage pool {name:?}: {e}")
                })?;
                println!("{v}");
            } else if let Some(v) = p.put.config.get(&key) {
                println!("{v}");
            }
            Ok(())
        }
        StorageCmd::Info { pool, bytes } => {
            let (remote, name) = pool_name(ctx, &pool)?;
            let client = ctx.server_client(&remote).await?;
            let (p, _) = client.storage_pool(&name).await?;
            let res = client.storage_pool_resources(&name).await?;
            print!("{}", render_info(&p, &res, bytes)?);
            Ok(())
        }
        StorageCmd::List(args) => {
            let format = ListFormat::parse(&args.format).map_err(|e| anyhow!(e))?;
            let (remote, _) = ctx.remote_arg(args.remote.as_deref())?;
            let pools = ctx.client(&remote)?.storage_pools().await?;
            print!("{}", render_pools(&pools, format, &args.columns)?);
            Ok(())
        }
        StorageCmd::Set { pool, args, property } => set(ctx, &pool, &args, property, false).await,
        StorageCmd::Show { pool, resources } => {
            let (remote, name) = pool_name(ctx, &pool)?;
            let client = ctx.client(&remote)?;
            if resources {
                let res = client.storage_pool_resources(&name).await?;
                print!("{}", go_yaml(&res).map_err(|e| anyhow!(e))?);
                return Ok(());
            }
            let (mut p, _) = client.storage_pool(&name).await?;
            p.used_by.sort();
            print!("{}", go_yaml(&p).map_err(|e| anyhow!(e))?);
            Ok(())
        }
        StorageCmd::Unset { pool, key, property } => {
            set(ctx, &pool, &[key, String::new()], property, true).await
        }
    }
}

async fn create(
    ctx: &Ctx,
    pool: &str,
    driver: &str,
    config: &[String],
    description: Option<String>,
) -> Result<()> {
    if driver.contains('=') {
        bail!("Invalid number of arguments");
    }
    let base: StoragePoolPut = if stdin_is_terminal() {
        StoragePoolPut::default()
    } else {
        parse_yaml(&read_stdin()?)?
    };
    let (remote, name) = ctx.parse_remote(pool)?;
    let mut post = StoragePoolsPost {
        put: base,
        name: name.clone(),
        driver: driver.to_string(),
    };
    if let Some(d) = description.filter(|d| !d.is_empty()) {
        post.put.description = d;
    }
    for entry in config {
        let (k, v) = entry
            .split_once('=')
            .ok_or_else(|| anyhow!("Bad key=value pair: [{entry}]"))?;
        post.put.config.insert(k.to_string(), v.to_string());
    }
    ctx.client(&remote)?.create_storage_pool(&post).await?;
    if !ctx.globals.quiet {
        match &ctx.globals.target {
            Some(t) => println!("Storage pool {name} pending on member {t}"),
            None => println!("Storage pool {name} created"),
        }
    }
    Ok(())
}

async fn set(ctx: &Ctx, pool: &str, args: &[String], property: bool, unset: bool) -> Result<()> {
    let (remote, name) = pool_name(ctx, pool)?;
    let client = ctx.client(&remote)?;
    let (p, etag) = client.storage_pool(&name).await?;
    let keys = parse_key_values(args)?;
    let mut writable = p.writable();
    props::apply_keys(&mut writable, props::STORAGE_POOL, keys, property, unset, |w| {
        &mut w.config
    })?;
    client
        .update_storage_pool(&name, &writable, etag.as_deref())
        .await?;
    Ok(())
}

async fn edit(ctx: &Ctx, pool: &str) -> Result<()> {
    let (remote, name) = pool_name(ctx, pool)?;
    let client = ctx.client(&remote)?;
    if !stdin_is_terminal() {
        let put: StoragePoolPut = parse_yaml(&read_stdin()?)?;
        client.update_storage_pool(&name, &put, None).await?;
        return Ok(());
    }
    let (p, etag) = client.storage_pool(&name).await?;
    let text = format!("{EDIT_HEADER}\n\n{}", go_yaml(&p).map_err(|e| anyhow!(e))?);
    let path = format!("/1.0/storage-pools/{}", client::typed::seg(&name));
    crate::ctx::edit_in_editor(&client, &path, etag.as_deref(), &text, |t| {
        Ok(serde_json::to_value(parse_yaml::<StoragePoolPut>(t)?)?)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_used_by_entries() {
        assert_eq!(
            used_by_entry("/1.0/instances/c1"),
            Some(("instances".into(), "c1".into()))
        );
        assert_eq!(
            used_by_entry("/1.0/storage-pools/p/volumes/custom/vol1?project=x&target=node2"),
            Some((
                "volumes".into(),
                "vol1 (project \"x\", location \"node2\")".into()
            ))
        );
        assert_eq!(used_by_entry("/1.0/instances/c1/snapshots/s1"), None);
        assert_eq!(
            used_by_entry("/1.0/profiles/default"),
            Some(("profiles".into(), "default".into()))
        );
    }
}
