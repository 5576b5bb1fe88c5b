//! `--property` (`-p`) on `get`, `set` and `unset`: the fields of an object's writable
//! part, by JSON tag (case-insensitive), as Incus's reflection-based helpers treat them
//! (`getFieldByJsonTag`, `unpackKVToWritable` with its string hooks,
//! `unsetFieldByJsonTag`). Pure functions over the writable part as JSON.

use std::collections::BTreeMap;

use serde_json::Value;

/// How a field is read from and written to a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Bool,
    Time,
    List,
    Map,
}

/// The writable fields of an object type, by JSON tag.
pub type Table = &'static [(&'static str, Kind)];

pub const CLUSTER_MEMBER: Table = &[
    ("roles", Kind::List),
    ("failure_domain", Kind::Text),
    ("description", Kind::Text),
    ("config", Kind::Map),
    ("groups", Kind::List),
];
pub const STORAGE_POOL: Table = &[("config", Kind::Map), ("description", Kind::Text)];
pub const PROFILE: Table = &[
    ("config", Kind::Map),
    ("description", Kind::Text),
    ("devices", Kind::Map),
];
pub const INSTANCE: Table = &[
    ("architecture", Kind::Text),
    ("config", Kind::Map),
    ("devices", Kind::Map),
    ("ephemeral", Kind::Bool),
    ("profiles", Kind::List),
    ("restore", Kind::Text),
    ("stateful", Kind::Bool),
    ("description", Kind::Text),
];
pub const SNAPSHOT: Table = &[("expires_at", Kind::Time)];

/// `set`/`unset` on an object's writable part, as `profile set` and `storage set` do:
/// with `--property`, the fields of `table`; otherwise the keys of its `config` (an
/// unset key is removed).
pub fn apply_keys<T: serde::Serialize + serde::de::DeserializeOwned>(
    writable: &mut T,
    table: Table,
    keys: BTreeMap<String, String>,
    property: bool,
    unset: bool,
    config: impl FnOnce(&mut T) -> &mut BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if !property {
        let config = config(writable);
        for (k, v) in keys {
            if unset {
                config.remove(&k);
            } else {
                config.insert(k, v);
            }
        }
        return Ok(());
    }
    let mut w = serde_json::to_value(&*writable)?;
    if unset {
        for k in keys.keys() {
            unset_field(&mut w, table, k).map_err(anyhow::Error::msg)?;
        }
    } else {
        set(&mut w, table, &keys).map_err(anyhow::Error::msg)?;
    }
    *writable = serde_json::from_value(w)?;
    Ok(())
}

/// The field named `tag` (matched case-insensitively, as Incus does).
fn field(table: Table, tag: &str) -> Result<(&'static str, Kind), String> {
    table
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(tag))
        .copied()
        .ok_or_else(|| format!("The property with tag {tag:?} does not exist"))
}

/// Go's `%v` of a field's value.
fn go_format(v: &Value, kind: Kind) -> String {
    let scalar = |x: &Value| match x {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match kind {
        Kind::Text | Kind::Bool => match v {
            Value::Null if kind == Kind::Bool => "false".into(),
            other => scalar(other),
        },
        Kind::Time => go_time(&scalar(v)),
        Kind::List => {
            let items: Vec<String> = v.as_array().into_iter().flatten().map(scalar).collect();
            format!("[{}]", items.join(" "))
        }
        Kind::Map => {
            let mut items: Vec<String> = v
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, x)| match x {
                    Value::Object(_) => format!("{k}:{}", go_format(x, Kind::Map)),
                    other => format!("{k}:{}", scalar(other)),
                })
                .collect();
            items.sort();
            format!("map[{}]", items.join(" "))
        }
    }
}

/// Go's `%v` of a `time.Time` (`2006-01-02 15:04:05.999999999 -0700 MST`), from RFC 3339.
fn go_time(s: &str) -> String {
    match api::types::Timestamp::parse(s) {
        // The RFC 3339 form in UTC, with Go's `%v` separators.
        Some(t) => api::types::Timestamp(t.utc())
            .to_string()
            .replacen('T', " ", 1)
            .replace('Z', " +0000 UTC"),
        None => s.to_string(),
    }
}

/// `get --property`: the value of a writable field as Incus prints it.
pub fn get(writable: &Value, table: Table, tag: &str) -> Result<String, String> {
    let (name, kind) = field(table, tag)?;
    Ok(go_format(&writable[name], kind))
}

