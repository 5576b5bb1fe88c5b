//! `incus exec` as the Go client does it: one websocket operation, its websockets
//! connected in the order control, 0, 1, 2, and the streams mirrored until the command
//! ends.
//!
//! ```text
//!  POST /1.0/instances/N/exec {wait-for-websocket: true, ...}  -> operation, metadata.fds
//!  connect control ─ JSON text: window-resize {width,height as strings} | signal N
//!  connect 0 ─ stdin -> binary messages; at EOF an empty text message (the barrier)
//!              interactive: also the terminal's output (binary) back
//!  connect 1, 2 ─ binary messages -> stdout, stderr; an empty text message or a close = EOF
//!  outputs done (or the operation ended, then at most DRAIN for the rest)
//!  -> the operation: Success with metadata.return, or Failure (127 "Command not found")
//! ```
//!
//! Every websocket is read all along, so the server's pings are answered. The control
//! socket is closed with a normal close frame at the end, as the Go client does.

use std::time::Duration;

use api::types::{InstanceExecControl, InstanceExecPost, Operation, FD_CONTROL};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;
use crate::events::WebSocket;
use crate::instances::instance_path;
use crate::ClientError;

/// How long outputs may still drain once the operation has ended.
pub const DRAIN: Duration = Duration::from_secs(10);

/// The size of the chunks stdin is sent in.
const STDIN_CHUNK: usize = 32 * 1024;

/// The streams of an exec. `control` carries window resizes and signals to forward.
pub struct ExecIo {
    pub stdin: Box<dyn AsyncRead + Send + Unpin>,
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
    pub control: Option<mpsc::Receiver<InstanceExecControl>>,
}

impl std::fmt::Debug for ExecIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecIo").finish_non_exhaustive()
    }
}

/// The text of a control message as the Go client writes it (JSON and a newline).
pub fn control_text(msg: &InstanceExecControl) -> String {
    let mut text = serde_json::to_string(msg).unwrap_or_default();
    text.push('\n');
    text
}

/// The sending half of a websocket, shared by the stdin mirror and the session's end.
type SharedSink<S> = std::sync::Arc<tokio::sync::Mutex<S>>;

/// Mirrors `input` to the websocket's sink: binary messages, then the EOF barrier.
async fn send_input<S>(
    mut input: Box<dyn AsyncRead + Send + Unpin>,
    sink: &SharedSink<S>,
) -> Result<(), ClientError>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let n = input
            .read(&mut buf)
            .await
            .map_err(|e| ClientError::io("Failed to read stdin", e))?;
        if n == 0 {
            sink.lock().await.send(Message::text("")).await?;
            return Ok(());
        }
        sink.lock().await.send(Message::binary(buf[..n].to_vec())).await?;
    }
}

/// Ends fd 0 from this side: the EOF barrier, then a normal close.
async fn close_input<S>(sink: &SharedSink<S>)
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let mut sink = sink.lock().await;
    let _ = sink.send(Message::text("")).await;
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}

/// Mirrors a websocket's messages to `output` until the barrier, a close or an error.
async fn receive_output<S>(
    stream: &mut S,
    output: &mut (dyn AsyncWrite + Send + Unpin),
) -> Result<(), ClientError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(msg) = stream.next().await {
        let data = match msg {
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Text(t)) if t.is_empty() => break,
            Ok(Message::Text(t)) => t.as_bytes().to_vec(),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                let _ = output.flush().await;
                return Err(e.into());
            }
        };
        output
            .write_all(&data)
            .await
            .map_err(|e| ClientError::io("Failed to write the output", e))?;
        output
            .flush()
            .await
            .map_err(|e| ClientError::io("Failed to write the output", e))?;
    }
    output
        .flush()
        .await
        .map_err(|e| ClientError::io("Failed to write the output", e))
}

/// Drives the control websocket: forwards `rx`, answers pings, ends with a close frame.
async fn drive_control(
    ws: WebSocket,
    mut rx: mpsc::Receiver<InstanceExecControl>,
    mut stop: mpsc::Receiver<()>,
) {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => {
                    if sink.send(Message::text(control_text(&m))).await.is_err() {
                        break;
                    }
                }
                None => {
                    // No more messages to forward: keep answering pings until told to stop.
                    let _ = stop.recv().await;
                    break;
                }
            },
            incoming = stream.next() => {
                if !matches!(incoming, Some(Ok(_))) {
                    break;
                }
            }
            _ = stop.recv() => break,
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}

/// Reads a websocket to its end, so its pings are answered (a write-only socket).
async fn drain(
    mut stream: impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
) {
    while let Some(Ok(msg)) = stream.next().await {
        if matches!(msg, Message::Close(_)) {
            break;
        }
    }
}

impl Client {
    /// `POST /1.0/instances/{name}/exec` with the request as given: the websocket
    /// operation (its `fds`), nothing connected yet.
    pub async fn exec_instance(&self, name: &str, post: &InstanceExecPost) -> Result<Operation, ClientError> {
        let path = format!("{}/exec", instance_path(name));
        self.send_operation(crate::Method::POST, &path, Some(post), None)
            .await
    }

