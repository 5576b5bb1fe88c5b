//! An import holds a few chunks in memory, not the image: a 256 MiB upload, produced
//! chunk by chunk as it is read, raises this process's peak resident memory by far less
//! than its size. Its own test binary, so no other test's memory is counted.

use bytes::Bytes;
use futures_util::stream;
use stapes_image::{import, ImportOptions, Upload};

const MIB: usize = 1 << 20;

fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok())
        .expect("kB")
        * 1024
}

/// A tarball: metadata.yaml, rootfs/, one 256 MiB file, the end blocks; produced lazily.
fn chunks() -> impl Iterator<Item = Bytes> {
    let header = |name: &str, size: u64, kind: tar::EntryType| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).expect("path");
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(kind);
        h.set_mtime(1);
        h.set_cksum();
        Bytes::copy_from_slice(h.as_bytes())
    };
    let meta = b"architecture: x86_64\ncreation_date: 1\n";
    let mut meta_block = meta.to_vec();
    meta_block.resize(512, 0);
    let head = vec![
        header("metadata.yaml", meta.len() as u64, tar::EntryType::Regular),
        Bytes::from(meta_block),
        header("rootfs/", 0, tar::EntryType::Directory),
        header("rootfs/big", (256 * MIB) as u64, tar::EntryType::Regular),
    ];
    let body = (0..256).map(|i| Bytes::from(vec![(i % 251) as u8; MIB]));
    head.into_iter()
        .chain(body)
        .chain(std::iter::once(Bytes::from(vec![0u8; 1024])))
}

#[tokio::test]
async fn t50_import_streams_to_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = peak_rss();
    let body = stream::iter(chunks().map(Ok::<_, std::io::Error>));
    let img = import(dir.path(), Upload::Unified(body), &ImportOptions::default())
        .await
        .expect("import");
    let grew = peak_rss().saturating_sub(before);
    assert!(img.size > (256 * MIB) as u64);
    eprintln!(
        "peak RSS grew by {} MiB for a {} MiB import",
        grew / MIB,
        img.size / MIB as u64
    );
    assert!(grew < 64 * MIB, "peak RSS grew by {grew} bytes");
}