/// `set --property`: strings take the value, booleans and times are parsed as Incus's
/// decoder hooks parse them, lists and maps can't be set from a string (Incus refuses
/// them too); unknown keys are ignored.
pub fn set(writable: &mut Value, table: Table, keys: &BTreeMap<String, String>) -> Result<(), String> {
    let mut errors = Vec::new();
    for (key, value) in keys {
        let Ok((name, kind)) = field(table, key) else {
            continue;
        };
        match kind {
            Kind::Text => writable[name] = Value::String(value.clone()),
            Kind::Bool => match value.to_lowercase().as_str() {
                "1" | "t" | "true" => writable[name] = Value::Bool(true),
                "0" | "f" | "false" => writable[name] = Value::Bool(false),
                other => errors.push(format!(
                    "error decoding '{name}': Invalid boolean value: {other}"
                )),
            },
            Kind::Time => match api::types::Timestamp::parse(value) {
                Some(t) => writable[name] = Value::String(t.to_string()),
                None => errors.push(format!(
                    "error decoding '{name}': parsing time {value:?} as \"2006-01-02T15:04:05Z07:00\": cannot parse {value:?} as \"2006\""
                )),
            },
            Kind::List => errors.push(format!(
                "'{name}': source data must be an array or slice, got string"
            )),
            Kind::Map => errors.push(format!("'{name}' expected a map, got 'string'")),
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = errors.iter().map(|e| format!("* {e}")).collect();
    Err(format!(
        "Error setting properties: Error decoding data: {} error(s) decoding:\n\n{}",
        errors.len(),
        list.join("\n")
    ))
}

/// `unset --property`: strings become empty, booleans false, times zero; lists and maps
/// are left as they are (as Incus does).
pub fn unset_field(writable: &mut Value, table: Table, tag: &str) -> Result<(), String> {
    let (name, kind) = field(table, tag).map_err(|e| format!("Error unsetting property: {e}"))?;
    match kind {
        Kind::Text => writable[name] = Value::String(String::new()),
        Kind::Bool => writable[name] = Value::Bool(false),
        Kind::Time => writable[name] = Value::String(api::types::Timestamp::ZERO.to_string()),
        Kind::List | Kind::Map => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn t10_properties_read_and_write_as_incus_does() {
        let mut w = json!({"architecture": "x86_64", "config": {"user.a": "b"}, "devices": {},
            "ephemeral": true, "profiles": ["default"], "stateful": false, "description": ""});
        assert_eq!(get(&w, INSTANCE, "Ephemeral").unwrap(), "true");
        assert_eq!(get(&w, INSTANCE, "config").unwrap(), "map[user.a:b]");
        assert_eq!(get(&w, INSTANCE, "profiles").unwrap(), "[default]");
        let keys = BTreeMap::from([("stateful".to_string(), "T".to_string())]);
        set(&mut w, INSTANCE, &keys).unwrap();
        assert_eq!(w["stateful"], json!(true));
        let bad = BTreeMap::from([("ephemeral".to_string(), "maybe".to_string())]);
        assert!(set(&mut w, INSTANCE, &bad)
            .unwrap_err()
            .contains("Invalid boolean value: maybe"));
        unset_field(&mut w, INSTANCE, "ephemeral").unwrap();
        assert_eq!(w["ephemeral"], json!(false));
        assert_eq!(
            get(&w, INSTANCE, "nope").unwrap_err(),
            "The property with tag \"nope\" does not exist"
        );
        let mut snap = json!({"expires_at": "0001-01-01T00:00:00Z"});
        assert_eq!(
            get(&snap, SNAPSHOT, "expires_at").unwrap(),
            "0001-01-01 00:00:00 +0000 UTC"
        );
        let keys = BTreeMap::from([("expires_at".to_string(), "2026-12-01T20:15:30.5Z".to_string())]);
        set(&mut snap, SNAPSHOT, &keys).unwrap();
        assert_eq!(
            get(&snap, SNAPSHOT, "expires_at").unwrap(),
            "2026-12-01 20:15:30.5 +0000 UTC"
        );
        let mut p = json!({"config": {}, "description": "x", "devices": {}});
        unset_field(&mut p, PROFILE, "description").unwrap();
        assert_eq!(p["description"], "");
    }
}