    /// Runs a command in an instance with `io` attached, and returns the operation as it
    /// ended: `Ok` for Success (exit code in [`Operation::exit_code`]), else
    /// [`ClientError::OperationFailed`] (which carries the operation too, e.g. 127 with
    /// "Command not found"). `post.wait_for_websocket` is forced on.
    pub async fn exec(
        &self,
        name: &str,
        post: &InstanceExecPost,
        io: ExecIo,
    ) -> Result<Operation, ClientError> {
        let mut post = post.clone();
        post.wait_for_websocket = true;
        let op = self.exec_instance(name, &post).await?;
        let fds = op.fds();
        let secret = |fd: &str| {
            fds.get(fd)
                .cloned()
                .ok_or_else(|| ClientError::BadResponse(format!("the exec operation has no websocket {fd}")))
        };
        // The order matters to the server: control, then 0, 1, 2.
        let control = match fds.get(FD_CONTROL) {
            Some(s) => Some(self.operation_websocket(&op, s).await?),
            None => None,
        };
        let ws0 = self.operation_websocket(&op, &secret("0")?).await?;
        let (ws1, ws2) = if post.interactive {
            (None, None)
        } else {
            (
                Some(self.operation_websocket(&op, &secret("1")?).await?),
                Some(self.operation_websocket(&op, &secret("2")?).await?),
            )
        };

        let (stop_tx, stop_rx) = mpsc::channel::<()>(1);
        let control_task = control.map(|ws| {
            let rx = io.control.unwrap_or_else(|| mpsc::channel(1).1);
            tokio::spawn(drive_control(ws, rx, stop_rx))
        });

        let ExecIo {
            stdin,
            mut stdout,
            mut stderr,
            ..
        } = io;
        let (sink0, stream0) = ws0.split();
        // The stdin mirror and the end of the session share fd 0's sending half: the
        // server ends an interactive session only once the client closes fd 0 too.
        let sink0 = std::sync::Arc::new(tokio::sync::Mutex::new(sink0));
        // Stdin runs on its own: it may block on a terminal long after the command ended.
        let stdin_sink = sink0.clone();
        let stdin_task = tokio::spawn(async move { send_input(stdin, &stdin_sink).await });
        let outputs = async move {
            match (ws1, ws2) {
                (Some(ws1), Some(ws2)) => {
                    let drain0 = tokio::spawn(drain(stream0));
                    let (_, mut s1) = ws1.split();
                    let (_, mut s2) = ws2.split();
                    let (a, b) = tokio::join!(
                        receive_output(&mut s1, stdout.as_mut()),
                        receive_output(&mut s2, stderr.as_mut())
                    );
                    drain0.abort();
                    a.and(b)
                }
                _ => {
                    let mut s0 = stream0;
                    receive_output(&mut s0, stdout.as_mut()).await
                }
            }
        };
        let wait = self.wait_done(&op, None);
        tokio::pin!(outputs);
        tokio::pin!(wait);
        let result = tokio::select! {
            out = &mut outputs => {
                if let Err(e) = out {
                    tracing::debug!(error = %e, "exec output ended with an error");
                }
                stdin_task.abort();
                close_input(&sink0).await;
                wait.await
            }
            r = &mut wait => {
                let _ = tokio::time::timeout(DRAIN, &mut outputs).await;
                r
            }
        };
        let _ = stop_tx.send(()).await;
        if let Some(task) = control_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        stdin_task.abort();
        close_input(&sink0).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_control_messages_end_with_a_newline() {
        assert_eq!(
            control_text(&InstanceExecControl::signal(15)),
            "{\"command\":\"signal\",\"args\":null,\"signal\":15}\n"
        );
    }

    #[tokio::test]
    async fn t10_stdin_is_sent_then_the_barrier() {
        let input: Box<dyn AsyncRead + Send + Unpin> = Box::new(std::io::Cursor::new(b"hello".to_vec()));
        let sink = std::sync::Arc::new(tokio::sync::Mutex::new(
            Vec::<Message>::new().sink_map_err(|never| match never {}),
        ));
        send_input(input, &sink).await.unwrap();
        let got = std::mem::take(sink.lock().await.get_mut());
        assert_eq!(got, vec![Message::binary(b"hello".to_vec()), Message::text("")]);
    }

    #[tokio::test]
    async fn t10_output_stops_at_the_barrier() {
        let msgs = vec![
            Ok(Message::binary(b"out-".to_vec())),
            Ok(Message::Ping(vec![1].into())),
            Ok(Message::binary(b"line\n".to_vec())),
            Ok(Message::text("")),
            Ok(Message::binary(b"after the barrier".to_vec())),
        ];
        let mut stream = futures_util::stream::iter(msgs);
        let mut out = Vec::new();
        receive_output(&mut stream, &mut out).await.unwrap();
        assert_eq!(out, b"out-line\n");
    }
}
