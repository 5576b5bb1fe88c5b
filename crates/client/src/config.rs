//! The client configuration directory, laid out like Incus's:
//!
//! ```text
//! $STAPES_CONF or ~/.config/stapes/
//!   config.yml              default-remote, remotes: {name: {addr, auth_type, project, protocol, public}}
//!   client.crt, client.key  this client's identity (ECDSA P-384, generated on first use; key 0600)
//!   servercerts/<name>.crt  the pinned server certificate of each https remote
//!   remote-state/<name>.json  the address that worked last, the ones that failed recently
//!   oidc-tokens/<name>.json   OpenID tokens of an `auth_type: oidc` remote (0600)
//! ```
//!
//! The `local` remote (the unix socket) is built in: it is always present, cannot be
//! removed or renamed, and is the default remote when none is set.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::addr::{split_addrs, Endpoint};
use crate::ClientError;

/// The name of the built-in unix-socket remote.
pub const LOCAL_REMOTE: &str = "local";

/// The `auth_type` of remotes that log in with OpenID Connect.
pub const AUTH_OIDC: &str = "oidc";
/// The `auth_type` of remotes that present the client certificate.
pub const AUTH_TLS: &str = "tls";

/// One remote, as stored in config.yml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// One URL, or several separated by commas (tried in order).
    pub addr: String,
    /// `tls` or `oidc` for https remotes; empty for unix ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default)]
    pub public: bool,
    /// Built in and immutable (`local`). Never written to the file.
    #[serde(skip)]
    pub is_static: bool,
}

impl Remote {
    /// The built-in `local` remote.
    pub fn local() -> Remote {
        Remote {
            addr: "unix://".into(),
            auth_type: String::new(),
            project: String::new(),
            protocol: "incus".into(),
            public: false,
            is_static: true,
        }
    }

    /// An https remote authenticated by TLS client certificate.
    pub fn https(addrs: &[String]) -> Remote {
        Remote {
            addr: addrs.join(","),
            auth_type: "tls".into(),
            project: String::new(),
            protocol: "incus".into(),
            public: false,
            is_static: false,
        }
    }

    /// Whether requests carry an OpenID access token (`auth_type: oidc`).
    pub fn is_oidc(&self) -> bool {
        self.auth_type == AUTH_OIDC
    }

    /// The addresses, in the order they are tried.
    pub fn addrs(&self) -> Vec<String> {
        split_addrs(&self.addr)
    }

    /// The parsed addresses.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, ClientError> {
        let addrs = self.addrs();
        if addrs.is_empty() {
            return Err(ClientError::Invalid(
                "Remotes must have at least one address".into(),
            ));
        }
        addrs.iter().map(|a| Endpoint::parse(a)).collect()
    }

    pub fn is_unix(&self) -> bool {
        self.addrs().first().is_some_and(|a| a.starts_with("unix:"))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ConfigFile {
    #[serde(rename = "default-remote", default)]
    default_remote: String,
    #[serde(default)]
    remotes: BTreeMap<String, Remote>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
}

/// The loaded configuration and where it lives.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub default_remote: String,
    pub remotes: BTreeMap<String, Remote>,
    /// Kept so saving does not lose them; stapes does not use aliases.
    pub aliases: BTreeMap<String, String>,
}

/// `$STAPES_CONF`, else `~/.config/stapes`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STAPES_CONF").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("stapes");
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".config").join("stapes")
}

