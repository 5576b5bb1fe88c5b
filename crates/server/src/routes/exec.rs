//! `POST /1.0/instances/{name}/exec`: a command in a container, its streams on the
//! operation's websockets, on the member that holds the instance (the route table sends
//! the request there; `/1.0/operations/{id}/websocket` reaches it through any member).
//!
//! ```text
//!  POST exec ─> 202 websocket operation, metadata.fds: 0 1 2 control (0 control: -t)
//!     run: wait for the required fds (0 1 2, or 0 control) ── 5 s ──> Failure
//!          "Timed out waiting for websockets to connect"
//!       ─> driver.exec ─> ws 0 ─binary─> stdin   (empty text or close: end of file)
//!                         stdout ─binary─> ws 1, then an empty text (EOF), same for 2
//!                         control: window-resize, signal; closed while running: SIGKILL
//!       ─> exit ─> metadata.return ─> Success (127: "Command not found", 126: "Command
//!          not executable", as Failures), every socket closed
//! ```
//!
//! Who may connect is the operations engine's to decide (the secret, compared in
//! constant time, and the same requestor as the exec's creator); a session here only
//! receives the sockets it hands over ([`Sockets`]). A session never outlives its
//! command by more than an idle second of output: a background job that keeps the
//! command's output open (`sleep 60 &`) does not keep the client waiting.
//!
//! The command runs under the container, not under the daemon: a daemon that stops or
//! dies ends the session but kills nothing in the container. Only a client that goes
//! away (its control socket closed while the command runs) gets the command killed, as
//! in Incus.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::types::{InstanceExecControl, InstanceExecPost};
use api::ApiError;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use trust::Identity;

use crate::context::Ctx;
use crate::ops::{Class, Connect, Progress, Requestor, Spec};
use crate::response::Result;

/// How long the required websockets may take to connect (as Incus).
pub const CONNECT_BOUND: Duration = Duration::from_secs(5);
/// How long output may stay silent after the command exited before the session ends.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// The most bytes read from a stream for one websocket message.
const CHUNK: usize = 32 * 1024;
/// Incus's default `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The websockets of one session, as the engine hands them over.
pub(crate) struct Sockets {
    slots: Mutex<HashMap<String, WebSocket>>,
    arrived: watch::Sender<u64>,
    control: std::sync::atomic::AtomicBool,
}

