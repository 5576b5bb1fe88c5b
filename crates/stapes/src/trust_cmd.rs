//! `stapes config trust ...`: the server's trust store and its trust tokens.
//!
//! A token is a running operation of class `token`; its metadata
//! `{request, fingerprint, addresses, secret, expiresAt}` is turned into the base64 JSON
//! token `{client_name, fingerprint, addresses, secret, expires_at}` exactly as the Incus
//! client does it.

use anyhow::{anyhow, bail, Result};
use base64::Engine;
use clap::{Args, Subcommand};
use client::{Client, Method, Request};
use serde_json::{json, Value};
use trust::token::TrustToken;

use crate::ctx::{read_stdin, stdin_is_terminal, Ctx};
use crate::format::{
    date, is_zero_time, order, parse_columns, parse_time, render_list, render_tokens, sort_rows, yaml, Doc,
    ListFormat, TokenRow,
};

#[derive(Debug, Subcommand)]
pub enum TrustCmd {
    /// Add new trusted client (issues a trust token)
    Add(AddArgs),
    /// Add new trusted client certificate
    AddCertificate(AddCertArgs),
    /// List trusted clients
    #[command(alias = "ls")]
    List(ListArgs),
    /// Show trust configurations
    Show { fingerprint: String },
    /// Edit trust configurations as YAML
    Edit { fingerprint: String },
    /// Remove trusted client
    #[command(aliases = ["rm", "delete"])]
    Remove { fingerprint: String },
    /// List all active certificate add tokens
    ListTokens(TokenListArgs),
    /// Revoke certificate add token
    RevokeToken { name: String },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// [<remote>:]<name>
    pub name: String,
    /// Restrict the certificate to one or more projects
    #[arg(long)]
    pub restricted: bool,
    /// List of projects to restrict the certificate to
    #[arg(long)]
    pub projects: Option<String>,
}

#[derive(Debug, Args)]
pub struct AddCertArgs {
    /// [<remote>:] <cert.crt>
    #[arg(num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// Restrict the certificate to one or more projects
    #[arg(long)]
    pub restricted: bool,
    /// List of projects to restrict the certificate to
    #[arg(long)]
    pub projects: Option<String>,
    /// Alternative certificate name
    #[arg(long)]
    pub name: Option<String>,
    /// Type of certificate
    #[arg(short, long = "type", default_value = "client")]
    pub kind: String,
    /// Certificate description
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    pub remote: Option<String>,
    /// Format (csv|json|table|yaml|compact), with ",noheader" or ",header"
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Columns
    #[arg(short, long, default_value = "ntdfe")]
    pub columns: String,
}

#[derive(Debug, Args)]
pub struct TokenListArgs {
    pub remote: Option<String>,
    /// Format (csv|json|table|yaml|compact), with ",noheader" or ",header"
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Columns
    #[arg(short, long, default_value = "ntE")]
    pub columns: String,
}

