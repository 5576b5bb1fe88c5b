//! `stapes admin init/waitready/shutdown`: talk to the local daemon over its unix socket.
//!
//! `admin init --preseed` is planned before anything is applied:
//!
//! ```text
//!  YAML --parse--> Preseed --plan()--> [Step::PatchConfig, Step::Cluster(..)]
//!                                        │ every step checked as supported first,
//!                                        ▼ then applied in order
//!                                      PATCH /1.0 {config}   (cluster: later)
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use client::{Client, ClientError, Method, Request};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ctx::{read_stdin, Ctx};
use crate::format::yaml;

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Configure the daemon
    Init(InitArgs),
    /// Wait for the daemon to be ready to process requests
    Waitready {
        /// Number of seconds to wait before giving up (default 600)
        #[arg(short, long, default_value_t = 0)]
        timeout: u64,
    },
    /// Tell the daemon to shutdown and exit
    Shutdown {
        /// Number of seconds to wait before giving up (default 600)
        #[arg(short, long, default_value_t = 0)]
        timeout: u64,
        /// Force shutdown instead of waiting for running operations to finish
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Pre-seed mode, expects YAML config from stdin
    #[arg(long)]
    pub preseed: bool,
    /// Dump YAML config to stdout
    #[arg(long)]
    pub dump: bool,
}

/// How long `waitready` and `shutdown` wait when no `--timeout` is given.
pub const DEFAULT_ADMIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Between two readiness probes.
pub const READY_POLL: Duration = Duration::from_millis(100);

/// The `cluster:` section of a preseed, as Incus names its fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterPreseed {
    #[serde(default)]
    pub server_name: String,
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub member_config: Vec<Value>,
    #[serde(default)]
    pub cluster_address: String,
    #[serde(default)]
    pub cluster_certificate: String,
    #[serde(default)]
    pub server_address: String,
    #[serde(default)]
    pub cluster_token: String,
    #[serde(default)]
    pub cluster_certificate_path: String,
}

/// A preseed document. Unknown keys are refused, as Incus's strict parsing does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preseed {
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
    #[serde(default)]
    pub networks: Vec<Value>,
    #[serde(default)]
    pub storage_pools: Vec<Value>,
    #[serde(default)]
    pub storage_volumes: Vec<Value>,
    #[serde(default)]
    pub profiles: Vec<Value>,
    #[serde(default)]
    pub projects: Vec<Value>,
    #[serde(default)]
    pub cluster: Option<ClusterPreseed>,
}

/// One thing `admin init --preseed` does.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `PATCH /1.0 {"config": ...}` (values as strings).
    PatchConfig(BTreeMap<String, String>),
    /// Turn this server into the first member of a cluster (`PUT /1.0/cluster`).
    EnableCluster(ClusterPreseed),
    /// Join an existing cluster with a join token (`PUT /1.0/cluster`, after checking the
    /// cluster's certificate against the token).
    JoinCluster(ClusterPreseed),
}

/// A plan and what it leaves out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
}

pub fn parse_preseed(text: &str) -> Result<Preseed> {
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Preseed::default());
    }
    serde_saphyr::from_str(text).map_err(|e| anyhow!("Failed to parse the preseed: {e}"))
}

