//! `stapesd`: one stapes member.
//!
//! The allocator is jemalloc with background threads: memory freed after a burst (ten
//! thousand connections closing, say) goes back to the system within seconds, which
//! glibc's allocator, with its per-thread arenas, mostly keeps.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use server::{Daemon, DaemonConfig, EventHub};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The stapes daemon: an Incus-API cluster member.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where the member keeps its state (certificates, database, socket).
    #[arg(long, env = "STAPES_DIR", default_value = "/var/lib/stapes")]
    state_dir: PathBuf,
    /// The unix socket path (default: STATE_DIR/unix.socket).
    #[arg(long, env = "STAPES_SOCKET")]
    socket: Option<PathBuf>,
    /// The group that may use the unix socket.
    #[arg(long)]
    group: Option<String>,
    /// The least severe level logged: error, warn, info, debug or trace (or a filter).
    #[arg(long, default_value = "info")]
    log_level: String,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// On SIGTERM, seconds to keep serving while reporting not-ready on /ready, so that
    /// load balancers, VRRP and BGP move traffic away before the member stops.
    #[arg(long, env = "STAPES_DRAIN", default_value_t = 0.0)]
    drain: f64,
    /// The largest snapshot of the replicated state this member accepts from the leader,
    /// in bytes. A member that needs a larger one stays behind and says so.
    #[arg(long, env = "STAPES_MAX_SNAPSHOT_SIZE", default_value_t = server::DEFAULT_MAX_SNAPSHOT_SIZE)]
    max_snapshot_size: u64,
    /// How many HTTPS client connections are held at once; past it new ones are closed.
    /// Other members and the unix socket have places of their own. Lowered to fit the
    /// open-files limit when that is smaller.
    #[arg(long, env = "STAPES_MAX_CONNECTIONS", default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    transport::tls::install_default_provider();
    let events = EventHub::new();
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log-level {:?}", args.log_level))?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match args.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(events.logging_layer())
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the runtime")?;
    runtime.block_on(async move {
        let config = DaemonConfig {
            state_dir: args.state_dir,
            socket: args.socket,
            group: args.group,
            drain: std::time::Duration::try_from_secs_f64(args.drain.clamp(0.0, 3600.0)).unwrap_or_default(),
            max_snapshot_size: args.max_snapshot_size,
            max_connections: args.max_connections,
        };
        let daemon = Daemon::start(config, events).await?;
        let trigger = daemon.shutdown_trigger();
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            let _ = trigger.send(true);
        });
        let status = daemon.run().await;
        if status != 0 {
            std::process::exit(status);
        }
        anyhow::Ok(())
    })
}
