//! `stapesd`: one stapes member.
//!
//! Under systemd (`stapesd.service`, `Type=notify`) it reports readiness and stopping
//! through `notify`. SIGTERM and SIGINT stop it (after `--drain`); SIGHUP is logged and
//! ignored, because nothing it could re-read lives in a file: configuration changes
//! through the API and applies at once, and flags need a restart.
//!
//! The allocator is jemalloc with background threads (started by the daemon, not by the
//! single-threaded `forkfile` helper): memory freed after a burst (ten thousand
//! connections closing, say) goes back to the system within seconds, which glibc's
//! allocator, with its per-thread arenas, mostly keeps.

mod log_out;
mod notify;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, ValueEnum};
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

/// The instance runtime.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Driver {
    /// System containers with Debian's LXC tools.
    Lxc,
    /// Simulated in this process, for tests (no root, no LXC).
    Fake,
}

/// The stapes daemon: an Incus-API cluster member.
///
/// It serves the Incus API on a unix socket (STATE_DIR/unix.socket, for root and the
/// --group) and, once core.https_address is set, over HTTPS. SIGTERM and SIGINT stop
/// it: /ready answers 503 at once, the API is served for --drain seconds more, then
/// requests in flight finish. SIGHUP is ignored: configuration changes through the API
/// and applies at once. Under systemd (stapesd.service) it reports readiness with
/// sd_notify.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
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
    /// The instance runtime.
    #[arg(long, env = "STAPES_DRIVER", value_enum, default_value = "lxc")]
    driver: Driver,
    /// Where lxcfs is mounted. While it runs there, containers started see their limits in
    /// `/proc/meminfo`, `/proc/cpuinfo` and the other files lxcfs offers; otherwise the
    /// host's figures.
    #[arg(long, env = "STAPES_LXCFS_DIR", default_value = instance::DEFAULT_LXCFS)]
    lxcfs_dir: PathBuf,
    /// The largest snapshot of the replicated state this member accepts from the leader,
    /// in bytes. A member that needs a larger one stays behind and says so.
    #[arg(long, env = "STAPES_MAX_SNAPSHOT_SIZE", default_value_t = server::DEFAULT_MAX_SNAPSHOT_SIZE)]
    max_snapshot_size: u64,
    /// How many HTTPS client connections are held at once; past it new ones are closed.
    /// Other members and the unix socket have places of their own. Lowered to fit the
    /// open-files limit when that is smaller.
    #[arg(long, env = "STAPES_MAX_CONNECTIONS", default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// The largest body a streamed upload may have, in bytes (JSON bodies have their own
    /// limit of 1 MiB). A larger one is refused with 413, nothing kept.
    #[arg(long, env = "STAPES_MAX_STREAM_BODY", default_value_t = server::DEFAULT_MAX_STREAM_BODY)]
    max_stream_body: u64,
    /// Serves routes under /internal/test that stream bodies and echo websockets, for
    /// the integration tests. Never for production use.
    #[arg(long, env = "STAPES_TEST_ROUTES", hide = true)]
    test_routes: bool,
}

/// `stapesd completion SHELL` and `stapesd manpage DIR`, for packaging as `incusd
/// manpage` is. They stay out of the clap definition so that neither help nor
/// completions offer them. `None` when the command line is not one of them.
fn packaging_command() -> Option<anyhow::Result<()>> {
    let argv: Vec<_> = std::env::args_os().collect();
    let [_, cmd, arg] = &argv[..] else { return None };
    if cmd == "manpage" {
        return Some(write_manpage(std::path::Path::new(arg)));
    }
    if cmd == "completion" {
        let shell = arg.to_str().and_then(|s| s.parse::<clap_complete::Shell>().ok());
        return Some(match shell {
            Some(shell) => print_completion(shell),
            None => Err(anyhow::anyhow!(
                "unknown shell {arg:?}: bash, elvish, fish, powershell or zsh"
            )),
        });
    }
    None
}

/// The completion script on stdout.
fn print_completion(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "stapesd", &mut script);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &script).context("failed to write the script")
}

/// `DIR/stapesd.1`.
fn write_manpage(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    clap_mangen::Man::new(Args::command())
        .generate_to(dir)
        .map(drop)
        .with_context(|| format!("failed to write the manpage to {}", dir.display()))
}

