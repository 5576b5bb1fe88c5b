//! What every command gets: the loaded configuration, the global flags, and helpers to
//! turn `[remote:]object` arguments into clients.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Result};
use client::{Client, Config};
use serde_json::Value;

/// The global flags.
#[derive(Debug, Clone, Default)]
pub struct Globals {
    pub target: Option<String>,
    pub quiet: bool,
    pub debug: bool,
    pub timeout: Option<u64>,
}

pub struct Ctx {
    pub config: Config,
    pub globals: Globals,
    /// The remotes clients were made for, in order (for member discovery).
    used: std::cell::RefCell<Vec<String>>,
}

/// The bound on member discovery after a command.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

impl Ctx {
    pub fn load(globals: Globals) -> Result<Ctx> {
        let config = Config::load(client::config::default_dir())?;
        Ok(Ctx {
            config,
            globals,
            used: Default::default(),
        })
    }

    /// The request timeout (`--timeout`, default 30 s).
    pub fn timeout(&self) -> Duration {
        self.globals
            .timeout
            .map(Duration::from_secs)
            .unwrap_or(client::client::REQUEST_TIMEOUT)
    }

    /// A client for a remote, without `--target`.
    pub fn client_untargeted(&self, remote: &str) -> Result<Client> {
        let r = self.config.remote(remote)?;
        if !r.is_unix() && !r.is_oidc() && !self.config.has_client_cert() {
            eprintln!("Generating a client certificate. This may take a minute...");
        }
        let client = Client::new(&self.config, remote)?.with_timeout(self.timeout());
        let mut used = self.used.borrow_mut();
        if !used.iter().any(|u| u == remote) {
            used.push(remote.to_string());
        }
        Ok(client)
    }

    /// Member discovery, after a command succeeded: asks the first https remote the
    /// command used for the cluster's members (`GET /1.0/cluster/members?recursion=1`,
    /// bounded by [`DISCOVERY_TIMEOUT`]) and adds their URLs to the remote's addresses,
    /// so the remote keeps working when the member it was added through is gone. Once
    /// per invocation; never fails (a standalone server, an untrusted client or a slow
    /// answer just means nothing is learnt).
    pub async fn discover_members(&self) {
        let Some(remote) = self.used.borrow().first().cloned() else {
            return;
        };
        let Ok(r) = self.config.remote(&remote) else {
            return;
        };
        if r.is_unix() || r.public || r.is_static {
            return;
        }
        let Ok(client) = Client::new(&self.config, &remote) else {
            return;
        };
        // Never a device login here: the command itself has just succeeded.
        let client = client
            .with_timeout(DISCOVERY_TIMEOUT)
            .with_interactive_login(false);
        let Ok(Ok(members)) =
            tokio::time::timeout(DISCOVERY_TIMEOUT, client.get("/1.0/cluster/members?recursion=1")).await
        else {
            return;
        };
        let found: Vec<String> = members
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|m| m["url"].as_str())
                    .filter_map(|u| client::normalize_address(u).ok())
                    .filter(|(_, unix)| !unix)
                    .map(|(url, _)| url)
                    .collect()
            })
            .unwrap_or_default();
        // Re-read the file: change only this remote's addresses.
        let Ok(mut config) = Config::load(self.config.dir.clone()) else {
            return;
        };
        let Some(stored) = config.remotes.get_mut(&remote) else {
            return;
        };
        let merged = merge_addrs(&stored.addrs(), &found);
        if merged != stored.addrs() {
            if self.globals.debug {
                eprintln!("Remote {remote} addresses: {}", merged.join(","));
            }
            stored.addr = merged.join(",");
            let _ = config.save();
        }
    }

    /// A client for a remote, with `--target` applied to every request.
    pub fn client(&self, remote: &str) -> Result<Client> {
        Ok(self
            .client_untargeted(remote)?
            .with_target(self.globals.target.clone()))
    }

    /// Like Incus's `--target` handling for server-level commands: the remote must be a
    /// cluster, then every request carries `?target=`.
    pub async fn server_client(&self, remote: &str) -> Result<Client> {
        let client = self.client_untargeted(remote)?;
        if self.globals.target.is_some() {
            let (server, _) = client.server().await?;
            if !is_clustered(&server) {
                bail!("To use --target, the destination remote must be a cluster");
            }
        }
        Ok(client.with_target(self.globals.target.clone()))
    }

    /// Splits `[remote:]object`.
    pub fn parse_remote(&self, raw: &str) -> Result<(String, String)> {
        Ok(self.config.parse_remote(raw)?)
    }

    /// Splits an optional `[remote:]` argument (an absent one is the default remote).
    pub fn remote_arg(&self, arg: Option<&str>) -> Result<(String, String)> {
        self.parse_remote(arg.unwrap_or(""))
    }
}

