//! `stapes list`: instances, as `incus list` (6.0) lists them.
//!
//! ```text
//!  GET /1.0                  clustered? (the L column)
//!  columns need state or snapshots (4 6 D m M N p u U S)?
//!    yes: GET /1.0/instances?filter=<server filters>&recursion=2
//!    no:  GET /1.0/instances?filter=<server filters>&recursion=1
//!  client filters -> rows -> natural sort -> table | compact | csv | json | yaml
//! ```
//!
//! Filters are Incus's: a word is a name prefix or an anchored regex; `key=value` on a
//! field of the instance goes to the server (`filter=key eq value`), the shorthands
//! (`type`, `status`/`state`, `architecture`, `location`, `ipv4`, `ipv6`, with values
//! separated by `,`) and config keys (each dotted part a prefix: `s.privileged=true`,
//! the value an anchored regex) are applied here. Columns are Incus's letters, and
//! `[config:|devices:]key[:name][:maxWidth]` for custom ones.

use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use api::types::{Instance, InstanceFull, InstanceState};
use clap::Args;
use serde_json::Value;

use crate::ctx::{is_clustered, Ctx};
use crate::format::{date_or_empty, parse_size, render_typed_list, size_iec, sort_rows, ListFormat};

pub const DEFAULT_COLUMNS: &str = "ns46tSL";
const DEFAULT_COLUMNS_ALL_PROJECTS: &str = "ens46tSL";

#[derive(Debug, Args)]
pub struct ListArgs {
    /// [<remote>:] [<filter>...]
    pub args: Vec<String>,
    /// Columns
    #[arg(short, long, default_value = DEFAULT_COLUMNS)]
    pub columns: String,
    /// Format (csv|json|table|yaml|compact), with ",noheader" or ",header"
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Fast mode (same as --columns=nsacPt)
    #[arg(long)]
    pub fast: bool,
    /// Display instances from all projects
    #[arg(long)]
    pub all_projects: bool,
}

/// What a column shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Short(char),
    Config { key: String, max_width: Option<usize> },
    Device { key: String, max_width: Option<usize> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub data: Data,
}

impl Column {
    fn needs_state(&self) -> bool {
        matches!(
            self.data,
            Data::Short('4' | '6' | 'D' | 'm' | 'M' | 'N' | 'p' | 'u' | 'U')
        )
    }

    fn needs_snapshots(&self) -> bool {
        self.data == Data::Short('S')
    }
}

fn short_name(c: char) -> Option<&'static str> {
    Some(match c {
        '4' => "IPV4",
        '6' => "IPV6",
        'a' => "ARCHITECTURE",
        'b' => "STORAGE POOL",
        'c' => "CREATED AT",
        'd' => "DESCRIPTION",
        'D' => "DISK USAGE",
        'e' => "PROJECT",
        'f' | 'F' => "BASE IMAGE",
        'l' => "LAST USED AT",
        'm' => "MEMORY USAGE",
        'M' => "MEMORY USAGE%",
        'n' => "NAME",
        'N' => "PROCESSES",
        'p' => "PID",
        'P' => "PROFILES",
        'S' => "SNAPSHOTS",
        's' => "STATE",
        't' => "TYPE",
        'u' => "CPU USAGE",
        'U' => "STARTED AT",
        _ => return None,
    })
}

