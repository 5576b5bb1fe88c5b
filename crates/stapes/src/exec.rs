//! `stapes exec` and `stapes console`, as `incus` (6.0) runs them.
//!
//! ```text
//!  exec    interactive = (stdin and stdout are terminals) unless -t/-T/--mode/-n say otherwise
//!          raw terminal (interactive), POST .../exec {command, environment{TERM, --env},
//!          width, height (stdout's size), user, group, cwd}
//!          websockets control, 0(, 1, 2) mirrored (client::exec); SIGWINCH -> window-resize
//!          (interactive); TERM HUP INT QUIT ABRT TSTP TTIN TTOU USR1 USR2 CONT -> signal
//!          exit code = metadata.return ("Error: Command not found" and 127 on failure)
//!  console --show-log: GET .../console -> stdout
//!          else raw terminal, POST .../console {width, height, type, force} -> websockets
//!          control and 0; <ctrl>+a q detaches; SIGWINCH -> window-resize
//! ```

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use api::types::{
    InstanceConsoleControl, InstanceConsolePost, InstanceExecControl, InstanceExecPost, FD_CONTROL,
};
use clap::Args;
use client::exec::ExecIo;
use client::{Client, ClientError};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::ctx::{Ctx, Exit};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// [<remote>:]<instance>
    pub instance: String,
    /// The command and its arguments (after `--`)
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Environment variable to set (e.g. HOME=/home/foo)
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Override the terminal mode (auto, interactive or non-interactive)
    #[arg(long, default_value = "auto")]
    pub mode: String,
    /// Force pseudo-terminal allocation
    #[arg(short = 't', long)]
    pub force_interactive: bool,
    /// Disable pseudo-terminal allocation
    #[arg(short = 'T', long)]
    pub force_noninteractive: bool,
    /// Disable stdin (reads from /dev/null)
    #[arg(short = 'n', long)]
    pub disable_stdin: bool,
    /// User ID to run the command as (default 0)
    #[arg(long, default_value_t = 0)]
    pub user: u32,
    /// Group ID to run the command as (default 0)
    #[arg(long, default_value_t = 0)]
    pub group: u32,
    /// Directory to run the command in (default /root)
    #[arg(long, default_value = "")]
    pub cwd: String,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// [<remote>:]<instance>
    pub instance: String,
    /// Forces a connection to the console, even if there is already an active session
    #[arg(short, long)]
    pub force: bool,
    /// Retrieve the instance's console log
    #[arg(long)]
    pub show_log: bool,
    /// Type of connection to establish: 'console' for serial console, 'vga' for SPICE graphical output
    #[arg(short = 't', long = "type", default_value = "console")]
    pub kind: String,
}

/// Whether an exec is interactive (Incus's rules, pure).
pub fn interactive(args: &ExecArgs, stdin_tty: bool, stdout_tty: bool) -> Result<bool> {
    if args.force_interactive && args.force_noninteractive {
        bail!("You can't pass -t and -T at the same time");
    }
    if args.mode != "auto" && (args.force_interactive || args.force_noninteractive) {
        bail!("You can't pass -t or -T at the same time as --mode");
    }
    Ok(if args.disable_stdin {
        false
    } else if args.mode == "interactive" || args.force_interactive {
        true
    } else if args.mode == "non-interactive" || args.force_noninteractive {
        false
    } else {
        stdin_tty && stdout_tty
    })
}

/// The exec request (pure): `TERM` from the caller's environment, then `--env`.
pub fn exec_request(
    args: &ExecArgs,
    interactive: bool,
    term: Option<String>,
    size: (u16, u16),
) -> InstanceExecPost {
    let mut environment = BTreeMap::new();
    if let Some(t) = term {
        environment.insert("TERM".to_string(), t);
    }
    for e in &args.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        environment.insert(k.to_string(), v.to_string());
    }
    InstanceExecPost {
        command: args.command.clone(),
        wait_for_websocket: true,
        interactive,
        environment,
        width: u32::from(size.0),
        height: u32::from(size.1),
        record_output: false,
        user: args.user,
        group: args.group,
        cwd: args.cwd.clone(),
    }
}

