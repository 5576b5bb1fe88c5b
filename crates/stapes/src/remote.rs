//! `stapes remote ...`: the remotes of config.yml, and first contact with a server
//! (pinning its certificate and getting our certificate trusted).
//!
//! ```text
//!  remote add NAME URL      probe (record cert) -> ask fingerprint -> pin -> GET /1.0
//!                           -> auth type: --auth-type, else oidc when the server offers it, else tls
//!                           tls:  untrusted? POST /1.0/certificates {trust_token} -> trusted?
//!                           oidc: GET /1.0 with the (empty) bearer token -> 401 -> device login
//!                                 (URL and code on stderr) -> tokens stored -> trusted?
//!  remote add NAME TOKEN    for each token address: probe -> cert must match token fingerprint
//!                           -> pin -> POST /1.0/certificates {trust_token}
//!  remote accept-certificate NAME [--token TOKEN]
//!                           probe (record cert) -> show fingerprint -> ask (or --yes) -> pin
//!                           -> GET /1.0: untrusted? redeem --token, else say what is needed
//! ```

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use client::config::{AUTH_OIDC, AUTH_TLS};
use client::{normalize_address, probe, Endpoint, Method, Remote, Request};
use serde::Serialize;
use serde_json::{json, Value};
use trust::token::TrustToken;

use crate::ctx::{ask_line, Ctx};
use crate::format::{parse_columns, render_list, sort_rows, ListFormat};

#[derive(Debug, Subcommand)]
pub enum RemoteCmd {
    /// Add new remote servers
    Add(AddArgs),
    /// List the available remotes
    #[command(alias = "ls")]
    List(ListArgs),
    /// Remove remotes
    #[command(aliases = ["rm", "delete"])]
    Remove { name: String },
    /// Rename remotes
    #[command(alias = "mv")]
    Rename { name: String, new_name: String },
    /// Switch the default remote
    #[command(alias = "set-default")]
    Switch { name: String },
    /// Show the default remote
    GetDefault,
    /// Pin the certificate a remote presents now (after a certificate change)
    AcceptCertificate {
        name: String,
        /// Don't ask for confirmation
        #[arg(short, long)]
        yes: bool,
        /// A trust token, for when the server no longer trusts this client (a cluster
        /// that was re-created)
        #[arg(long)]
        token: Option<String>,
    },
    /// Set the URL(s) for the remote
    #[command(alias = "set-urls")]
    SetUrl {
        name: String,
        #[arg(required = true)]
        urls: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The name of the new remote
    pub name: String,
    /// IP, FQDN or URL of the server (several for a cluster), or a trust token
    pub addrs: Vec<String>,
    /// Accept certificate
    #[arg(long)]
    pub accept_certificate: bool,
    /// Remote trust token
    #[arg(long)]
    pub token: Option<String>,
    /// Public image server
    #[arg(long)]
    pub public: bool,
    /// Server protocol
    #[arg(long, default_value = "incus")]
    pub protocol: String,
    /// Server authentication type (tls or oidc)
    #[arg(long)]
    pub auth_type: Option<String>,
    /// Project to use for the remote
    #[arg(long)]
    pub project: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Format (csv|json|table|yaml|compact), with ",noheader" or ",header"
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Columns
    #[arg(short, long, default_value = "nupaPsg")]
    pub columns: String,
}

pub async fn run(ctx: &mut Ctx, cmd: RemoteCmd) -> Result<()> {
    match cmd {
        RemoteCmd::Add(args) => add(ctx, args).await,
        RemoteCmd::List(args) => {
            print!("{}", list(ctx, &args)?);
            Ok(())
        }
        RemoteCmd::Remove { name } => remove(ctx, &name),
        RemoteCmd::Rename { name, new_name } => rename(ctx, &name, &new_name),
        RemoteCmd::Switch { name } => {
            ctx.config.remote(&name).map_err(|_| not_found(&name))?;
            ctx.config.default_remote = name;
            Ok(ctx.config.save()?)
        }
        RemoteCmd::GetDefault => {
            println!("{}", ctx.config.default_remote);
            Ok(())
        }
        RemoteCmd::SetUrl { name, urls } => set_url(ctx, &name, &urls),
        RemoteCmd::AcceptCertificate { name, yes, token } => {
            accept_certificate(ctx, &name, yes, token.as_deref()).await
        }
    }
}

fn not_found(name: &str) -> anyhow::Error {
    anyhow!("Remote {name} doesn't exist")
}

fn mutable_remote<'a>(ctx: &'a Ctx, name: &str) -> Result<&'a Remote> {
    let r = ctx.config.remote(name).map_err(|_| not_found(name))?;
    if r.is_static {
        bail!("Remote {name} is static and cannot be modified");
    }
    Ok(r)
}

