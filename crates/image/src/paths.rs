//! The path rules of an unpack, as pure functions over an archive member's name.
//!
//! A member name is split into components; a name that is absolute, holds a `..`
//! component or a NUL byte, or has a component longer than a file name may be, is
//! refused, never rewritten. `.` and empty components are dropped, so `./etc//hosts`
//! is `etc/hosts`. What is left is always resolved under the target's directory file
//! descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (see `unpack`):
//! these rules keep a name inside the target on paper, the kernel keeps it there on
//! disk, and together no member can name a place outside.
//!
//! In a unified image, members under `rootfs/` belong to the container's root file
//! system and are resolved under `<target>/rootfs`; the rest (`metadata.yaml`,
//! `templates/`) under the target itself, as Incus lays a container volume out.

/// Where a member lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// The volume directory (`metadata.yaml`, `templates/`).
    Volume,
    /// The container's root file system (`<volume>/rootfs`).
    Rootfs,
}

/// Longest file name Linux accepts (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Splits a member name into its components, or says why it is refused. An empty
/// result names the archive's root (`.` or `./`).
pub fn components(name: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.contains(&0) {
        return Err("NUL byte in name");
    }
    if name[0] == b'/' {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` component"),
            c if c.len() > NAME_MAX => return Err("name component too long"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Places a member of a unified image (or of a split image's metadata tarball): members
/// under `rootfs/` go to the root file system, with that prefix taken off.
pub fn place(name: &[u8]) -> Result<(Root, Vec<&[u8]>), &'static str> {
    let comps = components(name)?;
    match comps.split_first() {
        Some((first, rest)) if *first == b"rootfs" => Ok((Root::Rootfs, rest.to_vec())),
        _ => Ok((Root::Volume, comps)),
    }
}

/// Members under the root file system's `/dev` are skipped, as Incus skips them
/// (`--exclude=rootfs/dev/*`): a container gets its `/dev` from LXC at start, and device
/// nodes there cannot be made in a user namespace anyway. `/dev` itself is kept.
pub fn is_skipped_dev(root: Root, comps: &[&[u8]]) -> bool {
    root == Root::Rootfs && comps.len() >= 2 && comps[0] == b"dev"
}

/// A device node's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// The device nodes an unpacked image may hold outside `/dev`: those every container
/// gets anyway (null, zero, full, random, urandom, tty, console, ptmx) and the 0:0
/// character device overlay file systems use as a whiteout. Block devices never.
pub fn allowed_device(kind: DeviceKind, major: u32, minor: u32) -> bool {
    kind == DeviceKind::Char
        && matches!(
            (major, minor),
            (0, 0) | (1, 3) | (1, 5) | (1, 7) | (1, 8) | (1, 9) | (5, 0) | (5, 1) | (5, 2)
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    fn ok(name: &str) -> Vec<String> {
        components(name.as_bytes())
            .expect(name)
            .into_iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    #[test]
    fn t10_normal_names() {
        assert_eq!(ok("etc/hosts"), ["etc", "hosts"]);
        assert_eq!(ok("./etc//hosts"), ["etc", "hosts"]);
        assert_eq!(ok("etc/./hosts/"), ["etc", "hosts"]);
        assert!(ok(".").is_empty());
        assert!(ok("./").is_empty());
        assert_eq!(ok("a..b/..c/c.."), ["a..b", "..c", "c.."]);
    }

    #[test]
    fn t10_placement() {
        let (root, comps) = place(b"./rootfs/bin/sh").expect("placed");
        assert_eq!((root, comps), (Root::Rootfs, vec![&b"bin"[..], b"sh"]));
        assert_eq!(place(b"rootfs/").expect("root"), (Root::Rootfs, vec![]));
        assert_eq!(
            place(b"metadata.yaml").expect("meta"),
            (Root::Volume, vec![&b"metadata.yaml"[..]])
        );
        assert_eq!(
            place(b"rootfsx/a").expect("not rootfs"),
            (Root::Volume, vec![&b"rootfsx"[..], b"a"])
        );
        assert_eq!(place(b"./").expect("top"), (Root::Volume, vec![]));
    }

    #[test]
    fn t90_escapes_refused() {
        for bad in [
            "../../etc/x",
            "rootfs/../../etc/x",
            "a/b/../../../x",
            "..",
            "./..",
            "/etc/passwd",
            "//etc/passwd",
            "/",
            "",
        ] {
            assert!(components(bad.as_bytes()).is_err(), "{bad:?} accepted");
            assert!(place(bad.as_bytes()).is_err(), "{bad:?} placed");
        }
        assert!(components(b"a\0b").is_err());
        assert!(components(&[b'a'; 256]).is_err());
        assert!(components(&[b'a'; 255]).is_ok());
    }

    #[test]
    fn t10_devices() {
        assert!(allowed_device(DeviceKind::Char, 1, 3));
        assert!(allowed_device(DeviceKind::Char, 0, 0));
        assert!(!allowed_device(DeviceKind::Block, 8, 0));
        assert!(!allowed_device(DeviceKind::Block, 1, 3));
        assert!(!allowed_device(DeviceKind::Char, 1, 1), "/dev/mem");
        assert!(
            !allowed_device(DeviceKind::Char, 10, 200),
            "/dev/net/tun is given by config, not by images"
        );
        assert!(is_skipped_dev(Root::Rootfs, &[b"dev", b"sda"]));
        assert!(!is_skipped_dev(Root::Rootfs, &[b"dev"]));
        assert!(!is_skipped_dev(Root::Volume, &[b"dev", b"sda"]));
    }

    proptest! {
        // Whatever the name, an accepted one joined under a root stays under it, lexically:
        // no component is empty, `.`, `..`, or holds a slash or NUL.
        #[test]
        fn t20_accepted_names_stay_beneath(name in proptest::collection::vec(
            prop_oneof![Just(b'/'), Just(b'.'), Just(b'a'), Just(0u8), any::<u8>()], 0..40)) {
            if let Ok(comps) = components(&name) {
                let mut p = Path::new("/target").to_path_buf();
                for c in &comps {
                    prop_assert!(!c.is_empty() && *c != b"." && *c != b"..");
                    prop_assert!(!c.contains(&b'/') && !c.contains(&0));
                    p.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(c));
                }
                prop_assert!(p.starts_with("/target"));
                prop_assert!(p.components().all(|c| !matches!(c, Component::ParentDir)));
                prop_assert_eq!(p.components().count(), 2 + comps.len());
            }
        }

        // Any name with a `..` component, or starting with `/`, is refused.
        #[test]
        fn t20_dotdot_and_absolute_refused(
            pre in proptest::collection::vec("[a-z.]{0,4}", 0..4),
            post in proptest::collection::vec("[a-z.]{0,4}", 0..4),
        ) {
            let mut parts = pre.clone();
            parts.push("..".into());
            parts.extend(post.clone());
            let joined = parts.join("/");
            prop_assert!(components(joined.as_bytes()).is_err());
            let absolute = format!("/{}", pre.join("/"));
            prop_assert!(components(absolute.as_bytes()).is_err());
        }

        // `rootfs/X` places X under the root file system with exactly X's components.
        #[test]
        fn t20_rootfs_prefix(rest in proptest::collection::vec("[a-z]{1,6}", 0..5)) {
            let name = format!("./rootfs/{}", rest.join("/"));
            let (root, comps) = place(name.as_bytes()).expect("placed");
            prop_assert_eq!(root, Root::Rootfs);
            prop_assert_eq!(comps.len(), rest.len());
        }
    }
}
