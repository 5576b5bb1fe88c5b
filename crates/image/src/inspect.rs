//! Reading an image part through to its end, without writing anything: the check that
//! an upload is a whole, readable image before it is kept.
//!
//! A tarball (any supported compression) is decompressed and walked member by member
//! to the end-of-archive blocks, so a truncated or corrupt file is refused at import,
//! not found out at the first launch. `metadata.yaml` is read and checked on the way.
//! A squashfs root file system is checked by its superblock (magic, version, and the
//! size it says it has against the bytes received). A unified or metadata squashfs is
//! read through `sqfs2tar`, as Incus does.
//!
//! The decompressed bytes walked are bounded (`max_unpacked`), and so is what may
//! follow the end of the archive, so a small upload cannot keep a thread busy for hours.

use std::cell::Cell;
use std::io::{self, Cursor, Read};
use std::path::Path;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::format::{self, Format, Sqfs2tar, HEADER_LEN};
use crate::metadata::{Metadata, MAX_METADATA};
use crate::paths;

/// What the part is expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// A unified image: `metadata.yaml` and `rootfs/`.
    Unified,
    /// A split image's metadata tarball.
    Metadata,
    /// A split image's root file system.
    Rootfs,
}

impl Part {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Part::Unified => "image",
            Part::Metadata => "metadata",
            Part::Rootfs => "rootfs",
        }
    }
}

/// What reading a part found.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub metadata: Option<Metadata>,
    pub has_rootfs: bool,
    pub has_vm_disk: bool,
    /// The part is a squashfs whose members must be read from the finished file.
    pub needs_file: bool,
}

/// How much may follow a tarball's end-of-archive blocks (tar pads to 10 KiB records;
/// some tools to more).
const MAX_TRAILER: u64 = 16 << 20;

/// Reads one part from `input` to its end.
pub(crate) fn inspect(input: impl Read, part: Part, max_unpacked: u64) -> Result<Found> {
    let mut input = input;
    let mut header = Vec::with_capacity(HEADER_LEN);
    (&mut input)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut header)
        .map_err(|e| corrupt(part, e))?;
    let format = format::detect(&header).ok_or(Error::UnsupportedCompression)?;
    let whole = Cursor::new(header).chain(input);
    match format {
        Format::Squashfs if part == Part::Rootfs => {
            check_squashfs(whole)?;
            Ok(Found {
                metadata: None,
                has_rootfs: true,
                has_vm_disk: false,
                needs_file: false,
            })
        }
        Format::Squashfs => {
            // Drain: the members are read from the file once it is whole.
            io::copy(&mut { whole }, &mut io::sink()).map_err(|e| corrupt(part, e))?;
            Ok(Found {
                metadata: None,
                has_rootfs: false,
                has_vm_disk: false,
                needs_file: true,
            })
        }
        f if f.is_tar() => {
            let tar = format::decoder(f, whole).map_err(|e| corrupt(part, e))?;
            walk(tar, part, max_unpacked)
        }
        f => Err(Error::UnsupportedFormat(
            f.extension().trim_start_matches('.').into(),
        )),
    }
}

/// Reads the members of a finished squashfs part through `sqfs2tar`.
pub(crate) fn inspect_squashfs_file(path: &Path, part: Part, max_unpacked: u64) -> Result<Found> {
    let (tool, stdout) = Sqfs2tar::spawn(path)?;
    let found = walk(Box::new(stdout), part, max_unpacked);
    // A broken squashfs is the upload's fault; say what sqfs2tar said.
    tool.finish()?.map_err(|detail| Error::Corrupt {
        part: part.label(),
        detail,
    })?;
    found
}

fn corrupt(part: Part, e: io::Error) -> Error {
    Error::Corrupt {
        part: part.label(),
        detail: e.to_string(),
    }
}