/// Builds the trust token of a `class: token` operation (Incus's
/// `Operation.ToCertificateAddToken`), or says why the operation isn't one.
pub fn token_from_operation(op: &Value) -> Result<TrustToken, String> {
    let meta = op.get("metadata").ok_or("Operation has no metadata")?;
    let client_name = meta
        .pointer("/request/name")
        .and_then(Value::as_str)
        .ok_or("Failed to get client name")?;
    let secret = meta
        .get("secret")
        .and_then(Value::as_str)
        .ok_or("Operation secret is not a string")?;
    let fingerprint = meta
        .get("fingerprint")
        .and_then(Value::as_str)
        .ok_or("Operation fingerprint is not a string")?;
    let addresses = meta
        .get("addresses")
        .and_then(Value::as_array)
        .ok_or("Operation addresses is not a list")?
        .iter()
        .map(|a| {
            a.as_str()
                .map(str::to_string)
                .ok_or("Operation address is not a string")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let expires_at = match meta.get("expiresAt").and_then(Value::as_str) {
        Some(s) => {
            let t = parse_time(s).ok_or_else(|| format!("Invalid expiry {s:?}"))?;
            if is_zero_time(s) {
                trust::token::NO_EXPIRY.to_string()
            } else {
                trust::token::format_expiry(Some(t))
            }
        }
        None => trust::token::NO_EXPIRY.to_string(),
    };
    Ok(TrustToken {
        client_name: client_name.to_string(),
        fingerprint: fingerprint.to_string(),
        addresses,
        secret: secret.to_string(),
        expires_at,
    })
}

/// The running token operations of a `GET /1.0/operations?recursion=1` answer.
pub fn token_operations(ops: &Value) -> Vec<(Value, TrustToken)> {
    crate::operation::flatten(ops)
        .into_iter()
        .filter(|op| op["class"] == "token" && op["status_code"] == 103)
        .filter_map(|op| token_from_operation(&op).ok().map(|t| (op, t)))
        .collect()
}

pub async fn run(ctx: &Ctx, cmd: TrustCmd) -> Result<()> {
    match cmd {
        TrustCmd::Add(args) => add(ctx, args).await,
        TrustCmd::AddCertificate(args) => add_certificate(ctx, args).await,
        TrustCmd::List(args) => list(ctx, args).await,
        TrustCmd::Show { fingerprint } => {
            let (client, fp) = fp_client(ctx, &fingerprint).await?;
            let cert = client.get(&format!("/1.0/certificates/{fp}")).await?;
            print!(
                "{}",
                yaml(&Doc::ordered(&cert, order::CERTIFICATE)).map_err(|e| anyhow!(e))?
            );
            Ok(())
        }
        TrustCmd::Edit { fingerprint } => edit(ctx, &fingerprint).await,
        TrustCmd::Remove { fingerprint } => {
            let (client, fp) = fp_client(ctx, &fingerprint).await?;
            client
                .call(Request::new(Method::DELETE, format!("/1.0/certificates/{fp}")))
                .await?;
            Ok(())
        }
        TrustCmd::ListTokens(args) => list_tokens(ctx, args).await,
        TrustCmd::RevokeToken { name } => revoke_token(ctx, &name).await,
    }
}

async fn add(ctx: &Ctx, args: AddArgs) -> Result<()> {
    let (remote, name) = ctx.parse_remote(&args.name)?;
    let client = ctx.client(&remote)?;
    let projects: Option<Vec<String>> = args
        .projects
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| p.split(',').map(str::to_string).collect());
    let body = json!({
        "name": name,
        "type": "client",
        "restricted": args.restricted,
        "projects": projects,
        "certificate": "",
        "description": "",
        "token": true,
    });
    let resp = client
        .call(Request::new(Method::POST, "/1.0/certificates").json(&body))
        .await?;
    let token = token_from_operation(&resp.envelope.metadata)
        .map_err(|e| anyhow!("Failed converting token operation to certificate add token: {e}"))?;
    if !ctx.globals.quiet {
        println!("Client {name} certificate add token:");
    }
    println!("{}", trust::token::encode(&token));
    Ok(())
}

/// Reads a PEM certificate (`-` is stdin) and returns its DER.
fn read_cert(path: &str) -> Result<Vec<u8>> {
    let pem = if path == "-" {
        read_stdin()?
    } else {
        if !std::path::Path::new(path).exists() {
            bail!("Provided certificate path doesn't exist: {path}");
        }
        std::fs::read_to_string(path)?
    };
    Ok(trust::cert::pem_to_der(&pem)?)
}

async fn add_certificate(ctx: &Ctx, args: AddCertArgs) -> Result<()> {
    let (remote_arg, path) = match args.args.as_slice() {
        [p] => (None, p.clone()),
        [r, p] => (Some(r.as_str()), p.clone()),
        _ => unreachable!("clap bounds the arguments"),
    };
    if !["client", "metrics"].contains(&args.kind.as_str()) {
        bail!("Unknown certificate type {:?}", args.kind);
    }
    let (remote, _) = ctx.remote_arg(remote_arg)?;
    let der = read_cert(&path)?;
    let name = args.name.clone().unwrap_or_else(|| {
        std::path::Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.clone())
    });
    let projects: Option<Vec<String>> = args
        .projects
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| p.split(',').map(str::to_string).collect());
    let body = json!({
        "name": name,
        "type": args.kind,
        "restricted": args.restricted,
        "projects": projects,
        "certificate": base64::engine::general_purpose::STANDARD.encode(&der),
        "description": args.description.unwrap_or_default(),
    });
    let client = ctx.client(&remote)?;
    client
        .call(Request::new(Method::POST, "/1.0/certificates").json(&body))
        .await?;
    Ok(())
}

/// Resolves `[remote:]fingerprint`, accepting a unique prefix of a fingerprint.
async fn fp_client(ctx: &Ctx, arg: &str) -> Result<(Client, String)> {
    let (remote, fp) = ctx.parse_remote(arg)?;
    let client = ctx.client(&remote)?;
    if fp.len() >= 64 || fp.is_empty() {
        return Ok((client, fp));
    }
    // The server resolves prefixes too; resolving here gives the same answer when it
    // doesn't. If the list isn't readable, leave it to the server.
    let Ok(list) = client.get("/1.0/certificates").await else {
        return Ok((client, fp));
    };
    let urls: Vec<String> = list
        .as_array()
        .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let resolved = resolve_prefix(&urls, &fp)?;
    Ok((client, resolved))
}