/// Parses `-c` as Incus does (with `--fast`, `--all-projects` and whether the server is
/// a cluster). Returns the columns and whether state or snapshots are needed.
pub fn parse_list_columns(
    spec: &str,
    fast: bool,
    all_projects: bool,
    clustered: bool,
) -> Result<(Vec<Column>, bool)> {
    let mut spec = spec.to_string();
    if all_projects && spec == DEFAULT_COLUMNS {
        spec = DEFAULT_COLUMNS_ALL_PROJECTS.into();
    }
    if fast {
        if spec != DEFAULT_COLUMNS && spec != DEFAULT_COLUMNS_ALL_PROJECTS {
            bail!("Can't specify --fast with --columns");
        }
        spec = if spec == DEFAULT_COLUMNS_ALL_PROJECTS {
            "ensacPt".into()
        } else {
            "nsacPt".into()
        };
    }
    if !clustered {
        if spec != DEFAULT_COLUMNS && spec != DEFAULT_COLUMNS_ALL_PROJECTS && spec.contains('L') {
            bail!("Can't specify column L when not clustered");
        }
        spec = spec.replace('L', "");
    }
    let mut columns = Vec::new();
    for entry in spec.split(',') {
        if entry.is_empty() {
            bail!("Empty column entry (redundant, leading or trailing command) in '{spec}'");
        }
        if !entry.contains('.') {
            for c in entry.chars() {
                let name = match (c, short_name(c)) {
                    ('L', _) if clustered => "LOCATION",
                    (_, Some(n)) => n,
                    _ => bail!("Unknown column shorthand char '{c}' in '{entry}'"),
                };
                columns.push(Column {
                    name: name.into(),
                    data: Data::Short(c),
                });
            }
            continue;
        }
        let mut cc: Vec<&str> = entry.split(':').collect();
        let mut device = false;
        if (cc[0] == "config" || cc[0] == "devices") && cc.len() > 1 {
            device = cc[0] == "devices";
            cc.remove(0);
        }
        if cc.len() > 3 {
            bail!("Invalid config key column format (too many fields): '{entry}'");
        }
        let key = cc[0].to_string();
        let mut name = key.clone();
        if cc.len() > 1 {
            if cc[1].is_empty() && cc.len() != 3 {
                bail!("Invalid name in '{entry}', empty string is only allowed when defining maxWidth");
            }
            name = cc[1].to_string();
        }
        let mut max_width = None;
        if cc.len() > 2 {
            let w: i64 = cc[2]
                .parse()
                .map_err(|_| anyhow!("Invalid max width (must be an integer) '{}' in '{entry}'", cc[2]))?;
            if w < -1 {
                bail!(
                    "Invalid max width (must -1, 0 or a positive integer) '{}' in '{entry}'",
                    cc[2]
                );
            }
            max_width = match w {
                0 => Some(name.len()),
                w if w > 0 => usize::try_from(w).ok(),
                _ => None,
            };
        }
        let data = if device {
            Data::Device { key, max_width }
        } else {
            Data::Config { key, max_width }
        };
        columns.push(Column { name, data });
    }
    let needs = columns.iter().any(|c| c.needs_state() || c.needs_snapshots());
    Ok((columns, needs))
}

fn truncate(v: String, max: Option<usize>) -> String {
    match max {
        Some(m) if v.len() > m => v.chars().take(m).collect(),
        _ => v,
    }
}

