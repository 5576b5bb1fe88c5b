//! Server-level commands: `info`, `query`, `version`, and `config get/set/unset/show/edit`
//! of the server configuration (`GET /1.0`, then `PUT /1.0` with the whole config and the
//! ETag, as Incus does).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use client::{Method, Request};
use serde_json::{json, Value};

use crate::ctx::{read_stdin, stdin_is_terminal, Ctx};
use crate::format::{json_tabs, order, yaml, Doc};

/// `GET /1.0` printed as `incus info` prints it.
pub fn server_yaml(server: &Value) -> Result<String> {
    let doc = Doc::ordered(server, order::SERVER).nest("environment", order::ENVIRONMENT);
    yaml(&doc).map_err(|e| anyhow!(e))
}

pub async fn info(ctx: &Ctx, remote: Option<&str>, show_log: bool) -> Result<()> {
    let (remote, name) = ctx.remote_arg(remote)?;
    if !name.is_empty() {
        return crate::info::instance_info(ctx, &remote, &name, show_log).await;
    }
    let client = ctx.server_client(&remote).await?;
    let (server, _) = client.server().await?;
    print!("{}", server_yaml(&server)?);
    Ok(())
}

pub async fn version(ctx: &Ctx, remote: Option<&str>) -> Result<()> {
    println!("Client version: {}", env!("CARGO_PKG_VERSION"));
    let arg = remote.map(|r| {
        if r.ends_with(':') {
            r.to_string()
        } else {
            format!("{r}:")
        }
    });
    let server_version = async {
        let (remote, _) = ctx.remote_arg(arg.as_deref())?;
        let (server, _) = ctx.client(&remote)?.server().await?;
        Ok::<_, anyhow::Error>(
            server
                .pointer("/environment/server_version")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        )
    }
    .await
    .unwrap_or_else(|_| "unreachable".to_string());
    println!("Server version: {server_version}");
    Ok(())
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// [<remote>:]<API path>
    pub path: String,
    /// Action (defaults to GET)
    #[arg(short = 'X', long = "request", default_value = "GET")]
    pub method: String,
    /// Input data
    #[arg(short, long, default_value = "")]
    pub data: String,
    /// Wait for the operation to complete
    #[arg(long)]
    pub wait: bool,
    /// Print the raw response
    #[arg(long)]
    pub raw: bool,
}

/// The request body `incus query -d` sends: the data as JSON when it parses, else as a
/// JSON string; nothing when empty.
pub fn query_body(data: &str) -> Option<Value> {
    if data.is_empty() {
        return None;
    }
    Some(serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_string())))
}

