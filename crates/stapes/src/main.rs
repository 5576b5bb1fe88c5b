//! `stapes`: the command-line client. It mirrors the `incus` commands that concern a
//! server and its trust (remotes, info, query, config, trust, operations, monitor,
//! admin, cluster), instances (launch, create, start, stop, restart, pause, resume,
//! delete, rename, move, copy, list, info, config, snapshot, exec, console, file),
//! images, profiles and storage pools, with Incus's arguments, output shapes and
//! messages. Errors go to stderr as `Error: <message>` with exit code 1 (`exec`: the
//! command's own exit code).
//!
//! ```text
//!  main -> clap (Cli) -> Ctx {config.yml, global flags} -> command module -> client crate
//! ```
//!
//! Deliberate differences from `incus` (see each module for details):
//! - dates in lists are printed in UTC (`2026/11/24 15:35 UTC`), not local time;
//! - every wait is bounded: `--request-timeout` (30 s), `admin waitready`/`shutdown`
//!   default to 600 s instead of waiting forever, and `query --wait` asks the server for
//!   at most the request timeout;
//! - `remote add NAME TOKEN` records every address of the token (the one that answered
//!   first), as Incus 7.1 does; Incus 6.0 keeps only the first that answers;
//! - `monitor --pretty` skips events that are not log records instead of failing;
//! - remotes authenticate by TLS certificate or OpenID Connect (`--auth-type tls|oidc`);
//!   OpenID tokens are kept in `oidc-tokens/<remote>.json` (Incus: `oidctokens/`), with
//!   the issuer, so an expired access token is refreshed before it is sent; the device
//!   login's URL and code go to stderr, and no browser is opened;
//! - only `admin init --preseed`/`--dump`;
//! - `cluster update-certificate` re-pins every remote that pinned the old certificate,
//!   not only the one used; `remote accept-certificate` pins a changed certificate;
//! - `cluster` has no `evacuate`, `restore`, `group` or `role`;
//! - a remote's addresses are raced (the client never waits on one sick member), and
//!   after a successful command on a clustered https remote the members' URLs are added
//!   to the remote's addresses (at most one extra request, bounded by 2 s, never failing
//!   the command); `monitor` follows a remote with several addresses to another member
//!   when its stream breaks;
//! - progress (image transfers, unpacking, file pushes) is shown only on a terminal;
//!   Incus prints its last progress line into redirected output too;
//! - containers only: `--vm` and the `vga` console are refused, and so are networks
//!   (`launch -n`), images from another remote or a URL, directory imports, and copies
//!   or moves between remotes (within a remote and between cluster members they work);
//! - `list`'s custom columns (`-c user.note:NOTE`) accept any key; Incus first checks
//!   that the key is a known instance key.

#![forbid(unsafe_code)]

mod admin;
mod cluster;
mod ctx;
mod device;
mod exec;
mod file;
mod format;
mod generate;
mod image;
mod info;
mod instance;
mod instance_config;
mod list;
mod monitor;
mod operation;
mod profile;
mod props;
mod remote;
mod server;
mod snapshot;
mod storage;
mod trust_cmd;

#[cfg(test)]
mod fixtures;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::ctx::{Ctx, Globals};

