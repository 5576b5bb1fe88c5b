//! Descriptors a process inherited beyond stdin, stdout and stderr are closed at start.
//!
//! A parent that leaves one open without close-on-exec (a shell's redirection, a
//! supervisor's pipe) would otherwise hand it on to every tool the daemon starts and,
//! through them, to commands in containers: `lxc-attach` passes its own descriptors on
//! to what it runs, and so would the exec helper ([`crate::execd`]), so a host file would
//! be open inside a container. Everything the daemon opens itself is close-on-exec.

/// Closes every descriptor above 2. Call it first thing in `main`, before anything is
/// opened.
pub fn close_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let inherited: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    // The listing's own descriptor is among them, closed already with it: closing its
    // number again fails, harmlessly, as nothing has been opened since.
    for fd in inherited {
        let _ = nix::unistd::close(fd);
    }
}