impl Sockets {
    pub(crate) fn new() -> Arc<Sockets> {
        Arc::new(Sockets {
            slots: Mutex::new(HashMap::new()),
            arrived: watch::channel(0).0,
            control: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// What the operation calls with each connected socket.
    pub(crate) fn connect(self: &Arc<Self>) -> Connect {
        let me = self.clone();
        Arc::new(move |fd, socket| {
            let me = me.clone();
            Box::pin(async move { me.put(fd, socket) })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WebSocket>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, fd: String, socket: WebSocket) {
        if fd == "control" {
            self.control.store(true, Ordering::Relaxed);
        }
        self.lock().insert(fd, socket);
        self.arrived.send_modify(|n| *n += 1);
    }

    /// Whether a control socket ever connected.
    pub(crate) fn control_seen(&self) -> bool {
        self.control.load(Ordering::Relaxed)
    }

    fn has(&self, fd: &str) -> bool {
        self.lock().contains_key(fd)
    }

    /// Waits until every fd of `fds` is connected, at most `bound`.
    pub(crate) async fn wait_for(&self, fds: &[&str], bound: Duration) -> bool {
        let mut rx = self.arrived.subscribe();
        let all = async {
            loop {
                if fds.iter().all(|fd| self.has(fd)) {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(bound, all).await.is_ok()
    }

    pub(crate) fn take(&self, fd: &str) -> Option<WebSocket> {
        self.lock().remove(fd)
    }

    /// The socket `fd` once it connects (it may come after the session started).
    pub(crate) async fn take_when(&self, fd: &str) -> WebSocket {
        let mut rx = self.arrived.subscribe();
        loop {
            if let Some(s) = self.take(fd) {
                return s;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Closes whatever is still held (connected but never used).
    pub(crate) async fn close_all(&self) {
        let held: Vec<WebSocket> = self.lock().drain().map(|(_, s)| s).collect();
        for s in held {
            close(s).await;
        }
    }
}

/// Ends a websocket with a normal close frame.
pub(crate) async fn close(mut socket: WebSocket) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}

/// The environment as Incus completes it: the instance's `environment.*` keys where the
/// request has none, then `PATH`, `HOME` and `USER` (for uid 0) and `LANG`.
pub(crate) fn environment(
    asked: &BTreeMap<String, String>,
    expanded_config: &BTreeMap<String, String>,
    uid: u32,
) -> BTreeMap<String, String> {
    let mut env = asked.clone();
    for (k, v) in expanded_config {
        if let Some(key) = k.strip_prefix("environment.") {
            env.entry(key.to_string()).or_insert_with(|| v.clone());
        }
    }
    env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
    if uid == 0 {
        env.entry("HOME".into()).or_insert_with(|| "/root".into());
        env.entry("USER".into()).or_insert_with(|| "root".into());
    }
    env.entry("LANG".into()).or_insert_with(|| "C.UTF-8".into());
    env
}

/// The websockets a session cannot start without: stdin, stdout and stderr (control is
/// optional there, for old clients, as in Incus), or the terminal and control.
pub(crate) fn required(interactive: bool) -> &'static [&'static str] {
    if interactive {
        &["0", "control"]
    } else {
        &["0", "1", "2"]
    }
}

/// What an exit code makes of the operation: 127 and 126 fail it, as Incus does.
pub(crate) fn outcome(code: i32) -> std::result::Result<(), String> {
    match code {
        127 => Err("Command not found".into()),
        126 => Err("Command not executable".into()),
        _ => Ok(()),
    }
}

/// A control message's effect.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ControlAction {
    Resize(instance::WindowSize),
    Signal(i32),
    Ignore,
}

/// Reads a control message (JSON text) as Incus does: a resize only when interactive
/// (sizes as decimal strings), a signal always; anything else is ignored.
pub(crate) fn control_action(text: &str, interactive: bool) -> ControlAction {
    let Ok(msg) = serde_json::from_str::<InstanceExecControl>(text) else {
        return ControlAction::Ignore;
    };
    match msg.command.as_str() {
        InstanceExecControl::WINDOW_RESIZE if interactive => {
            let args = msg.args.unwrap_or_default();
            let dim = |k: &str| args.get(k).and_then(|v| v.trim().parse::<u16>().ok());
            match (dim("width"), dim("height")) {
                (Some(cols), Some(rows)) => ControlAction::Resize(instance::WindowSize { cols, rows }),
                _ => ControlAction::Ignore,
            }
        }
        InstanceExecControl::SIGNAL if msg.signal > 0 && msg.signal < 65 => ControlAction::Signal(msg.signal),
        _ => ControlAction::Ignore,
    }
}

fn bad(message: impl Into<String>) -> crate::response::Error {
    ApiError::bad_request(message.into()).into()
}

/// The instance record, if this member holds it.
pub(crate) fn record(ctx: &Ctx, name: &str) -> Result<(Arc<cluster::State>, cluster::InstanceRecord)> {
    let state = ctx.store.state();
    let rec = state
        .instances
        .get(name)
        .cloned()
        .ok_or_else(|| crate::response::Error::from(ApiError::not_found_msg("Instance not found")))?;
    Ok((state, rec))
}

/// Refuses an instance that is not running, in Incus's words.
pub(crate) async fn check_running(ctx: &Ctx, name: &str) -> Result<()> {
    // The status alone: the usage figures of a full state are of no use here.
    let status = tokio::time::timeout(Duration::from_secs(5), ctx.driver.status(name))
        .await
        .map_err(|_| crate::response::Error::from(ApiError::internal("The instance runtime did not answer")))?
        .map_err(|e| crate::response::Error::from(ApiError::internal(e.to_string())))?;
    match status {
        instance::Status::Frozen | instance::Status::Freezing => Err(bad("Instance is frozen")),
        instance::Status::Running | instance::Status::Thawed => Ok(()),
        _ => Err(bad("Instance is not running")),
    }
}

pub(crate) fn resources(name: &str) -> BTreeMap<String, Option<Vec<String>>> {
    BTreeMap::from([(
        "instances".to_string(),
        Some(vec![format!("/1.0/instances/{name}")]),
    )])
}

/// `POST /1.0/instances/{name}/exec`.
pub async fn exec(
    State(ctx): State<Ctx>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let (state, rec) = record(&ctx, &name)?;
    let post: InstanceExecPost = crate::response::json_body(body).await?;
    if post.command.is_empty() {
        return Err(bad("Command is required"));
    }
    if post.record_output && post.wait_for_websocket {
        return Err(bad(
            "Cannot use \"record-output\" in combination with \"wait-for-websocket\"",
        ));
    }
    if post.record_output && post.interactive {
        return Err(bad(
            "Cannot use \"interactive\" in combination with \"record-output\"",
        ));
    }
    if post.environment.keys().any(|k| k.is_empty() || k.contains('=')) {
        return Err(bad("Environment variable names cannot be empty or contain '='"));
    }
    check_running(&ctx, &name).await?;
    let env = environment(&post.environment, &rec.expanded_config(&state), post.user);
    let size = instance::WindowSize {
        cols: u16::try_from(post.width).unwrap_or(u16::MAX),
        rows: u16::try_from(post.height).unwrap_or(u16::MAX),
    };
    let spec = instance::ExecSpec {
        command: post.command.clone(),
        env: env.clone(),
        cwd: (!post.cwd.is_empty()).then(|| post.cwd.clone()),
        uid: post.user,
        gid: post.group,
        tty: post.interactive.then_some(size),
    };
    let mut op = Spec::task("Executing command");
    op.resources = Some(resources(&name));
    if !post.wait_for_websocket {
        let record = post.record_output;
        let run_ctx = ctx.clone();
        return Ok(crate::operations::start(&ctx, op, move |progress| async move {
            run_detached(run_ctx, name, spec, record, progress).await
        }));
    }
    let interactive = post.interactive;
    op.class = Class::Websocket;
    op.metadata = Some(BTreeMap::from([
        ("command".to_string(), json!(post.command)),
        ("environment".to_string(), json!(env)),
        ("interactive".to_string(), json!(interactive)),
    ]));
    op.websockets = if interactive {
        vec!["0".into(), "control".into()]
    } else {
        vec!["0".into(), "1".into(), "2".into(), "control".into()]
    };
    let sockets = Sockets::new();
    op.connect = Some(sockets.connect());
    op.requestor = Some(Requestor::of(&id));
    let run_ctx = ctx.clone();
    Ok(crate::operations::start(&ctx, op, move |progress| async move {
        let result = session(&run_ctx, &name, spec, interactive, &sockets, &progress).await;
        sockets.close_all().await;
        result
    }))
}

/// An exec without websockets: no stdin, the output dropped or kept in the instance's
/// `exec-output` logs.
async fn run_detached(
    ctx: Ctx,
    name: String,
    spec: instance::ExecSpec,
    record: bool,
    progress: Progress,
) -> std::result::Result<(), String> {
    let files = if record {
        let (out, err, urls) = super::exec_output::create(&ctx, &name, progress.id())
            .await
            .map_err(|e| format!("Failed to prepare the output files: {e}"))?;
        progress.extend_metadata(BTreeMap::from([("output".to_string(), json!(urls))]));
        Some((out, err))
    } else {
        None
    };
    let process = ctx.driver.exec(&name, spec).await.map_err(|e| e.to_string())?;
    let instance::Process {
        stdin,
        stdout,
        stderr,
        exit,
        ..
    } = process;
    drop(stdin);
    let (out_file, err_file) = match files {
        Some((o, e)) => (Some(o), Some(e)),
        None => (None, None),
    };
    let moved = Arc::new(AtomicU64::new(0));
    let pumps = async {
        futures_util::future::join(to_file(stdout, out_file, moved.clone()), async {
            if let Some(r) = stderr {
                to_file(r, err_file, moved.clone()).await;
            }
        })
        .await;
    };
    let code = run_to_end(exit, pumps, &moved).await?;
    progress.extend_metadata(BTreeMap::from([("return".to_string(), json!(code))]));
    outcome(code)
}

/// Copies `reader` into `file` (or nowhere) until its end.
async fn to_file(mut reader: instance::Reader, mut file: Option<tokio::fs::File>, moved: Arc<AtomicU64>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        moved.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = &mut file {
            if f.write_all(&buf[..n]).await.is_err() {
                file = None;
            }
        }
    }
    if let Some(f) = &mut file {
        let _ = f.flush().await;
    }
}

/// Waits for the command's exit, then for its output to be relayed: until `pumps` end
/// or nothing moved for [`DRAIN_IDLE`]. The pumps run all along.
async fn run_to_end<F: std::future::Future<Output = ()>>(
    mut exit: instance::BoxFuture<'static, instance::Result<i32>>,
    pumps: F,
    moved: &AtomicU64,
) -> std::result::Result<i32, String> {
    tokio::pin!(pumps);
    let mut pumps_done = false;
    let code = loop {
        tokio::select! {
            code = &mut exit => break code,
            _ = &mut pumps, if !pumps_done => pumps_done = true,
        }
    };
    let code = code.map_err(|e| e.to_string())?;
    let mut seen = moved.load(Ordering::Relaxed);
    while !pumps_done {
        tokio::select! {
            _ = &mut pumps => pumps_done = true,
            _ = tokio::time::sleep(DRAIN_IDLE) => {
                let now = moved.load(Ordering::Relaxed);
                if now == seen {
                    break;
                }
                seen = now;
            }
        }
    }
    Ok(code)
}

type Sink = SplitSink<WebSocket, Message>;
type Source = SplitStream<WebSocket>;

/// Whether the member is stopping: then a closed socket is the daemon's doing, not the
/// client's, and kills nothing.
fn stopping(ctx: &Ctx) -> bool {
    *ctx.closing.borrow()
}

/// A websocket session: the required sockets, the command, its streams and control.
async fn session(
    ctx: &Ctx,
    name: &str,
    spec: instance::ExecSpec,
    interactive: bool,
    sockets: &Arc<Sockets>,
    progress: &Progress,
) -> std::result::Result<(), String> {
    if !sockets.wait_for(required(interactive), CONNECT_BOUND).await {
        return Err("Timed out waiting for websockets to connect".into());
    }
    let process = ctx.driver.exec(name, spec).await.map_err(|e| e.to_string())?;
    let code = attach(ctx, process, interactive, sockets).await?;
    progress.extend_metadata(BTreeMap::from([("return".to_string(), json!(code))]));
    outcome(code)
}

/// Joins a running process to the session's sockets until it ends; its exit code.
/// Shared with the console, whose "process" is the attachment.
pub(crate) async fn attach(
    ctx: &Ctx,
    process: instance::Process,
    interactive: bool,
    sockets: &Arc<Sockets>,
) -> std::result::Result<i32, String> {
    let instance::Process {
        stdin,
        stdout,
        stderr,
        control,
        exit,
    } = process;
    let (ended_tx, ended) = watch::channel(false);
    let moved = Arc::new(AtomicU64::new(0));
    let control_task = tokio::spawn(control_loop(
        ctx.clone(),
        sockets.clone(),
        control.clone(),
        interactive,
        ended.clone(),
    ));
    let mut outputs = tokio::task::JoinSet::new();
    let mut readers = Vec::new();
    let mut quiet: Vec<Sink> = Vec::new();
    let take = |fd: &str| sockets.take(fd).map(StreamExt::split);
    if interactive {
        if let Some((sink, source)) = take("0") {
            outputs.spawn(output(stdout, sink, moved.clone(), ended.clone()));
            readers.push(tokio::spawn(input(source, stdin, false)));
        }
    } else {
        if let Some((sink, source)) = take("0") {
            readers.push(tokio::spawn(input(source, stdin, true)));
            quiet.push(sink);
        }
        if let Some((sink, source)) = take("1") {
            outputs.spawn(output(stdout, sink, moved.clone(), ended.clone()));
            // Nothing comes from the client on stdout: its end means the client is gone,
            // which kills the command unless a control socket is there to say so.
            let (ctx, sockets, control, ended) =
                (ctx.clone(), sockets.clone(), control.clone(), ended.clone());
            readers.push(tokio::spawn(async move {
                watch_gone(source).await;
                if !*ended.borrow() && !sockets.control_seen() && !stopping(&ctx) {
                    tracing::info!("an exec client went away: killing its command");
                    let _ = control.signal(9);
                }
            }));
        }
        if let (Some((sink, source)), Some(stderr)) = (take("2"), stderr) {
            outputs.spawn(output(stderr, sink, moved.clone(), ended.clone()));
            readers.push(tokio::spawn(watch_gone(source)));
        }
    }
    let result = run_to_end(
        exit,
        async { while outputs.join_next().await.is_some() {} },
        &moved,
    )
    .await;
    ended_tx.send_replace(true);
    // Each output ends with its end-of-file message; a client that stopped reading does
    // not hold the operation.
    let _ = tokio::time::timeout(CONNECT_BOUND, async {
        while outputs.join_next().await.is_some() {}
    })
    .await;
    outputs.abort_all();
    for r in readers {
        r.abort();
    }
    for mut sink in quiet {
        let _ = sink.send(close_frame()).await;
    }
    if let Ok(Some(socket)) = control_task.await {
        close(socket).await;
    }
    result
}

fn close_frame() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

/// A stream of the command to a websocket, as binary messages, then the empty text
/// message that says end of file, then a close. Stops reading once `ended` (the command
/// exited and its output went quiet).
async fn output(
    mut reader: instance::Reader,
    mut sink: Sink,
    moved: Arc<AtomicU64>,
    mut ended: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            r = reader.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = ended.wait_for(|e| *e) => break,
        };
        moved.fetch_add(1, Ordering::Relaxed);
        if sink
            .send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n])))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = sink.send(Message::Text("".into())).await;
    let _ = sink.send(close_frame()).await;
}

/// The client's input to the command: binary (and non-empty text) messages are written
/// to stdin; the empty text message or a close is end of file, which closes stdin when
/// `eof_closes` (a terminal stays open: it is the output too).
async fn input(mut source: Source, mut stdin: instance::Writer, eof_closes: bool) {
    while let Some(Ok(msg)) = source.next().await {
        let data = match msg {
            Message::Binary(b) => b,
            Message::Text(t) if t.is_empty() => break,
            Message::Text(t) => bytes::Bytes::copy_from_slice(t.as_bytes()),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if stdin.write_all(&data).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
    if eof_closes {
        let _ = stdin.shutdown().await;
        drop(stdin);
    } else {
        // Keep the terminal's writer until the session ends.
        std::future::pending::<()>().await;
    }
}

/// Reads a socket the client sends nothing on (answering pings) until it closes.
async fn watch_gone(mut source: Source) {
    while let Some(Ok(msg)) = source.next().await {
        if matches!(msg, Message::Close(_)) {
            break;
        }
    }
}

/// The control socket, whenever it connects: resizes and signals for the command; the
/// socket closing while the command runs kills it (unless the member is stopping).
/// Returns the socket once the command ended, for the session to close.
async fn control_loop(
    ctx: Ctx,
    sockets: Arc<Sockets>,
    control: Arc<dyn instance::Control>,
    interactive: bool,
    mut ended: watch::Receiver<bool>,
) -> Option<WebSocket> {
    let mut socket = tokio::select! {
        s = sockets.take_when("control") => s,
        _ = ended.wait_for(|e| *e) => return None,
    };
    loop {
        let msg = tokio::select! {
            m = socket.recv() => m,
            _ = ended.wait_for(|e| *e) => return Some(socket),
        };
        match msg {
            Some(Ok(Message::Text(text))) => match control_action(&text, interactive) {
                ControlAction::Resize(size) => {
                    if let Err(e) = control.resize(size) {
                        tracing::debug!(error = %e, "window resize failed");
                    }
                }
                ControlAction::Signal(sig) => {
                    if let Err(e) = control.signal(sig) {
                        tracing::debug!(error = %e, signal = sig, "signal not delivered");
                    }
                }
                ControlAction::Ignore => {}
            },
            Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => {}
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                if !*ended.borrow() && !stopping(&ctx) {
                    tracing::info!(
                        "an exec control socket closed while its command ran: killing the command"
                    );
                    let _ = control.signal(9);
                }
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_completed_as_incus_does() {
        let asked = BTreeMap::from([("TERM".to_string(), "xterm".to_string())]);
        let config = BTreeMap::from([
            ("environment.FOO".to_string(), "bar".to_string()),
            ("environment.TERM".to_string(), "vt100".to_string()),
            ("limits.cpu".to_string(), "1".to_string()),
        ]);
        let env = environment(&asked, &config, 0);
        assert_eq!(env["TERM"], "xterm", "the request wins");
        assert_eq!(env["FOO"], "bar");
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert_eq!((env["HOME"].as_str(), env["USER"].as_str()), ("/root", "root"));
        assert_eq!(env["LANG"], "C.UTF-8");
        assert_eq!(env.len(), 6);
        let user = environment(&BTreeMap::new(), &BTreeMap::new(), 1000);
        assert!(!user.contains_key("HOME") && !user.contains_key("USER"));
    }

    #[test]
    fn control_messages() {
        let resize = r#"{"command":"window-resize","args":{"width":"120","height":"40"},"signal":0}"#;
        assert_eq!(
            control_action(resize, true),
            ControlAction::Resize(instance::WindowSize { cols: 120, rows: 40 })
        );
        assert_eq!(control_action(resize, false), ControlAction::Ignore);
        assert_eq!(
            control_action(r#"{"command":"signal","args":null,"signal":15}"#, false),
            ControlAction::Signal(15)
        );
        for junk in [
            "",
            "nope",
            r#"{"command":"signal","signal":0}"#,
            r#"{"command":"signal","signal":-9}"#,
            r#"{"command":"signal","signal":4096}"#,
            r#"{"command":"window-resize","args":{"width":"x","height":"40"}}"#,
            r#"{"command":"window-resize","args":{"width":"99999999","height":"40"}}"#,
            r#"{"command":"reboot"}"#,
        ] {
            assert_eq!(control_action(junk, true), ControlAction::Ignore, "{junk}");
        }
    }

    #[test]
    fn exit_codes_as_incus() {
        assert_eq!(outcome(0), Ok(()));
        assert_eq!(outcome(7), Ok(()));
        assert_eq!(outcome(130), Ok(()));
        assert_eq!(outcome(127), Err("Command not found".into()));
        assert_eq!(outcome(126), Err("Command not executable".into()));
        assert_eq!(required(true), ["0", "control"]);
        assert_eq!(required(false), ["0", "1", "2"]);
    }
}
