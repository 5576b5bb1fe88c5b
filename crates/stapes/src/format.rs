//! Output formats, as pure functions: the list renderer Incus uses (`table`, `compact`,
//! `csv`, `json`, `yaml`), YAML and JSON printing, dates, natural sorting.

use std::cmp::Ordering;

use serde::Serialize;
use serde_json::Value;

/// A list output format and its modifiers (`csv,header`, `table,noheader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListFormat {
    pub kind: ListKind,
    pub no_header: bool,
    pub header: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Table,
    Compact,
    Csv,
    Json,
    Yaml,
}

impl ListFormat {
    /// Parses `--format`, refusing what Incus refuses with its messages.
    pub fn parse(value: &str) -> Result<ListFormat, String> {
        let (kind, mods) = match value.split_once(',') {
            Some((k, m)) => (k, Some(m)),
            None => (value, None),
        };
        let mut f = ListFormat {
            kind: match kind {
                "table" => ListKind::Table,
                "compact" => ListKind::Compact,
                "csv" => ListKind::Csv,
                "json" => ListKind::Json,
                "yaml" => ListKind::Yaml,
                _ => return Err(format!("Invalid value {value:?} for flag \"--format\"")),
            },
            no_header: false,
            header: false,
        };
        for m in mods.into_iter().flat_map(|m| m.split(',')) {
            match m {
                "noheader" => f.no_header = true,
                "header" => f.header = true,
                "" => {}
                _ => return Err(format!("Invalid modifier {m:?} on flag \"--format\" ({value:?})")),
            }
        }
        Ok(f)
    }
}

/// Renders a list: the rows for table/compact/csv, `raw` for json/yaml.
pub fn render_list<T: Serialize>(
    format: ListFormat,
    header: &[&str],
    rows: &[Vec<String>],
    raw: &T,
) -> Result<String, String> {
    let header: Option<&[&str]> = (!format.no_header).then_some(header);
    Ok(match format.kind {
        ListKind::Table => render_table(header, rows, true),
        ListKind::Compact => render_table(header, rows, false),
        ListKind::Csv => {
            let mut out = String::new();
            if format.header && !format.no_header {
                if let Some(h) = header {
                    out.push_str(&csv_line(h.iter().copied()));
                }
            }
            for r in rows {
                out.push_str(&csv_line(r.iter().map(String::as_str)));
            }
            out
        }
        ListKind::Json => go_json(raw)?,
        ListKind::Yaml => yaml(raw)?,
    })
}

/// Display width of a cell line (characters; stapes output is ASCII in practice).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// Draws a table as Incus's table writer does: `+---+` borders, centred headers,
/// left-aligned cells, a rule between rows (`bordered`), or the borderless `compact`
/// layout. Multi-line cells span several text lines.
pub fn render_table(header: Option<&[&str]>, rows: &[Vec<String>], bordered: bool) -> String {
    let ncols = header
        .map(<[&str]>::len)
        .unwrap_or(0)
        .max(rows.iter().map(Vec::len).max().unwrap_or(0));
    if ncols == 0 {
        return String::new();
    }
    let mut widths = vec![0usize; ncols];
    if let Some(h) = header {
        for (i, c) in h.iter().enumerate() {
            widths[i] = widths[i].max(width(c));
        }
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            for line in c.split('\n') {
                widths[i] = widths[i].max(width(line));
            }
        }
    }
    let rule = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s.push('\n');
        s
    };
    let line = |cells: Vec<String>| -> String {
        if bordered {
            let mut s = String::from("|");
            for c in cells {
                s.push(' ');
                s.push_str(&c);
                s.push_str(" |");
            }
            s.push('\n');
            s
        } else {
            let mut s = String::new();
            for c in cells {
                s.push_str("  ");
                s.push_str(&c);
            }
            s.push_str("  \n");
            s
        }
    };
    let mut out = String::new();
    if bordered {
        out.push_str(&rule);
    }
    if let Some(h) = header {
        let cells = (0..ncols)
            .map(|i| center(h.get(i).copied().unwrap_or(""), widths[i]))
            .collect();
        out.push_str(&line(cells));
        if bordered {
            out.push_str(&rule);
        }
    }
    for r in rows {
        let height = r.iter().map(|c| c.split('\n').count()).max().unwrap_or(1);
        for l in 0..height {
            let cells = (0..ncols)
                .map(|i| {
                    let text = r.get(i).and_then(|c| c.split('\n').nth(l)).unwrap_or("");
                    left(text, widths[i])
                })
                .collect();
            out.push_str(&line(cells));
        }
        if bordered {
            out.push_str(&rule);
        }
    }
    out
}

