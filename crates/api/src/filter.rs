//! Incus's collection filters (`?filter=` on the instance and image lists), applied to an
//! object's JSON. Pure.
//!
//! The language, as Incus's `internal/filter` reads it: clauses `[not] FIELD OP VALUE`
//! joined by `and` / `or`, evaluated left to right with no precedence (`a or b and c`
//! is `(a or b) and c`); `OP` is `eq` or `ne`; `VALUE` is a word or a double-quoted
//! string. `FIELD` is a dotted path into the object; inside a map of strings (config)
//! the rest of the path is one key (`expanded_config.limits.memory`), and a key may be
//! given by a prefix of its first part (`expanded_config.lim.memory`). How a value
//! compares depends on the field's type:
//!
//! - string: an anchored, case-insensitive regular expression (`^` and `$` are added
//!   unless the value has one), or, when the value has a comma, any of the
//!   comma-separated words, case-insensitively; the official client sends
//!   `name eq (^c1$|^c1.*)` for `incus list c1`;
//! - number, boolean: parsed and compared;
//! - list of strings: the value is a JSON list, compared whole.
//!
//! A field the object does not have compares as an empty string, so a config key that is
//! not set matches `eq ""`.

use serde_json::Value;

/// The largest compiled regular expression a filter may ask for.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The most clauses one filter may hold.
const MAX_CLAUSES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    /// Joined to what comes before by `or` (else `and`).
    or: bool,
    not: bool,
    field: String,
    equal: bool,
    value: String,
}

/// A parsed filter; the empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    clauses: Vec<Clause>,
}

fn words(expr: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut w = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(c) => w.push(c),
                    None => return Err("unterminated quote".into()),
                }
            }
            out.push(w);
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

impl Filter {
    /// Reads a filter; the error says what is wrong (Incus's words where it has them).
    pub fn parse(expr: &str) -> Result<Filter, String> {
        let words = words(expr)?;
        let mut clauses = Vec::new();
        let mut or = false;
        let mut i = 0;
        while i < words.len() {
            let not = words[i].eq_ignore_ascii_case("not");
            if not {
                i += 1;
                if i == words.len() {
                    return Err("incomplete not clause".into());
                }
            }
            let field = words[i].clone();
            let Some(op) = words.get(i + 1) else {
                return Err("clause has no operator".into());
            };
            let Some(value) = words.get(i + 2) else {
                return Err("clause has no value".into());
            };
            let equal = match op.as_str() {
                "eq" => true,
                "ne" => false,
                other => return Err(format!("Unsupported operator {other:?}")),
            };
            clauses.push(Clause {
                or,
                not,
                field,
                equal,
                value: value.clone(),
            });
            if clauses.len() > MAX_CLAUSES {
                return Err(format!("more than {MAX_CLAUSES} clauses"));
            }
            i += 3;
            match words.get(i).map(String::as_str) {
                None => break,
                Some("and") => or = false,
                Some("or") => or = true,
                Some(_) => return Err("invalid clause composition".into()),
            }
            i += 1;
            if i == words.len() {
                return Err("unterminated compound clause".into());
            }
        }
        Ok(Filter { clauses })
    }

    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Whether `object` passes; an error for a value that does not fit its field.
    pub fn matches(&self, object: &Value) -> Result<bool, String> {
        let mut result = true;
        for c in &self.clauses {
            let found = lookup(object, &c.field);
            let mut hit = compare(c, found.unwrap_or(&Value::Null))?;
            if c.not {
                hit = !hit;
            }
            result = if c.or { result || hit } else { result && hit };
        }
        Ok(result)
    }
}

/// Incus's prefix rule for map keys: the same number of dotted parts, the first a
/// prefix, the others equal.
fn dot_prefix_match(short: &str, full: &str) -> bool {
    let (s, f): (Vec<&str>, Vec<&str>) = (short.split('.').collect(), full.split('.').collect());
    s.len() == f.len() && f[0].starts_with(s[0]) && s[1..] == f[1..]
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let Value::Object(map) = value else {
        return None;
    };
    let strings = !map.is_empty() && map.values().all(Value::is_string);
    if strings {
        // A config map: the whole rest of the path is one key.
        if let Some(v) = map.get(path) {
            return Some(v);
        }
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        if let Some(k) = keys.into_iter().find(|k| dot_prefix_match(path, k)) {
            return map.get(k);
        }
    }
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let next = map.get(head)?;
    match rest {
        None => Some(next),
        Some(rest) => lookup(next, rest),
    }
}