/// What stopping takes beyond the drain, with room: see `server::daemon`.
const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Catches what the daemon was started ignoring (`nohup`'s SIGHUP, `&`'s SIGINT and
/// SIGQUIT), before anything is spawned: the tools it runs and the containers' commands
/// then start with those signals at their defaults, and the daemon itself still
/// ignores them, but for SIGTERM, SIGINT and SIGHUP, which it handles below as always.
/// See `instance::signals`.
fn children_get_default_signals() {
    let done = instance::signals::catch_ignored();
    if !done.caught.is_empty() {
        tracing::debug!(signals = ?done.caught, "started with signals ignored: caught, so that children get them at their defaults");
    }
    for (signal, why) in done.left {
        tracing::warn!(
            signal,
            "started with signal {signal} ignored, and children will ignore it too: {why}"
        );
    }
}

fn main() -> anyhow::Result<()> {
    // Nothing a parent left open reaches the helpers, the LXC tools or containers.
    instance::fds::close_inherited();
    // `stapesd forkfile`: the helper the LXC driver starts for file access inside a
    // running container. It must enter the container's namespaces while single-threaded,
    // so it runs before anything else starts a thread.
    if std::env::args_os().nth(1).is_some_and(|a| a == "forkfile") {
        std::process::exit(instance::forkfile::main());
    }
    // `stapesd execd`: a running container's exec helper, which enters its namespaces
    // the same way.
    if std::env::args_os().nth(1).is_some_and(|a| a == "execd") {
        std::process::exit(instance::execd::main());
    }
    if let Some(done) = packaging_command() {
        return done;
    }
    let args = Args::parse();
    // Background threads return freed memory to the system. They are started here, for
    // the daemon only: `forkfile` and `execd` above must stay single-threaded to enter
    // namespaces.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("stapesd: cannot start the allocator's background threads: {e}");
    }
    transport::tls::install_default_provider();
    let events = EventHub::new();
    // One filter for the log output and one, alike, for `logging` events: no call site
    // is enabled for the events that the log level does not want.
    let filter = || {
        EnvFilter::try_new(&args.log_level)
            .with_context(|| format!("invalid --log-level {:?}", args.log_level))
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(log_out::Stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match args.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter()?))
        .with(events.logging_layer().with_filter(filter()?))
        .init();

    log_out::flush_on_panic();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(log_out::park)
        .on_thread_stop(log_out::stop)
        .build()
        .context("failed to start the runtime")?;
    let result = runtime.block_on(async move {
        children_get_default_signals();
        let config = DaemonConfig {
            state_dir: args.state_dir,
            socket: args.socket,
            group: args.group,
            drain: std::time::Duration::try_from_secs_f64(args.drain.clamp(0.0, 3600.0)).unwrap_or_default(),
            driver: match args.driver {
                Driver::Lxc => instance::DriverKind::Lxc,
                Driver::Fake => instance::DriverKind::Fake,
            },
            lxcfs: args.lxcfs_dir,
            max_snapshot_size: args.max_snapshot_size,
            max_connections: args.max_connections,
            max_stream_body: args.max_stream_body,
            test_routes: args.test_routes,
        };
        let drain = config.drain;
        let daemon = Daemon::start(config, events).await?;
        let trigger = daemon.shutdown_trigger();
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let mut stopping = trigger.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP received: nothing to re-read (configuration changes through the API apply at once; flags need a restart)");
                        continue;
                    }
                }
                let _ = trigger.send(true);
                return;
            }
        });
        if let Some(notifier) = notify::Notifier::from_env() {
            let https = daemon.https_addr().await.map(|a| format!(", HTTPS on {a}")).unwrap_or_default();
            notifier.send(&notify::ready(&format!("Serving the API on the unix socket{https}")));
            tokio::spawn(async move {
                if stopping.wait_for(|s| *s).await.is_ok() {
                    // Shutdown takes the drain, then at most about 30 s to close (the
                    // anycast address, connections finishing, the database).
                    let status = format!("Stopping: not ready, draining for {} s", drain.as_secs_f64());
                    notifier.send(&notify::stopping(drain + STOP_MARGIN, &status));
                }
            });
        }
        let status = daemon.run().await;
        if status != 0 {
            log_out::flush_all();
            std::process::exit(status);
        }
        anyhow::Ok(())
    });
    // Errors are printed by the caller of `main`, after the lines that led to them.
    log_out::flush_all();
    result
}