fn left(s: &str, w: usize) -> String {
    format!("{s}{}", " ".repeat(w.saturating_sub(width(s))))
}

fn center(s: &str, w: usize) -> String {
    let gap = w.saturating_sub(width(s));
    let l = gap / 2;
    format!("{}{s}{}", " ".repeat(l), " ".repeat(gap - l))
}

/// One CSV record with Go's `encoding/csv` quoting rules.
fn csv_line<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = fields
        .map(|f| {
            let needs = !f.is_empty()
                && (f.contains([',', '"', '\r', '\n']) || f.starts_with(char::is_whitespace) || f == r"\.");
            if needs {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.to_string()
            }
        })
        .collect();
    format!("{}\n", quoted.join(","))
}

/// YAML in the block style Go's yaml writes: two-space indent, list items at their
/// parent's indentation, `|` blocks for multi-line strings, long lines not folded.
pub fn yaml<T: Serialize>(value: &T) -> Result<String, String> {
    let mut opts = serde_saphyr::SerializerOptions::default();
    opts.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, opts).map_err(|e| e.to_string())
}

/// Rewrites a YAML document line by line: `f` gets a line's text after its indentation
/// (spaces and list dashes) and returns its replacement, if any.
fn rewrite_lines(yaml: &str, f: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let indent_len = body.len() - body.trim_start_matches([' ', '-']).len();
        let (indent, rest) = body.split_at(indent_len);
        match f(rest) {
            Some(r) => {
                out.push_str(indent);
                out.push_str(&r);
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

/// Unquotes RFC 3339 timestamps under the given keys: Go's YAML writes typed times
/// (`created_at`, `expires_at`) bare, while a string that looks like a time is quoted.
pub fn unquote_times(yaml: &str, keys: &[&str]) -> String {
    rewrite_lines(yaml, |rest| {
        keys.iter().find_map(|k| {
            let value = rest.strip_prefix(k)?.strip_prefix(": \"")?.strip_suffix('"')?;
            parse_time(value).map(|_| format!("{k}: {value}"))
        })
    })
}

/// Time fields of the typed Incus objects.
pub const TIME_KEYS: &[&str] = &[
    "created_at",
    "updated_at",
    "expires_at",
    "last_used_at",
    "uploaded_at",
    "started_at",
];

/// Go slices and maps of the Incus objects that may be nil: Go's YAML writes those as
/// `[]` and `{}` where ours (an `Option`, `null` in JSON as in Go) would write `null`.
const NIL_LISTS: &[&str] = &[
    "backups",
    "snapshots",
    "profiles",
    "used_by",
    "aliases",
    "locations",
];
const NIL_MAPS: &[&str] = &[
    "network",
    "disk",
    "config",
    "devices",
    "expanded_config",
    "expanded_devices",
    "properties",
    "resources",
    "metadata",
];

/// JSON as Go's `json.Encoder` writes it: compact, `<`, `>` and `&` escaped (they only
/// occur inside strings), and a newline.
pub fn go_json<T: Serialize + ?Sized>(value: &T) -> Result<String, String> {
    let s = serde_json::to_string(value).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(s.len() + 1);
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('\n');
    Ok(out)
}

/// YAML of a typed Incus object as Go's `yaml.Marshal` writes it: struct order, bare
/// times, and nil lists and maps as `[]` and `{}`.
pub fn go_yaml<T: Serialize>(value: &T) -> Result<String, String> {
    let text = yaml(value)?;
    Ok(requote(&go_nils(&unquote_times(&text, TIME_KEYS))))
}

/// Whether Go's YAML would read `s`, unquoted, as something other than a string (a
/// number, a boolean, null, a time): such strings are double-quoted by Go.
fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "", "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n",
    ];
    WORDS.contains(&s.to_ascii_lowercase().as_str())
        || s.parse::<f64>().is_ok()
        || s.starts_with("0x")
        || s.starts_with(".inf")
        || s.starts_with(".nan")
        || (s.len() >= 10 && s.as_bytes()[..4].iter().all(u8::is_ascii_digit) && s.as_bytes()[4] == b'-')
}

/// Go's YAML quotes a string that plain style can't hold with single quotes, keeping
/// double quotes for strings that would read as another type and for escapes: rewrites
/// double-quoted values accordingly (values only, not keys).
pub fn requote(yaml: &str) -> String {
    rewrite_lines(yaml, |rest| {
        let at = if rest.starts_with('"') {
            0
        } else {
            rest.find(": \"")? + 2
        };
        let (head, quoted) = rest.split_at(at);
        let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
        let mut text = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    '"' => text.push('"'),
                    '\\' => text.push('\\'),
                    _ => return None,
                },
                '"' => return None,
                c => text.push(c),
            }
        }
        if resolves_to_non_string(&text) {
            return None;
        }
        Some(format!("{head}'{}'", text.replace('\'', "''")))
    })
}

