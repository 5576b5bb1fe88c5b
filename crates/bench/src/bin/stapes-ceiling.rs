//! `stapes-ceiling`: one member of the ceiling (see `stapes_bench::ceiling`), started
//! by the benchmark beside stapesd and incusd. Not a product: it serves `GET /1.0` and
//! nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// A minimal HTTPS JSON server and HTTP/2 forwarder: the stack's limit for `GET /1.0`.
#[derive(Parser)]
#[command(name = "stapes-ceiling")]
struct Args {
    /// This member's name; `?target=` naming another is forwarded to --peer.
    #[arg(long)]
    name: String,
    /// The HTTPS address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The unix socket to listen on (trusted, like a daemon's local socket).
    #[arg(long)]
    unix: PathBuf,
    /// Server certificate (PEM), also presented to the peer when forwarding.
    #[arg(long)]
    cert: PathBuf,
    /// Its key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// The JSON body for callers with a client certificate and for the unix socket.
    #[arg(long)]
    body: PathBuf,
    /// The JSON body for callers without a client certificate.
    #[arg(long)]
    untrusted_body: PathBuf,
    /// The other member, for forwarded requests (one HTTP/2 connection, mutual TLS
    /// with the shared certificate, pinned).
    #[arg(long)]
    peer: Option<SocketAddr>,
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn json(path: &PathBuf) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(&read(path)?).with_context(|| format!("{} is not JSON", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    transport::tls::install_default_provider();
    let args = Args::parse();
    stapes_bench::ceiling::serve(stapes_bench::ceiling::Config {
        name: args.name,
        listen: args.listen,
        unix: args.unix,
        cert_pem: read(&args.cert)?,
        key_pem: read(&args.key)?,
        trusted_body: json(&args.body)?,
        untrusted_body: json(&args.untrusted_body)?,
        peer: args.peer,
    })
    .await
}
