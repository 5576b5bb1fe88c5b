//! The relay of an SFTP session forwarded to the instance's member, packet by packet, so
//! that a lost owner ends the client's requests with an answer that names it.
//!
//! ```text
//!  client ──packets──> up: note each request id ──> owner
//!  client <──replies── down: strike each answered id <── owner
//!                      owner gone with ids open: STATUS Failure "Cluster member "m" …"
//!                      for each, and for each request still coming, until the
//!                      client closes (at most LATE); then its connection closes
//! ```
//!
//! A byte splice would leave the client with a bare "connection lost". Packets are at
//! most [`MAX_PACKET`] (the server side refuses more), one at a time per direction, and
//! at most [`MAX_PENDING`] ids are remembered, so the relay's memory is bounded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest packet relayed (the SFTP server's own limit).
const MAX_PACKET: u32 = instance::sftp::MAX_PACKET;
/// Request ids remembered at once (clients keep at most 64 in flight).
const MAX_PENDING: usize = 4096;
/// `SSH_FXP_INIT` and `SSH_FXP_VERSION` carry no request id.
const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_STATUS: u8 = 101;
const FX_FAILURE: u32 = 4;
/// How long, once the owner is gone, requests still coming are answered before the
/// client's connection is closed.
const LATE: std::time::Duration = std::time::Duration::from_secs(5);

/// One packet (length, then body) into `buf`; `None` at a clean end of stream.
async fn read_packet<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Option<()>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len);
    if n == 0 || n > MAX_PACKET {
        return Err(std::io::Error::other(format!("an SFTP packet of {n} bytes")));
    }
    buf.clear();
    buf.extend_from_slice(&len);
    buf.resize(4 + n as usize, 0);
    r.read_exact(&mut buf[4..]).await?;
    Ok(Some(()))
}

/// The type and request id of a packet in `buf` (length included).
fn kind_and_id(buf: &[u8]) -> (u8, Option<u32>) {
    let kind = buf.get(4).copied().unwrap_or(0);
    let id = match kind {
        FXP_INIT | FXP_VERSION => None,
        _ => buf
            .get(5..9)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
    };
    (kind, id)
}