fn compare(c: &Clause, found: &Value) -> Result<bool, String> {
    let equal = match found {
        Value::Null => string_equal(&c.value, ""),
        Value::String(s) => string_equal(&c.value, s),
        Value::Bool(b) => {
            let want: bool = match c.value.to_ascii_lowercase().as_str() {
                "true" | "1" | "t" => true,
                "false" | "0" | "f" => false,
                _ => return Err(format!("Failed to parse value: invalid boolean {:?}", c.value)),
            };
            *b == want
        }
        Value::Number(n) => {
            let want: i64 = c
                .value
                .parse()
                .map_err(|_| format!("Failed to parse value: invalid number {:?}", c.value))?;
            n.as_i64() == Some(want)
        }
        Value::Array(items) => {
            let want: Vec<String> =
                serde_json::from_str(&c.value).map_err(|e| format!("Failed to parse value: {e}"))?;
            items.len() == want.len() && items.iter().zip(&want).all(|(i, w)| i.as_str() == Some(w))
        }
        Value::Object(_) => return Err(format!("Invalid type \"map\" for field {:?}", c.field)),
    };
    Ok(equal == c.equal)
}

fn string_equal(want: &str, got: &str) -> bool {
    if want.contains(',') {
        return want.split(',').any(|w| w.eq_ignore_ascii_case(got));
    }
    let anchored = if want.contains('^') || want.contains('$') {
        want.to_string()
    } else {
        format!("^{want}$")
    };
    match regex::RegexBuilder::new(&anchored)
        .case_insensitive(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        Ok(re) => re.is_match(got),
        Err(_) => want.eq_ignore_ascii_case(got),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inst() -> Value {
        json!({"name": "c1", "status": "Running", "status_code": 103, "location": "node2",
            "ephemeral": false, "profiles": ["default"],
            "config": {"user.role": "web"},
            "expanded_config": {"limits.memory": "64MiB", "boot.autostart": "true"}})
    }

    fn m(e: &str) -> bool {
        Filter::parse(e).unwrap().matches(&inst()).unwrap()
    }

    #[test]
    fn t10_clauses_as_the_client_sends_them() {
        assert!(m(""));
        assert!(m("name eq c1"));
        assert!(m("name eq (^c1$|^c1.*)"), "incus list c1");
        assert!(m("name eq C1"), "case-insensitive");
        assert!(!m("name eq c"), "anchored");
        assert!(m("name eq c.*"));
        assert!(m("status eq running"));
        assert!(m("status eq stopped,running"), "comma: any of");
        assert!(m("location eq node2 and status ne stopped"));
        assert!(m("expanded_config.limits.memory eq 64MiB"));
        assert!(
            m("expanded_config.lim.memory eq 64MiB"),
            "prefix of the first part"
        );
        assert!(m("config.user.role eq web"));
        assert!(m("config.user.missing eq \"\""), "unset is empty");
        assert!(m("status_code eq 103 and ephemeral eq false"));
        assert!(m("profiles eq [\"default\"]"));
        assert!(!m("not location eq node2"));
        assert!(m("name eq \"c1\""));
    }

    #[test]
    fn t11_left_to_right_without_precedence() {
        // (false or true) and false = false; with and binding tighter it would be true.
        assert!(!m("name eq x or name eq c1 and location eq node9"));
        // (true and false) or true = true.
        assert!(m("name eq c1 and location eq node9 or status eq running"));
    }

    #[test]
    fn t30_bad_filters_are_refused() {
        for bad in [
            "name",
            "name eq",
            "not",
            "name gt 1",
            "name eq a and",
            "name eq \"a",
            "a eq b xor c eq d",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
        let f = Filter::parse("status_code eq many").unwrap();
        assert!(f.matches(&inst()).is_err());
        let many = vec!["name eq a"; MAX_CLAUSES + 1].join(" or ");
        assert!(Filter::parse(&many).is_err());
        // A huge or broken expression is bounded or taken literally, never a panic.
        assert!(!m("name eq (a{1000}){1000}"));
        assert!(!m("name eq (unclosed"));
    }
}