fn addresses(inst: &InstanceFull, family: &str) -> String {
    let Some(net) = inst
        .state
        .as_ref()
        .filter(|_| inst.instance.is_active())
        .and_then(|s| s.network.as_ref())
    else {
        return String::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (name, n) in net {
        if n.kind == "loopback" {
            continue;
        }
        for a in &n.addresses {
            if a.scope == "link" || a.scope == "local" || a.family != family {
                continue;
            }
            out.push(format!("{} ({name})", a.address));
        }
    }
    out.sort_by(|a, b| b.cmp(a));
    out.join("\n")
}

/// The name of the root disk among `devices` (Incus's `GetRootDiskDevice`).
fn root_disk(devices: &api::types::DeviceMap) -> Option<&str> {
    devices
        .iter()
        .find(|(_, d)| {
            d.get("type").map(String::as_str) == Some("disk")
                && d.get("path").map(String::as_str) == Some("/")
                && d.get("source").is_none_or(String::is_empty)
        })
        .map(|(name, _)| name.as_str())
}

/// One cell (pure).
pub fn cell(inst: &InstanceFull, col: &Column) -> String {
    let i = &inst.instance;
    let active_state = inst.state.as_ref().filter(|_| i.is_active());
    match &col.data {
        Data::Config { key, max_width } => {
            let v = i
                .put
                .config
                .get(key)
                .or_else(|| i.expanded_config.get(key))
                .cloned()
                .unwrap_or_default();
            truncate(v, *max_width)
        }
        Data::Device { key, max_width } => {
            let Some((dev, k)) = key.split_once('.') else {
                return String::new();
            };
            let v = i
                .put
                .devices
                .get(dev)
                .and_then(|d| d.get(k))
                .or_else(|| i.expanded_devices.get(dev).and_then(|d| d.get(k)))
                .cloned()
                .unwrap_or_default();
            truncate(v, *max_width)
        }
        Data::Short(c) => match c {
            '4' => addresses(inst, "inet"),
            '6' => addresses(inst, "inet6"),
            'a' => i.put.architecture.clone(),
            'b' => i
                .expanded_devices
                .values()
                .find(|d| {
                    d.get("type").map(String::as_str) == Some("disk")
                        && d.get("path").map(String::as_str) == Some("/")
                })
                .and_then(|d| d.get("pool").cloned())
                .unwrap_or_default(),
            'c' => date_or_empty(&i.created_at),
            'd' => i.put.description.clone(),
            'D' => {
                let root = root_disk(&i.expanded_devices).unwrap_or_default();
                inst.state
                    .as_ref()
                    .and_then(|s| s.disk.get(root))
                    .filter(|d| d.usage > 0)
                    .map(|d| size_iec(d.usage, 2))
                    .unwrap_or_default()
            }
            'e' => i.project.clone(),
            'f' | 'F' => {
                let v = i
                    .put
                    .config
                    .get("volatile.base_image")
                    .cloned()
                    .unwrap_or_default();
                if *c == 'f' && v.len() >= 12 {
                    v[..12].to_string()
                } else {
                    v
                }
            }
            'l' => date_or_empty(&i.last_used_at),
            'm' => active_state
                .filter(|s| s.memory.usage > 0)
                .map(|s| size_iec(s.memory.usage, 2))
                .unwrap_or_default(),
            'M' => active_state
                .filter(|s| s.memory.usage > 0)
                .and_then(|s| {
                    let limit = i.expanded_config.get("limits.memory")?;
                    if limit.is_empty() || limit.contains('%') {
                        return None;
                    }
                    let val = parse_size(limit).filter(|v| *v > 0)?;
                    Some(format!("{:.1}%", s.memory.usage as f64 / val as f64 * 100.0))
                })
                .unwrap_or_default(),
            'n' => i.name.clone(),
            'N' => active_state.map(|s| s.processes.to_string()).unwrap_or_default(),
            'p' => active_state.map(|s| s.pid.to_string()).unwrap_or_default(),
            'P' => i.put.profiles.clone().unwrap_or_default().join("\n"),
            'S' => inst.snapshots.as_ref().map_or(0, Vec::len).to_string(),
            's' => i.status.to_uppercase(),
            't' => {
                let kind = if i.kind.is_empty() {
                    "CONTAINER".to_string()
                } else {
                    i.kind.to_uppercase()
                };
                if i.put.ephemeral {
                    format!("{kind} (EPHEMERAL)")
                } else {
                    kind
                }
            }
            'u' => active_state
                .filter(|s| s.cpu.usage > 0)
                .map(|s| format!("{}s", s.cpu.usage / 1_000_000_000))
                .unwrap_or_default(),
            'U' => inst
                .state
                .as_ref()
                .map(|s| date_or_empty(&s.started_at))
                .unwrap_or_default(),
            _ => i.location.clone(),
        },
    }
}

/// Incus's `dotPrefixMatch`: each dotted part of `short` is a prefix of `full`'s.
pub fn dot_prefix_match(short: &str, full: &str) -> bool {
    let s: Vec<&str> = short.split('.').collect();
    let f: Vec<&str> = full.split('.').collect();
    s.len() == f.len() && s.iter().zip(&f).all(|(a, b)| b.starts_with(a))
}

/// A filter value against an actual one: an anchored regex (unless it anchors itself),
/// or plain equality when it is not a valid regex. `None` when it is no regex.
fn regex_match(pattern: &str, actual: &str) -> Option<bool> {
    let anchored = if pattern.contains('^') || pattern.contains('$') {
        pattern.to_string()
    } else {
        format!("^{pattern}$")
    };
    regex::Regex::new(&anchored).ok().map(|r| r.is_match(actual))
}

/// Whether a filter value matches (regex, else equality).
pub fn value_matches(pattern: &str, actual: &str) -> bool {
    regex_match(pattern, actual).unwrap_or(pattern == actual)
}

/// Go's `%v` of a JSON field value, for field filters.
pub fn go_value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<nil>".into(),
        other => other.to_string(),
    }
}

fn match_net(state: Option<&InstanceState>, query: &str, family: &str) -> bool {
    let Some(nets) = state.and_then(|s| s.network.as_ref()) else {
        return false;
    };
    let subnet = parse_cidr(query);
    nets.values().flat_map(|n| &n.addresses).any(|a| {
        if (family == "ipv6" && a.family != "inet6") || (family == "ipv4" && a.family != "inet") {
            return false;
        }
        if a.address == query {
            return true;
        }
        match (&subnet, a.address.parse::<IpAddr>()) {
            (Some((net, bits)), Ok(ip)) => in_subnet(ip, *net, *bits),
            _ => false,
        }
    })
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = s.split_once('/')?;
    Some((addr.parse().ok()?, bits.parse().ok()?))
}

fn in_subnet(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) if bits <= 32 => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if bits <= 128 => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

