//! Building images in tests: tarballs with any member (also ones the `tar` crate's
//! builder refuses to write), compressed every way, split images as the official
//! client's multipart body, and squashfs through `tar2sqfs`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use futures_util::stream::{self, Stream};

pub const META: &str = "architecture: x86_64\ncreation_date: 1764619200\nproperties:\n  description: Test image\n  os: BusyBox\n  release: \"1.36\"\ntemplates:\n  /etc/hostname:\n    when: [create]\n    template: hostname.tpl\n";

/// A tarball built member by member.
pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Tar {
    pub fn new() -> Self {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Complete);
        Tar { b }
    }

    fn header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let raw = h.as_ustar_mut().expect("ustar");
        raw.name = [0; 100];
        raw.name[..name.len()].copy_from_slice(name);
        h
    }

    /// Any member, its name written as is (`..`, absolute, anything).
    pub fn raw(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: Option<&str>,
        mode: u32,
    ) -> &mut Self {
        let mut h = Self::header(name.as_bytes(), kind, data.len() as u64, mode);
        if let Some(l) = link {
            let raw = h.as_ustar_mut().expect("ustar");
            raw.linkname = [0; 100];
            raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        self.b.append(&h, data).expect("append");
        self
    }

    pub fn owned(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let mut h = Self::header(name.as_bytes(), kind, data.len() as u64, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        self.b.append(&h, data).expect("append");
        self
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Directory, b"", None, 0o755)
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name, tar::EntryType::Regular, data, None, 0o644)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Symlink, b"", Some(target), 0o777)
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Link, b"", Some(target), 0o644)
    }

    pub fn device(&mut self, name: &str, kind: tar::EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(name.as_bytes(), kind, 0, 0o666);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        h.set_cksum();
        self.b.append(&h, &b""[..]).expect("append");
        self
    }

    /// A file with extended attributes (pax `SCHILY.xattr.*`).
    pub fn file_xattrs(&mut self, name: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> &mut Self {
        let keys: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.b
            .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
            .expect("pax");
        self.file(name, data)
    }

    /// A minimal container image: metadata.yaml, templates/, rootfs/ with a shell.
    pub fn unified() -> Self {
        let mut t = Tar::new();
        t.file("metadata.yaml", META.as_bytes())
            .dir("templates/")
            .file("templates/hostname.tpl", b"{{ container.name }}\n")
            .dir("rootfs/")
            .dir("rootfs/bin/")
            .raw(
                "rootfs/bin/busybox",
                tar::EntryType::Regular,
                b"\x7fELF not really",
                None,
                0o755,
            )
            .symlink("rootfs/bin/sh", "busybox")
            .dir("rootfs/etc/")
            .file("rootfs/etc/hostname", b"image\n");
        t
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish")
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).expect("xz");
    e.finish().expect("xz")
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

pub fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    e.write_all(data).expect("bzip2");
    e.finish().expect("bzip2")
}

pub fn sha256(parts: &[&[u8]]) -> String {
    let mut c = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        c.update(p);
    }
    hex::encode(c.finish().as_ref())
}

/// A body as a stream of chunks of `chunk` bytes.
pub fn body(
    data: &[u8],
    chunk: usize,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin + 'static {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks)
}

pub const BOUNDARY: &str = "d1c2b3a4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6";

/// The body the official client sends for a split image (Go's multipart writer).
pub fn multipart(parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, filename, data)) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(data);
    }
    out.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    out
}

pub fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// Whether an external tool is there. Missing locally: skip with a message; missing
/// under `CI=true`: a failure.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is required under CI=true but is not installed"
        );
        eprintln!("SKIP: {tool} is not installed (squashfs-tools-ng); install it to run this test");
    }
    found
}

/// Whether the test runs as root (owners, device nodes). Not root under `CI=true`: a failure.
pub fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "this test needs root under CI=true"
        );
        eprintln!("SKIP: not root; run as root to check owners and device nodes");
    }
    root
}

/// A squashfs of a tarball, made by `tar2sqfs`.
pub fn squashfs(tar: &[u8], dir: &Path) -> Vec<u8> {
    let out = dir.join("made.squashfs");
    let mut child = Command::new("tar2sqfs")
        .args(["--quiet", "--force", "--no-skip"])
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("tar2sqfs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(tar)
        .expect("feed tar2sqfs");
    assert!(child.wait().expect("tar2sqfs").success(), "tar2sqfs failed");
    let data = std::fs::read(&out).expect("read squashfs");
    std::fs::remove_file(&out).expect("remove squashfs");
    data
}

/// A unified image imported into a new image directory.
pub async fn stored(data: &[u8]) -> (tempfile::TempDir, stapes_image::ImageFiles) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = stapes_image::ImportOptions::default();
    let img = stapes_image::import(
        dir.path(),
        stapes_image::Upload::Unified(body(data, 65536)),
        &opts,
    )
    .await
    .expect("import");
    (dir, img.files)
}

/// Names in a directory, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
