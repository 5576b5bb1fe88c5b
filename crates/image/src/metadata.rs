//! `metadata.yaml`, typed and checked as Incus checks it (`getImageMetadata`): an
//! architecture Incus knows (by name or alias) and a non-zero `creation_date`.
//!
//! Parsing is a pure function over at most [`MAX_METADATA`] bytes. Property values
//! that YAML reads as numbers or booleans (`release: 12`) are kept as their text, as
//! Incus's string map does.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use crate::error::Error;

/// The most `metadata.yaml` may hold (Incus: 1 MiB).
pub const MAX_METADATA: u64 = 1 << 20;

/// An image's `metadata.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// As written in the file (`x86_64`, or an alias such as `amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Unix seconds; becomes the image's `created_at`.
    #[serde(default)]
    pub creation_date: i64,
    /// Unix seconds, 0 for none; becomes `expires_at`.
    #[serde(default)]
    pub expiry_date: i64,
    #[serde(default, deserialize_with = "string_map")]
    pub properties: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "templates")]
    pub templates: BTreeMap<String, Template>,
}

/// One entry of `templates`: a file in the container rendered from `templates/<template>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// When to render: `create`, `copy`, `start`, `rename`.
    #[serde(default)]
    pub when: Vec<String>,
    #[serde(default)]
    pub create_only: bool,
    pub template: String,
    #[serde(default, deserialize_with = "string_map")]
    pub properties: BTreeMap<String, String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_scalar"
    )]
    pub uid: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_scalar"
    )]
    pub gid: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_scalar"
    )]
    pub mode: Option<String>,
}

impl Metadata {
    /// Parses and checks `metadata.yaml`.
    pub fn parse(text: &[u8]) -> Result<Metadata, Error> {
        if text.len() as u64 > MAX_METADATA {
            return Err(Error::Metadata(format!(
                "metadata.yaml is larger than {MAX_METADATA} bytes"
            )));
        }
        let text =
            std::str::from_utf8(text).map_err(|_| Error::Metadata("metadata.yaml is not UTF-8".into()))?;
        let meta: Metadata = if text.trim().is_empty() {
            Metadata::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| Error::Metadata(e.to_string()))?
        };
        meta.check()?;
        Ok(meta)
    }

    /// Incus's checks, in its order.
    pub fn check(&self) -> Result<(), Error> {
        if canonical_architecture(&self.architecture).is_none() {
            return Err(Error::Architecture(self.architecture.clone()));
        }
        if self.creation_date == 0 {
            return Err(Error::MissingCreationDate);
        }
        Ok(())
    }

    /// `created_at`: the creation date (checked non-zero), or `None` when it is out of range.
    pub fn created_at(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp(self.creation_date).ok()
    }

    /// `expires_at`, when the file names one.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        (self.expiry_date > 0)
            .then(|| OffsetDateTime::from_unix_timestamp(self.expiry_date).ok())
            .flatten()
    }
}

/// Incus's architecture names and aliases (`shared/osarch`), name first.
const ARCHITECTURES: &[(&str, &[&str])] = &[
    ("i686", &["i386", "i586", "386", "x86", "generic_32"]),
    (
        "x86_64",
        &[
            "amd64",
            "generic_64",
            "x86_64_v1",
            "x86_64_v2",
            "x86_64_v3",
            "x86_64_v4",
        ],
    ),
    ("armv6l", &["armel", "arm"]),
    (
        "armv7l",
        &["armhf", "armhfp", "armv7a_hardfp", "armv7", "armv7a_vfpv3_hardfp"],
    ),
    ("armv8l", &[]),
    ("aarch64", &["arm64", "arm64_generic"]),
    ("ppc", &["powerpc"]),
    ("ppc64", &["powerpc64"]),
    ("ppc64le", &["ppc64el"]),
    ("s390x", &[]),
    ("mips", &["mipsel", "mipsle"]),
    ("mips64", &["mips64el", "mips64le"]),
    ("riscv32", &[]),
    ("riscv64", &[]),
    ("loongarch64", &["loong64"]),
];

/// The Incus name of an architecture given by name or alias (`amd64` → `x86_64`).
pub fn canonical_architecture(name: &str) -> Option<&'static str> {
    ARCHITECTURES
        .iter()
        .find(|(n, aliases)| *n == name || aliases.contains(&name))
        .map(|(n, _)| *n)
}

/// A YAML scalar kept as its text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s,
        }
    }
}

fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map: Option<BTreeMap<String, Option<Scalar>>> = Option::deserialize(d)?;
    Ok(map
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.map(Scalar::into_text).unwrap_or_default()))
        .collect())
}

fn templates<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Template>, D::Error> {
    let map: Option<BTreeMap<String, Template>> = Option::deserialize(d)?;
    Ok(map.unwrap_or_default())
}

fn opt_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<Scalar> = Option::deserialize(d)?;
    Ok(v.map(Scalar::into_text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUSYBOX: &str = "architecture: x86_64\ncreation_date: 1764619200\nproperties:\n  description: BusyBox x86_64\n  os: BusyBox\n  release: 1.35\n  serial: 20261201\ntemplates:\n  /etc/hostname:\n    when: [create, copy]\n    template: hostname.tpl\n    uid: 0\n    mode: \"0644\"\n";

    #[test]
    fn t10_parse() {
        let m = Metadata::parse(BUSYBOX.as_bytes()).expect("valid");
        assert_eq!(m.architecture, "x86_64");
        assert_eq!(m.creation_date, 1_764_619_200);
        assert_eq!(m.properties["os"], "BusyBox");
        assert_eq!(m.properties["release"], "1.35");
        assert_eq!(m.properties["serial"], "20261201");
        let t = &m.templates["/etc/hostname"];
        assert_eq!(t.when, ["create", "copy"]);
        assert_eq!(t.template, "hostname.tpl");
        assert_eq!(t.uid.as_deref(), Some("0"));
        assert_eq!(t.mode.as_deref(), Some("0644"));
        assert_eq!(m.created_at().map(|t| t.unix_timestamp()), Some(1_764_619_200));
        assert_eq!(m.expires_at(), None);
    }

    #[test]
    fn t10_aliases() {
        assert_eq!(canonical_architecture("amd64"), Some("x86_64"));
        assert_eq!(canonical_architecture("arm64"), Some("aarch64"));
        let m = Metadata::parse(b"architecture: amd64\ncreation_date: 1\n").expect("alias");
        assert_eq!(m.architecture, "amd64", "kept as written, as Incus does");
    }

    #[test]
    fn t30_refused_with_incus_messages() {
        let e = Metadata::parse(b"architecture: z80\ncreation_date: 1\n").unwrap_err();
        assert_eq!(e.to_string(), "Architecture isn't supported: z80");
        let e = Metadata::parse(b"architecture: x86_64\n").unwrap_err();
        assert_eq!(e.to_string(), "Missing creation date");
        let e = Metadata::parse(b"").unwrap_err();
        assert_eq!(e.to_string(), "Architecture isn't supported: ");
        let e = Metadata::parse(b"architecture: [x86_64\n").unwrap_err();
        assert!(matches!(e, Error::Metadata(_)), "{e}");
        let e = Metadata::parse(b"- a list\n").unwrap_err();
        assert!(matches!(e, Error::Metadata(_)), "{e}");
        let e = Metadata::parse(b"architecture: x86_64\ncreation_date: soon\n").unwrap_err();
        assert!(matches!(e, Error::Metadata(_)), "{e}");
        let big = vec![b'#'; MAX_METADATA as usize + 1];
        assert!(matches!(Metadata::parse(&big), Err(Error::Metadata(_))));
    }
}