impl Config {
    /// The configuration of a directory with no config.yml yet.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        let mut remotes = BTreeMap::new();
        remotes.insert(LOCAL_REMOTE.to_string(), Remote::local());
        Config {
            dir: dir.into(),
            default_remote: LOCAL_REMOTE.to_string(),
            remotes,
            aliases: BTreeMap::new(),
        }
    }

    /// Loads `dir/config.yml`; a missing file is the default configuration.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Config, ClientError> {
        let dir = dir.into();
        let path = dir.join("config.yml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::new(dir)),
            Err(e) => return Err(ClientError::io("Unable to read the configuration file", e)),
        };
        Config::from_yaml(dir, &text)
    }

    /// Parses config.yml text (pure, for tests and `load`).
    pub fn from_yaml(dir: PathBuf, text: &str) -> Result<Config, ClientError> {
        let file: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| ClientError::ConfigDecode(e.to_string()))?
        };
        let mut config = Config::new(dir);
        for (name, mut remote) in file.remotes {
            if name == LOCAL_REMOTE {
                continue; // built in; whatever the file says, local is the socket
            }
            if !remote.public && remote.auth_type.is_empty() && !remote.is_unix() {
                remote.auth_type = "tls".into();
            }
            if remote.protocol.is_empty() {
                remote.protocol = "incus".into();
            }
            config.remotes.insert(name, remote);
        }
        if !file.default_remote.is_empty() {
            config.default_remote = file.default_remote;
        }
        config.aliases = file.aliases;
        Ok(config)
    }

    /// The YAML text `save` writes.
    pub fn to_yaml(&self) -> Result<String, ClientError> {
        let mut remotes = self.remotes.clone();
        for r in remotes.values_mut() {
            r.is_static = false;
        }
        let file = ConfigFile {
            default_remote: self.default_remote.clone(),
            remotes,
            aliases: self.aliases.clone(),
        };
        serde_saphyr::to_string(&file).map_err(|e| ClientError::ConfigDecode(e.to_string()))
    }

    /// Writes config.yml (atomically: a temporary file renamed over it).
    pub fn save(&self) -> Result<(), ClientError> {
        self.ensure_dir()?;
        let text = self.to_yaml()?;
        let path = self.dir.join("config.yml");
        let tmp = self.dir.join(".config.yml.tmp");
        write_file(&tmp, text.as_bytes(), 0o644)?;
        std::fs::rename(&tmp, &path).map_err(|e| ClientError::io("Unable to write the configuration", e))
    }

    fn ensure_dir(&self) -> Result<(), ClientError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&self.dir)
            .map_err(|e| ClientError::io(format!("Unable to create {}", self.dir.display()), e))
    }

    /// Looks a remote up by name.
    pub fn remote(&self, name: &str) -> Result<&Remote, ClientError> {
        self.remotes
            .get(name)
            .ok_or_else(|| ClientError::Invalid(format!("The remote \"{name}\" doesn't exist")))
    }

    /// Splits `[remote:]object` as Incus does: no colon (or an `=` before it) means the
    /// default remote; an unknown remote is an error unless the text looks like a path.
    pub fn parse_remote(&self, raw: &str) -> Result<(String, String), ClientError> {
        match raw.split_once(':') {
            None => Ok((self.default_remote.clone(), raw.to_string())),
            Some((remote, _)) if remote.contains('=') => Ok((self.default_remote.clone(), raw.to_string())),
            Some((remote, rest)) => {
                if self.remotes.contains_key(remote) {
                    Ok((remote.to_string(), rest.to_string()))
                } else if raw.contains('/') && remote.contains('/') {
                    Ok((self.default_remote.clone(), raw.to_string()))
                } else {
                    Err(ClientError::Invalid(format!(
                        "The remote \"{remote}\" doesn't exist"
                    )))
                }
            }
        }
    }

    pub fn server_cert_path(&self, remote: &str) -> PathBuf {
        self.dir.join("servercerts").join(format!("{remote}.crt"))
    }

    /// The pinned certificate's fingerprint, or `None` when nothing is pinned.
    pub fn pinned_fingerprint(&self, remote: &str) -> Result<Option<String>, ClientError> {
        let path = self.server_cert_path(remote);
        match std::fs::read_to_string(&path) {
            Ok(pem) => Ok(Some(trust::fingerprint(&trust::cert::pem_to_der(&pem)?))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::io(format!("Unable to read {}", path.display()), e)),
        }
    }

    /// The remotes whose pinned certificate has this fingerprint (every remote of one
    /// server or cluster), in name order. Unreadable pins are skipped.
    pub fn remotes_pinned_to(&self, fingerprint: &str) -> Vec<String> {
        self.remotes
            .keys()
            .filter(|name| {
                self.pinned_fingerprint(name)
                    .ok()
                    .flatten()
                    .is_some_and(|fp| fp.eq_ignore_ascii_case(fingerprint))
            })
            .cloned()
            .collect()
    }

    /// Pins a server certificate for a remote.
    pub fn save_server_cert(&self, remote: &str, der: &[u8]) -> Result<(), ClientError> {
        let path = self.server_cert_path(remote);
        let parent = path.parent().expect("servercerts has a parent");
        std::fs::create_dir_all(parent)
            .map_err(|_| ClientError::Invalid("Could not create server cert dir".into()))?;
        write_file(&path, trust::cert::der_to_pem(der).as_bytes(), 0o644)
    }

    /// Removes a remote's pinned certificate, if any.
    pub fn remove_server_cert(&self, remote: &str) {
        let _ = std::fs::remove_file(self.server_cert_path(remote));
    }

    /// Moves a remote's pinned certificate along with a rename.
    pub fn rename_server_cert(&self, from: &str, to: &str) -> Result<(), ClientError> {
        let old = self.server_cert_path(from);
        if old.exists() {
            std::fs::rename(&old, self.server_cert_path(to))
                .map_err(|e| ClientError::io(format!("Unable to rename {}", old.display()), e))?;
        }
        Ok(())
    }

    /// Where the connection state of a remote is remembered (the address that worked
    /// last, the ones that failed recently): `remote-state/<name>.json`.
    pub fn remote_state_path(&self, remote: &str) -> PathBuf {
        self.dir.join("remote-state").join(format!("{remote}.json"))
    }

    /// Where the OpenID tokens of a remote are stored: `oidc-tokens/<name>.json`.
    pub fn oidc_tokens_path(&self, remote: &str) -> PathBuf {
        self.dir.join("oidc-tokens").join(format!("{remote}.json"))
    }

    /// Forgets a remote's OpenID tokens, if any.
    pub fn remove_oidc_tokens(&self, remote: &str) {
        let _ = std::fs::remove_file(self.oidc_tokens_path(remote));
    }

    /// Moves a remote's OpenID tokens along with a rename.
    pub fn rename_oidc_tokens(&self, from: &str, to: &str) -> Result<(), ClientError> {
        let old = self.oidc_tokens_path(from);
        if old.exists() {
            std::fs::rename(&old, self.oidc_tokens_path(to))
                .map_err(|e| ClientError::io(format!("Unable to rename {}", old.display()), e))?;
        }
        Ok(())
    }

    pub fn client_cert_path(&self) -> PathBuf {
        self.dir.join("client.crt")
    }

    pub fn client_key_path(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    pub fn has_client_cert(&self) -> bool {
        self.client_cert_path().exists() && self.client_key_path().exists()
    }

    /// Reads the client certificate and key (PEM), if both exist.
    pub fn client_cert(&self) -> Result<Option<trust::CertPair>, ClientError> {
        if !self.has_client_cert() {
            return Ok(None);
        }
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p)
                .map_err(|e| ClientError::io(format!("Unable to read {}", p.display()), e))
        };
        Ok(Some(trust::CertPair {
            cert_pem: read(self.client_cert_path())?,
            key_pem: read(self.client_key_path())?,
        }))
    }

    /// Generates the client certificate (ECDSA P-384, `user@host`): key mode 0600.
    pub fn generate_client_cert(&self) -> Result<trust::CertPair, ClientError> {
        self.ensure_dir()?;
        let pair = trust::CertPair::generate_client(&default_common_name())?;
        write_file(&self.client_key_path(), pair.key_pem.as_bytes(), 0o600)?;
        write_file(&self.client_cert_path(), pair.cert_pem.as_bytes(), 0o644)?;
        Ok(pair)
    }

    /// The client certificate, generated on first use. The flag says whether it was
    /// generated now (so a CLI can say so).
    pub fn ensure_client_cert(&self) -> Result<(trust::CertPair, bool), ClientError> {
        match self.client_cert()? {
            Some(pair) => Ok((pair, false)),
            None => Ok((self.generate_client_cert()?, true)),
        }
    }
}