fn shorthand(key: &str, value: &str, i: &Instance, state: Option<&InstanceState>) -> Option<bool> {
    let one = |v: &str| -> bool {
        match key.to_lowercase().as_str() {
            "type" => i.kind.eq_ignore_ascii_case(v),
            "state" | "status" => i.status.eq_ignore_ascii_case(v),
            "architecture" => i.put.architecture.eq_ignore_ascii_case(v),
            "location" => i.location.eq_ignore_ascii_case(v),
            "ipv4" => match_net(state, v, "ipv4"),
            _ => match_net(state, v, "ipv6"),
        }
    };
    match key.to_lowercase().as_str() {
        "type" | "state" | "status" | "architecture" | "location" | "ipv4" | "ipv6" => {
            Some(value.split(',').any(one))
        }
        _ => None,
    }
}

/// Incus's `shouldShow` for the filters applied on the client (pure).
pub fn should_show(filters: &[String], inst: &InstanceFull) -> bool {
    let i = &inst.instance;
    for filter in filters {
        if let Some((key, value)) = filter.split_once('=') {
            if shorthand(key, value, i, inst.state.as_ref()) == Some(true) {
                continue;
            }
            let mut found = false;
            for (k, v) in &i.expanded_config {
                if !dot_prefix_match(key, k) {
                    continue;
                }
                match regex_match(value, v) {
                    Some(true) => {
                        found = true;
                        break;
                    }
                    Some(false) => {}
                    None if value == v => {
                        found = true;
                        break;
                    }
                    None => return false,
                }
            }
            if i.expanded_config.get(key).map(String::as_str).unwrap_or("") == value {
                continue;
            }
            if !found {
                return false;
            }
        } else {
            if regex_match(filter, &i.name) == Some(true) {
                continue;
            }
            if !i.name.starts_with(filter.as_str()) {
                return false;
            }
        }
    }
    true
}

/// The fields of `api.InstanceFull` by YAML tag: what the server can filter on.
const SERVER_FIELDS: &[&str] = &[
    "backups",
    "state",
    "snapshots",
    "created_at",
    "expanded_config",
    "expanded_devices",
    "name",
    "status",
    "status_code",
    "last_used_at",
    "location",
    "type",
    "project",
    "architecture",
    "config",
    "devices",
    "ephemeral",
    "profiles",
    "restore",
    "stateful",
    "description",
];

/// Incus's `getServerSupportedFilters`: `key=value` on a field, without `,` in the
/// value or `.` in the key, goes to the server; the rest stays here (pure).
pub fn split_filters(filters: &[String]) -> (Vec<String>, Vec<String>) {
    filters.iter().cloned().partition(|f| match f.split_once('=') {
        Some((k, v)) => SERVER_FIELDS.contains(&k) && !v.contains(',') && !k.contains('.'),
        None => false,
    })
}

/// Splits `list`'s arguments into the remote and the filters, as Incus does.
pub fn split_list_args(args: &[String]) -> (Option<String>, Vec<String>) {
    let Some(first) = args.first() else {
        return (None, Vec::new());
    };
    if first.contains(':') && !first.contains('=') {
        let (remote, name) = first.split_once(':').unwrap_or((first, ""));
        let mut filters: Vec<String> = args[1..].to_vec();
        if !name.is_empty() {
            filters.push(name.to_string());
        }
        return (Some(format!("{remote}:")), filters);
    }
    if !first.contains('=') {
        let mut filters: Vec<String> = args[1..].to_vec();
        filters.push(first.clone());
        return (None, filters);
    }
    (None, args.to_vec())
}

/// `list` as Incus renders it (pure): the filtered instances, sorted rows.
pub fn render_instances(
    instances: Vec<InstanceFull>,
    filters: &[String],
    columns: &[Column],
    format: ListFormat,
) -> Result<String> {
    let shown: Vec<InstanceFull> = instances
        .into_iter()
        .filter(|i| should_show(filters, i))
        .collect();
    let mut rows: Vec<Vec<String>> = shown
        .iter()
        .map(|i| columns.iter().map(|c| cell(i, c)).collect())
        .collect();
    sort_rows(&mut rows);
    let headers: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    render_typed_list(format, &headers, &rows, &shown).map_err(|e| anyhow!(e))
}