fn remove(ctx: &mut Ctx, name: &str) -> Result<()> {
    mutable_remote(ctx, name)?;
    if ctx.config.default_remote == name {
        bail!("Can't remove the default remote");
    }
    ctx.config.remotes.remove(name);
    ctx.config.remove_server_cert(name);
    ctx.config.remove_oidc_tokens(name);
    let _ = std::fs::remove_file(ctx.config.remote_state_path(name));
    Ok(ctx.config.save()?)
}

fn rename(ctx: &mut Ctx, name: &str, new_name: &str) -> Result<()> {
    let r = mutable_remote(ctx, name)?.clone();
    if let Some(existing) = ctx.config.remotes.get(new_name) {
        bail!("Remote {new_name} exists as <{}>", existing.addr);
    }
    if new_name.contains(':') {
        bail!("Remote names may not contain colons");
    }
    ctx.config.rename_server_cert(name, new_name)?;
    ctx.config.rename_oidc_tokens(name, new_name)?;
    let _ = std::fs::rename(
        ctx.config.remote_state_path(name),
        ctx.config.remote_state_path(new_name),
    );
    ctx.config.remotes.remove(name);
    ctx.config.remotes.insert(new_name.to_string(), r);
    if ctx.config.default_remote == name {
        ctx.config.default_remote = new_name.to_string();
    }
    Ok(ctx.config.save()?)
}

fn set_url(ctx: &mut Ctx, name: &str, urls: &[String]) -> Result<()> {
    mutable_remote(ctx, name)?;
    let (addrs, _) = normalize_all(urls)?;
    if let Some(r) = ctx.config.remotes.get_mut(name) {
        r.addr = addrs.join(",");
    }
    Ok(ctx.config.save()?)
}

/// Pins the certificate the remote presents now, after showing its fingerprint; then
/// makes sure the remote works: a TLS remote the server no longer trusts (a cluster
/// re-created under the same addresses) redeems `token`, or is told that it needs one.
async fn accept_certificate(ctx: &Ctx, name: &str, yes: bool, token: Option<&str>) -> Result<()> {
    let pinned = pin_presented(ctx, name, yes).await?;
    let r = mutable_remote(ctx, name)?;
    if r.is_oidc() || r.public {
        return Ok(());
    }
    let client = ctx.client_untargeted(name)?;
    let (server, _) = client.server().await?;
    if server["auth"] == "trusted" {
        return Ok(());
    }
    let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
        bail!(
            "Remote {name} pins certificate {pinned}, but the server does not trust this client \
             (was the cluster re-created?): get a trust token there (stapes config trust add NAME) \
             and run: stapes remote accept-certificate {name} --token TOKEN"
        );
    };
    redeem_trust_token(&client, token).await?;
    if !ctx.globals.quiet {
        println!("Client certificate now trusted by server: {name}");
    }
    Ok(())
}

/// Presents a trust token; the server must trust us afterwards.
async fn redeem_trust_token(client: &client::Client, token: &str) -> Result<()> {
    client
        .call(Request::new(Method::POST, "/1.0/certificates").json(&token_request(token)))
        .await
        .map_err(|e| anyhow!("Failed to create certificate: {e}"))?;
    let (server, _) = client.server().await?;
    if server["auth"] != "trusted" {
        bail!("Server doesn't trust us after authentication");
    }
    Ok(())
}

/// The pinning half of `accept-certificate`; returns the fingerprint pinned now.
async fn pin_presented(ctx: &Ctx, name: &str, yes: bool) -> Result<String> {
    let r = mutable_remote(ctx, name)?.clone();
    if r.is_unix() {
        bail!("Remote {name} is a unix socket and has no certificate");
    }
    let identity = if r.is_oidc() {
        None
    } else {
        Some(ensure_identity(ctx)?)
    };
    let presented = probe(r.endpoints()?, identity).await?;
    let pinned = ctx.config.pinned_fingerprint(name)?;
    if pinned.as_deref() == Some(presented.fingerprint.as_str()) {
        if !ctx.globals.quiet {
            println!(
                "The certificate of remote {name} is unchanged: {}",
                presented.fingerprint
            );
        }
        return Ok(presented.fingerprint);
    }
    if let Some(old) = &pinned {
        println!("Pinned certificate fingerprint: {old}");
    }
    println!("Certificate fingerprint: {}", presented.fingerprint);
    if !yes {
        let answer = ask_line("ok (y/n/[fingerprint])? ")?;
        accept_answer(&answer, &presented.fingerprint)?;
    }
    ctx.config.save_server_cert(name, &presented.certificate_der)?;
    if !ctx.globals.quiet {
        println!("Remote {name} now pins certificate {}", presented.fingerprint);
    }
    Ok(presented.fingerprint)
}

