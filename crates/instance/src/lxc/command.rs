//! LXC's command socket: the status and init pid of a container from its monitor,
//! without a process per question.
//!
//! `lxc-start -d` leaves a monitor per container that listens on an abstract unix
//! socket named `LXCPATH/NAME/command` (or `lxc/<FNV-1a 64 of "LXCPATH/NAME">/command`
//! when that name does not fit in `sun_path`). `lxc-info -s -p` asks it two things:
//! `get_state` (3) and `get_init_pid` (4). The request is `struct lxc_cmd_req`
//! (`int cmd; int datalen; const void *data`), the answer `struct lxc_cmd_rsp`
//! (`int ret; int datalen; void *data`) with the state or the pid in `data`; both in
//! the host's byte order and pointer size. No socket (connection refused), or a monitor
//! that hangs up before it answers, means the container is stopped: liblxc reads it so.
//! The request carries our credentials (root's), which the monitor checks.
//! The same questions `lxc-info` asks, answered the same way, at the cost of one
//! connection instead of a process (about 1 ms of CPU for `lxc-info` here).

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::driver::Status;
use crate::error::{Error, Result};

/// `LXC_CMD_GET_STATE`.
pub const GET_STATE: i32 = 3;
/// `LXC_CMD_GET_INIT_PID`.
pub const GET_INIT_PID: i32 = 4;

/// How long a monitor may take to answer (it serves one client at a time).
const ANSWER: Duration = Duration::from_secs(10);

/// `sizeof(((struct sockaddr_un *)0)->sun_path)`.
const SUN_PATH: usize = 108;

const PTR: usize = std::mem::size_of::<usize>();
/// `sizeof(struct lxc_cmd_req)` and `sizeof(struct lxc_cmd_rsp)`: two ints and a pointer.
const MESSAGE: usize = 8 + PTR;

/// The abstract socket name (without the leading NUL) of a container's monitor, as
/// `lxc_make_abstract_socket_name` makes it.
pub fn socket_name(lxcpath: &str, name: &str) -> String {
    let plain = format!("{lxcpath}/{name}/command");
    // One byte for the leading NUL, one for the NUL LXC writes after the name.
    if plain.len() < SUN_PATH - 2 {
        return plain;
    }
    let hash = super::fnv1a(format!("{lxcpath}/{name}").as_bytes());
    format!("lxc/{hash:016x}/command")
}

/// The request for `cmd` without data.
pub fn request(cmd: i32) -> [u8; MESSAGE] {
    let mut out = [0u8; MESSAGE];
    out[..4].copy_from_slice(&cmd.to_ne_bytes());
    out
}

/// What an answer says: `ret` and the `data` word. `ret < 0` is an error (`-errno`).
pub fn parse_answer(bytes: &[u8; MESSAGE]) -> (i32, i64) {
    let int = |at: usize| i32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut word = [0u8; 8];
    if cfg!(target_endian = "little") {
        word[..PTR].copy_from_slice(&bytes[8..]);
        (int(0), i64::from_le_bytes(word))
    } else {
        word[8 - PTR..].copy_from_slice(&bytes[8..]);
        (int(0), i64::from_be_bytes(word))
    }
}

/// LXC's `lxc_state_t`.
pub fn status_of(state: i64) -> Option<Status> {
    Some(match state {
        0 => Status::Stopped,
        1 => Status::Starting,
        2 => Status::Running,
        3 => Status::Stopping,
        4 => Status::Aborting,
        5 => Status::Freezing,
        6 => Status::Frozen,
        7 => Status::Thawed,
        _ => return None,
    })
}

/// Asks a container's monitor `cmd`; `None` when no monitor runs (the container is
/// stopped).
pub async fn ask(lxcpath: &Path, name: &str, cmd: i32) -> Result<Option<i64>> {
    let socket = format!("\0{}", socket_name(&lxcpath.display().to_string(), name));
    let failed = |e: std::io::Error| Error::Tool {
        command: "lxc command socket".into(),
        detail: format!("asking the monitor of {name}: {e}"),
    };
    let talk = async {
        let mut stream = match tokio::net::UnixStream::connect(&socket).await {
            Ok(s) => s,
            Err(e) if no_monitor(&e) => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        if let Err(e) = send_with_credentials(&stream, &request(cmd)).await {
            return if no_monitor(&e) { Ok(None) } else { Err(failed(e)) };
        }
        let mut answer = [0u8; MESSAGE];
        if let Err(e) = stream.read_exact(&mut answer).await {
            return if no_monitor(&e) { Ok(None) } else { Err(failed(e)) };
        }
        let (ret, data) = parse_answer(&answer);
        if ret < 0 {
            return Err(Error::Tool {
                command: "lxc command socket".into(),
                detail: format!("the monitor of {name} refused command {cmd}: errno {}", -ret),
            });
        }
        Ok(Some(data))
    };
    tokio::time::timeout(ANSWER, talk)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("the LXC monitor of {name}"),
            after: ANSWER,
        })?
}