/// Command line client for stapes (speaks the Incus API)
#[derive(Debug, Parser)]
#[command(name = "stapes", version, propagate_version = true)]
struct Cli {
    /// Cluster member name (adds ?target=MEMBER to requests)
    #[arg(long, global = true, value_name = "MEMBER")]
    target: Option<String>,
    /// Don't show progress information
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Show all debug messages
    #[arg(long, global = true)]
    debug: bool,
    /// Bound on each request, in seconds (default 30)
    #[arg(long, global = true, value_name = "SECONDS")]
    request_timeout: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the list of remote servers
    #[command(subcommand)]
    Remote(remote::RemoteCmd),
    /// Show server information
    Info {
        /// [<remote>:][<instance>]
        remote: Option<String>,
        /// Show the instance's recent log entries
        #[arg(long)]
        show_log: bool,
    },
    /// Send a raw query to the server
    Query(server::QueryArgs),
    /// Show local and remote versions
    Version { remote: Option<String> },
    /// Manage server configuration options and trust
    #[command(subcommand)]
    Config(server::ConfigCmd),
    /// Monitor a local or remote server
    Monitor(monitor::MonitorArgs),
    /// List, show and delete background operations
    #[command(subcommand)]
    Operation(operation::OperationCmd),
    /// Manage the local daemon
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// Manage cluster members
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Create and start instances from images
    Launch(instance::LaunchArgs),
    /// Create instances from images
    #[command(alias = "init")]
    Create(instance::CreateArgs),
    /// Start instances
    Start(instance::ActionArgs),
    /// Stop instances
    Stop(instance::ActionArgs),
    /// Restart instances
    Restart(instance::ActionArgs),
    /// Pause instances
    #[command(alias = "freeze")]
    Pause(instance::ActionArgs),
    /// Resume instances
    #[command(alias = "unfreeze")]
    Resume(instance::ActionArgs),
    /// Delete instances
    #[command(alias = "rm")]
    Delete(instance::DeleteArgs),
    /// Rename instances and snapshots
    Rename {
        /// [<remote>:]<instance>[/<snapshot>]
        instance: String,
        /// <instance>[/<snapshot>]
        new_name: String,
    },
    /// Move instances within or in between servers (or cluster members, with --target)
    #[command(alias = "mv")]
    Move(instance::MoveArgs),
    /// Copy instances within or in between servers
    #[command(alias = "cp")]
    Copy(instance::CopyArgs),
    /// Execute commands in instances
    Exec(exec::ExecArgs),
    /// Attach to instance consoles
    Console(exec::ConsoleArgs),
    /// Manage files in instances
    #[command(subcommand)]
    File(file::FileCmd),
    /// Manage instance snapshots
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Manage images
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// List instances
    #[command(alias = "ls")]
    List(list::ListArgs),
    /// Manage profiles
    #[command(subcommand)]
    Profile(profile::ProfileCmd),
    /// Manage storage pools and volumes
    #[command(subcommand)]
    Storage(storage::StorageCmd),
    /// Generate the autocompletion script for the specified shell
    Completion {
        #[arg(value_enum)]
        shell: generate::Shell,
    },
}