/// Finds the one fingerprint among certificate URLs that starts with `prefix`.
pub fn resolve_prefix(urls: &[String], prefix: &str) -> Result<String> {
    let matches: Vec<&str> = urls
        .iter()
        .filter_map(|u| u.rsplit('/').next())
        .filter(|fp| fp.starts_with(prefix))
        .collect();
    match matches.as_slice() {
        [] => Ok(prefix.to_string()),
        [one] => Ok(one.to_string()),
        _ => bail!("More than one certificate matches"),
    }
}

/// One row of `config trust list`.
pub fn cert_row(cert: &Value, cols: &[char]) -> Result<Vec<String>> {
    let s = |k: &str| {
        cert.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let pem = s("certificate");
    let info = trust::cert::pem_to_der(&pem)
        .ok()
        .and_then(|der| trust::cert::inspect(&der).ok())
        .ok_or_else(|| anyhow!("Invalid certificate"))?;
    Ok(cols
        .iter()
        .map(|c| match c {
            'n' => s("name"),
            't' => s("type"),
            'c' => info.common_name.clone(),
            'f' => s("fingerprint").chars().take(12).collect(),
            'F' => s("fingerprint"),
            'd' => s("description"),
            'i' => date(info.not_before),
            'e' => date(info.not_after),
            'r' if cert["restricted"].as_bool().unwrap_or(false) => "yes".into(),
            'r' => "no".into(),
            _ => {
                let mut p: Vec<String> = cert["projects"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                p.sort();
                p.join("\n")
            }
        })
        .collect())
}

fn cert_header(c: char) -> &'static str {
    match c {
        'n' => "NAME",
        't' => "TYPE",
        'c' => "COMMON NAME",
        'f' | 'F' => "FINGERPRINT",
        'd' => "DESCRIPTION",
        'i' => "ISSUE DATE",
        'e' => "EXPIRY DATE",
        'r' => "RESTRICTED",
        _ => "PROJECTS",
    }
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let format = ListFormat::parse(&args.format).map_err(|e| anyhow!(e))?;
    let cols = parse_columns(&args.columns, "ntcfFdierp").map_err(|e| anyhow!(e))?;
    let (remote, _) = ctx.remote_arg(args.remote.as_deref())?;
    let certs = ctx.client(&remote)?.get("/1.0/certificates?recursion=1").await?;
    let certs: Vec<Value> = certs.as_array().cloned().unwrap_or_default();
    let mut rows = certs
        .iter()
        .map(|c| cert_row(c, &cols))
        .collect::<Result<Vec<_>>>()?;
    sort_rows(&mut rows);
    let headers: Vec<&str> = cols.iter().map(|c| cert_header(*c)).collect();
    let raw: Vec<Doc> = certs
        .iter()
        .map(|c| Doc::ordered(c, order::CERTIFICATE))
        .collect();
    print!(
        "{}",
        render_list(format, &headers, &rows, &raw).map_err(|e| anyhow!(e))?
    );
    Ok(())
}

async fn edit(ctx: &Ctx, arg: &str) -> Result<()> {
    let (client, fp) = fp_client(ctx, arg).await?;
    let path = format!("/1.0/certificates/{fp}");
    if !stdin_is_terminal() {
        let body = parse_certificate_put(&read_stdin()?)?;
        client.call(Request::new(Method::PUT, &path).json(&body)).await?;
        return Ok(());
    }
    let (cert, etag) = client.get_with_etag(&path).await?;
    let header = "### This is a YAML representation of the certificate.\n### Any line starting with a '# will be ignored.\n###\n### Note that the fingerprint is shown but cannot be changed\n\n";
    let text = yaml(&Doc::ordered(&cert, order::CERTIFICATE)).map_err(|e| anyhow!(e))?;
    crate::ctx::edit_in_editor(
        &client,
        &path,
        etag.as_deref(),
        &format!("{header}{text}"),
        parse_certificate_put,
    )
    .await
}

/// The YAML of `config trust edit` as a full `PUT` body: fields left out take their
/// zero values, as a Go client decoding into the struct would send them.
pub fn parse_certificate_put(text: &str) -> Result<Value> {
    let put: api::types::CertificatePut = if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        api::types::CertificatePut::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| anyhow!("{e}"))?
    };
    Ok(json!({
        "name": put.name.unwrap_or_default(),
        "type": put.kind.unwrap_or_default(),
        "restricted": put.restricted.unwrap_or(false),
        "projects": put.projects.unwrap_or_default(),
        "certificate": put.certificate.unwrap_or_default(),
        "description": put.description.unwrap_or_default(),
    }))
}