/// The terminal in raw mode until dropped (then restored as it was).
struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    fn new() -> Result<RawTerminal> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin)
            .map_err(|e| anyhow!("Failed to read the terminal's mode: {e}"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)
            .map_err(|e| anyhow!("Failed to set the terminal to raw mode: {e}"))?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// The size of the terminal on `fd` (columns, rows), or (0, 0).
fn terminal_size(fd: impl std::os::fd::AsFd) -> (u16, u16) {
    rustix::termios::tcgetwinsize(fd)
        .map(|w| (w.ws_col, w.ws_row))
        .unwrap_or((0, 0))
}

/// The signals forwarded to the command (Incus's list, less those tokio may not catch).
const FORWARDED: &[i32] = &[
    libc_sig::SIGTERM,
    libc_sig::SIGHUP,
    libc_sig::SIGINT,
    libc_sig::SIGQUIT,
    libc_sig::SIGABRT,
    libc_sig::SIGTSTP,
    libc_sig::SIGTTIN,
    libc_sig::SIGTTOU,
    libc_sig::SIGUSR1,
    libc_sig::SIGUSR2,
    libc_sig::SIGCONT,
];

/// Signal numbers (Linux).
mod libc_sig {
    pub const SIGHUP: i32 = 1;
    pub const SIGINT: i32 = 2;
    pub const SIGQUIT: i32 = 3;
    pub const SIGABRT: i32 = 6;
    pub const SIGUSR1: i32 = 10;
    pub const SIGUSR2: i32 = 12;
    pub const SIGTERM: i32 = 15;
    pub const SIGCONT: i32 = 18;
    pub const SIGTSTP: i32 = 20;
    pub const SIGTTIN: i32 = 21;
    pub const SIGTTOU: i32 = 22;
    pub const SIGWINCH: i32 = 28;
}

/// Forwards signals and window resizes to the control channel until it closes.
fn spawn_signal_forwarder(interactive: bool, tx: mpsc::Sender<InstanceExecControl>) {
    for &sig in FORWARDED {
        let Ok(mut stream) = signal(SignalKind::from_raw(sig)) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                // HUP without a controlling terminal is TERM, as Incus does.
                let n = if sig == libc_sig::SIGHUP && std::fs::File::open("/dev/tty").is_err() {
                    libc_sig::SIGTERM
                } else {
                    sig
                };
                if tx.send(InstanceExecControl::signal(n)).await.is_err() {
                    break;
                }
            }
        });
    }
    if interactive {
        if let Ok(mut winch) = signal(SignalKind::from_raw(libc_sig::SIGWINCH)) {
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    let (w, h) = terminal_size(std::io::stdout());
                    if tx.send(InstanceExecControl::window_resize(w, h)).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
}

pub async fn exec(ctx: &Ctx, args: ExecArgs) -> Result<()> {
    use std::io::IsTerminal;
    let stdin_tty = std::io::stdin().is_terminal();
    let stdout_tty = std::io::stdout().is_terminal();
    let interactive = interactive(&args, stdin_tty, stdout_tty)?;
    let (remote, name) = ctx.parse_remote(&args.instance)?;
    if ctx.globals.target.is_some() {
        bail!("--target cannot be used with instances");
    }
    let client = ctx.client(&remote)?;
    let size = if stdout_tty {
        terminal_size(std::io::stdout())
    } else {
        (0, 0)
    };
    let req = exec_request(&args, interactive, std::env::var("TERM").ok(), size);
    let _raw = if interactive && stdin_tty {
        Some(RawTerminal::new()?)
    } else {
        None
    };
    let (tx, rx) = mpsc::channel(16);
    spawn_signal_forwarder(interactive, tx);
    let stdin: Box<dyn tokio::io::AsyncRead + Send + Unpin> = if args.disable_stdin {
        Box::new(tokio::io::empty())
    } else {
        Box::new(tokio::io::stdin())
    };
    let io = ExecIo {
        stdin,
        stdout: Box::new(tokio::io::stdout()),
        stderr: Box::new(tokio::io::stderr()),
        control: Some(rx),
    };
    match client.exec(&name, &req, io).await {
        Ok(op) => match op.exit_code().unwrap_or(0) {
            0 => Ok(()),
            code => Err(Exit {
                code: i32::try_from(code).unwrap_or(1),
                message: None,
            }
            .into()),
        },
        Err(ClientError::OperationFailed { message, operation }) => Err(Exit {
            code: operation
                .exit_code()
                .and_then(|c| i32::try_from(c).ok())
                .filter(|c| *c != 0)
                .unwrap_or(1),
            message: Some(message),
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// `<ctrl>+a q` in the input: whether the user asked to detach (pure; `armed` carries a
/// pending ctrl+a across reads).
pub fn detach_requested(data: &[u8], armed: &mut bool) -> bool {
    for &b in data {
        if *armed && b == b'q' {
            return true;
        }
        *armed = b == 0x01;
    }
    false
}

pub async fn console(ctx: &Ctx, args: ConsoleArgs) -> Result<()> {
    if args.kind != "console" && args.kind != "vga" {
        bail!("Unknown output type {:?}", args.kind);
    }
    let (remote, name) = ctx.parse_remote(&args.instance)?;
    let client = ctx.client(&remote)?;
    if args.show_log {
        if args.kind != "console" {
            bail!("The --show-log flag is only supported for by 'console' output type");
        }
        let mut out = tokio::io::stdout();
        client.console_log(&name, &mut out).await?;
        out.write_all(b"\n").await?;
        out.flush().await?;
        return Ok(());
    }
    console_attach(ctx, &client, &name, &args.kind, args.force).await
}

/// Attaches the terminal to an instance's console until `<ctrl>+a q` or the end.
pub async fn console_attach(_ctx: &Ctx, client: &Client, name: &str, kind: &str, force: bool) -> Result<()> {
    if kind != "console" {
        bail!("The vga console isn't supported by stapes");
    }
    let _raw = RawTerminal::new()?;
    let (w, h) = terminal_size(std::io::stdin());
    let post = InstanceConsolePost {
        width: u32::from(w),
        height: u32::from(h),
        kind: "console".into(),
        force,
    };
    let op = client.console_instance(name, &post).await?;
    let fds = op.fds();
    let control_secret = fds
        .get(FD_CONTROL)
        .ok_or_else(|| anyhow!("The console operation has no control websocket"))?;
    let data_secret = fds
        .get("0")
        .ok_or_else(|| anyhow!("The console operation has no data websocket"))?;
    let control = client.operation_websocket(&op, control_secret).await?;
    let data = client.operation_websocket(&op, data_secret).await?;
    print!("To detach from the console, press: <ctrl>+a q\n\r");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let (mut ctl_sink, mut ctl_stream) = control.split();
    let (mut data_sink, mut data_stream) = data.split();
    let mut winch = signal(SignalKind::from_raw(libc_sig::SIGWINCH)).ok();
    let (input_tx, mut input_rx) = mpsc::channel::<Vec<u8>>(16);
    let reader = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 4096];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if input_tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut armed = false;
    loop {
        tokio::select! {
            input = input_rx.recv() => {
                let Some(bytes) = input else { break };
                if detach_requested(&bytes, &mut armed) {
                    break;
                }
                if data_sink.send(Message::binary(bytes)).await.is_err() {
                    break;
                }
            }
            msg = data_stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    stdout.write_all(&b).await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::Text(t))) if !t.is_empty() => {
                    stdout.write_all(t.as_bytes()).await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                _ => break,
            },
            _ = ctl_stream.next() => {}
            Some(()) = async {
                match winch.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let (w, h) = terminal_size(std::io::stdin());
                let msg = InstanceConsoleControl {
                    command: "window-resize".into(),
                    args: Some(BTreeMap::from([
                        ("width".to_string(), w.to_string()),
                        ("height".to_string(), h.to_string()),
                    ])),
                };
                let text = serde_json::to_string(&msg).unwrap_or_default();
                let _ = ctl_sink.send(Message::text(text)).await;
            }
        }
    }
    reader.abort();
    let _ = data_sink.send(Message::Close(None)).await;
    let _ = ctl_sink.send(Message::Close(None)).await;
    print!("\r\n");
    let _ = std::io::stdout().flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ExecArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: ExecArgs,
        }
        let mut argv = vec!["exec"];
        argv.extend_from_slice(extra);
        <P as clap::Parser>::parse_from(argv).a
    }

    #[test]
    fn t10_exec_arguments_and_request_as_incus_builds_them() {
        let a = args(&[
            "c1",
            "--env",
            "FOO=bar",
            "--cwd",
            "/tmp",
            "--user",
            "0",
            "--",
            "sh",
            "-c",
            "echo $FOO",
        ]);
        assert_eq!(a.command, ["sh", "-c", "echo $FOO"]);
        let req = exec_request(&a, false, Some("xterm".into()), (0, 0));
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"command":["sh","-c","echo $FOO"],"wait-for-websocket":true,"interactive":false,"environment":{"FOO":"bar","TERM":"xterm"},"width":0,"height":0,"record-output":false,"user":0,"group":0,"cwd":"/tmp"}"#
        );
        // Options after the instance name and before the command, and the command's own.
        let a = args(&["c1", "-t", "ls", "-la"]);
        assert!(a.force_interactive);
        assert_eq!(a.command, ["ls", "-la"]);
    }

    #[test]
    fn t10_interactive_mode_as_incus_decides_it() {
        assert!(interactive(&args(&["c1", "sh"]), true, true).unwrap());
        assert!(!interactive(&args(&["c1", "sh"]), true, false).unwrap());
        assert!(interactive(&args(&["c1", "-t", "sh"]), false, false).unwrap());
        assert!(!interactive(&args(&["c1", "-T", "sh"]), true, true).unwrap());
        assert!(!interactive(&args(&["c1", "-n", "-t", "sh"]), true, true).unwrap());
        assert!(interactive(&args(&["c1", "--mode", "interactive", "sh"]), false, false).unwrap());
        assert_eq!(
            interactive(&args(&["c1", "-t", "-T", "sh"]), true, true)
                .unwrap_err()
                .to_string(),
            "You can't pass -t and -T at the same time"
        );
        assert_eq!(
            interactive(&args(&["c1", "-t", "--mode", "interactive", "sh"]), true, true)
                .unwrap_err()
                .to_string(),
            "You can't pass -t or -T at the same time as --mode"
        );
    }

    #[test]
    fn t10_console_detach_keys() {
        let mut armed = false;
        assert!(!detach_requested(b"hello", &mut armed));
        assert!(detach_requested(b"\x01q", &mut armed));
        let mut armed = false;
        assert!(!detach_requested(b"\x01", &mut armed));
        assert!(detach_requested(b"q", &mut armed));
        let mut armed = false;
        assert!(!detach_requested(b"\x01x q", &mut armed));
    }
}