/// Rewrites `key: null` as `key: []` or `key: {}` for the keys Go writes so.
pub fn go_nils(yaml: &str) -> String {
    rewrite_lines(yaml, |rest| {
        let key = rest.strip_suffix(": null")?;
        if NIL_LISTS.contains(&key) {
            Some(format!("{key}: []"))
        } else if NIL_MAPS.contains(&key) {
            Some(format!("{key}: {{}}"))
        } else {
            None
        }
    })
}

/// Go's `units.GetByteSizeStringIEC`: `1.16MiB`, `608.00KiB`, `512B`.
pub fn size_iec(bytes: i64, precision: usize) -> String {
    scaled(
        bytes,
        precision,
        1024.0,
        &["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"],
        "EB",
    )
}

/// Go's `units.GetByteSizeString` (SI units): `1.04MB`, `0B`.
pub fn size_si(bytes: i64, precision: usize) -> String {
    scaled(
        bytes,
        precision,
        1000.0,
        &["kB", "MB", "GB", "TB", "PB", "EB"],
        "EB",
    )
}

fn scaled(bytes: i64, precision: usize, base: f64, units: &[&str], last: &str) -> String {
    if (bytes as f64) < base {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64;
    for unit in units {
        value /= base;
        if value < base {
            return format!("{value:.precision$}{unit}");
        }
    }
    format!("{value:.precision$}{last}")
}

/// Go's `units.ParseByteSizeString`: `64MiB`, `1GB`, `512` (bytes).
pub fn parse_size(input: &str) -> Option<i64> {
    if input.is_empty() {
        return Some(0);
    }
    let digits = input.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let (value, suffix) = input.split_at(digits);
    let value: i64 = value.parse().ok()?;
    let mult = i64::try_from(api::units::byte_unit(suffix)?).ok()?;
    value.checked_mul(mult)
}

/// A time as lists print it, or nothing for Go's zero time.
pub fn date_or_empty(t: &api::types::Timestamp) -> String {
    if t.is_zero() {
        String::new()
    } else {
        date(t.0)
    }
}

/// JSON indented with tabs and a trailing newline, as `incus query` prints it.
pub fn json_tabs<T: Serialize + ?Sized>(value: &T) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    value.serialize(&mut ser).expect("JSON values serialize");
    let mut s = String::from_utf8(buf).expect("JSON is UTF-8");
    s.push('\n');
    s
}

/// A JSON document with some objects' keys in a chosen order, for printing. Incus prints
/// Go structs in field order, while JSON maps here are sorted; [`Doc::ordered`] restores
/// the struct order for the keys it is told about.
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    Value(Value),
    Map(Vec<(String, Doc)>),
}