/// Whether an error says there is no monitor (any more): none listens, or it went away
/// with its container mid-request.
fn no_monitor(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::NotFound | K::BrokenPipe | K::ConnectionReset | K::UnexpectedEof
    )
}

/// Sends `bytes` with our credentials attached (`SCM_CREDENTIALS`), as liblxc does.
/// Without them the monitor may read the request before it has turned `SO_PASSCRED` on
/// for the new connection; it then sees the overflow uid instead of root's and refuses
/// the command (`EPERM`).
async fn send_with_credentials(stream: &tokio::net::UnixStream, bytes: &[u8]) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, UCred};
    use std::mem::MaybeUninit;
    loop {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            control.push(SendAncillaryMessage::ScmCredentials(UCred {
                pid: rustix::process::getpid(),
                uid: rustix::process::getuid(),
                gid: rustix::process::getgid(),
            }));
            rustix::net::sendmsg(
                stream,
                &[std::io::IoSlice::new(bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Ok(n) if n == bytes.len() => return Ok(()),
            // The request is 16 bytes: a short write on a fresh unix socket does not happen.
            Ok(n) => {
                return Err(std::io::Error::other(format!(
                    "only {n} of {} bytes sent",
                    bytes.len()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_the_path_long_ones_a_hash() {
        assert_eq!(
            socket_name("/var/lib/stapes/lxc", "c1"),
            "/var/lib/stapes/lxc/c1/command"
        );
        let long = "/tmp/".to_string() + &"d".repeat(100);
        let hashed = socket_name(&long, "c1");
        assert!(
            hashed.starts_with("lxc/") && hashed.ends_with("/command"),
            "{hashed}"
        );
        assert_eq!(hashed.len(), "lxc/".len() + 16 + "/command".len());
        assert_ne!(hashed, socket_name(&long, "c2"));
        // The boundary: 105 bytes fit (with the two NULs, 107 < 108), 106 do not.
        let fits = "/".to_string() + &"a".repeat(105 - "/c/command".len() - 1);
        assert_eq!(socket_name(&fits, "c").len(), 105);
        assert!(!socket_name(&(fits.clone() + "a"), "c").starts_with('/'));
    }

    #[test]
    fn long_names_hash_like_lxc() {
        let long = "x".repeat(200);
        let expected = super::super::fnv1a(format!("{long}/n").as_bytes());
        assert_eq!(socket_name(&long, "n"), format!("lxc/{expected:016x}/command"));
    }

    #[test]
    fn requests_and_answers_are_the_c_structs() {
        let req = request(GET_STATE);
        assert_eq!(req.len(), 16);
        assert_eq!(&req[..4], &3i32.to_ne_bytes());
        assert!(req[4..].iter().all(|b| *b == 0));
        let mut answer = [0u8; MESSAGE];
        answer[8..12].copy_from_slice(&2i32.to_ne_bytes());
        assert_eq!(parse_answer(&answer), (0, 2));
        answer[..4].copy_from_slice(&(-13i32).to_ne_bytes());
        assert_eq!(parse_answer(&answer).0, -13);
        let mut pid = [0u8; MESSAGE];
        pid[8..].copy_from_slice(&4_194_303usize.to_ne_bytes());
        assert_eq!(parse_answer(&pid), (0, 4_194_303));
    }

    #[test]
    fn states_are_lxcs() {
        assert_eq!(status_of(0), Some(Status::Stopped));
        assert_eq!(status_of(2), Some(Status::Running));
        assert_eq!(status_of(6), Some(Status::Frozen));
        assert_eq!(status_of(8), None);
        assert_eq!(status_of(-1), None);
    }
}
