//! Children start with every signal at its default disposition, even when the daemon was
//! started with some ignored.
//!
//! An ignored signal stays ignored across `fork` and `exec`: a daemon started by
//! `nohup` ignores SIGHUP, one started by a non-interactive shell's `&` ignores SIGINT
//! and SIGQUIT, and so would every `lxc-attach`, `lxc-start` and the commands they run
//! in containers (^C typed in `incus exec` would reach a command that ignores it). A
//! *caught* signal, on the other hand, goes back to its default at `exec`. So, once at
//! start, [`catch_ignored`] installs a handler that does nothing for each signal the
//! process ignores: the daemon still ignores them in effect, and whatever it starts
//! from then on gets them at their defaults, with no code between `fork` and `exec`
//! (unsafe code is forbidden here) and no process in front of each tool.
//!
//! Left alone: SIGPIPE (the Rust runtime ignores it on purpose, and `std`'s `Command`
//! sets it back to the default in children), the C library's signals 32 and 33, and what tokio refuses to catch: SIGKILL
//! and SIGSTOP (never ignorable anyway) and SIGILL, SIGFPE and SIGSEGV (a fault the
//! program itself makes is delivered at its default action even when ignored, so only
//! a `kill` of them from outside stays ignored in children).

use tokio::signal::unix::{signal, SignalKind};

/// SIGPIPE's number on Linux.
const SIGPIPE: i32 = 13;
/// The C library's own two real-time signals (thread cancellation and set*id across
/// threads): no program may handle them (`sigaction` refuses), and the C library of
/// each program installs its own handlers, so how they were inherited does not matter.
const C_LIBRARY: [i32; 2] = [32, 33];

/// The signals set in a `/proc/PID/status` text's `SigIgn:` mask (bit n-1 is signal n).
pub fn ignored_in(status: &str) -> Vec<i32> {
    let Some(mask) = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
    else {
        return Vec::new();
    };
    (1..=64).filter(|n| mask & (1u64 << (n - 1)) != 0).collect()
}

/// Whether [`catch_ignored`] catches signal `n` when it was inherited ignored.
fn to_catch(n: i32) -> bool {
    n != SIGPIPE && !C_LIBRARY.contains(&n)
}

/// What [`catch_ignored`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Caught {
    /// Ignored at start, now caught (and still ignored in effect).
    pub caught: Vec<i32>,
    /// Ignored at start and left so, with why.
    pub left: Vec<(i32, String)>,
}

/// Catches, and does nothing with, every signal this process ignores (but SIGPIPE), so
/// that the processes it starts from now on get them at their defaults. Call it inside
/// a tokio runtime with signals enabled, before anything is spawned. The handlers stay
/// installed for the life of the process (tokio never removes one).
pub fn catch_ignored() -> Caught {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut done = Caught::default();
    for n in ignored_in(&status).into_iter().filter(|n| to_catch(*n)) {
        // The stream is dropped at once: the handler tokio installed stays, and a signal
        // with no stream listening is simply dropped, as an ignored one was.
        match signal(SignalKind::from_raw(n)) {
            Ok(_) => done.caught.push(n),
            Err(e) => done.left.push((n, e.to_string())),
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(ignored_in("Name:\tx\nSigIgn:\t0000000000001007\n"), [1, 2, 3, 13]);
        assert_eq!(ignored_in("SigIgn:\t8000000000000000\n"), [64]);
        assert_eq!(ignored_in("SigIgn:\t0000000000000000\n"), Vec::<i32>::new());
        assert_eq!(ignored_in("no mask here"), Vec::<i32>::new());
        assert_eq!(ignored_in("SigIgn:\tzz\n"), Vec::<i32>::new());
    }

    #[test]
    fn what_is_caught() {
        assert!([1, 2, 3, 15, 34, 64].into_iter().all(to_catch));
        // SIGPIPE stays as the runtime set it; the C library's own cannot be handled
        // (they were logged as warnings at every start where they were inherited).
        assert!(![13, 32, 33].into_iter().any(to_catch));
    }
}