/// Normalises every address; all must be https or all unix.
fn normalize_all(addrs: &[String]) -> Result<(Vec<String>, bool)> {
    let mut out = Vec::new();
    let (mut any_unix, mut any_https) = (false, false);
    for a in addrs {
        let (url, unix) = normalize_address(a)?;
        if unix {
            any_unix = true;
        } else {
            any_https = true;
        }
        out.push(url);
    }
    if any_unix && any_https {
        bail!("Cannot mix HTTPS and Unix URLs");
    }
    Ok((out, any_unix))
}

/// The row of one remote for `remote list`.
pub fn remote_row(name: &str, r: &Remote, default: &str, cols: &[char]) -> Vec<String> {
    let yes_no = |b: bool| if b { "YES" } else { "NO" }.to_string();
    cols.iter()
        .map(|c| match c {
            'n' if name == default => format!("{name} (current)"),
            'n' => name.to_string(),
            'u' => r.addrs().join("\n"),
            'p' => r.protocol.clone(),
            'a' if !r.auth_type.is_empty() => r.auth_type.clone(),
            'a' if r.is_unix() => "file access".into(),
            'a' if r.protocol != "incus" => "none".into(),
            'a' => "tls".into(),
            'P' => yes_no(r.public),
            's' => yes_no(r.is_static),
            _ => yes_no(false),
        })
        .collect()
}

/// The JSON shape Incus prints for `remote list --format json` (its Go field names).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RemoteJson<'a> {
    addr: String,
    auth_type: &'a str,
    keep_alive: u32,
    project: &'a str,
    protocol: &'a str,
    public: bool,
    global: bool,
    #[serde(rename = "Static")]
    is_static: bool,
}

pub fn list(ctx: &Ctx, args: &ListArgs) -> Result<String> {
    let format = ListFormat::parse(&args.format).map_err(|e| anyhow!(e))?;
    let cols = parse_columns(&args.columns, "nupaPsg").map_err(|e| anyhow!(e))?;
    let headers: Vec<&str> = cols
        .iter()
        .map(|c| match c {
            'n' => "NAME",
            'u' => "URL",
            'p' => "PROTOCOL",
            'a' => "AUTH TYPE",
            'P' => "PUBLIC",
            's' => "STATIC",
            _ => "GLOBAL",
        })
        .collect();
    let mut rows: Vec<Vec<String>> = ctx
        .config
        .remotes
        .iter()
        .map(|(n, r)| remote_row(n, r, &ctx.config.default_remote, &cols))
        .collect();
    sort_rows(&mut rows);
    let out = match format.kind {
        crate::format::ListKind::Json => {
            let raw: BTreeMap<&str, RemoteJson<'_>> = ctx
                .config
                .remotes
                .iter()
                .map(|(n, r)| {
                    (
                        n.as_str(),
                        RemoteJson {
                            addr: r.addr.clone(),
                            auth_type: &r.auth_type,
                            keep_alive: 0,
                            project: &r.project,
                            protocol: &r.protocol,
                            public: r.public,
                            global: false,
                            is_static: r.is_static,
                        },
                    )
                })
                .collect();
            render_list(format, &headers, &rows, &raw)
        }
        _ => render_list(format, &headers, &rows, &ctx.config.remotes),
    };
    out.map_err(|e| anyhow!(e))
}

/// What the address argument of `remote add` is.
#[derive(Debug, PartialEq)]
pub enum AddTarget {
    Token(TrustToken),
    Urls(Vec<String>, bool),
}

