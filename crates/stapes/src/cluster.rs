//! `stapes cluster ...`: cluster members and their join tokens, as `incus cluster` (6.0)
//! does them.
//!
//! ```text
//!  enable  GET /1.0, GET /1.0/cluster, PUT /1.0/cluster {server_name, enabled} -> wait
//!  add     POST /1.0/cluster/members {server_name} -> token operation -> base64 JSON
//!  list    GET /1.0/cluster, GET /1.0/cluster/members?recursion=1
//!  tokens  GET /1.0/operations?recursion=1 -> running `token` ops with `serverName`
//!  show/info/get/set/unset/edit/rename/remove  /1.0/cluster/members/NAME[/state]
//!
//!  update-certificate  GET /1.0/cluster, PUT /1.0/cluster/certificate {cert, key}
//!                      -> re-pin every remote pinned to the old certificate
//! ```
//!
//! Like Incus, these commands ignore `--target`. Not here: `evacuate`, `restore`, `group`
//! and `role` (stapes has no instances to move, and its server has no endpoints for them).
//!
//! Unlike Incus, `update-certificate` re-pins not only the remote it used but every remote
//! of this client whose pinned certificate was the old one (the other addresses of the
//! same cluster), so they keep working.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use client::{Client, Method, Request};
use serde::Deserialize;
use serde_json::{json, Value};
use trust::token::JoinToken;

use crate::ctx::{read_stdin, stdin_is_terminal, Ctx};
use crate::format::{
    order, parse_columns, parse_time, render_list, render_tokens, sort_rows, yaml, Doc, ListFormat, TokenRow,
};

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Request a join token for adding a cluster member
    Add {
        /// [<remote>:]<member>
        member: String,
    },
    /// Edit cluster member configurations as YAML
    Edit {
        /// [<remote>:]<member>
        member: String,
    },
    /// Enable clustering on a single non-clustered server
    Enable {
        /// [<remote>:] <name>
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
    /// Get values for cluster member configuration keys
    Get {
        /// [<remote>:]<member>
        member: String,
        key: String,
        /// Get the key as a cluster property
        #[arg(short, long)]
        property: bool,
    },
    /// Show useful information about a cluster member
    Info {
        /// [<remote>:]<member>
        member: String,
    },
    /// List all the cluster members
    #[command(alias = "ls")]
    List(ListArgs),
    /// List all active cluster member join tokens
    ListTokens(TokenListArgs),
    /// Remove a member from the cluster
    #[command(alias = "rm")]
    Remove {
        /// [<remote>:]<member>
        member: String,
        /// Force removing a member, even if degraded
        #[arg(short, long)]
        force: bool,
        /// Don't require user confirmation for using --force
        #[arg(long)]
        yes: bool,
    },
    /// Rename a cluster member
    #[command(alias = "mv")]
    Rename {
        /// [<remote>:]<member>
        member: String,
        new_name: String,
    },
    /// Revoke cluster member join token
    RevokeToken {
        /// [<remote>:]<member>
        member: String,
    },
    /// Set a cluster member's configuration keys
    Set {
        /// [<remote>:]<member>
        member: String,
        /// <key>=<value>... (or <key> <value>)
        #[arg(num_args = 1.., required = true)]
        args: Vec<String>,
        /// Set the key as a cluster property
        #[arg(short, long)]
        property: bool,
    },
    /// Show details of a cluster member
    Show {
        /// [<remote>:]<member>
        member: String,
    },
    /// Update cluster certificate
    ///
    /// Update cluster certificate with PEM certificate and key read from input files.
    /// Every remote of this client that pinned the old cluster certificate is re-pinned.
    #[command(alias = "update-cert")]
    UpdateCertificate {
        /// [<remote>:] <cert.crt> <cert.key>
        #[arg(num_args = 2..=3, required = true, value_names = ["[REMOTE:]", "CERT_FILE", "KEY_FILE"])]
        args: Vec<String>,
    },
    /// Unset a cluster member's configuration keys
    Unset {
        /// [<remote>:]<member>
        member: String,
        key: String,
        /// Unset the key as a cluster property
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
    #[arg(short, long, default_value = "nurafdsm")]
    pub columns: String,
    /// Display clusters from all projects
    #[arg(long)]
    pub all_projects: bool,
}

#[derive(Debug, Args)]
pub struct TokenListArgs {
    pub remote: Option<String>,
    /// Format (csv|json|table|yaml|compact), with ",noheader" or ",header"
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Columns
    #[arg(short, long, default_value = "ntE")]
    pub columns: String,
}

/// The confirmation `cluster remove --force` asks for (on stdout, as Incus does).
pub const FORCE_REMOVE_PROMPT: &str =
    "Forcefully removing a server from the cluster should only be done as a last
resort.

The removed server will not be functional after this action and will require a
full reset, losing any remaining instance, image or storage volume that
the server may have held.

When possible, a graceful removal should be preferred, this will require you to
move any affected instance, image or storage volume to another server prior to
the server being cleanly removed from the cluster.

The --force flag should only be used if the server has died, been reinstalled
or is otherwise never expected to come back up.

Are you really sure you want to force removing ";

const EDIT_HEADER: &str =
    "### This is a yaml representation of the cluster member.\n### Any line starting with a '# will be ignored.";

/// Go's `%T` of a decoded JSON value, for Incus's metadata messages.
fn go_type(v: Option<&Value>) -> &'static str {
    match v {
        None | Some(Value::Null) => "<nil>",
        Some(Value::String(_)) => "string",
        Some(Value::Number(_)) => "float64",
        Some(Value::Bool(_)) => "bool",
        Some(Value::Array(_)) => "[]interface {}",
        Some(Value::Object(_)) => "map[string]interface {}",
    }
}