/// Walks a tar stream to its end.
fn walk(tar: Box<dyn Read + '_>, part: Part, max_unpacked: u64) -> Result<Found> {
    let over = Rc::new(Cell::new(false));
    let mut counted = Tail::new(tar, max_unpacked, over.clone());
    let fail = |e: io::Error| {
        if over.get() {
            Error::UnpackedTooLarge { limit: max_unpacked }
        } else {
            corrupt(part, e)
        }
    };
    let mut found = Found {
        metadata: None,
        has_rootfs: part == Part::Rootfs,
        has_vm_disk: false,
        needs_file: false,
    };
    let mut members = 0u64;
    let mut bad_metadata = None;
    {
        let mut archive = tar::Archive::new(&mut counted);
        let entries = archive.entries().map_err(fail)?;
        for entry in entries {
            let mut entry = entry.map_err(fail)?;
            members += 1;
            let name = entry.path_bytes().into_owned();
            if part == Part::Rootfs {
                continue;
            }
            if name == b"metadata.yaml" || name == b"./metadata.yaml" {
                let mut text = Vec::new();
                (&mut entry)
                    .take(MAX_METADATA + 1)
                    .read_to_end(&mut text)
                    .map_err(fail)?;
                // A parse error is reported only if the rest of the archive reads well:
                // garbage from a corrupt stream is the stream's fault.
                match Metadata::parse(&text) {
                    Ok(m) => found.metadata = Some(m),
                    Err(e) => bad_metadata = Some(e),
                }
            } else if let Ok((paths::Root::Rootfs, _)) = paths::place(&name) {
                found.has_rootfs = true;
            } else if name == b"rootfs.img" || name == b"./rootfs.img" {
                found.has_vm_disk = true;
            }
        }
    }
    if members > 0 && !counted.ended_on_zero_block() {
        return Err(Error::Corrupt {
            part: part.label(),
            detail: "the archive ends without its end-of-archive blocks (truncated)".into(),
        });
    }
    // Read what follows, so the compression's own end and checksum are checked too.
    let before = counted.read;
    let mut rest = (&mut counted).take(MAX_TRAILER + 1);
    io::copy(&mut rest, &mut io::sink()).map_err(fail)?;
    if counted.read - before > MAX_TRAILER {
        return Err(Error::Corrupt {
            part: part.label(),
            detail: "more than 16 MiB of data after the end of the archive".into(),
        });
    }
    if let Some(e) = bad_metadata {
        return Err(e);
    }
    if members == 0 {
        return Err(Error::Corrupt {
            part: part.label(),
            detail: "the archive is empty".into(),
        });
    }
    Ok(found)
}

/// Counts what is read and keeps the last 512-byte block, to tell an archive that ended
/// on its end-of-archive block from one cut at a member boundary.
struct Tail<R> {
    inner: R,
    read: u64,
    limit: u64,
    over: Rc<Cell<bool>>,
    last: [u8; 512],
}

impl<R: Read> Tail<R> {
    fn new(inner: R, limit: u64, over: Rc<Cell<bool>>) -> Self {
        Tail {
            inner,
            read: 0,
            limit,
            over,
            last: [0xff; 512],
        }
    }

    fn ended_on_zero_block(&self) -> bool {
        self.read >= 512 && self.read.is_multiple_of(512) && self.last.iter().all(|b| *b == 0)
    }
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read >= self.limit {
            self.over.set(true);
            return Err(io::Error::other("the image unpacks to more than the limit"));
        }
        let n = self.inner.read(buf)?;
        let got = &buf[..n];
        if n >= 512 {
            self.last.copy_from_slice(&got[n - 512..]);
        } else if n > 0 {
            self.last.copy_within(n.., 0);
            self.last[512 - n..].copy_from_slice(got);
        }
        self.read += n as u64;
        Ok(n)
    }
}

/// Checks a squashfs superblock and that the stream holds as many bytes as it says.
fn check_squashfs(mut input: impl Read) -> Result<()> {
    let mut sb = [0u8; 96];
    input.read_exact(&mut sb).map_err(|e| corrupt(Part::Rootfs, e))?;
    let u16_at = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]);
    let major = u16_at(28);
    if &sb[..4] != b"hsqs" || major != 4 {
        return Err(Error::Corrupt {
            part: "rootfs",
            detail: format!("not a squashfs 4 file system (version {major})"),
        });
    }
    let mut used = [0u8; 8];
    used.copy_from_slice(&sb[40..48]);
    let bytes_used = u64::from_le_bytes(used);
    let rest = io::copy(&mut input, &mut io::sink()).map_err(|e| corrupt(Part::Rootfs, e))?;
    let total = rest + 96;
    if total < bytes_used {
        return Err(Error::Corrupt {
            part: "rootfs",
            detail: format!("the squashfs says it has {bytes_used} bytes but {total} arrived (truncated)"),
        });
    }
    Ok(())
}