pub async fn query(ctx: &Ctx, args: QueryArgs) -> Result<()> {
    let method = match args.method.as_str() {
        "GET" | "PUT" | "POST" | "PATCH" | "DELETE" => {
            Method::from_bytes(args.method.as_bytes()).expect("valid method")
        }
        other => bail!("Action {other:?} isn't supported by this tool"),
    };
    let (remote, path) = ctx.parse_remote(&args.path)?;
    if !path.starts_with('/') {
        bail!("Query path must start with /");
    }
    let client = ctx.client(&remote)?;
    let mut req = Request::new(method, &path);
    if let Some(body) = query_body(&args.data) {
        req = req.json(&body);
    }
    let resp = client.request(req).await?;
    let envelope = match resp.envelope() {
        Ok(env) => env,
        Err(e @ client::ClientError::Api { .. }) => {
            if args.raw {
                if let Ok(env) = serde_json::from_slice::<api::Envelope>(&resp.body) {
                    println!("{}", json_tabs(&env));
                    return Ok(());
                }
            }
            return Err(e.into());
        }
        Err(_) if resp.status.is_success() => {
            // Not JSON (metrics, logs): print as is.
            print!("{}", String::from_utf8_lossy(&resp.body));
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let mut envelope = envelope;
    if args.wait && !envelope.operation.is_empty() {
        let op_url = envelope.operation.clone();
        let (op_path, op_query) = match op_url.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (op_url.clone(), String::new()),
        };
        let secs = client.timeout().as_secs().max(1);
        let mut wait_path = format!("{op_path}/wait?timeout={secs}");
        if !op_query.is_empty() {
            wait_path.push('&');
            wait_path.push_str(&op_query);
        }
        let waiter = client
            .clone()
            .with_timeout(client.timeout() + std::time::Duration::from_secs(10));
        envelope = waiter.call(Request::get(&wait_path)).await?.envelope;
        if let Some(err) = client::client::operation_error(&envelope.metadata) {
            bail!("{err}");
        }
    }
    if args.raw {
        println!("{}", json_tabs(&envelope));
    } else if !envelope.metadata.is_null() && envelope.metadata != json!({}) {
        println!("{}", json_tabs(&envelope.metadata));
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Manage devices
    #[command(subcommand)]
    Device(crate::device::InstanceDeviceCmd),
    /// Get values for instance or server configuration keys
    Get {
        /// [<remote>:][<instance>] <key>
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Access the expanded configuration
        #[arg(short, long)]
        expanded: bool,
        /// Get the key as an instance property
        #[arg(short, long)]
        property: bool,
    },
    /// Set instance or server configuration keys
    Set {
        /// [<remote>:][<instance>] <key>=<value>... (or <key> <value>)
        #[arg(num_args = 1.., required = true)]
        args: Vec<String>,
        /// Set the key as an instance property
        #[arg(short, long)]
        property: bool,
    },
    /// Unset instance or server configuration keys
    Unset {
        /// [<remote>:][<instance>] <key>
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Unset the key as an instance property
        #[arg(short, long)]
        property: bool,
    },
    /// Show instance or server configurations
    Show {
        /// [<remote>:][<instance>[/<snapshot>]]
        remote: Option<String>,
        /// Show the expanded configuration
        #[arg(short, long)]
        expanded: bool,
    },
    /// Edit instance or server configurations as YAML
    Edit {
        /// [<remote>:][<instance>[/<snapshot>]]
        remote: Option<String>,
    },
    /// Manage trusted clients
    #[command(subcommand)]
    Trust(crate::trust_cmd::TrustCmd),
}

/// Which remote `config set` addresses, as Incus decides it from the arguments: only
/// `key=value` pairs, or a first argument that looks like a key (has a dot), or exactly
/// `key value`, mean the default remote; otherwise the first argument is the remote.
pub fn set_remote_arg(args: &[String]) -> Option<&str> {
    let only_kv = args.iter().all(|a| a.contains('='));
    let has_kv = args.iter().any(|a| a.contains('='));
    let looks_like_key = |v: &str| v.rsplit(':').next().is_some_and(|k| k.contains('.'));
    if only_kv || looks_like_key(&args[0]) || (args.len() == 2 && !has_kv) {
        None
    } else {
        Some(args[0].as_str())
    }
}

/// `key value` or `key=value...` into a map, with Incus's message for a bad pair.
pub fn parse_key_values(args: &[String]) -> Result<BTreeMap<String, String>> {
    if args.len() == 2 && !args[0].contains('=') {
        let value = if args[1] == "-" && !stdin_is_terminal() {
            read_stdin()?
        } else {
            args[1].clone()
        };
        return Ok(BTreeMap::from([(args[0].clone(), value)]));
    }
    let mut out = BTreeMap::new();
    for arg in args {
        let (k, v) = arg
            .split_once('=')
            .ok_or_else(|| anyhow!("Invalid key=value configuration: {arg}"))?;
        let v = if v == "-" && !stdin_is_terminal() {
            read_stdin()?
        } else {
            v.to_string()
        };
        out.insert(k.to_string(), v);
    }
    Ok(out)
}

/// A config value as `config get` prints it.
pub fn config_value_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

pub async fn config(ctx: &Ctx, cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Device(cmd) => crate::device::run_instance(ctx, cmd).await,
        ConfigCmd::Get {
            args,
            expanded,
            property,
        } => {
            let (remote_arg, key) = match args.as_slice() {
                [key] => (None, key.clone()),
                [r, key] => (Some(r.as_str()), key.clone()),
                _ => bail!("Invalid number of arguments"),
            };
            let (remote, name) = ctx.remote_arg(remote_arg)?;
            if !name.is_empty() {
                return crate::instance_config::get(ctx, &remote, &name, &key, expanded, property).await;
            }
            if expanded {
                bail!("--expanded cannot be used with a server");
            }
            let client = ctx.server_client(&remote).await?;
            let config = client.server().await?.0["config"].clone();
            println!("{}", config_value_text(config.get(&key)));
            Ok(())
        }
        ConfigCmd::Set { args, property } => set(ctx, &args, false, property).await,
        ConfigCmd::Unset { mut args, property } => {
            args.push(String::new());
            set(ctx, &args, true, property).await
        }
        ConfigCmd::Show { remote, expanded } => {
            let (remote, name) = ctx.remote_arg(remote.as_deref())?;
            if !name.is_empty() {
                print!(
                    "{}",
                    crate::instance_config::show_text(ctx, &remote, &name, expanded).await?
                );
                return Ok(());
            }
            if expanded {
                bail!("--expanded cannot be used with a server");
            }
            let client = ctx.server_client(&remote).await?;
            let (server, _) = client.server().await?;
            let brief = json!({ "config": server.get("config").cloned().unwrap_or(json!({})) });
            print!("{}", yaml(&brief).map_err(|e| anyhow!(e))?);
            Ok(())
        }
        ConfigCmd::Edit { remote } => edit(ctx, remote.as_deref()).await,
        ConfigCmd::Trust(cmd) => crate::trust_cmd::run(ctx, cmd).await,
    }
}

async fn set(ctx: &Ctx, args: &[String], unset: bool, property: bool) -> Result<()> {
    let remote_arg = if unset {
        // `unset [remote:] key` plus the appended empty value.
        (args.len() == 3).then(|| args[0].as_str())
    } else {
        set_remote_arg(args)
    };
    let (remote, name) = ctx.remote_arg(remote_arg)?;
    let kv_args = if remote_arg.is_some() { &args[1..] } else { args };
    let keys = parse_key_values(kv_args)?;
    if !name.is_empty() {
        return crate::instance_config::set(ctx, &remote, &name, keys, unset, property).await;
    }
    let client = ctx.server_client(&remote).await?;
    let (server, etag) = client.server().await?;
    let mut config = server
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in keys {
        config.insert(k, Value::String(v));
    }
    client
        .call(
            Request::new(Method::PUT, "/1.0")
                .json(&json!({ "config": config }))
                .if_match(etag.as_deref()),
        )
        .await?;
    Ok(())
}

async fn edit(ctx: &Ctx, remote: Option<&str>) -> Result<()> {
    let (remote, name) = ctx.remote_arg(remote)?;
    if !name.is_empty() {
        return crate::instance_config::edit(ctx, &remote, &name).await;
    }
    let client = ctx.server_client(&remote).await?;
    if !stdin_is_terminal() {
        let text = read_stdin()?;
        let body = parse_server_put(&text)?;
        client.call(Request::new(Method::PUT, "/1.0").json(&body)).await?;
        return Ok(());
    }
    let (server, etag) = client.server().await?;
    let brief = json!({ "config": server.get("config").cloned().unwrap_or(json!({})) });
    let header = "### This is a YAML representation of the server configuration.\n### Any line starting with a '# will be ignored.\n###\n### A sample configuration looks like:\n### config:\n###   core.https_address: 127.0.0.1:8443\n\n";
    crate::ctx::edit_in_editor(
        &client,
        "/1.0",
        etag.as_deref(),
        &format!("{header}{}", yaml(&brief).map_err(|e| anyhow!(e))?),
        parse_server_put,
    )
    .await
}

/// Parses the YAML of `config edit` into a `PUT /1.0` body (values as strings).
pub fn parse_server_put(text: &str) -> Result<Value> {
    #[derive(serde::Deserialize)]
    struct ServerPut {
        #[serde(default)]
        config: BTreeMap<String, Value>,
    }
    let put: ServerPut = if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        ServerPut {
            config: BTreeMap::new(),
        }
    } else {
        serde_saphyr::from_str(text).map_err(|e| anyhow!("{e}"))?
    };
    let config: BTreeMap<String, Value> = put
        .config
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, Value::String(s))
        })
        .collect();
    Ok(json!({ "config": config }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn t10_config_set_argument_forms() {
        assert_eq!(set_remote_arg(&s(&["core.https_address=:8443"])), None);
        assert_eq!(set_remote_arg(&s(&["core.https_address", ":8443"])), None);
        assert_eq!(
            set_remote_arg(&s(&["n1:", "core.https_address=:8443"])),
            Some("n1:")
        );
        assert_eq!(set_remote_arg(&s(&["n1:", "k", "v"])), Some("n1:"));
        assert_eq!(set_remote_arg(&s(&["n1:core.x", "v"])), None);
        let kv = parse_key_values(&s(&["a.b=1", "c.d=x=y"])).unwrap();
        assert_eq!(kv["a.b"], "1");
        assert_eq!(kv["c.d"], "x=y");
        let kv = parse_key_values(&s(&["a.b", "v"])).unwrap();
        assert_eq!(kv["a.b"], "v");
        assert_eq!(
            parse_key_values(&s(&["a", "b", "c"])).unwrap_err().to_string(),
            "Invalid key=value configuration: a"
        );
    }

    #[test]
    fn t10_query_body_guesses_json() {
        assert_eq!(query_body(""), None);
        assert_eq!(query_body(r#"{"a":1}"#), Some(json!({"a":1})));
        assert_eq!(query_body("plain"), Some(json!("plain")));
    }

    #[test]
    fn t10_server_yaml_keeps_incus_order() {
        let server = json!({
            "auth": "trusted", "api_status": "stable", "api_version": "1.0",
            "config": {"core.https_address": "127.0.0.1:8443"},
            "api_extensions": ["etag"], "public": false, "auth_methods": ["tls"],
            "environment": {"server_name": "node1", "addresses": ["127.0.0.1:8443"], "server_clustered": false}
        });
        let out = server_yaml(&server).unwrap();
        let expected = "config:\n  core.https_address: 127.0.0.1:8443\napi_extensions:\n- etag\napi_status: stable\napi_version: \"1.0\"\nauth: trusted\npublic: false\nauth_methods:\n- tls\nenvironment:\n  addresses:\n  - 127.0.0.1:8443\n  server_clustered: false\n  server_name: node1\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn t10_config_edit_yaml() {
        let v = parse_server_put(
            "config:\n  core.https_address: 127.0.0.1:8443\n  cluster.offline_threshold: 20\n",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"config": {"core.https_address": "127.0.0.1:8443", "cluster.offline_threshold": "20"}})
        );
        assert_eq!(parse_server_put("### nothing\n").unwrap(), json!({"config": {}}));
    }
}