/// Builds the join token of a `class: token` operation (Incus's
/// `Operation.ToClusterJoinToken`), or says why the operation isn't one. Unlike Incus, a
/// token without `expiresAt` (no expiry configured) is accepted as never expiring.
pub fn join_token_from_operation(op: &Value) -> Result<JoinToken, String> {
    let meta = op.get("metadata").cloned().unwrap_or(Value::Null);
    let string = |key: &str| {
        meta.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("Operation {key} is type {} not string", go_type(meta.get(key))))
    };
    let server_name = string("serverName")?;
    let secret = string("secret")?;
    let fingerprint = string("fingerprint")?;
    let addresses = match meta.get("addresses") {
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.as_str().map(str::to_string).ok_or_else(|| {
                    format!(
                        "Operation address index {i} is type {} not string",
                        go_type(Some(a))
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => {
            return Err(format!(
                "Operation addresses is type {} not []any",
                go_type(other)
            ))
        }
    };
    let expires_at = match meta.get("expiresAt") {
        None | Some(Value::Null) => trust::token::NO_EXPIRY.to_string(),
        Some(Value::String(s)) => {
            let t = parse_time(s).ok_or_else(|| format!("parsing time {s:?}: not an RFC 3339 time"))?;
            trust::token::format_expiry(Some(t))
        }
        other => {
            return Err(format!(
                "Operation expiresAt is type {} not string",
                go_type(other)
            ))
        }
    };
    Ok(JoinToken {
        server_name,
        fingerprint,
        addresses,
        secret,
        expires_at,
    })
}

/// The running join-token operations of a `GET /1.0/operations?recursion=1` answer.
pub fn join_token_operations(ops: &Value) -> Vec<(Value, JoinToken)> {
    crate::operation::flatten(ops)
        .into_iter()
        .filter(|op| op["class"] == "token" && op["status_code"] == 103)
        .filter_map(|op| join_token_from_operation(&op).ok().map(|t| (op, t)))
        .collect()
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// One row of `cluster list`. Roles are one per line, or comma-separated when the
/// format is exactly `csv` (as Incus decides it).
pub fn member_row(member: &Value, cols: &[char], csv: bool) -> Vec<String> {
    cols.iter()
        .map(|c| match c {
            'n' => text(member, "server_name"),
            'u' => text(member, "url"),
            'r' => strings(member, "roles").join(if csv { "," } else { "\n" }),
            'a' => text(member, "architecture"),
            'f' => text(member, "failure_domain"),
            'd' => text(member, "description"),
            's' => text(member, "status").to_uppercase(),
            _ => text(member, "message"),
        })
        .collect()
}

fn member_header(c: char) -> &'static str {
    match c {
        'n' => "NAME",
        'u' => "URL",
        'r' => "ROLES",
        'a' => "ARCHITECTURE",
        'f' => "FAILURE DOMAIN",
        'd' => "DESCRIPTION",
        's' => "STATUS",
        _ => "MESSAGE",
    }
}

/// A member in `api.ClusterMember` field order; absent lists and maps print as Go's
/// empty values.
pub fn member_doc(member: &Value) -> Doc {
    Doc::ordered(&with_defaults(member), order::CLUSTER_MEMBER)
}

fn with_defaults(member: &Value) -> Value {
    let mut m = member.clone();
    if let Some(obj) = m.as_object_mut() {
        for key in ["roles", "groups"] {
            if obj.get(key).is_none_or(Value::is_null) {
                obj.insert(key.into(), json!([]));
            }
        }
        if obj.get("config").is_none_or(Value::is_null) {
            obj.insert("config".into(), json!({}));
        }
    }
    m
}

/// `member.Writable()`: the `api.ClusterMemberPut` part of a member.
pub fn writable(member: &Value) -> Value {
    let m = with_defaults(member);
    json!({
        "roles": m["roles"],
        "failure_domain": text(&m, "failure_domain"),
        "description": text(&m, "description"),
        "config": m["config"],
        "groups": m["groups"],
    })
}

/// `cluster get --property`: the value of a writable property as Incus prints it.
pub fn get_property(writable: &Value, tag: &str) -> Result<String, String> {
    crate::props::get(writable, crate::props::CLUSTER_MEMBER, tag)
}

/// `cluster set --property` (see [`crate::props::set`]).
pub fn set_properties(writable: &mut Value, keys: &BTreeMap<String, String>) -> Result<(), String> {
    crate::props::set(writable, crate::props::CLUSTER_MEMBER, keys)
}

/// `cluster unset --property` (see [`crate::props::unset`]).
pub fn unset_property(writable: &mut Value, tag: &str) -> Result<(), String> {
    crate::props::unset_field(writable, crate::props::CLUSTER_MEMBER, tag)
}

/// The YAML of `cluster edit` as a `PUT` body: fields left out take Go's zero values
/// (`null` lists and maps, empty strings); unknown fields are ignored.
pub fn parse_member_put(text: &str) -> Result<Value> {
    #[derive(Debug, Default, Deserialize)]
    struct MemberPut {
        #[serde(default)]
        roles: Option<Vec<String>>,
        #[serde(default)]
        failure_domain: Option<Value>,
        #[serde(default)]
        description: Option<Value>,
        #[serde(default)]
        config: Option<BTreeMap<String, Value>>,
        #[serde(default)]
        groups: Option<Vec<String>>,
    }
    let put: MemberPut = if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        MemberPut::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| anyhow!("{e}"))?
    };
    let scalar = |v: Option<Value>| match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    };
    let config = put.config.map(|c| {
        c.into_iter()
            .map(|(k, v)| (k, Value::String(scalar(Some(v)))))
            .collect::<serde_json::Map<_, _>>()
    });
    Ok(json!({
        "roles": put.roles,
        "failure_domain": scalar(put.failure_domain),
        "description": scalar(put.description),
        "config": config,
        "groups": put.groups,
    }))
}