pub async fn run(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let format = ListFormat::parse(&args.format).map_err(|e| anyhow!(e))?;
    let (remote, filters) = split_list_args(&args.args);
    let (remote, _) = ctx.remote_arg(remote.as_deref())?;
    let client = ctx.client(&remote)?;
    let (server, _) = client.server().await?;
    let (columns, needs_data) =
        parse_list_columns(&args.columns, args.fast, args.all_projects, is_clustered(&server))?;
    let filters: Vec<String> = filters
        .into_iter()
        .map(|f| match f.split_once('=') {
            Some(("state", v)) => format!("status={v}"),
            _ => f,
        })
        .collect();
    let (server_filters, client_filters) = split_filters(&filters);
    let instances = if needs_data {
        client.instances_full(&server_filters, args.all_projects).await?
    } else {
        client
            .instances(&server_filters, args.all_projects)
            .await?
            .into_iter()
            .map(|instance| InstanceFull {
                instance,
                ..Default::default()
            })
            .collect()
    };
    print!(
        "{}",
        render_instances(instances, &client_filters, &columns, format)?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn t10_column_specs_as_incus_reads_them() {
        let (cols, needs) = parse_list_columns(DEFAULT_COLUMNS, false, false, true).unwrap();
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["NAME", "STATE", "IPV4", "IPV6", "TYPE", "SNAPSHOTS", "LOCATION"]
        );
        assert!(needs);
        let (cols, _) = parse_list_columns(DEFAULT_COLUMNS, false, false, false).unwrap();
        assert_eq!(cols.len(), 6, "L is dropped from the default when not clustered");
        assert_eq!(
            parse_list_columns("nsL", false, false, false)
                .unwrap_err()
                .to_string(),
            "Can't specify column L when not clustered"
        );
        let (_, needs) = parse_list_columns("nst", false, false, false).unwrap();
        assert!(!needs);
        let (cols, _) = parse_list_columns(DEFAULT_COLUMNS, true, false, false).unwrap();
        assert_eq!(
            cols.iter().map(|c| c.name.as_str()).collect::<Vec<_>>()[..3],
            ["NAME", "STATE", "ARCHITECTURE"]
        );
        assert_eq!(
            parse_list_columns("ns", true, false, false)
                .unwrap_err()
                .to_string(),
            "Can't specify --fast with --columns"
        );
        let (cols, _) = parse_list_columns("n,image.os:OS:2,devices:root.pool", false, false, false).unwrap();
        assert_eq!(
            cols[1],
            Column {
                name: "OS".into(),
                data: Data::Config {
                    key: "image.os".into(),
                    max_width: Some(2)
                }
            }
        );
        assert_eq!(cols[2].name, "root.pool");
        assert!(parse_list_columns("n,a:b:c:d.e", false, false, false).is_err());
        assert_eq!(
            parse_list_columns("nx", false, false, false)
                .unwrap_err()
                .to_string(),
            "Unknown column shorthand char 'x' in 'nx'"
        );
        assert!(parse_list_columns("n,,s", false, false, false).is_err());
    }

    #[test]
    fn t10_filters_as_incus_splits_and_applies_them() {
        assert_eq!(
            split_list_args(&s(&["m1:", "status=running"])),
            (Some("m1:".into()), s(&["status=running"]))
        );
        assert_eq!(split_list_args(&s(&["web"])), (None, s(&["web"])));
        assert_eq!(
            split_list_args(&s(&["m1:web"])),
            (Some("m1:".into()), s(&["web"]))
        );
        assert_eq!(
            split_list_args(&s(&["user.a=b", "c1"])),
            (None, s(&["user.a=b", "c1"]))
        );
        let (server, client) = split_filters(&s(&["status=running", "user.x=1", "type=a,b", "c1"]));
        assert_eq!(server, s(&["status=running"]));
        assert_eq!(client, s(&["user.x=1", "type=a,b", "c1"]));

        let mut inst = InstanceFull::default();
        inst.instance.name = "web01".into();
        inst.instance.status = "Running".into();
        inst.instance.kind = "container".into();
        inst.instance
            .expanded_config
            .insert("security.privileged".into(), "true".into());
        assert!(should_show(&s(&["web"]), &inst));
        assert!(should_show(&s(&[".*01$"]), &inst));
        assert!(!should_show(&s(&["db"]), &inst));
        assert!(should_show(&s(&["s.privileged=true"]), &inst));
        assert!(!should_show(&s(&["s.privileged=false"]), &inst));
        assert!(should_show(&s(&["type=virtual-machine,container"]), &inst));
        assert!(should_show(&s(&["status=RUNNING"]), &inst));
        assert!(!should_show(&s(&["status=stopped"]), &inst));
        assert!(should_show(&s(&["user.missing="]), &inst));
    }

    #[test]
    fn t10_subnets() {
        assert!(in_subnet(
            "10.1.2.3".parse().unwrap(),
            "10.1.0.0".parse().unwrap(),
            16
        ));
        assert!(!in_subnet(
            "10.2.2.3".parse().unwrap(),
            "10.1.0.0".parse().unwrap(),
            16
        ));
        assert!(in_subnet(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::".parse().unwrap(),
            32
        ));
    }
}