impl Doc {
    /// `value`'s keys in `order` first, then the others sorted. Non-objects pass through.
    pub fn ordered(value: &Value, order: &[&str]) -> Doc {
        let Some(map) = value.as_object() else {
            return Doc::Value(value.clone());
        };
        let mut out: Vec<(String, Doc)> = order
            .iter()
            .filter_map(|k| map.get(*k).map(|v| (k.to_string(), Doc::Value(v.clone()))))
            .collect();
        for (k, v) in map {
            if !order.contains(&k.as_str()) {
                out.push((k.clone(), Doc::Value(v.clone())));
            }
        }
        Doc::Map(out)
    }

    /// Orders the object under `key` too (when present and an object).
    pub fn nest(mut self, key: &str, order: &[&str]) -> Doc {
        if let Doc::Map(entries) = &mut self {
            if let Some((_, slot)) = entries.iter_mut().find(|(k, _)| k == key) {
                if let Doc::Value(v) = slot {
                    if v.is_object() {
                        *slot = Doc::ordered(v, order);
                    }
                }
            }
        }
        self
    }
}

impl Serialize for Doc {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Doc::Value(v) => v.serialize(ser),
            Doc::Map(entries) => {
                let mut m = ser.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

/// Field orders of the Incus objects stapes prints.
pub mod order {
    pub const SERVER: &[&str] = &[
        "config",
        "api_extensions",
        "api_status",
        "api_version",
        "auth",
        "public",
        "auth_methods",
        "auth_user_name",
        "auth_user_method",
        "environment",
    ];
    pub const ENVIRONMENT: &[&str] = &[
        "addresses",
        "architectures",
        "certificate",
        "certificate_fingerprint",
        "driver",
        "driver_version",
        "firewall",
        "kernel",
        "kernel_architecture",
        "kernel_features",
        "kernel_version",
        "lxc_features",
        "os_name",
        "os_version",
        "project",
        "server",
        "server_clustered",
        "server_event_mode",
        "server_name",
        "server_pid",
        "server_version",
        "storage",
        "storage_version",
        "storage_supported_drivers",
    ];
    pub const CERTIFICATE: &[&str] = &[
        "name",
        "type",
        "restricted",
        "projects",
        "certificate",
        "description",
        "fingerprint",
    ];
    /// `api.ClusterMember`: the writable part (inlined) first.
    pub const CLUSTER_MEMBER: &[&str] = &[
        "roles",
        "failure_domain",
        "description",
        "config",
        "groups",
        "server_name",
        "url",
        "database",
        "status",
        "message",
        "architecture",
    ];
    /// `api.ClusterMemberPut`.
    pub const CLUSTER_MEMBER_PUT: &[&str] = &["roles", "failure_domain", "description", "config", "groups"];
    /// `api.ClusterMemberState` and its `sysinfo`.
    pub const CLUSTER_MEMBER_STATE: &[&str] = &["sysinfo", "storage_pools"];
    pub const CLUSTER_MEMBER_SYSINFO: &[&str] = &[
        "uptime",
        "load_averages",
        "total_ram",
        "free_ram",
        "shared_ram",
        "buffered_ram",
        "total_swap",
        "free_swap",
        "processes",
    ];
    pub const OPERATION: &[&str] = &[
        "id",
        "class",
        "description",
        "created_at",
        "updated_at",
        "status",
        "status_code",
        "resources",
        "metadata",
        "may_cancel",
        "err",
        "location",
    ];
}

/// A list of typed objects as the incus CLI renders its lists: `-c` letters (those in
/// `known`) into cells and headers, rows sorted naturally unless `sorted` is false,
/// and the objects themselves for json and yaml (as Go encodes them).
pub fn render_objects<T: Serialize>(
    format: ListFormat,
    items: &[T],
    spec: &str,
    known: &str,
    cell: impl Fn(&T, char) -> String,
    header: impl Fn(char) -> &'static str,
    sorted: bool,
) -> Result<String, String> {
    let cols = parse_columns(spec, known)?;
    let mut rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| cols.iter().map(|c| cell(i, *c)).collect())
        .collect();
    if sorted {
        sort_rows(&mut rows);
    }
    let headers: Vec<&str> = cols.iter().map(|c| header(*c)).collect();
    render_typed_list(format, &headers, &rows, items)
}

/// A list in any format, the raw objects printed as Go prints them for json and yaml.
pub fn render_typed_list<T: Serialize>(
    format: ListFormat,
    headers: &[&str],
    rows: &[Vec<String>],
    raw: &[T],
) -> Result<String, String> {
    if format.kind == ListKind::Yaml {
        return go_yaml(&raw);
    }
    render_list(format, headers, rows, &raw)
}

/// Incus's date layout (`2006/01/02 15:04 MST`), in UTC.
pub fn date(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// Parses an RFC 3339 timestamp as the API writes it.
pub fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Go's zero time ("never").
pub fn is_zero_time(s: &str) -> bool {
    s.is_empty() || s.starts_with("0001-01-01")
}

/// Natural order: digit runs compare as numbers, the rest as text.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (&a[..na], &b[..nb]);
                let ta = trim_zeros(da);
                let tb = trim_zeros(db);
                let ord = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb)).then(na.cmp(&nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|c| **c == b'0').count();
    &d[n..]
}