pub async fn run(ctx: &Ctx, cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::Add { member } => add(ctx, &member).await,
        ClusterCmd::Edit { member } => edit(ctx, &member).await,
        ClusterCmd::Enable { args } => enable(ctx, &args).await,
        ClusterCmd::Get {
            member,
            key,
            property,
        } => get(ctx, &member, &key, property).await,
        ClusterCmd::Info { member } => {
            let (client, name) = member_client(ctx, &member)?;
            let state = client.get(&format!("/1.0/cluster/members/{name}/state")).await?;
            let doc = Doc::ordered(&state, order::CLUSTER_MEMBER_STATE)
                .nest("sysinfo", order::CLUSTER_MEMBER_SYSINFO);
            print!("{}", yaml(&doc).map_err(|e| anyhow!(e))?);
            Ok(())
        }
        ClusterCmd::List(args) => list(ctx, args).await,
        ClusterCmd::ListTokens(args) => list_tokens(ctx, args).await,
        ClusterCmd::Remove { member, force, yes } => remove(ctx, &member, force, yes).await,
        ClusterCmd::Rename { member, new_name } => {
            let (client, name) = member_client(ctx, &member)?;
            client
                .call(
                    Request::new(Method::POST, format!("/1.0/cluster/members/{name}"))
                        .json(&json!({ "server_name": new_name })),
                )
                .await?;
            if !ctx.globals.quiet {
                println!("Member {name} renamed to {new_name}");
            }
            Ok(())
        }
        ClusterCmd::RevokeToken { member } => revoke_token(ctx, &member).await,
        ClusterCmd::Set {
            member,
            args,
            property,
        } => set(ctx, &member, &args, property, false).await,
        ClusterCmd::Show { member } => {
            let (client, name) = member_client(ctx, &member)?;
            let m = client.get(&format!("/1.0/cluster/members/{name}")).await?;
            print!("{}", yaml(&member_doc(&m)).map_err(|e| anyhow!(e))?);
            Ok(())
        }
        ClusterCmd::Unset {
            member,
            key,
            property,
        } => set(ctx, &member, &[key, String::new()], property, true).await,
        ClusterCmd::UpdateCertificate { args } => update_certificate(ctx, &args).await,
    }
}