/// Turns a preseed into steps (pure), the way `incus admin init` orders them:
/// a join (token and `server_address`) is one `PUT /1.0/cluster` and nothing else;
/// otherwise the configuration is applied first and clustering enabled after. A cluster
/// preseed that sets `core.https_address` but not `cluster.https_address` uses the one
/// for the other.
pub fn plan(preseed: Preseed) -> Plan {
    let mut plan = Plan::default();
    let mut config: BTreeMap<String, String> = preseed
        .config
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, s)
        })
        .collect();
    for (name, items) in [
        ("networks", &preseed.networks),
        ("storage_pools", &preseed.storage_pools),
        ("storage_volumes", &preseed.storage_volumes),
        ("profiles", &preseed.profiles),
        ("projects", &preseed.projects),
    ] {
        if !items.is_empty() {
            plan.warnings.push(format!(
                "Ignoring the {name} section: stapes has no instances or storage"
            ));
        }
    }
    if let Some(cluster) = &preseed.cluster {
        if let Some(core) = config.get("core.https_address").cloned() {
            if !core.is_empty() && config.get("cluster.https_address").is_none_or(String::is_empty) {
                config.insert("cluster.https_address".into(), core);
            }
        }
        if !cluster.cluster_token.is_empty() && !cluster.server_address.is_empty() {
            if !config.is_empty() {
                plan.warnings
                    .push("Ignoring the config section: a joining member takes the cluster's".into());
            }
            plan.steps.push(Step::JoinCluster(cluster.clone()));
            return plan;
        }
    }
    if !config.is_empty() {
        plan.steps.push(Step::PatchConfig(config));
    }
    if let Some(cluster) = preseed.cluster {
        if cluster.enabled {
            plan.steps.push(Step::EnableCluster(cluster));
        }
    }
    plan
}

/// `host`, `host:port`, `v6` or `[v6]:port` as `host:port` with the default port.
pub fn canonical_address(addr: &str) -> Result<String> {
    let (url, unix) = client::normalize_address(addr)?;
    if unix {
        bail!("{addr:?} is not a network address");
    }
    Ok(url.trim_start_matches("https://").to_string())
}

/// Reads `cluster_certificate_path` into `cluster_certificate`, as Incus does.
fn with_certificate_file(c: &ClusterPreseed) -> Result<ClusterPreseed> {
    let mut c = c.clone();
    if !c.cluster_certificate_path.is_empty() {
        let path = std::path::Path::new(&c.cluster_certificate_path);
        if !path.exists() {
            bail!("Path {} doesn't exist", c.cluster_certificate_path);
        }
        c.cluster_certificate = std::fs::read_to_string(path)?;
    }
    Ok(c)
}

/// The `PUT /1.0/cluster` body.
fn cluster_put(c: &ClusterPreseed) -> Value {
    json!({
        "server_name": c.server_name,
        "enabled": c.enabled,
        "member_config": c.member_config,
        "cluster_address": c.cluster_address,
        "cluster_certificate": c.cluster_certificate,
        "server_address": c.server_address,
        "cluster_token": c.cluster_token,
    })
}