/// The stored addresses followed by the discovered ones not already there (pure).
pub fn merge_addrs(stored: &[String], found: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in stored.iter().chain(found) {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

/// `environment.server_clustered` of a `GET /1.0`.
pub fn is_clustered(server: &Value) -> bool {
    server
        .pointer("/environment/server_clustered")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Prints a prompt on stdout and reads one line from stdin (empty at end of input).
pub fn ask_line(prompt: &str) -> Result<String> {
    print!("{prompt}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Reads all of stdin.
pub fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
    Ok(s)
}

/// Opens `$VISUAL`/`$EDITOR` (else `vi`) on `content` and returns the edited text.
pub fn text_editor(content: &str) -> Result<String> {
    let editor = std::env::var("VISUAL")
        .ok()
        .filter(|e| !e.is_empty())
        .or_else(|| std::env::var("EDITOR").ok().filter(|e| !e.is_empty()))
        .unwrap_or_else(|| "vi".to_string());
    let file = tempfile::Builder::new()
        .prefix("stapes_editor_")
        .suffix(".yaml")
        .tempfile()?;
    std::fs::write(file.path(), content)?;
    let mut parts = editor.split_whitespace();
    let program = parts.next().unwrap_or("vi");
    let status = std::process::Command::new(program)
        .args(parts)
        .arg(file.path())
        .status()
        .map_err(|e| anyhow::anyhow!("Failed to start the editor {program:?}: {e}"))?;
    if !status.success() {
        bail!("The editor {program:?} exited with {status}");
    }
    Ok(std::fs::read_to_string(file.path())?)
}

/// The interactive edit loop of `... edit` commands: opens `initial` in the editor,
/// parses the result into a request body with `parse`, and PUTs it to `path` with the
/// ETag; on an error, says why and reopens the editor on the same text.
pub async fn edit_in_editor(
    client: &client::Client,
    path: &str,
    etag: Option<&str>,
    initial: &str,
    parse: impl Fn(&str) -> Result<serde_json::Value>,
) -> Result<()> {
    let mut content = text_editor(initial)?;
    loop {
        let result = match parse(&content) {
            Ok(body) => client
                .call(
                    client::Request::new(client::Method::PUT, path)
                        .json(&body)
                        .if_match(etag),
                )
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) => {
                eprintln!("Config parsing error: {e}");
                ask_line("Press enter to open the editor again or ctrl+c to abort change")?;
                content = text_editor(&content)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_discovered_addresses_are_appended_once() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            merge_addrs(
                &s(&["https://a:1", "https://x:9"]),
                &s(&["https://b:2", "https://a:1", "https://c:3"])
            ),
            s(&["https://a:1", "https://x:9", "https://b:2", "https://c:3"])
        );
        assert_eq!(merge_addrs(&s(&["https://a:1"]), &[]), s(&["https://a:1"]));
    }
}

/// A command that ends with an exit code of its own (exec's), after printing `message`
/// (if any) as `Error: <message>`.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: Option<String>,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => write!(f, "exit status {}", self.code),
        }
    }
}

impl std::error::Error for Exit {}

/// Keys whose values Go decodes into `map[string]string` (and `devices`, a map of such
/// maps): YAML scalars there are read as their text, as Go's YAML decoder does.
const STRING_MAPS: &[&str] = &["config", "properties", "environment"];
const DEVICE_MAPS: &[&str] = &["devices"];

fn scalar_text(v: &Value) -> Value {
    match v {
        Value::String(_) => v.clone(),
        Value::Null => Value::String(String::new()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Number(n) => Value::String(n.to_string()),
        other => other.clone(),
    }
}

/// Turns the scalars of Go string maps into strings, in place.
fn stringify_maps(v: &mut Value) {
    let Some(obj) = v.as_object_mut() else { return };
    for (k, field) in obj.iter_mut() {
        if STRING_MAPS.contains(&k.as_str()) {
            if let Some(map) = field.as_object_mut() {
                for x in map.values_mut() {
                    *x = scalar_text(x);
                }
            }
        } else if DEVICE_MAPS.contains(&k.as_str()) {
            if let Some(devices) = field.as_object_mut() {
                for dev in devices.values_mut() {
                    if let Some(map) = dev.as_object_mut() {
                        for x in map.values_mut() {
                            *x = scalar_text(x);
                        }
                    }
                }
            }
        }
    }
}

/// Parses the YAML of an `edit` (or of stdin) into a typed `PUT` body: a text of only
/// comments is the empty body; scalars in string maps are read as text.
pub fn parse_yaml<T: serde::de::DeserializeOwned + Default>(text: &str) -> Result<T> {
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(T::default());
    }
    let mut value: Value = serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if value.is_null() {
        return Ok(T::default());
    }
    stringify_maps(&mut value);
    serde_json::from_value(value).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Whether stdout is a terminal (progress is shown only there).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

impl Ctx {
    /// Waits for an operation to end, showing its progress (`metadata.progress` or a
    /// `*_progress` text) on a terminal unless `--quiet`, as `prefix: text`.
    pub async fn wait(
        &self,
        client: &Client,
        op: &api::types::Operation,
        prefix: &str,
    ) -> Result<api::types::Operation> {
        let show = !self.globals.quiet && stdout_is_terminal() && !prefix.is_empty();
        if !show {
            return Ok(client.wait_done(op, None).await?);
        }
        let mut progress = Progress::default();
        let result = client
            .wait_done_with(op, None, Duration::from_secs(1), |op| {
                if let Some(text) = progress_text(op) {
                    progress.update(&format!("{prefix}: {text}"));
                }
            })
            .await;
        progress.done("");
        Ok(result?)
    }
}

/// The progress text of a running operation: a `*_progress` metadata string, else the
/// `progress` object's percentage.
pub fn progress_text(op: &api::types::Operation) -> Option<String> {
    let meta = op.metadata.as_ref()?;
    if let Some(text) = meta
        .iter()
        .find(|(k, v)| k.ends_with("_progress") && v.is_string())
        .and_then(|(_, v)| v.as_str())
    {
        return Some(text.to_string());
    }
    op.progress().map(|p| format!("{}%", p.percent))
}

/// A one-line status on a terminal, rewritten in place (Incus's `ProgressRenderer`).
#[derive(Debug, Default)]
pub struct Progress {
    longest: usize,
}

impl Progress {
    pub fn update(&mut self, text: &str) {
        let pad = self.longest.saturating_sub(text.len());
        print!("\r{text}{}", " ".repeat(pad));
        self.longest = self.longest.max(text.len());
        let _ = std::io::stdout().flush();
    }

    /// Clears the terminal line a progress was shown on (by another `Progress`).
    pub fn clear_line() {
        print!("\r\x1b[2K");
        let _ = std::io::stdout().flush();
    }

    /// Clears the line, then prints `text` (if any) with a newline.
    pub fn done(&mut self, text: &str) {
        if self.longest > 0 {
            print!("\r{}\r", " ".repeat(self.longest));
        }
        if !text.is_empty() {
            println!("{text}");
        }
        let _ = std::io::stdout().flush();
        self.longest = 0;
    }
}
