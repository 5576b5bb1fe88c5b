//! What kind of file an image part is, from its first bytes, as Incus decides it
//! (`shared/archive/detect.go`): the compression of a tarball, or a squashfs.
//!
//! Detection is a pure function over the first [`HEADER_LEN`] bytes; [`decoder`] turns
//! a reader of such a file into a reader of the plain tar stream. lz4, qcow2 and vmdk
//! are recognised so that their refusal names them, but not decoded: stapes runs
//! containers only, and no kept pure-Rust lz4 frame decoder is in our tree.

use std::io::{self, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::error::{Error, Result};

/// How many leading bytes [`detect`] looks at (the ustar magic ends at 262).
pub const HEADER_LEN: usize = 263;

/// A part's format. The names follow the extension Incus gives each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Tar,
    TarGz,
    TarBz2,
    TarXz,
    TarLzma,
    TarZst,
    TarLz4,
    Squashfs,
    Qcow2,
    Vmdk,
}

impl Format {
    /// The extension Incus uses for the format (`.tar.xz`), e.g. in export file names.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Tar => ".tar",
            Format::TarGz => ".tar.gz",
            Format::TarBz2 => ".tar.bz2",
            Format::TarXz => ".tar.xz",
            Format::TarLzma => ".tar.lzma",
            Format::TarZst => ".tar.zst",
            Format::TarLz4 => ".tar.lz4",
            Format::Squashfs => ".squashfs",
            Format::Qcow2 => ".qcow2",
            Format::Vmdk => ".vmdk",
        }
    }

    /// Whether stapes can read a tar stream out of this format itself.
    pub fn is_tar(self) -> bool {
        matches!(
            self,
            Format::Tar | Format::TarGz | Format::TarBz2 | Format::TarXz | Format::TarLzma | Format::TarZst
        )
    }
}

/// Detects the format from a file's first bytes (up to [`HEADER_LEN`]; fewer when the
/// file is shorter). The order of the checks is Incus's.
pub fn detect(header: &[u8]) -> Option<Format> {
    let n = header.len();
    let starts = |magic: &[u8]| header.starts_with(magic);
    if starts(b"BZ") {
        Some(Format::TarBz2)
    } else if starts(&[0x1f, 0x8b]) {
        Some(Format::TarGz)
    } else if n >= 5 && &header[1..5] == b"7zXZ" {
        Some(if header[0] == 0xfd {
            Format::TarXz
        } else {
            Format::TarLzma
        })
    } else if starts(&[0x5d, 0x00, 0x00]) {
        Some(Format::TarLzma)
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Format::TarZst)
    } else if starts(&[0x04, 0x22, 0x4d, 0x18]) {
        Some(Format::TarLz4)
    } else if n >= 262 && &header[257..262] == b"ustar" {
        Some(Format::Tar)
    } else if starts(b"hsqs") {
        Some(Format::Squashfs)
    } else if starts(b"QFI") {
        Some(Format::Qcow2)
    } else if starts(b"KDMV") {
        Some(Format::Vmdk)
    } else {
        None
    }
}

/// Most memory the xz and lzma decoders may use (xz's own default for `-d` is none;
/// images are made with presets up to 9, which need 65 MiB).
const LZMA_MEMLIMIT: u64 = 256 << 20;

/// A reader of the plain tar stream inside `inner`, which holds a file of `format`.
/// Gzip members are read one after the other (pigz and concatenated files).
pub fn decoder<'a, R: Read + 'a>(format: Format, inner: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match format {
        Format::Tar => Box::new(inner),
        Format::TarGz => Box::new(flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(
            1 << 16,
            inner,
        ))),
        Format::TarBz2 => Box::new(bzip2::read::MultiBzDecoder::new(inner)),
        Format::TarXz => {
            let stream =
                liblzma::stream::Stream::new_stream_decoder(LZMA_MEMLIMIT, liblzma::stream::CONCATENATED)
                    .map_err(io::Error::other)?;
            Box::new(liblzma::bufread::XzDecoder::new_stream(
                BufReader::with_capacity(1 << 16, inner),
                stream,
            ))
        }
        Format::TarLzma => {
            let stream =
                liblzma::stream::Stream::new_lzma_decoder(LZMA_MEMLIMIT).map_err(io::Error::other)?;
            Box::new(liblzma::bufread::XzDecoder::new_stream(
                BufReader::with_capacity(1 << 16, inner),
                stream,
            ))
        }
        Format::TarZst => Box::new(zstd::stream::read::Decoder::new(inner)?),
        Format::TarLz4 | Format::Squashfs | Format::Qcow2 | Format::Vmdk => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{} is not read as a tarball", format.extension()),
            ))
        }
    })
}

/// `sqfs2tar`: a squashfs read as a tar stream (the root as `./`), as Incus reads one.
pub(crate) struct Sqfs2tar {
    child: Child,
}

impl Sqfs2tar {
    /// Starts it on `path`; the tar stream is on the returned pipe.
    pub(crate) fn spawn(path: &Path) -> Result<(Sqfs2tar, ChildStdout)> {
        let mut child = Command::new("sqfs2tar")
            .args(["--no-skip", "--root-becomes", "."])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Tool {
                tool: "sqfs2tar",
                detail: format!("cannot start it ({e}); install squashfs-tools-ng"),
            })?;
        let out = child.stdout.take().ok_or(Error::Tool {
            tool: "sqfs2tar",
            detail: "no output".into(),
        })?;
        Ok((Sqfs2tar { child }, out))
    }

    /// Waits for it; `Err` holds what it said when it failed.
    pub(crate) fn finish(self) -> Result<std::result::Result<(), String>> {
        let out = self
            .child
            .wait_with_output()
            .map_err(Error::io("waiting for sqfs2tar"))?;
        Ok(if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ustar() -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[257..262].copy_from_slice(b"ustar");
        h
    }

    #[test]
    fn t10_magics() {
        assert_eq!(detect(b"BZh91AY"), Some(Format::TarBz2));
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Some(Format::TarGz));
        assert_eq!(detect(&[0xfd, b'7', b'z', b'X', b'Z', 0]), Some(Format::TarXz));
        assert_eq!(detect(&[0x5d, 0, 0, 0x80]), Some(Format::TarLzma));
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Some(Format::TarZst));
        assert_eq!(detect(&[0x04, 0x22, 0x4d, 0x18]), Some(Format::TarLz4));
        assert_eq!(detect(&ustar()), Some(Format::Tar));
        assert_eq!(detect(b"hsqs\0\0\0\0"), Some(Format::Squashfs));
        assert_eq!(detect(b"QFI\xfb"), Some(Format::Qcow2));
    }

    #[test]
    fn t30_unknown_and_short() {
        assert_eq!(detect(b""), None);
        assert_eq!(detect(b"B"), None);
        assert_eq!(detect(b"PK\x03\x04 a zip file"), None);
        // A ustar magic needs the whole 262 bytes.
        assert_eq!(detect(&ustar()[..261]), None);
        // Old-style tar without the ustar magic is not an image format for Incus either.
        assert_eq!(detect(&[0u8; 512]), None);
    }

    #[test]
    fn t30_not_decoded() {
        for f in [Format::TarLz4, Format::Squashfs, Format::Qcow2] {
            assert!(decoder(f, &b""[..]).is_err());
            assert!(!f.is_tar());
        }
    }
}