/// Sorts rows column by column in natural order, empty cells last (Incus's list sort).
pub fn sort_rows(rows: &mut [Vec<String>]) {
    rows.sort_by(|x, y| {
        for (a, b) in x.iter().zip(y.iter()) {
            if a == b {
                continue;
            }
            if a.is_empty() {
                return Ordering::Greater;
            }
            if b.is_empty() {
                return Ordering::Less;
            }
            return natural_cmp(a, b);
        }
        Ordering::Equal
    });
}

/// Expands a `-c` column spec (`nupaPsg`, commas optional) into shorthand characters,
/// with Incus's messages for bad specs.
pub fn parse_columns(spec: &str, known: &str) -> Result<Vec<char>, String> {
    let mut out = Vec::new();
    for entry in spec.split(',') {
        if entry.is_empty() {
            return Err(format!(
                "Empty column entry (redundant, leading or trailing command) in '{spec}'"
            ));
        }
        for c in entry.chars() {
            if !known.contains(c) {
                return Err(format!("Unknown column shorthand char '{c}' in '{entry}'"));
            }
            out.push(c);
        }
    }
    Ok(out)
}

/// One row of a `list-tokens` table.
pub struct TokenRow {
    pub name: String,
    pub token: String,
    pub expires_at: String,
}

/// Renders `list-tokens` (columns `n` NAME, `t` TOKEN, `E` EXPIRES AT), for trust and
/// join tokens alike. `blank_no_expiry` shows a token that never expires as blank.
pub fn render_tokens<T: Serialize>(
    format: ListFormat,
    cols: &[char],
    rows: &[TokenRow],
    objects: &[T],
    blank_no_expiry: bool,
) -> Result<String, String> {
    let mut table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| match c {
                    'n' => r.name.clone(),
                    't' => r.token.clone(),
                    _ if blank_no_expiry && is_zero_time(&r.expires_at) => " ".to_string(),
                    _ => parse_time(&r.expires_at).map(date).unwrap_or_default(),
                })
                .collect()
        })
        .collect();
    sort_rows(&mut table);
    let headers: Vec<&str> = cols
        .iter()
        .map(|c| match c {
            'n' => "NAME",
            't' => "TOKEN",
            _ => "EXPIRES AT",
        })
        .collect();
    let text = render_list(format, &headers, &table, &objects)?;
    Ok(unquote_times(&text, TIME_KEYS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Vec<String>> {
        vec![
            vec![
                "images (current)".into(),
                "https://images.linuxcontainers.org".into(),
            ],
            vec!["local".into(), "unix://".into()],
        ]
    }

    #[test]
    fn t10_table_matches_incus_bytes() {
        let out = render_table(Some(&["NAME", "URL"]), &rows(), true);
        let expected = "\
+------------------+------------------------------------+
|       NAME       |                URL                 |
+------------------+------------------------------------+
| images (current) | https://images.linuxcontainers.org |
+------------------+------------------------------------+
| local            | unix://                            |
+------------------+------------------------------------+
";
        assert_eq!(out, expected);
    }

    #[test]
    fn t10_compact_matches_incus_bytes() {
        let out = render_table(Some(&["NAME", "URL"]), &rows(), false);
        let expected = "        NAME                       URL                  \n  images (current)  https://images.linuxcontainers.org  \n  local             unix://                             \n";
        assert_eq!(out, expected);
    }

    #[test]
    fn t10_multiline_cells_and_empty_tables() {
        let out = render_table(Some(&["A"]), &[vec!["x\nyy".into()]], true);
        assert_eq!(out, "+----+\n| A  |\n+----+\n| x  |\n| yy |\n+----+\n");
        let empty = render_table(Some(&["NAME"]), &[], true);
        assert_eq!(empty, "+------+\n| NAME |\n+------+\n");
        let noheader = render_table(None, &rows(), true);
        assert!(noheader.starts_with("+------------------+"));
        assert!(!noheader.contains("NAME"));
    }

    #[test]
    fn t10_csv_quotes_like_go() {
        let f = ListFormat::parse("csv,header").unwrap();
        let r = vec![vec!["a,b".into(), " x".into(), "say \"hi\"".into(), "".into()]];
        let out = render_list(f, &["H1", "H2", "H3", "H4"], &r, &()).unwrap();
        assert_eq!(out, "H1,H2,H3,H4\n\"a,b\",\" x\",\"say \"\"hi\"\"\",\n");
    }

    #[test]
    fn t30_format_flag_errors() {
        assert_eq!(
            ListFormat::parse("markdown").unwrap_err(),
            "Invalid value \"markdown\" for flag \"--format\""
        );
        assert!(ListFormat::parse("table,bogus").is_err());
        assert!(ListFormat::parse("table,noheader").unwrap().no_header);
    }

    #[test]
    fn t10_yaml_and_json_shapes() {
        let v = serde_json::json!({"b": [1, 2], "a": "x:y", "cert": "L1\nL2\n"});
        let doc = Doc::ordered(&v, &["cert", "b"]);
        assert_eq!(yaml(&doc).unwrap(), "cert: |\n  L1\n  L2\nb:\n- 1\n- 2\na: x:y\n");
        assert_eq!(
            json_tabs(&serde_json::json!({"a": [1]})),
            "{\n\t\"a\": [\n\t\t1\n\t]\n}\n"
        );
    }

    #[test]
    fn t10_natural_sort_and_columns() {
        let mut r = vec![vec!["node10".to_string()], vec!["".into()], vec!["node2".into()]];
        sort_rows(&mut r);
        assert_eq!(
            r,
            vec![vec!["node2".to_string()], vec!["node10".into()], vec!["".into()]]
        );
        assert_eq!(parse_columns("nu,p", "nup").unwrap(), vec!['n', 'u', 'p']);
        assert_eq!(
            parse_columns("nx", "nup").unwrap_err(),
            "Unknown column shorthand char 'x' in 'nx'"
        );
        assert!(parse_columns("n,", "n").is_err());
    }

    #[test]
    fn t10_typed_times_are_bare() {
        let y = "id: x\ncreated_at: \"2026-11-24T18:12:36.023158787Z\"\n- expires_at: \"0001-01-01T00:00:00Z\"\nname: \"2026\"\n";
        assert_eq!(
            unquote_times(y, TIME_KEYS),
            "id: x\ncreated_at: 2026-11-24T18:12:36.023158787Z\n- expires_at: 0001-01-01T00:00:00Z\nname: \"2026\"\n"
        );
    }

    #[test]
    fn t10_dates() {
        let t = parse_time("2026-11-24T15:35:49.123456Z").unwrap();
        assert_eq!(date(t), "2026/11/24 15:35 UTC");
        assert!(is_zero_time("0001-01-01T00:00:00Z"));
    }
}