async fn list_tokens(ctx: &Ctx, args: TokenListArgs) -> Result<()> {
    let format = ListFormat::parse(&args.format).map_err(|e| anyhow!(e))?;
    let cols = parse_columns(&args.columns, "ntE").map_err(|e| anyhow!(e))?;
    let (remote, _) = ctx.remote_arg(args.remote.as_deref())?;
    let ops = ctx.client(&remote)?.get("/1.0/operations?recursion=1").await?;
    let tokens: Vec<TrustToken> = token_operations(&ops).into_iter().map(|(_, t)| t).collect();
    let rows: Vec<TokenRow> = tokens
        .iter()
        .map(|t| TokenRow {
            name: t.client_name.clone(),
            token: trust::token::encode(t),
            expires_at: t.expires_at.clone(),
        })
        .collect();
    print!(
        "{}",
        render_tokens(format, &cols, &rows, &tokens, true).map_err(|e| anyhow!(e))?
    );
    Ok(())
}

async fn revoke_token(ctx: &Ctx, arg: &str) -> Result<()> {
    let (remote, name) = ctx.parse_remote(arg)?;
    let client = ctx.client(&remote)?;
    let ops = client.get("/1.0/operations?recursion=1").await?;
    for (op, token) in token_operations(&ops) {
        if token.client_name == name {
            let id = op["id"].as_str().unwrap_or_default();
            client
                .call(Request::new(Method::DELETE, format!("/1.0/operations/{id}")))
                .await?;
            if !ctx.globals.quiet {
                println!("Certificate add token for {name} deleted");
            }
            return Ok(());
        }
    }
    bail!("No certificate add token for member {name} on remote: {remote}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_op(expires: &str) -> Value {
        json!({
            "id": "9763a1bf", "class": "token", "status": "Running", "status_code": 103,
            "metadata": {
                "request": {"name": "lab2", "type": "client", "token": true},
                "fingerprint": "18dd5723",
                "addresses": ["127.0.0.1:8443", "127.0.0.2:8443"],
                "secret": "2cdec0df",
                "expiresAt": expires,
            }
        })
    }

    #[test]
    fn t10_token_is_built_like_incus() {
        let t = token_from_operation(&token_op("0001-01-01T00:00:00Z")).unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"client_name":"lab2","fingerprint":"18dd5723","addresses":["127.0.0.1:8443","127.0.0.2:8443"],"secret":"2cdec0df","expires_at":"0001-01-01T00:00:00Z"}"#
        );
        let t = token_from_operation(&token_op("2026-11-24T18:36:42.680494488Z")).unwrap();
        assert_eq!(t.expires_at, "2026-11-24T18:36:42.680494488Z");
        let decoded: TrustToken = trust::token::decode(&trust::token::encode(&t)).unwrap();
        assert_eq!(decoded, t);
        assert!(token_from_operation(&json!({"metadata": {}})).is_err());
    }

    #[test]
    fn t10_token_operations_skip_others() {
        let mut cancelled = token_op("0001-01-01T00:00:00Z");
        cancelled["status_code"] = json!(104);
        let ops = json!({
            "running": [token_op("0001-01-01T00:00:00Z"), {"class": "task", "status_code": 103}],
            "cancelled": [cancelled],
        });
        assert_eq!(token_operations(&ops).len(), 1);
    }

    #[test]
    fn t10_fingerprint_prefixes() {
        let urls = vec![
            "/1.0/certificates/abcdef".to_string(),
            "/1.0/certificates/abc123".to_string(),
        ];
        assert_eq!(resolve_prefix(&urls, "abcd").unwrap(), "abcdef");
        assert_eq!(resolve_prefix(&urls, "zz").unwrap(), "zz");
        assert_eq!(
            resolve_prefix(&urls, "abc").unwrap_err().to_string(),
            "More than one certificate matches"
        );
    }

    #[test]
    fn t10_certificate_rows() {
        let pair = trust::CertPair::generate_client("alice@host").unwrap();
        let cert = json!({
            "name": "alice", "type": "client", "restricted": true, "projects": ["b", "a"],
            "certificate": pair.cert_pem, "description": "d",
            "fingerprint": "3bdfef9f833fc54b9b8326e012bb3db7185a19c8e5da4b322efa0fffcb899c7e",
        });
        let row = cert_row(&cert, &['t', 'n', 'c', 'f', 'r', 'p']).unwrap();
        assert_eq!(
            row,
            vec!["client", "alice", "alice@host", "3bdfef9f833f", "yes", "a\nb"]
        );
    }

    #[test]
    fn t10_certificate_put_defaults() {
        let v = parse_certificate_put("name: x\nfingerprint: ignored\n").unwrap();
        assert_eq!(
            v,
            json!({"name":"x","type":"","restricted":false,"projects":[],"certificate":"","description":""})
        );
    }
}
