//! The local unix socket: created with a mode and group, and the peer's credentials.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::{UnixListener, UnixStream};

/// Binds the socket at `path` (replacing a stale one), mode 0660, owned by `group` when
/// one is given.
pub fn bind(path: &Path, group: Option<&str>) -> std::io::Result<UnixListener> {
    if path.exists() {
        // A live daemon answers on it; a stale socket refuses.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    if let Some(name) = group {
        let gid = nix::unistd::Group::from_name(name)
            .map_err(std::io::Error::other)?
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("No group named {name:?}"))
            })?
            .gid;
        std::os::unix::fs::chown(path, None, Some(gid.as_raw()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// The user name of the process at the other end (its uid when it has no name).
pub fn peer_user(stream: &UnixStream) -> std::io::Result<String> {
    let cred = stream.peer_cred()?;
    let uid = cred.uid();
    Ok(nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string()))
}
