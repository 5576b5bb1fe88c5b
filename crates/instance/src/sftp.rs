//! An SFTP v3 server over a [`RootFs`]: what `incus file push/pull/delete/mount` speak
//! after `GET /1.0/instances/{name}/sftp` switched protocols.
//!
//! ```text
//!  client ──packets──> serve(): one request at a time ──> RootFs (every path inside)
//!         <──replies──         (the next is read only once this one is answered)
//! ```
//!
//! The packet codec is `russh-sftp`'s; the loop is ours, synchronous, so that the same
//! code runs in the `forkfile` helper (inside the container's namespaces, on its stdin and
//! stdout) and in the daemon for a root file system on the host (on the blocking pool,
//! see `local::sftp`). One request is in hand at a time and a packet is at most
//! [`MAX_PACKET`], so a session holds a bounded amount of memory however large the
//! files; a client that sends faster than the disk takes is slowed by its own socket.
//!
//! Paths are resolved by [`RootFs`] (relative ones from `/`, as the Incus CLI sends them);
//! file handles are descriptors opened by it, so a path swapped for a link after the
//! open changes nothing. The `SSH_FXP_SYMLINK` arguments are taken in OpenSSH's order
//! (target first), as every common client and Incus's server do.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, FileMode, Handle, Name, OpenFlags, Packet, Status, StatusCode, Version,
};

use crate::error::{FsError, FsErrorKind};
use crate::fs::{DirEntry, FileStat, FileType, OpenHow, RootFs, SetAttrs};

/// The largest request accepted (the Incus CLI sends at most 128 KiB of data in one).
pub const MAX_PACKET: u32 = 256 * 1024 + 1024;
/// The most data one read answers with.
const MAX_READ: u32 = 256 * 1024;
/// Open handles per session.
const MAX_HANDLES: usize = 1024;
/// Directory entries per `SSH_FXP_NAME` answer.
const NAMES_PER_READDIR: usize = 128;

/// What a handle refers to.
enum Open {
    File { file: std::fs::File, path: String },
    Dir { entries: Vec<DirEntry>, next: usize },
}

/// One session's state.
struct Session<'a> {
    root: &'a RootFs,
    handles: HashMap<String, Open>,
    counter: u64,
}

/// Serves SFTP until the client closes its side (then `Ok`), or the connection fails.
/// Each reply is flushed as it is written.
pub fn serve(root: &RootFs, input: &mut impl Read, output: &mut impl Write) -> std::io::Result<()> {
    let mut session = Session {
        root,
        handles: HashMap::new(),
        counter: 0,
    };
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(len);
        if len == 0 || len > MAX_PACKET {
            return Err(std::io::Error::other(format!(
                "an SFTP packet of {len} bytes (at most {MAX_PACKET})"
            )));
        }
        let mut body = vec![0u8; len as usize];
        input.read_exact(&mut body)?;
        let reply = session.answer(body);
        let bytes = Bytes::try_from(reply).map_err(|e| std::io::Error::other(e.to_string()))?;
        output.write_all(&bytes)?;
        output.flush()?;
    }
}