/// An `SSH_FXP_STATUS` failure for request `id`.
pub fn failure(id: u32, message: &str) -> Vec<u8> {
    let mut body = vec![FXP_STATUS];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&FX_FAILURE.to_be_bytes());
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message.as_bytes());
    body.extend_from_slice(&5u32.to_be_bytes());
    body.extend_from_slice(b"en-US");
    let mut packet = (body.len() as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// What the two directions share: the requests the owner has not answered, and once it
/// is gone, why (every request from then on is answered by the relay).
#[derive(Default)]
struct Open {
    ids: HashSet<u32>,
    gone: bool,
}

/// Relays until both sides are done. When the owner's side ends or fails while requests
/// wait, or `lost` says the owner hung, each gets a failure naming `member`, and so does
/// every request the client sends after that, until it closes or [`LATE`] has passed: a
/// client with reads in flight keeps sending for a moment, and a request left
/// unanswered would end its session with a bare "connection lost" instead.
pub async fn splice<C, O, L>(client: C, owner: O, member: &str, lost: L) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    O: AsyncRead + AsyncWrite + Unpin,
    L: std::future::Future<Output = ()>,
{
    let open: Arc<Mutex<Open>> = Arc::default();
    // Requests that came after the owner was gone, for `down` to answer.
    let (late_tx, mut late_rx) = tokio::sync::mpsc::channel::<u32>(64);
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut owner_r, mut owner_w) = tokio::io::split(owner);
    let up = {
        let open = open.clone();
        async move {
            let mut buf = Vec::new();
            let mut owner_failed = None;
            let result = loop {
                match read_packet(&mut client_r, &mut buf).await {
                    Ok(Some(())) => {}
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
                let id = kind_and_id(&buf).1;
                let gone = {
                    let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
                    if let (false, Some(id)) = (o.gone, id) {
                        if o.ids.len() < MAX_PENDING {
                            o.ids.insert(id);
                        }
                    }
                    o.gone
                };
                if gone {
                    if let Some(id) = id {
                        if late_tx.send(id).await.is_err() {
                            break Ok(());
                        }
                    }
                } else if owner_failed.is_none() {
                    // A failed write leaves the request open: `down` answers it when it
                    // sees the owner's end.
                    if let Err(e) = owner_w.write_all(&buf).await {
                        owner_failed = Some(e);
                    }
                }
            };
            let _ = owner_w.shutdown().await;
            owner_failed.map_or(result, Err)
        }
    };
    let down = async move {
        let mut buf = Vec::new();
        tokio::pin!(lost);
        let ended = loop {
            let read = tokio::select! {
                r = read_packet(&mut owner_r, &mut buf) => r,
                _ = &mut lost => Err(std::io::Error::other("it stopped answering")),
            };
            match read {
                Ok(Some(())) => {}
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
            if let (_, Some(id)) = kind_and_id(&buf) {
                open.lock().unwrap_or_else(|e| e.into_inner()).ids.remove(&id);
            }
            client_w.write_all(&buf).await?;
        };
        let waiting: Vec<u32> = {
            let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
            o.gone = true;
            o.ids.drain().collect()
        };
        let why = match &ended {
            Some(e) => e.to_string(),
            None => "the connection was closed".to_string(),
        };
        let message = format!("Cluster member \"{member}\" is unreachable: {why}");
        if !waiting.is_empty() {
            tracing::info!(member = %member, requests = waiting.len(), "an SFTP session lost its member");
        }
        for id in waiting {
            client_w.write_all(&failure(id, &message)).await?;
        }
        // Requests still on their way: answered too, until the client closes or gives up.
        let _ = tokio::time::timeout(LATE, async {
            while let Some(id) = late_rx.recv().await {
                client_w.write_all(&failure(id, &message)).await?;
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
        let _ = client_w.shutdown().await;
        match ended {
            Some(e) => Err(e),
            None => Ok(()),
        }
    };
    // The owner's side decides the end: a client that stops sending does not keep the
    // answers from it, and once the owner is gone nothing more can come.
    tokio::pin!(up, down);
    let mut up_result = None;
    loop {
        tokio::select! {
            r = &mut up, if up_result.is_none() => up_result = Some(r),
            d = &mut down => return d.and(up_result.unwrap_or(Ok(()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_well_formed_status_packets() {
        let p = failure(7, "gone");
        assert_eq!(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize, p.len() - 4);
        assert_eq!(kind_and_id(&p), (FXP_STATUS, Some(7)));
        assert_eq!(&p[9..13], &FX_FAILURE.to_be_bytes());
    }

    #[tokio::test]
    async fn a_lost_owner_answers_the_open_requests_with_its_name() {
        let (client, mut client_far) = tokio::io::duplex(1 << 16);
        let (owner, owner_far) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn(async move { splice(client, owner, "node2", std::future::pending()).await });
        // A READ (type 5) with id 42, taken by the owner, who then dies.
        let read = [0u8, 0, 0, 5, 5, 0, 0, 0, 42];
        client_far.write_all(&read).await.unwrap();
        let (mut owner_r, owner_w) = tokio::io::split(owner_far);
        let mut got = [0u8; 9];
        owner_r.read_exact(&mut got).await.unwrap();
        assert_eq!(got, read);
        drop(owner_r);
        drop(owner_w);
        let mut len = [0u8; 4];
        client_far.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        client_far.read_exact(&mut body).await.unwrap();
        assert_eq!(body[0], FXP_STATUS);
        assert_eq!(&body[1..5], &42u32.to_be_bytes());
        assert!(String::from_utf8_lossy(&body).contains("Cluster member \"node2\""));
        drop(client_far);
        let _ = relay.await.unwrap();
    }

    /// One packet from `r`, its body.
    async fn next_body<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut body).await.unwrap();
        body
    }

    /// A client with reads in flight sends more after the owner is gone: those are
    /// answered with the member's name too (an unanswered one would end the client's
    /// session with a bare "connection lost"), and its close ends the relay.
    #[tokio::test]
    async fn requests_sent_after_the_owner_is_gone_are_answered_too() {
        let (client, mut client_far) = tokio::io::duplex(1 << 16);
        let (owner, owner_far) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn(async move { splice(client, owner, "node2", std::future::pending()).await });
        client_far
            .write_all(&[0u8, 0, 0, 5, 5, 0, 0, 0, 1])
            .await
            .unwrap();
        let (mut owner_r, owner_w) = tokio::io::split(owner_far);
        let mut got = [0u8; 9];
        owner_r.read_exact(&mut got).await.unwrap();
        drop(owner_r);
        drop(owner_w);
        let body = next_body(&mut client_far).await;
        assert_eq!(&body[1..5], &1u32.to_be_bytes());
        for id in 2u32..=4 {
            let mut read = vec![0u8, 0, 0, 5, 5];
            read.extend_from_slice(&id.to_be_bytes());
            client_far.write_all(&read).await.unwrap();
            let body = tokio::time::timeout(std::time::Duration::from_secs(3), next_body(&mut client_far))
                .await
                .expect("a late request is answered");
            assert_eq!(body[0], FXP_STATUS);
            assert_eq!(&body[1..5], &id.to_be_bytes());
            assert!(String::from_utf8_lossy(&body).contains("Cluster member \"node2\""));
        }
        client_far.shutdown().await.unwrap();
        drop(client_far);
        tokio::time::timeout(std::time::Duration::from_secs(3), relay)
            .await
            .expect("the client's close ends the relay")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_hung_owner_declared_lost_answers_the_open_requests_with_its_name() {
        let (client, mut client_far) = tokio::io::duplex(1 << 16);
        // The owner's far end takes the request, then stays open and silent: it hung.
        let (owner, mut owner_far) = tokio::io::duplex(1 << 16);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn(async move {
            splice(client, owner, "node2", async move {
                let _ = rx.await;
            })
            .await
        });
        client_far
            .write_all(&[0u8, 0, 0, 5, 5, 0, 0, 0, 9])
            .await
            .unwrap();
        let mut got = [0u8; 9];
        owner_far.read_exact(&mut got).await.unwrap();
        tx.send(()).unwrap();
        let mut len = [0u8; 4];
        client_far.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        client_far.read_exact(&mut body).await.unwrap();
        assert_eq!(body[0], FXP_STATUS);
        assert_eq!(&body[1..5], &9u32.to_be_bytes());
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("Cluster member \"node2\" is unreachable: it stopped answering"),
            "{text}"
        );
        drop(client_far);
        assert!(relay.await.unwrap().is_err());
    }
}