/// Decides between the token form and URLs (pure).
pub fn add_target(name: &str, addrs: &[String]) -> Result<AddTarget> {
    let addrs: Vec<String> = if addrs.is_empty() {
        vec![name.to_string()]
    } else {
        addrs.to_vec()
    };
    if addrs.len() == 1 {
        if let Ok(token) = trust::token::decode::<TrustToken>(&addrs[0]) {
            return Ok(AddTarget::Token(token));
        }
    }
    let (urls, unix) = normalize_all(&addrs)?;
    Ok(AddTarget::Urls(urls, unix))
}

/// The body of the trust-token `POST /1.0/certificates`, field for field as the Incus
/// client sends it; the server takes the certificate from the TLS session.
pub fn token_request(token: &str) -> Value {
    json!({
        "name": "",
        "type": "client",
        "restricted": false,
        "projects": null,
        "certificate": "",
        "description": "",
        "trust_token": token,
    })
}

/// Does the user accept this fingerprint? `y`, or the fingerprint itself, says yes.
pub fn accept_answer(answer: &str, fingerprint: &str) -> Result<()> {
    let answer = answer.trim();
    if answer == fingerprint {
        return Ok(());
    }
    match answer.chars().next().map(|c| c.to_ascii_lowercase()) {
        None | Some('n') => bail!("Server certificate NACKed by user"),
        Some('y') => Ok(()),
        Some(_) => bail!("Please type 'y', 'n' or the fingerprint:"),
    }
}

async fn add(ctx: &mut Ctx, args: AddArgs) -> Result<()> {
    let name = args.name.clone();
    if name.contains(':') {
        bail!("Remote names may not contain colons");
    }
    if let Some(r) = ctx.config.remotes.get(&name) {
        bail!("Remote {name} exists as <{}>", r.addr);
    }
    if args.protocol != "incus" {
        bail!("Invalid protocol: {}", args.protocol);
    }
    match args.auth_type.as_deref() {
        None | Some("") | Some(AUTH_TLS) | Some(AUTH_OIDC) => {}
        Some(other) => bail!("Authentication type '{other}' isn't supported by this client"),
    }
    // Tokens left behind by an earlier remote of this name belong to nobody now.
    ctx.config.remove_oidc_tokens(&name);
    match add_target(&name, &args.addrs)? {
        AddTarget::Token(_) if args.auth_type.as_deref() == Some(AUTH_OIDC) => {
            bail!("A trust token adds a TLS remote; it cannot be used with --auth-type oidc")
        }
        AddTarget::Token(token) => {
            let raw = args.addrs.first().cloned().unwrap_or_else(|| name.clone());
            add_from_token(ctx, &args, &token, raw.trim()).await
        }
        AddTarget::Urls(urls, true) => {
            let mut remote = Remote::https(&urls);
            remote.project = args.project.clone().unwrap_or_default();
            ctx.config.remotes.insert(name.clone(), remote);
            let result = async {
                ctx.client_untargeted(&name)?.server().await?;
                Ok::<_, anyhow::Error>(())
            }
            .await;
            if result.is_err() {
                ctx.config.remotes.remove(&name);
            }
            result?;
            Ok(ctx.config.save()?)
        }
        AddTarget::Urls(urls, false) => add_https(ctx, &args, urls).await,
    }
}

fn ensure_identity(ctx: &Ctx) -> Result<trust::CertPair> {
    match ctx.config.client_cert()? {
        Some(p) => Ok(p),
        None => {
            eprintln!("Generating a client certificate. This may take a minute...");
            Ok(ctx.config.generate_client_cert()?)
        }
    }
}

fn endpoints(urls: &[String]) -> Result<Vec<Endpoint>> {
    Ok(urls
        .iter()
        .map(|u| Endpoint::parse(u))
        .collect::<Result<Vec<_>, _>>()?)
}

async fn add_https(ctx: &mut Ctx, args: &AddArgs, urls: Vec<String>) -> Result<()> {
    // An OpenID remote never presents the client certificate, so none is made for it.
    let identity = match args.auth_type.as_deref() {
        Some(AUTH_OIDC) => None,
        _ => Some(ensure_identity(ctx)?),
    };
    let first = probe(endpoints(&urls)?, identity).await?;
    if !args.accept_certificate {
        println!("Certificate fingerprint: {}", first.fingerprint);
        let answer = ask_line("ok (y/n/[fingerprint])? ")?;
        accept_answer(&answer, &first.fingerprint)?;
    }
    let name = args.name.clone();
    let mut remote = Remote::https(&urls);
    remote.project = args.project.clone().unwrap_or_default();
    ctx.config.save_server_cert(&name, &first.certificate_der)?;
    ctx.config.remotes.insert(name.clone(), remote);
    let result = finish_https(ctx, args, &name, &first.server).await;
    if result.is_err() {
        ctx.config.remotes.remove(&name);
        ctx.config.remove_server_cert(&name);
        ctx.config.remove_oidc_tokens(&name);
        return result;
    }
    Ok(ctx.config.save()?)
}