/// The request id of a raw packet (after the type byte), for answering one that does not
/// parse.
fn raw_id(body: &[u8]) -> u32 {
    match body.get(1..5) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

fn status(id: u32, code: StatusCode, message: &str) -> Packet {
    Packet::Status(Status {
        id,
        status_code: code,
        error_message: message.to_string(),
        language_tag: "en-US".into(),
    })
}

fn ok(id: u32) -> Packet {
    status(id, StatusCode::Ok, "Success")
}

fn fs_status(id: u32, e: &FsError) -> Packet {
    let code = match e.kind {
        FsErrorKind::NotFound => StatusCode::NoSuchFile,
        FsErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    status(id, code, &e.to_string())
}

fn io_status(id: u32, path: &str, e: &std::io::Error) -> Packet {
    fs_status(id, &FsError::from_io(path, e))
}

/// SFTP attributes of a file: the permissions carry the type bits, as `st_mode` does.
pub fn attrs_of(st: &FileStat) -> FileAttributes {
    let kind = match st.kind {
        FileType::File => FileMode::REG.bits(),
        FileType::Dir => FileMode::DIR.bits(),
        FileType::Symlink => FileMode::LNK.bits(),
        FileType::Other => 0,
    };
    FileAttributes {
        size: Some(st.size),
        uid: Some(st.uid),
        user: None,
        gid: Some(st.gid),
        group: None,
        permissions: Some(kind | st.mode),
        atime: Some(u32::try_from(st.atime.max(0)).unwrap_or(u32::MAX)),
        mtime: Some(u32::try_from(st.mtime.max(0)).unwrap_or(u32::MAX)),
    }
}

fn stat_of_file(file: &std::fs::File) -> std::io::Result<FileStat> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    let kind = if m.is_file() {
        FileType::File
    } else if m.is_dir() {
        FileType::Dir
    } else {
        FileType::Other
    };
    Ok(FileStat {
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        atime: m.atime(),
        mtime: m.mtime(),
    })
}

/// `path` made absolute and cleaned without touching the file system (`..` stops at `/`).
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Reads an SSH string (a 32-bit length, then the bytes) from `data` at `pos`.
fn ssh_string(data: &[u8], pos: &mut usize) -> Option<String> {
    let len = data.get(*pos..*pos + 4)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let start = *pos + 4;
    let bytes = data.get(start..start.checked_add(len)?)?;
    *pos = start + len;
    String::from_utf8(bytes.to_vec()).ok()
}

fn set_attrs_of(attrs: &FileAttributes) -> SetAttrs {
    SetAttrs {
        mode: attrs.permissions.map(|p| p & 0o7777),
        uid: attrs.uid,
        gid: attrs.gid,
        atime: attrs.atime.map(i64::from),
        mtime: attrs.mtime.map(i64::from),
    }
}

impl Session<'_> {
    fn answer(&mut self, body: Vec<u8>) -> Packet {
        let id = raw_id(&body);
        let mut bytes = Bytes::from(body);
        let packet = match Packet::try_from(&mut bytes) {
            Ok(p) => p,
            Err(e) => return status(id, StatusCode::BadMessage, &e.to_string()),
        };
        match packet {
            Packet::Init(_) => {
                let mut v = Version::new();
                v.extensions.insert("posix-rename@openssh.com".into(), "1".into());
                Packet::Version(v)
            }
            Packet::Open(o) => self.open(o.id, &o.filename, o.pflags, &o.attrs),
            Packet::Close(c) => match self.handles.remove(&c.handle) {
                Some(_) => ok(c.id),
                None => status(c.id, StatusCode::Failure, "no such handle"),
            },
            Packet::Read(r) => self.read(r.id, &r.handle, r.offset, r.len),
            Packet::Write(w) => self.write(w.id, &w.handle, w.offset, &w.data),
            Packet::Lstat(s) => self.attrs(s.id, self.root.lstat(&s.path)),
            Packet::Stat(s) => self.attrs(s.id, self.root.stat(&s.path)),
            Packet::Fstat(s) => match self.handles.get(&s.handle) {
                Some(Open::File { file, path }) => match stat_of_file(file) {
                    Ok(st) => Packet::Attrs(Attrs {
                        id: s.id,
                        attrs: attrs_of(&st),
                    }),
                    Err(e) => io_status(s.id, path, &e),
                },
                Some(Open::Dir { .. }) => status(s.id, StatusCode::Failure, "not a file handle"),
                None => status(s.id, StatusCode::Failure, "no such handle"),
            },
            Packet::SetStat(s) => self.setstat(s.id, &s.path, &s.attrs),
            Packet::FSetStat(s) => self.fsetstat(s.id, &s.handle, &s.attrs),
            Packet::OpenDir(o) => match self.root.read_dir(&o.path) {
                Ok(entries) => self.add_handle(o.id, Open::Dir { entries, next: 0 }),
                Err(e) => fs_status(o.id, &e),
            },
            Packet::ReadDir(r) => self.readdir(r.id, &r.handle),
            Packet::Remove(r) => {
                self.done(r.id, self.root.run(&crate::fs::FsOp::Remove { path: r.filename }))
            }
            Packet::RmDir(r) => self.done(r.id, self.root.run(&crate::fs::FsOp::Rmdir { path: r.path })),
            Packet::MkDir(m) => {
                let mode = m.attrs.permissions.map_or(0o755, |p| p & 0o7777);
                self.done(m.id, self.root.mkdir(&m.path, mode, 0, 0))
            }
            Packet::RealPath(r) => Packet::Name(Name {
                id: r.id,
                files: vec![File::dummy(clean(&r.path))],
            }),
            Packet::Rename(r) => self.done(r.id, self.root.rename(&r.oldpath, &r.newpath)),
            Packet::ReadLink(r) => match self.root.readlink(&r.path) {
                Ok(target) => Packet::Name(Name {
                    id: r.id,
                    files: vec![File::dummy(target)],
                }),
                Err(e) => fs_status(r.id, &e),
            },
            // OpenSSH's order: the first string is the target, the second the link.
            Packet::Symlink(s) => self.done(s.id, self.root.symlink(&s.linkpath, &s.targetpath, 0, 0)),
            Packet::Extended(x) if x.request == "posix-rename@openssh.com" => {
                let mut pos = 0;
                match (ssh_string(&x.data, &mut pos), ssh_string(&x.data, &mut pos)) {
                    (Some(from), Some(to)) => self.done(x.id, self.root.rename(&from, &to)),
                    _ => status(x.id, StatusCode::BadMessage, "malformed posix-rename"),
                }
            }
            Packet::Extended(x) => status(x.id, StatusCode::OpUnsupported, "unsupported extension"),
            _ => status(id, StatusCode::OpUnsupported, "not a request"),
        }
    }

    fn done<T>(&self, id: u32, result: Result<T, FsError>) -> Packet {
        match result {
            Ok(_) => ok(id),
            Err(e) => fs_status(id, &e),
        }
    }

    fn attrs(&self, id: u32, result: Result<FileStat, FsError>) -> Packet {
        match result {
            Ok(st) => Packet::Attrs(Attrs {
                id,
                attrs: attrs_of(&st),
            }),
            Err(e) => fs_status(id, &e),
        }
    }

    fn add_handle(&mut self, id: u32, open: Open) -> Packet {
        if self.handles.len() >= MAX_HANDLES {
            return status(id, StatusCode::Failure, "too many open handles");
        }
        self.counter += 1;
        let handle = self.counter.to_string();
        self.handles.insert(handle.clone(), open);
        Packet::Handle(Handle { id, handle })
    }

    fn open(&mut self, id: u32, path: &str, flags: OpenFlags, attrs: &FileAttributes) -> Packet {
        let write = flags.contains(OpenFlags::WRITE) || flags.contains(OpenFlags::APPEND);
        let how = OpenHow {
            read: flags.contains(OpenFlags::READ) || !write,
            write,
            append: flags.contains(OpenFlags::APPEND),
            create: flags.contains(OpenFlags::CREATE),
            exclusive: flags.contains(OpenFlags::EXCLUDE),
            truncate: flags.contains(OpenFlags::TRUNCATE),
            mode: attrs.permissions.map_or(0o644, |p| p & 0o7777),
        };
        match self.root.open_file(path, how) {
            Ok(file) => self.add_handle(
                id,
                Open::File {
                    file,
                    path: path.to_string(),
                },
            ),
            Err(e) => fs_status(id, &e),
        }
    }

    fn read(&mut self, id: u32, handle: &str, offset: u64, len: u32) -> Packet {
        let Some(Open::File { file, path }) = self.handles.get(handle) else {
            return status(id, StatusCode::Failure, "no such file handle");
        };
        let mut data = vec![0u8; len.min(MAX_READ) as usize];
        let mut filled = 0;
        while filled < data.len() {
            match file.read_at(&mut data[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return io_status(id, path, &e),
            }
        }
        if filled == 0 && !data.is_empty() {
            return status(id, StatusCode::Eof, "EOF");
        }
        data.truncate(filled);
        Packet::Data(Data { id, data })
    }

    fn write(&mut self, id: u32, handle: &str, offset: u64, data: &[u8]) -> Packet {
        let Some(Open::File { file, path }) = self.handles.get(handle) else {
            return status(id, StatusCode::Failure, "no such file handle");
        };
        match file.write_all_at(data, offset) {
            Ok(()) => ok(id),
            Err(e) => io_status(id, path, &e),
        }
    }

    fn readdir(&mut self, id: u32, handle: &str) -> Packet {
        let Some(Open::Dir { entries, next }) = self.handles.get_mut(handle) else {
            return status(id, StatusCode::Failure, "no such directory handle");
        };
        if *next >= entries.len() {
            return status(id, StatusCode::Eof, "EOF");
        }
        let end = (*next + NAMES_PER_READDIR).min(entries.len());
        let files = entries[*next..end]
            .iter()
            .map(|e| File::new(e.name.clone(), attrs_of(&e.stat)))
            .collect();
        *next = end;
        Packet::Name(Name { id, files })
    }

    fn setstat(&mut self, id: u32, path: &str, attrs: &FileAttributes) -> Packet {
        if let Some(size) = attrs.size {
            let how = OpenHow {
                write: true,
                ..OpenHow::default()
            };
            let truncated = self
                .root
                .open_file(path, how)
                .and_then(|f| f.set_len(size).map_err(|e| FsError::from_io(path, &e)));
            if let Err(e) = truncated {
                return fs_status(id, &e);
            }
        }
        let set = set_attrs_of(attrs);
        if set == SetAttrs::default() {
            return ok(id);
        }
        self.done(id, self.root.set_attrs(path, &set))
    }

    fn fsetstat(&mut self, id: u32, handle: &str, attrs: &FileAttributes) -> Packet {
        let (file, path) = match self.handles.get(handle) {
            Some(Open::File { file, path }) => (file, path.clone()),
            Some(Open::Dir { .. }) => return status(id, StatusCode::OpUnsupported, "a directory handle"),
            None => return status(id, StatusCode::Failure, "no such handle"),
        };
        let result = (|| {
            use std::os::unix::fs::PermissionsExt;
            if let Some(size) = attrs.size {
                file.set_len(size)?;
            }
            if attrs.uid.is_some() || attrs.gid.is_some() {
                std::os::unix::fs::fchown(file, attrs.uid, attrs.gid)?;
            }
            if let Some(p) = attrs.permissions {
                file.set_permissions(std::fs::Permissions::from_mode(p & 0o7777))?;
            }
            if attrs.atime.is_some() || attrs.mtime.is_some() {
                let t = |s: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(s));
                let mut times = std::fs::FileTimes::new();
                if let Some(a) = attrs.atime {
                    times = times.set_accessed(t(a));
                }
                if let Some(m) = attrs.mtime {
                    times = times.set_modified(t(m));
                }
                file.set_times(times)?;
            }
            Ok::<_, std::io::Error>(())
        })();
        match result {
            Ok(()) => ok(id),
            Err(e) => io_status(id, &path, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_like_the_client_expects() {
        assert_eq!(clean("root/x/../y"), "/root/y");
        assert_eq!(clean("/../../etc"), "/etc");
        assert_eq!(clean(""), "/");
        assert_eq!(clean("."), "/");
    }

    /// A client session to an SFTP server over the directory `root`, in process.
    async fn session(root: &std::path::Path) -> russh_sftp::client::SftpSession {
        let server = crate::local::sftp(root.to_path_buf()).await.unwrap();
        let (near, far) = tokio::io::duplex(1 << 20);
        tokio::spawn(server(Box::new(far)));
        russh_sftp::client::SftpSession::new(near).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_go_in_and_out_with_relative_paths_and_attributes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("root")).unwrap();
        let s = session(&root).await;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut f = s.create("root/f").await.unwrap();
        f.write_all(&data).await.unwrap();
        f.shutdown().await.unwrap();
        assert_eq!(std::fs::read(root.join("root/f")).unwrap(), data);
        let mut back = Vec::new();
        s.open("/root/f")
            .await
            .unwrap()
            .read_to_end(&mut back)
            .await
            .unwrap();
        assert_eq!(back, data);
        let mut attrs = FileAttributes::empty();
        attrs.permissions = Some(0o600);
        s.set_metadata("root/f", attrs).await.unwrap();
        let meta = s.metadata("/root/f").await.unwrap();
        assert_eq!(
            (meta.permissions.unwrap_or(0) & 0o7777, meta.size),
            (0o600, Some(3_000_000))
        );
        s.create_dir("root/d").await.unwrap();
        s.rename("root/f", "root/d/g").await.unwrap();
        let names: Vec<String> = s
            .read_dir("root/d")
            .await
            .unwrap()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["g"]);
        assert_eq!(s.canonicalize("root/d/../d/./g").await.unwrap(), "/root/d/g");
        s.remove_file("root/d/g").await.unwrap();
        s.remove_dir("root/d").await.unwrap();
        assert!(std::fs::read_dir(root.join("root")).unwrap().next().is_none());
        let err = s.metadata("root/none").await.unwrap_err().to_string();
        assert!(err.contains("No such file"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn links_and_dot_dots_stay_inside() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        let host = dir.path().join("host");
        std::fs::create_dir_all(root.join("root")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("secret"), b"HOST").unwrap();
        std::fs::write(root.join("etc/shadow"), b"inside").unwrap();
        let secret = host.join("secret").to_string_lossy().into_owned();
        let up = "../".repeat(12);
        std::os::unix::fs::symlink(&secret, root.join("root/abs")).unwrap();
        std::os::unix::fs::symlink(
            format!("{up}{}", secret.trim_start_matches('/')),
            root.join("root/rel"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&host, root.join("root/dir")).unwrap();
        let s = session(&root).await;
        for p in ["root/abs", "root/rel", "root/dir/secret"] {
            assert!(s.read(p).await.is_err(), "{p} read");
            if let Ok(mut f) = s.create(p).await {
                f.write_all(b"x").await.unwrap();
                f.shutdown().await.unwrap();
            }
            assert_eq!(std::fs::read(host.join("secret")).unwrap(), b"HOST", "{p}");
        }
        assert_eq!(std::fs::read_dir(&host).unwrap().count(), 1);
        assert_eq!(s.read(format!("{up}etc/shadow")).await.unwrap(), b"inside");
        assert_eq!(s.read("/../../etc/shadow").await.unwrap(), b"inside");
        // A link made over SFTP: the first string on the wire is the target, as OpenSSH
        // sends it (this client's first argument).
        s.symlink("/etc/shadow", "root/made").await.unwrap();
        assert_eq!(
            std::fs::read_link(root.join("root/made")).unwrap(),
            std::path::Path::new("/etc/shadow")
        );
        assert_eq!(s.read_link("root/made").await.unwrap(), "/etc/shadow");
    }

    #[test]
    fn ssh_strings_are_bounded() {
        let mut data = vec![0, 0, 0, 2, b'a', b'b', 0, 0, 0, 9, b'c'];
        let mut pos = 0;
        assert_eq!(ssh_string(&data, &mut pos).as_deref(), Some("ab"));
        assert_eq!(ssh_string(&data, &mut pos), None);
        data.truncate(2);
        assert_eq!(ssh_string(&data, &mut 0), None);
    }
}