/// `[remote:]member` to a client (without `--target`, as Incus's cluster commands) and
/// the member name.
fn member_client(ctx: &Ctx, arg: &str) -> Result<(Client, String)> {
    let (remote, name) = ctx.parse_remote(arg)?;
    Ok((ctx.client_untargeted(&remote)?, name))
}

/// Refuses a server that isn't clustered, with Incus's message.
async fn require_cluster(client: &Client) -> Result<()> {
    let cluster = client.get("/1.0/cluster").await?;
    if !cluster["enabled"].as_bool().unwrap_or(false) {
        bail!("Server isn't part of a cluster");
    }
    Ok(())
}

async fn enable(ctx: &Ctx, args: &[String]) -> Result<()> {
    let (remote_arg, name) = match args {
        [name] => (None, name.as_str()),
        [remote, name] => (Some(remote.as_str()), name.as_str()),
        _ => unreachable!("clap bounds the arguments"),
    };
    let (remote, _) = ctx.remote_arg(remote_arg)?;
    let client = ctx.client_untargeted(&remote)?;
    let (server, _) = client
        .server()
        .await
        .map_err(|e| anyhow!("Failed to retrieve current server config: {e}"))?;
    let address = |k: &str| server["config"][k].as_str().unwrap_or_default().is_empty();
    if address("core.https_address") && address("cluster.https_address") {
        bail!("This server is not available on the network");
    }
    let (current, etag) = client
        .get_with_etag("/1.0/cluster")
        .await
        .map_err(|e| anyhow!("Failed to retrieve current cluster config: {e}"))?;
    if current["enabled"].as_bool().unwrap_or(false) {
        bail!("This server is already clustered");
    }
    let body = json!({
        "server_name": name,
        "enabled": true,
        "member_config": null,
        "cluster_address": "",
        "cluster_certificate": "",
        "server_address": "",
        "cluster_token": "",
    });
    let fail = |e: String| anyhow!("Failed to configure cluster: {e}");
    let resp = client
        .call(
            Request::new(Method::PUT, "/1.0/cluster")
                .json(&body)
                .if_match(etag.as_deref()),
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    crate::admin::finish_operation(&client, resp, ctx.timeout())
        .await
        .map_err(fail)?;
    println!("Clustering enabled");
    Ok(())
}

async fn add(ctx: &Ctx, arg: &str) -> Result<()> {
    let (client, name) = member_client(ctx, arg)?;
    if name.is_empty() {
        bail!("A cluster member name must be provided");
    }
    let resp = client
        .call(Request::new(Method::POST, "/1.0/cluster/members").json(&json!({ "server_name": name })))
        .await?;
    let token = join_token_from_operation(&resp.envelope.metadata)
        .map_err(|e| anyhow!("Failed converting token operation to join token: {e}"))?;
    if !ctx.globals.quiet {
        println!("Member {name} join token:");
    }
    println!("{}", trust::token::encode(&token));
    Ok(())
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let format = ListFormat::parse(&args.format).map_err(|e| anyhow!(e))?;
    let (remote, _) = ctx.remote_arg(args.remote.as_deref())?;
    let client = ctx.client_untargeted(&remote)?;
    require_cluster(&client).await?;
    let members = client.get("/1.0/cluster/members?recursion=1").await?;
    let members: Vec<Value> = members.as_array().cloned().unwrap_or_default();
    let cols = parse_columns(&args.columns, "nurafdsm").map_err(|e| anyhow!(e))?;
    let csv = args.format == "csv";
    let mut rows: Vec<Vec<String>> = members.iter().map(|m| member_row(m, &cols, csv)).collect();
    sort_rows(&mut rows);
    let headers: Vec<&str> = cols.iter().map(|c| member_header(*c)).collect();
    let raw: Vec<Doc> = members.iter().map(member_doc).collect();
    print!(
        "{}",
        render_list(format, &headers, &rows, &raw).map_err(|e| anyhow!(e))?
    );
    Ok(())
}

async fn list_tokens(ctx: &Ctx, args: TokenListArgs) -> Result<()> {
    let format = ListFormat::parse(&args.format).map_err(|e| anyhow!(e))?;
    let (remote, _) = ctx.remote_arg(args.remote.as_deref())?;
    let client = ctx.client_untargeted(&remote)?;
    require_cluster(&client).await?;
    let ops = client.get("/1.0/operations?recursion=1").await?;
    let cols = parse_columns(&args.columns, "ntE").map_err(|e| anyhow!(e))?;
    let tokens: Vec<JoinToken> = join_token_operations(&ops).into_iter().map(|(_, t)| t).collect();
    let rows: Vec<TokenRow> = tokens
        .iter()
        .map(|t| TokenRow {
            name: t.server_name.clone(),
            token: trust::token::encode(t),
            expires_at: t.expires_at.clone(),
        })
        .collect();
    print!(
        "{}",
        render_tokens(format, &cols, &rows, &tokens, false).map_err(|e| anyhow!(e))?
    );
    Ok(())
}

async fn revoke_token(ctx: &Ctx, arg: &str) -> Result<()> {
    let (remote, name) = ctx.parse_remote(arg)?;
    let client = ctx.client_untargeted(&remote)?;
    require_cluster(&client).await?;
    let ops = client.get("/1.0/operations?recursion=1").await?;
    for (op, token) in join_token_operations(&ops) {
        if token.server_name == name {
            let id = op["id"].as_str().unwrap_or_default();
            client
                .call(Request::new(Method::DELETE, format!("/1.0/operations/{id}")))
                .await?;
            if !ctx.globals.quiet {
                println!("Cluster join token for {remote}:{name} deleted");
            }
            return Ok(());
        }
    }
    bail!("No cluster join token for member {name} on remote: {remote}")
}

async fn remove(ctx: &Ctx, arg: &str, force: bool, yes: bool) -> Result<()> {
    let (client, name) = member_client(ctx, arg)?;
    if force && !yes {
        let answer = crate::ctx::ask_line(&format!("{FORCE_REMOVE_PROMPT}{name}? (yes/no): "))?;
        if answer.to_lowercase() != "yes" {
            bail!("User aborted delete operation");
        }
    }
    let path = if force {
        format!("/1.0/cluster/members/{name}?force=1")
    } else {
        format!("/1.0/cluster/members/{name}")
    };
    client.call(Request::new(Method::DELETE, path)).await?;
    if !ctx.globals.quiet {
        println!("Member {name} removed");
    }
    Ok(())
}

/// Reads one of the PEM files of `update-certificate`, with Incus's messages.
fn read_pem_file(path: &str, what: &str) -> Result<String> {
    let p = std::path::Path::new(path);
    if !p.exists() {
        bail!("Could not find {what} file path: {path}");
    }
    std::fs::read_to_string(p).map_err(|e| anyhow!("Could not read {what} file: {path} with error: {e}"))
}

async fn update_certificate(ctx: &Ctx, args: &[String]) -> Result<()> {
    let (remote_arg, cert_file, key_file) = match args {
        [cert, key] => (None, cert, key),
        [remote, cert, key] => (Some(remote.as_str()), cert, key),
        _ => unreachable!("clap bounds the arguments"),
    };
    let (remote, _) = ctx.remote_arg(remote_arg)?;
    let client = ctx.client_untargeted(&remote)?;
    require_cluster(&client).await?;
    let cert = read_pem_file(cert_file, "certificate")?;
    let key = read_pem_file(key_file, "certificate key")?;

    // The certificate this client knew the cluster by: the pin of the remote used, or
    // (over the unix socket, where nothing is pinned) what the server says it serves.
    let old_fingerprint = match ctx.config.pinned_fingerprint(&remote)? {
        Some(fp) => Some(fp),
        None => {
            let (server, _) = client.server().await?;
            server
                .pointer("/environment/certificate_fingerprint")
                .and_then(Value::as_str)
                .filter(|fp| !fp.is_empty())
                .map(str::to_string)
        }
    };

    client
        .call(
            Request::new(Method::PUT, "/1.0/cluster/certificate").json(&json!({
                "cluster_certificate": cert,
                "cluster_certificate_key": key,
            })),
        )
        .await?;

    // The server accepted it, so it parses; the pin is its first certificate.
    let new_der = trust::cert::pem_to_der(&cert)?;
    let mut repin: Vec<String> = old_fingerprint
        .map(|fp| ctx.config.remotes_pinned_to(&fp))
        .unwrap_or_default();
    if ctx.config.server_cert_path(&remote).exists() && !repin.contains(&remote) {
        repin.push(remote.clone());
    }
    for name in &repin {
        ctx.config.save_server_cert(name, &new_der).map_err(|e| {
            anyhow!("Could not write new remote certificate for remote '{name}' with error: {e}")
        })?;
    }
    if !ctx.globals.quiet {
        println!("Successfully updated cluster certificates");
        if repin.len() > 1 || repin.first().is_some_and(|r| *r != remote) {
            println!(
                "Pinned the new certificate ({}) for remotes: {}",
                trust::fingerprint(&new_der),
                repin.join(", ")
            );
        }
    }
    Ok(())
}

async fn get(ctx: &Ctx, arg: &str, key: &str, is_property: bool) -> Result<()> {
    let (client, name) = member_client(ctx, arg)?;
    let member = client.get(&format!("/1.0/cluster/members/{name}")).await?;
    if is_property {
        let value = get_property(&writable(&member), key).map_err(|e| {
            anyhow!("The property {key:?} does not exist on the cluster member {name:?}: {e}")
        })?;
        println!("{value}");
        return Ok(());
    }
    match member["config"].get(key) {
        Some(Value::String(v)) => println!("{v}"),
        Some(other) if !other.is_null() => println!("{other}"),
        _ => bail!("The key {key:?} does not exist on cluster member {name:?}"),
    }
    Ok(())
}

/// `cluster set` and `cluster unset` (which sets the key to an empty value, or clears a
/// property), then `PUT` of the whole writable member without an ETag, as Incus does.
async fn set(ctx: &Ctx, arg: &str, args: &[String], is_property: bool, unset: bool) -> Result<()> {
    let (client, name) = member_client(ctx, arg)?;
    let path = format!("/1.0/cluster/members/{name}");
    let member = client.get(&path).await?;
    let keys = crate::server::parse_key_values(args)?;
    let mut body = writable(&member);
    if is_property {
        if unset {
            for key in keys.keys() {
                unset_property(&mut body, key).map_err(|e| anyhow!(e))?;
            }
        } else {
            set_properties(&mut body, &keys).map_err(|e| anyhow!(e))?;
        }
    } else {
        for (k, v) in keys {
            body["config"][k] = Value::String(v);
        }
    }
    client.call(Request::new(Method::PUT, &path).json(&body)).await?;
    Ok(())
}

async fn edit(ctx: &Ctx, arg: &str) -> Result<()> {
    let (client, name) = member_client(ctx, arg)?;
    if name.is_empty() {
        bail!("Missing cluster member name");
    }
    let path = format!("/1.0/cluster/members/{name}");
    if !stdin_is_terminal() {
        let body = parse_member_put(&read_stdin()?)?;
        client.call(Request::new(Method::PUT, &path).json(&body)).await?;
        return Ok(());
    }
    let (member, etag) = client.get_with_etag(&path).await?;
    let current = Doc::ordered(&writable(&member), order::CLUSTER_MEMBER_PUT);
    let text = yaml(&current).map_err(|e| anyhow!(e))?;
    crate::ctx::edit_in_editor(
        &client,
        &path,
        etag.as_deref(),
        &format!("{EDIT_HEADER}\n\n{text}"),
        parse_member_put,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_op() -> Value {
        json!({
            "id": "0f1c", "class": "token", "status": "Running", "status_code": 103,
            "metadata": {
                "serverName": "node2",
                "fingerprint": "57bb0ff4",
                "addresses": ["127.0.0.1:8443"],
                "secret": "2b2284d4",
                "expiresAt": "2026-11-24T18:36:42.680494488Z",
            }
        })
    }

    fn member() -> Value {
        json!({
            "server_name": "node1", "url": "https://127.0.0.1:8443", "database": true,
            "status": "Online", "message": "Fully operational", "architecture": "x86_64",
            "failure_domain": "default", "description": "", "config": {},
            "groups": ["default"], "roles": ["database-leader", "database"],
        })
    }

    #[test]
    fn t10_join_token_is_built_like_incus() {
        let t = join_token_from_operation(&token_op()).unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"server_name":"node2","fingerprint":"57bb0ff4","addresses":["127.0.0.1:8443"],"secret":"2b2284d4","expires_at":"2026-11-24T18:36:42.680494488Z"}"#
        );
        let decoded: JoinToken = trust::token::decode(&trust::token::encode(&t)).unwrap();
        assert_eq!(decoded, t);
        let mut no_expiry = token_op();
        no_expiry["metadata"].as_object_mut().unwrap().remove("expiresAt");
        assert_eq!(
            join_token_from_operation(&no_expiry).unwrap().expires_at,
            trust::token::NO_EXPIRY
        );
    }

    #[test]
    fn t30_not_join_tokens() {
        let trust_op = json!({"class": "token", "status_code": 103, "metadata": {
            "request": {"name": "c"}, "secret": "s", "fingerprint": "f", "addresses": []}});
        assert_eq!(
            join_token_from_operation(&trust_op).unwrap_err(),
            "Operation serverName is type <nil> not string"
        );
        let mut bad = token_op();
        bad["metadata"]["addresses"] = json!([1]);
        assert_eq!(
            join_token_from_operation(&bad).unwrap_err(),
            "Operation address index 0 is type float64 not string"
        );
        let mut done = token_op();
        done["status_code"] = json!(200);
        let ops = json!({"running": [token_op(), trust_op], "success": [done]});
        let found = join_token_operations(&ops);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.server_name, "node2");
    }

    #[test]
    fn t10_member_rows_and_documents() {
        let cols: Vec<char> = "nurafdsm".chars().collect();
        assert_eq!(
            member_row(&member(), &cols, false),
            vec![
                "node1",
                "https://127.0.0.1:8443",
                "database-leader\ndatabase",
                "x86_64",
                "default",
                "",
                "ONLINE",
                "Fully operational"
            ]
        );
        assert_eq!(
            member_row(&member(), &['r'], true),
            vec!["database-leader,database"]
        );
        let text = yaml(&member_doc(&member())).unwrap();
        assert_eq!(
            text,
            "roles:\n- database-leader\n- database\nfailure_domain: default\ndescription: \"\"\nconfig: {}\ngroups:\n- default\nserver_name: node1\nurl: https://127.0.0.1:8443\ndatabase: true\nstatus: Online\nmessage: Fully operational\narchitecture: x86_64\n"
        );
    }

    #[test]
    fn t10_properties_like_incus() {
        let mut w = writable(&member());
        assert_eq!(get_property(&w, "description").unwrap(), "");
        assert_eq!(get_property(&w, "Failure_Domain").unwrap(), "default");
        assert_eq!(get_property(&w, "roles").unwrap(), "[database-leader database]");
        assert_eq!(get_property(&w, "config").unwrap(), "map[]");
        assert_eq!(
            get_property(&w, "nope").unwrap_err(),
            "The property with tag \"nope\" does not exist"
        );
        let keys = BTreeMap::from([
            ("description".to_string(), "first".to_string()),
            ("unknown".to_string(), "x".to_string()),
        ]);
        set_properties(&mut w, &keys).unwrap();
        assert_eq!(w["description"], "first");
        let keys = BTreeMap::from([("roles".to_string(), "database".to_string())]);
        assert!(set_properties(&mut w, &keys)
            .unwrap_err()
            .contains("'roles': source data must be an array or slice, got string"));
        unset_property(&mut w, "description").unwrap();
        assert_eq!(w["description"], "");
        unset_property(&mut w, "roles").unwrap();
        assert_eq!(w["roles"], json!(["database-leader", "database"]));
        assert_eq!(
            unset_property(&mut w, "bogus").unwrap_err(),
            "Error unsetting property: The property with tag \"bogus\" does not exist"
        );
    }

    #[test]
    fn t10_edit_yaml_takes_go_zero_values() {
        let v = parse_member_put("description: first\nserver_name: ignored\nconfig:\n  user.x: 1\n").unwrap();
        assert_eq!(
            v,
            json!({"roles": null, "failure_domain": "", "description": "first",
                   "config": {"user.x": "1"}, "groups": null})
        );
        assert_eq!(
            parse_member_put("### only comments\n").unwrap()["description"],
            ""
        );
        assert!(parse_member_put("description: [unclosed\n").is_err());
    }
}