/// Refuses cluster steps against a server without clustering, before anything applies.
async fn check_steps(client: &Client, steps: &[Step]) -> Result<()> {
    if !steps.iter().any(|s| !matches!(s, Step::PatchConfig(_))) {
        return Ok(());
    }
    match client.get("/1.0/cluster").await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.status(), Some(404) | Some(501)) => {
            bail!("clustering is not available on this server yet")
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits (at most `limit`) for the operation a request returned, if it is still
/// running, and turns its failure into the error message.
pub(crate) async fn finish_operation(
    client: &Client,
    resp: client::ApiResponse,
    limit: Duration,
) -> Result<(), String> {
    let env = resp.envelope;
    if env.kind != "async" {
        return Ok(());
    }
    let mut op = env.metadata.clone();
    if op["status_code"].as_u64().is_some_and(|c| c < 200) {
        let id = if env.operation.is_empty() {
            op["id"].as_str().unwrap_or_default().to_string()
        } else {
            env.operation.clone()
        };
        op = client
            .wait_operation(&id, limit)
            .await
            .map_err(|e| e.to_string())?;
    }
    match client::client::operation_error(&op) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Fills in what a join token gives: the member name, and the address and certificate
/// of the first cluster member that answers with the token's certificate.
async fn resolve_join(c: &ClusterPreseed) -> Result<ClusterPreseed> {
    let token: trust::token::JoinToken =
        trust::token::decode(&c.cluster_token).map_err(|e| anyhow!("Invalid cluster join token: {e}"))?;
    let mut c = c.clone();
    c.server_name = token.server_name.clone();
    c.enabled = true;
    c.server_address = canonical_address(&c.server_address)?;
    for addr in &token.addresses {
        let address = canonical_address(addr)?;
        let endpoint = client::Endpoint::parse(&format!("https://{address}"))?;
        match client::probe(vec![endpoint], None).await {
            Ok(p) => {
                if !p.fingerprint.eq_ignore_ascii_case(&token.fingerprint) {
                    bail!("Certificate fingerprint mismatch between join token and cluster member {addr:?}");
                }
                c.cluster_address = address;
                c.cluster_certificate = trust::cert::der_to_pem(&p.certificate_der);
                return Ok(c);
            }
            Err(e) => println!("Error connecting to existing cluster member {addr:?}: {e}"),
        }
    }
    bail!("Unable to connect to any of the cluster members specified in join token")
}

async fn apply_step(client: &Client, step: &Step) -> Result<()> {
    match step {
        Step::PatchConfig(config) => {
            client
                .call(Request::new(Method::PATCH, "/1.0").json(&json!({ "config": config })))
                .await
                .map_err(|e| anyhow!("Failed to update server configuration: {e}"))?;
            Ok(())
        }
        Step::EnableCluster(c) => {
            let c = &with_certificate_file(c)?;
            let fail = |e: String| anyhow!("Failed to configure cluster: {e}");
            let (current, etag) = client
                .get_with_etag("/1.0/cluster")
                .await
                .map_err(|e| anyhow!("Failed to retrieve current cluster config: {e}"))?;
            if current["enabled"].as_bool().unwrap_or(false) {
                return Ok(());
            }
            let resp = client
                .call(
                    Request::new(Method::PUT, "/1.0/cluster")
                        .json(&cluster_put(c))
                        .if_match(etag.as_deref()),
                )
                .await
                .map_err(|e| fail(e.to_string()))?;
            finish_operation(client, resp, DEFAULT_ADMIN_TIMEOUT)
                .await
                .map_err(fail)
        }
        Step::JoinCluster(c) => {
            let c = resolve_join(&with_certificate_file(c)?).await?;
            let fail = |e: String| anyhow!("Failed to join cluster: {e}");
            let resp = client
                .call(Request::new(Method::PUT, "/1.0/cluster").json(&cluster_put(&c)))
                .await
                .map_err(|e| fail(e.to_string()))?;
            finish_operation(client, resp, DEFAULT_ADMIN_TIMEOUT)
                .await
                .map_err(fail)
        }
    }
}

pub async fn run(ctx: &Ctx, cmd: AdminCmd) -> Result<()> {
    match cmd {
        AdminCmd::Init(args) => init(ctx, args).await,
        AdminCmd::Waitready { timeout } => waitready(ctx, bound(timeout)).await,
        AdminCmd::Shutdown { timeout, force } => shutdown(ctx, bound(timeout), force).await,
    }
}

fn bound(secs: u64) -> Duration {
    if secs == 0 {
        DEFAULT_ADMIN_TIMEOUT
    } else {
        Duration::from_secs(secs)
    }
}

fn local(ctx: &Ctx) -> Client {
    Client::local()
        .with_timeout(ctx.timeout())
        .with_target(ctx.globals.target.clone())
}

async fn init(ctx: &Ctx, args: InitArgs) -> Result<()> {
    if args.dump && args.preseed {
        bail!("Can't use --dump with other flags");
    }
    if !args.dump && !args.preseed {
        bail!("Only non-interactive initialization is supported: use --preseed (YAML on stdin) or --dump");
    }
    let client = local(ctx);
    let (server, _) = client
        .server()
        .await
        .map_err(|e| anyhow!("Failed to connect to local daemon: {e}"))?;
    if args.dump {
        let dump = json!({ "config": server.get("config").cloned().unwrap_or(json!({})) });
        print!("{}", yaml(&dump).map_err(|e| anyhow!(e))?);
        return Ok(());
    }
    let plan = plan(parse_preseed(&read_stdin()?)?);
    for w in &plan.warnings {
        eprintln!("Warning: {w}");
    }
    check_steps(&client, &plan.steps).await?;
    for step in &plan.steps {
        apply_step(&client, step).await?;
    }
    Ok(())
}

/// Polls `GET /internal/ready` on the local socket until it answers 200, within `limit`.
async fn waitready(ctx: &Ctx, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let client = local(ctx).with_timeout(Duration::from_secs(5).min(limit));
    loop {
        let last = match client.request(Request::get("/internal/ready")).await {
            Ok(resp) if resp.status.is_success() => return Ok(()),
            Ok(resp) => match resp.envelope() {
                Err(e) => e.to_string(),
                Ok(_) => format!("status {}", resp.status),
            },
            Err(e) => e.to_string(),
        };
        if ctx.globals.debug {
            eprintln!("Daemon not ready yet: {last}");
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "Daemon still not running after {}s timeout ({})",
                limit.as_secs(),
                last
            );
        }
        tokio::time::sleep(READY_POLL.min(deadline - now)).await;
    }
}

/// `PUT /internal/shutdown`: the daemon answers once it has stopped; a connection cut
/// while the socket goes away counts as done.
async fn shutdown(ctx: &Ctx, limit: Duration, force: bool) -> Result<()> {
    let client = local(ctx).with_timeout(limit);
    let path = format!("/internal/shutdown?force={force}");
    match client.call(Request::new(Method::PUT, &path)).await {
        Ok(_) => Ok(()),
        Err(ClientError::Timeout { .. }) => {
            bail!("Daemon still running after {}s timeout", limit.as_secs())
        }
        Err(ClientError::Http { .. }) => {
            // The daemon exited before answering: done if the socket is gone.
            match Client::local().get("/1.0").await {
                Err(ClientError::DaemonNotRunning { .. }) => Ok(()),
                _ => bail!("The daemon closed the connection without completing the shutdown"),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_config_preseed_plans_one_patch() {
        let p =
            parse_preseed("config:\n  core.https_address: 127.0.0.1:8443\n  cluster.offline_threshold: 20\n")
                .unwrap();
        let plan = plan(p);
        assert_eq!(
            plan.steps,
            vec![Step::PatchConfig(BTreeMap::from([
                ("cluster.offline_threshold".to_string(), "20".to_string()),
                ("core.https_address".to_string(), "127.0.0.1:8443".to_string()),
            ]))]
        );
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn t10_bootstrap_preseed_applies_config_then_enables() {
        let text = "config:\n  core.https_address: 127.0.0.1:8443\ncluster:\n  server_name: node1\n  enabled: true\nstorage_pools:\n- name: default\n  driver: dir\n";
        let plan = plan(parse_preseed(text).unwrap());
        assert_eq!(plan.steps.len(), 2);
        match &plan.steps[0] {
            Step::PatchConfig(c) => assert_eq!(c["cluster.https_address"], "127.0.0.1:8443"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&plan.steps[1], Step::EnableCluster(c) if c.server_name == "node1"));
        assert_eq!(plan.warnings.len(), 1);
    }

    #[test]
    fn t10_join_preseed_is_one_put() {
        let text = "cluster:\n  enabled: true\n  server_name: node2\n  server_address: 127.0.0.2\n  cluster_token: abc\n  member_config:\n  - entity: storage-pool\n    name: default\n    key: source\n    value: \"\"\n";
        let plan = plan(parse_preseed(text).unwrap());
        assert!(matches!(plan.steps.as_slice(), [Step::JoinCluster(c)] if c.member_config.len() == 1));
        assert_eq!(canonical_address("127.0.0.2").unwrap(), "127.0.0.2:8443");
        assert_eq!(canonical_address("[::1]:9000").unwrap(), "[::1]:9000");
        let put = cluster_put(&ClusterPreseed {
            server_name: "n".into(),
            ..Default::default()
        });
        assert_eq!(put["server_name"], "n");
        assert!(put.get("cluster_certificate_path").is_none());
    }

    #[test]
    fn t30_unknown_preseed_keys_are_refused() {
        assert!(parse_preseed("bogus: 1\n").is_err());
        assert!(parse_preseed("cluster:\n  nope: 1\n").is_err());
        assert!(plan(parse_preseed("").unwrap()).steps.is_empty());
    }
}