fn main() {
    // `stapes manpage DIR`, for packaging as `incus manpage` is. It stays out of the clap
    // definition so that neither help nor completions offer it.
    let argv: Vec<_> = std::env::args_os().collect();
    if let [_, cmd, dir] = &argv[..] {
        if cmd == "manpage" {
            use clap::CommandFactory as _;
            if let Err(e) = generate::manpages(Cli::command(), std::path::Path::new(dir)) {
                eprintln!("Error: {e:#}");
                std::process::exit(1);
            }
            return;
        }
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            {
                e.exit();
            }
            let text = e.to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprintln!("Error: {}", text.trim_end());
            std::process::exit(1);
        }
    };
    if cli.debug {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(tracing_subscriber::EnvFilter::new("stapes_client=debug"))
            .init();
    }
    transport::tls::install_default_provider();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<ctx::Exit>() {
            Some(exit) => {
                if let Some(m) = &exit.message {
                    eprintln!("Error: {m}");
                }
                exit.code
            }
            None => {
                eprintln!("Error: {e}");
                1
            }
        },
    };
    // Exit at once: a read of stdin (exec, console) may still be blocked in a thread
    // that the runtime would otherwise wait for.
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<()> {
    use clap::CommandFactory as _;
    if let Command::Completion { shell } = &cli.command {
        return generate::completion(Cli::command(), *shell, &mut std::io::stdout().lock());
    }
    let globals = Globals {
        target: cli.target,
        quiet: cli.quiet,
        debug: cli.debug,
        timeout: cli.request_timeout,
    };
    let mut ctx = Ctx::load(globals)?;
    let result = match cli.command {
        Command::Remote(cmd) => remote::run(&mut ctx, cmd).await,
        Command::Info { remote, show_log } => server::info(&ctx, remote.as_deref(), show_log).await,
        Command::Query(args) => server::query(&ctx, args).await,
        Command::Version { remote } => server::version(&ctx, remote.as_deref()).await,
        Command::Config(cmd) => server::config(&ctx, cmd).await,
        Command::Monitor(args) => monitor::run(&ctx, args).await,
        Command::Operation(cmd) => operation::run(&ctx, cmd).await,
        Command::Admin(cmd) => admin::run(&ctx, cmd).await,
        Command::Cluster(cmd) => cluster::run(&ctx, cmd).await,
        Command::Storage(cmd) => storage::run(&ctx, cmd).await,
        Command::Profile(cmd) => profile::run(&ctx, cmd).await,
        Command::Image(cmd) => image::run(&ctx, cmd).await,
        Command::List(args) => list::run(&ctx, args).await,
        Command::Launch(args) => instance::launch(&ctx, args).await,
        Command::Create(args) => instance::create(&ctx, &args, false).await.map(|_| ()),
        Command::Start(args) => instance::action(&ctx, "start", args).await,
        Command::Stop(args) => instance::action(&ctx, "stop", args).await,
        Command::Restart(args) => instance::action(&ctx, "restart", args).await,
        Command::Pause(args) => instance::action(&ctx, "pause", args).await,
        Command::Resume(args) => instance::action(&ctx, "resume", args).await,
        Command::Delete(args) => instance::delete(&ctx, args).await,
        Command::Rename { instance, new_name } => instance::rename_cmd(&ctx, instance, new_name).await,
        Command::Move(args) => instance::move_instance(&ctx, args).await,
        Command::Copy(args) => instance::copy(&ctx, args).await,
        Command::Exec(args) => exec::exec(&ctx, args).await,
        Command::Snapshot(cmd) => snapshot::run(&ctx, cmd).await,
        Command::File(cmd) => file::run(&ctx, cmd).await,
        Command::Console(args) => exec::console(&ctx, args).await,
        Command::Completion { .. } => Ok(()),
    };
    if result.is_ok() {
        ctx.discover_members().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn t10_cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    /// Completions and man pages come from the same definition as the parser, so every
    /// command is in them.
    #[test]
    fn t10_completion_and_manpages_cover_every_command() {
        for shell in [generate::Shell::Bash, generate::Shell::Zsh, generate::Shell::Fish] {
            let mut out = Vec::new();
            generate::completion(Cli::command(), shell, &mut out).unwrap();
            let script = String::from_utf8(out).unwrap();
            for word in [
                "accept-certificate",
                "update-certificate",
                "waitready",
                "completion",
                "launch",
                "set-property",
                "snapshot",
            ] {
                assert!(script.contains(word), "{shell:?} lacks {word}");
            }
            assert!(
                !script.contains("manpage"),
                "{shell:?} offers the packaging-only manpage"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        generate::manpages(Cli::command(), &dir.path().join("man1")).unwrap();
        let page = std::fs::read_to_string(dir.path().join("man1/stapes-remote-add.1")).unwrap();
        assert!(page.contains("accept\\-certificate"), "{page}");
        let top = std::fs::read_to_string(dir.path().join("man1/stapes.1")).unwrap();
        assert!(top.contains("stapes\\-cluster(1)"), "{top}");
        assert!(!dir.path().join("man1/stapes-manpage.1").exists());
        let cli = Cli::try_parse_from(["stapes", "completion", "zsh"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Completion {
                shell: generate::Shell::Zsh
            }
        ));
        assert!(Cli::try_parse_from(["stapes", "completion", "tcsh"]).is_err());
    }

    /// The instance, image, profile and storage commands take the incus CLI's arguments.
    #[test]
    fn t10_instance_commands_parse_as_incus_does() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["stapes"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
        };
        match parse(&[
            "launch",
            "bb",
            "c1",
            "-c",
            "a=b",
            "-p",
            "default",
            "-p",
            "p1",
            "--console",
        ])
        .command
        {
            Command::Launch(l) => {
                assert_eq!(l.create.args, ["bb", "c1"]);
                assert_eq!(l.create.profile, ["default", "p1"]);
                assert_eq!(l.console.as_deref(), Some("console"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["init", "bb", "c1", "--target", "node2"]).command,
            Command::Create(_)
        ));
        match parse(&["stop", "c1", "c2", "--timeout", "5", "-f"]).command {
            Command::Stop(a) => assert_eq!((a.instances.len(), a.timeout, a.force), (2, Some(5), true)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["freeze", "c1"]).command, Command::Pause(_)));
        match parse(&["exec", "c1", "-t", "--env", "A=b", "--", "sh", "-c", "echo -n x"]).command {
            Command::Exec(e) => {
                assert!(e.force_interactive);
                assert_eq!(e.command, ["sh", "-c", "echo -n x"]);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["list", "m1:", "status=running", "-c", "nsL4t", "-f", "csv"]).command {
            Command::List(l) => assert_eq!(
                (l.args.len(), l.columns.as_str(), l.format.as_str()),
                (2, "nsL4t", "csv")
            ),
            other => panic!("{other:?}"),
        }
        match parse(&[
            "file", "push", "--uid", "1000", "--mode", "0600", "-p", "a", "b", "c1/tmp/",
        ])
        .command
        {
            Command::File(file::FileCmd::Push(p)) => assert_eq!((p.args.len(), p.uid, p.gid), (3, 1000, -1)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["config", "device", "add", "c1", "data", "disk", "path=/data"]).command,
            Command::Config(server::ConfigCmd::Device(device::InstanceDeviceCmd::Common(
                device::DeviceCmd::Add { .. }
            )))
        ));
        assert!(matches!(
            parse(&["config", "device", "override", "c1", "root", "size=1GiB"]).command,
            Command::Config(server::ConfigCmd::Device(
                device::InstanceDeviceCmd::Override { .. }
            ))
        ));
        assert!(matches!(
            parse(&["config", "show", "c1", "--expanded"]).command,
            Command::Config(server::ConfigCmd::Show { expanded: true, .. })
        ));
        assert!(matches!(
            parse(&[
                "profile",
                "device",
                "add",
                "default",
                "root",
                "disk",
                "path=/",
                "pool=pool1"
            ])
            .command,
            Command::Profile(profile::ProfileCmd::Device(device::DeviceCmd::Add { .. }))
        ));
        let cli = parse(&[
            "storage",
            "create",
            "pool1",
            "dir",
            "source=/srv/p",
            "--target",
            "node1",
        ]);
        assert_eq!(cli.target.as_deref(), Some("node1"));
        assert!(matches!(
            cli.command,
            Command::Storage(storage::StorageCmd::Create { .. })
        ));
        assert!(matches!(
            parse(&["image", "import", "meta.tar.gz", "rootfs.squashfs", "m1:", "--alias", "bb"]).command,
            Command::Image(image::ImageCmd::Import(ref i)) if i.args.len() == 3 && i.aliases == ["bb"]
        ));
        assert!(matches!(
            parse(&["image", "alias", "rename", "bb", "bb2"]).command,
            Command::Image(image::ImageCmd::Alias(image::AliasCmd::Rename { .. }))
        ));
        assert!(matches!(
            parse(&["snapshot", "create", "c1", "s1", "--no-expiry"]).command,
            Command::Snapshot(snapshot::SnapshotCmd::Create { no_expiry: true, .. })
        ));
        assert!(matches!(
            parse(&["move", "c1", "--target", "node2"]).command,
            Command::Move(_)
        ));
        assert!(matches!(
            parse(&["console", "c1", "--show-log"]).command,
            Command::Console(_)
        ));
        assert!(
            Cli::try_parse_from(["stapes", "exec", "c1"]).is_err(),
            "exec needs a command"
        );
        assert!(Cli::try_parse_from(["stapes", "delete"]).is_err());
    }

    #[test]
    fn t10_global_flags_anywhere() {
        let cli = Cli::try_parse_from(["stapes", "info", "n1:", "--target", "node2", "-q"]).unwrap();
        assert_eq!(cli.target.as_deref(), Some("node2"));
        assert!(cli.quiet);
        let cli = Cli::try_parse_from(["stapes", "config", "trust", "list", "-f", "csv"]).unwrap();
        assert!(matches!(cli.command, Command::Config(_)));
        let cli = Cli::try_parse_from(["stapes", "query", "-X", "DELETE", "--wait", "n1:/1.0/x"]).unwrap();
        match cli.command {
            Command::Query(q) => assert_eq!((q.method.as_str(), q.wait), ("DELETE", true)),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "stapes",
            "remote",
            "add",
            "n1",
            "127.0.0.1",
            "--accept-certificate",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Remote(remote::RemoteCmd::Add(ref a)) if a.accept_certificate)
        );
        let cli =
            Cli::try_parse_from(["stapes", "config", "set", "n1:", "core.https_address", ":8443"]).unwrap();
        assert!(
            matches!(cli.command, Command::Config(server::ConfigCmd::Set { ref args, .. }) if args.len() == 3)
        );
        let cli =
            Cli::try_parse_from(["stapes", "monitor", "--type", "lifecycle", "--type", "logging"]).unwrap();
        assert!(matches!(cli.command, Command::Monitor(ref m) if m.types.len() == 2));
        assert!(Cli::try_parse_from(["stapes", "config", "get"]).is_err());
        let cli =
            Cli::try_parse_from(["stapes", "cluster", "rm", "node2", "--force", "--yes", "-q"]).unwrap();
        assert!(cli.quiet);
        assert!(matches!(
            cli.command,
            Command::Cluster(cluster::ClusterCmd::Remove {
                force: true,
                yes: true,
                ..
            })
        ));
        let cli = Cli::try_parse_from(["stapes", "cluster", "enable", "n1:", "node1"]).unwrap();
        assert!(
            matches!(cli.command, Command::Cluster(cluster::ClusterCmd::Enable { ref args }) if args.len() == 2)
        );
        let cli = Cli::try_parse_from(["stapes", "cluster", "ls", "-f", "csv", "-c", "ns"]).unwrap();
        assert!(
            matches!(cli.command, Command::Cluster(cluster::ClusterCmd::List(ref l)) if l.format == "csv" && l.columns == "ns")
        );
        let cli = Cli::try_parse_from(["stapes", "cluster", "set", "node1", "description=x", "-p"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(cluster::ClusterCmd::Set { property: true, .. })
        ));
        let cli = Cli::try_parse_from(["stapes", "cluster", "update-cert", "c1:", "a.crt", "a.key"]).unwrap();
        assert!(
            matches!(cli.command, Command::Cluster(cluster::ClusterCmd::UpdateCertificate { ref args }) if args.len() == 3)
        );
        assert!(Cli::try_parse_from(["stapes", "cluster", "update-certificate", "a.crt"]).is_err());
        let cli = Cli::try_parse_from(["stapes", "remote", "accept-certificate", "c1", "-y"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Remote(remote::RemoteCmd::AcceptCertificate { yes: true, .. })
        ));
        assert!(Cli::try_parse_from(["stapes", "cluster", "enable"]).is_err());
        assert!(Cli::try_parse_from(["stapes", "cluster", "enable", "a", "b", "c"]).is_err());
    }
}