/// `user@hostname`, as Incus names generated client certificates.
fn default_common_name() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// Writes a file with the given mode (set at creation and enforced after).
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let ctx = || format!("Unable to write {}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| ClientError::io(ctx(), e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| ClientError::io(ctx(), e))?;
    f.write_all(data).map_err(|e| ClientError::io(ctx(), e))?;
    f.sync_all().map_err(|e| ClientError::io(ctx(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_missing_file_is_local_default() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.default_remote, "local");
        assert!(c.remotes["local"].is_static);
        assert_eq!(c.remotes.len(), 1);
    }

    #[test]
    fn t10_config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::new(dir.path());
        c.remotes.insert(
            "n1".into(),
            Remote::https(&["https://127.0.0.1:8443".into(), "https://127.0.0.2:8443".into()]),
        );
        c.default_remote = "n1".into();
        c.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.yml")).unwrap();
        assert!(text.contains("default-remote: n1"), "{text}");
        assert!(
            text.contains("addr: https://127.0.0.1:8443,https://127.0.0.2:8443"),
            "{text}"
        );
        let back = Config::load(dir.path()).unwrap();
        assert_eq!(back.default_remote, "n1");
        assert_eq!(back.remotes["n1"], c.remotes["n1"]);
        assert_eq!(back.remotes["n1"].addrs().len(), 2);
        assert!(back.remotes["local"].is_static);
    }

    #[test]
    fn t10_reads_an_incus_config_file() {
        let text = "default-remote: images\nremotes:\n  images:\n    addr: https://images.linuxcontainers.org\n    protocol: simplestreams\n    public: true\n  local:\n    addr: unix://\n    protocol: incus\n    public: false\n  n1:\n    addr: https://127.0.0.1:8443\n    project: default\n    public: false\naliases: {}\n";
        let c = Config::from_yaml("/x".into(), text).unwrap();
        assert_eq!(c.default_remote, "images");
        assert!(c.remotes["images"].public);
        assert_eq!(c.remotes["n1"].auth_type, "tls");
        assert_eq!(c.remotes["n1"].protocol, "incus");
        assert_eq!(c.remotes["local"], Remote::local());
    }

    #[test]
    fn t10_parse_remote_like_incus() {
        let mut c = Config::new("/x");
        c.remotes
            .insert("n1".into(), Remote::https(&["https://h:1".into()]));
        let p = |s: &str| c.parse_remote(s).unwrap();
        assert_eq!(p("n1:"), ("n1".into(), "".into()));
        assert_eq!(p("n1:/1.0"), ("n1".into(), "/1.0".into()));
        assert_eq!(p("/1.0"), ("local".into(), "/1.0".into()));
        assert_eq!(p("a=b:c"), ("local".into(), "a=b:c".into()));
        assert_eq!(
            c.parse_remote("nope:x").unwrap_err().to_string(),
            "The remote \"nope\" doesn't exist"
        );
    }

    #[test]
    fn t10_client_cert_is_generated_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = Config::new(dir.path().join("conf"));
        let (pair, fresh) = c.ensure_client_cert().unwrap();
        assert!(fresh);
        let mode = std::fs::metadata(c.client_key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, fresh) = c.ensure_client_cert().unwrap();
        assert!(!fresh);
        assert_eq!(again, pair);
    }

    #[test]
    fn t10_pinned_certificate_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::new(dir.path());
        assert_eq!(c.pinned_fingerprint("n1").unwrap(), None);
        let pair = trust::CertPair::generate_server("node1").unwrap();
        let der = trust::cert::pem_to_der(&pair.cert_pem).unwrap();
        c.save_server_cert("n1", &der).unwrap();
        assert_eq!(
            c.pinned_fingerprint("n1").unwrap(),
            Some(trust::fingerprint(&der))
        );
    }

    #[test]
    fn t10_remotes_pinned_to_one_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::new(dir.path());
        let cluster = trust::CertPair::generate_server("cluster").unwrap();
        let other = trust::CertPair::generate_server("other").unwrap();
        let cluster_der = trust::cert::pem_to_der(&cluster.cert_pem).unwrap();
        let other_der = trust::cert::pem_to_der(&other.cert_pem).unwrap();
        for (name, der) in [("a", &cluster_der), ("b", &other_der), ("c", &cluster_der)] {
            c.remotes
                .insert(name.into(), Remote::https(&[format!("https://{name}:8443")]));
            c.save_server_cert(name, der).unwrap();
        }
        c.remotes
            .insert("unpinned".into(), Remote::https(&["https://u:8443".into()]));
        let fp = trust::fingerprint(&cluster_der).to_uppercase();
        assert_eq!(c.remotes_pinned_to(&fp), vec!["a", "c"]);
        assert!(c.remotes_pinned_to("00").is_empty());
    }
}