/// The authentication type of a new remote, as Incus 6.0 picks it: the one asked for,
/// else OpenID Connect when a private server offers it, else TLS (pure).
pub fn choose_auth_type<'a>(asked: Option<&'a str>, public: bool, methods: &[String]) -> &'a str {
    match asked {
        Some(t) if !t.is_empty() => t,
        _ if !public && methods.iter().any(|m| m == AUTH_OIDC) => AUTH_OIDC,
        _ => AUTH_TLS,
    }
}

/// With the certificate pinned: check the server, get trusted if needed (a trust token
/// for TLS, a device login for OpenID Connect).
async fn finish_https(ctx: &mut Ctx, args: &AddArgs, name: &str, probed: &Value) -> Result<()> {
    let public = probed["public"].as_bool().unwrap_or(false) || args.public;
    let methods: Vec<String> = probed["auth_methods"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if !public && choose_auth_type(args.auth_type.as_deref(), public, &methods) == AUTH_OIDC {
        if !methods.iter().any(|m| m == AUTH_OIDC) {
            bail!("Authentication type '{AUTH_OIDC}' not supported by server");
        }
        if let Some(r) = ctx.config.remotes.get_mut(name) {
            r.auth_type = AUTH_OIDC.into();
        }
        // The first request carries no token yet: the server's 401 starts the login.
        let client = ctx.client_untargeted(name)?;
        let (server, _) = client.server().await?;
        if server["auth"] != "trusted" {
            bail!("Server doesn't trust us after authentication");
        }
        return Ok(());
    }
    let client = ctx.client_untargeted(name)?;
    let (server, _) = client.server().await?;
    if server["public"].as_bool().unwrap_or(false) || args.public {
        if let Some(r) = ctx.config.remotes.get_mut(name) {
            r.public = true;
            r.auth_type.clear();
        }
        return Ok(());
    }
    let methods = server["auth_methods"].as_array().cloned().unwrap_or_default();
    if !methods.iter().any(|m| m == "tls") && !methods.is_empty() {
        bail!("Authentication type 'tls' not supported by server");
    }
    if server["auth"] != "trusted" {
        let token = match &args.token {
            Some(t) => t.clone(),
            None => ask_line(&format!("Trust token for {name}: "))?,
        };
        if token.trim().is_empty() {
            bail!(
                "No trust token given for {name}: the server does not trust this client yet. \
                 Get a token there (stapes config trust add NAME) and pass it with --token, \
                 or add the remote with the token alone: stapes remote add {name} TOKEN"
            );
        }
        client
            .call(Request::new(Method::POST, "/1.0/certificates").json(&token_request(token.trim())))
            .await?;
        let (server, _) = client.server().await?;
        if server["auth"] != "trusted" {
            bail!("Server doesn't trust us after authentication");
        }
        println!("Client certificate now trusted by server: {name}");
    }
    Ok(())
}

async fn add_from_token(ctx: &mut Ctx, args: &AddArgs, token: &TrustToken, raw: &str) -> Result<()> {
    let identity = ensure_identity(ctx)?;
    let mut urls: Vec<String> = Vec::new();
    for a in &token.addresses {
        urls.push(normalize_address(&format!("https://{a}"))?.0);
    }
    let found = match try_token_addresses(&urls, token, &identity).await? {
        Some(found) => found,
        None => {
            println!("All server addresses are unavailable");
            let line = ask_line(
                "Please provide alternate server addresses separated with commas (empty to abort): ",
            )?;
            if line.trim().is_empty() {
                bail!("Failed to add remote");
            }
            let alternates: Vec<String> = line.split(',').map(|s| s.trim().to_string()).collect();
            urls = normalize_all(&alternates)?.0;
            try_token_addresses(&urls, token, &identity)
                .await?
                .ok_or_else(|| anyhow!("Failed to add remote"))?
        }
    };
    let (answered, der) = found;
    // The address that answered first, then the others of the token.
    let mut addrs = vec![answered.clone()];
    addrs.extend(urls.into_iter().filter(|u| *u != answered));
    let name = args.name.clone();
    let mut remote = Remote::https(&addrs);
    remote.project = args.project.clone().unwrap_or_default();
    ctx.config.save_server_cert(&name, &der)?;
    ctx.config.remotes.insert(name.clone(), remote);
    let result = async {
        let client = ctx.client_untargeted(&name)?;
        let (server, _) = client.server().await?;
        if server["auth"] != "trusted" {
            redeem_trust_token(&client, raw).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        ctx.config.remotes.remove(&name);
        ctx.config.remove_server_cert(&name);
        return Err(e);
    }
    Ok(ctx.config.save()?)
}

/// Probes each address of a token in turn. The first that answers must present the
/// token's certificate; returns its URL and certificate, or `None` if none answered.
async fn try_token_addresses(
    urls: &[String],
    token: &TrustToken,
    identity: &trust::CertPair,
) -> Result<Option<(String, Vec<u8>)>> {
    for url in urls {
        let endpoint = Endpoint::parse(url)?;
        match probe(vec![endpoint], Some(identity.clone())).await {
            Ok(p) => {
                if !p.fingerprint.eq_ignore_ascii_case(&token.fingerprint) {
                    bail!("Certificate fingerprint mismatch between certificate token and server {url:?}");
                }
                return Ok(Some((url.clone(), p.certificate_der)));
            }
            Err(e) => eprintln!("Unavailable remote server {url}: {e}"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_token_or_urls() {
        let token = TrustToken {
            client_name: "c1".into(),
            fingerprint: "ab".into(),
            addresses: vec!["127.0.0.1:8443".into()],
            secret: "s".into(),
            expires_at: trust::token::NO_EXPIRY.into(),
        };
        let text = trust::token::encode(&token);
        assert_eq!(add_target("c1", &[text]).unwrap(), AddTarget::Token(token));
        assert_eq!(
            add_target("n1", &["127.0.0.2".into()]).unwrap(),
            AddTarget::Urls(vec!["https://127.0.0.2:8443".into()], false)
        );
        assert_eq!(
            add_target("h.example", &[]).unwrap(),
            AddTarget::Urls(vec!["https://h.example:8443".into()], false)
        );
        assert!(add_target("x", &["https://a".into(), "unix://".into()]).is_err());
    }

    #[test]
    fn t10_auth_type_like_incus() {
        let both = vec!["tls".to_string(), "oidc".to_string()];
        let tls = vec!["tls".to_string()];
        assert_eq!(choose_auth_type(None, false, &both), "oidc");
        assert_eq!(choose_auth_type(Some(""), false, &both), "oidc");
        assert_eq!(choose_auth_type(None, true, &both), "tls");
        assert_eq!(choose_auth_type(None, false, &tls), "tls");
        assert_eq!(choose_auth_type(None, false, &[]), "tls");
        assert_eq!(choose_auth_type(Some("tls"), false, &both), "tls");
        assert_eq!(choose_auth_type(Some("oidc"), false, &tls), "oidc");
    }

    #[test]
    fn t10_fingerprint_answers() {
        assert!(accept_answer("y", "ab").is_ok());
        assert!(accept_answer("Yes", "ab").is_ok());
        assert!(accept_answer("ab", "ab").is_ok());
        assert_eq!(
            accept_answer("n", "ab").unwrap_err().to_string(),
            "Server certificate NACKed by user"
        );
        assert!(accept_answer("", "ab").is_err());
        assert!(accept_answer("zz", "ab").is_err());
    }

    #[test]
    fn t10_token_request_matches_incus_body() {
        let body = token_request("T");
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"certificate":"","description":"","name":"","projects":null,"restricted":false,"trust_token":"T","type":"client"}"#
        );
    }

    #[test]
    fn t10_list_rows_like_incus() {
        let local = Remote::local();
        let cols = parse_columns("nupaPsg", "nupaPsg").unwrap();
        assert_eq!(
            remote_row("local", &local, "local", &cols),
            vec![
                "local (current)",
                "unix://",
                "incus",
                "file access",
                "NO",
                "YES",
                "NO"
            ]
        );
        let r = Remote::https(&["https://a:1".into(), "https://b:2".into()]);
        assert_eq!(remote_row("c", &r, "local", &cols)[1], "https://a:1\nhttps://b:2");
        assert_eq!(remote_row("c", &r, "local", &cols)[3], "tls");
    }
}
