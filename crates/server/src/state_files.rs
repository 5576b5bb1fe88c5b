//! What is in the state directory at start: a new member (nothing yet), an existing one
//! (its identity and its database), or one whose files are missing or empty. The last
//! must not start: starting it as new would silently drop every trusted certificate and,
//! in a cluster, its place in the log.
//!
//! ```text
//!  server.crt  server.key  database/state.redb  database/raft.redb
//!   none of them ───────────────────────────────────────────────> new member
//!   crt, key and state.redb (raft.redb checked once the state says "clustered") ──> start
//!   anything else, or any of them empty ────────────────────────> refuse: which file, what to do
//! ```

use std::path::{Path, PathBuf};

/// What a file looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Missing,
    Empty,
    Present,
}

impl Seen {
    pub fn of(path: &Path) -> Seen {
        match std::fs::metadata(path) {
            Ok(m) if m.len() == 0 => Seen::Empty,
            Ok(_) => Seen::Present,
            Err(_) => Seen::Missing,
        }
    }
}

/// The files that make a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Files {
    pub server_crt: Seen,
    pub server_key: Seen,
    pub state_db: Seen,
    pub raft_db: Seen,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{} is {what}. {advice}", file.display())]
pub struct Damaged {
    pub file: PathBuf,
    pub what: &'static str,
    pub advice: &'static str,
}

const IDENTITY: &str =
    "It is this member's identity: restore server.crt and server.key from a backup of the \
     state directory. To start over as a new member instead, move the whole state directory aside (a cluster \
     member must then be removed on another member with `incus cluster remove NAME --force` and join again)";
const DATABASE: &str =
    "Restore it from a backup of the state directory. To start over as a new member instead, \
     move the whole state directory aside (a cluster member must then be removed on another member with \
     `incus cluster remove NAME --force` and join again)";

/// Whether the member in `dir` may start: `Ok(true)` when it is new, `Ok(false)` when
/// it has what it needs (so far as names and sizes tell), else which file is wrong.
pub fn judge(dir: &Path, files: Files) -> Result<bool, Damaged> {
    let all = [files.server_crt, files.server_key, files.state_db, files.raft_db];
    if all.iter().all(|s| *s == Seen::Missing) {
        return Ok(true);
    }
    let named = [
        (files.server_crt, "server.crt", IDENTITY),
        (files.server_key, "server.key", IDENTITY),
        (files.state_db, "database/state.redb", DATABASE),
        (files.raft_db, "database/raft.redb", DATABASE),
    ];
    // The raft database is judged by the store, which knows the member's name for the
    // advice (and whether the member is clustered at all).
    for (seen, name, advice) in &named[..3] {
        if *seen == Seen::Empty {
            return Err(Damaged {
                file: dir.join(name),
                what: "empty",
                advice,
            });
        }
    }
    // The raft database exists only in a cluster; the store checks it against the state.
    for (seen, name, advice) in &named[..3] {
        if *seen == Seen::Missing {
            return Err(Damaged {
                file: dir.join(name),
                what: "missing",
                advice,
            });
        }
    }
    Ok(false)
}

/// Looks at the files in `dir` and judges them.
pub fn check(dir: &Path) -> Result<bool, Damaged> {
    let files = Files {
        server_crt: Seen::of(&dir.join("server.crt")),
        server_key: Seen::of(&dir.join("server.key")),
        state_db: Seen::of(&dir.join("database").join("state.redb")),
        raft_db: Seen::of(&dir.join("database").join("raft.redb")),
    };
    judge(dir, files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Seen::*;

    fn files(crt: Seen, key: Seen, state: Seen, raft: Seen) -> Files {
        Files {
            server_crt: crt,
            server_key: key,
            state_db: state,
            raft_db: raft,
        }
    }

    #[test]
    fn nothing_at_all_is_a_new_member() {
        assert_eq!(
            judge(Path::new("/d"), files(Missing, Missing, Missing, Missing)),
            Ok(true)
        );
    }

    #[test]
    fn a_complete_member_starts() {
        assert_eq!(
            judge(Path::new("/d"), files(Present, Present, Present, Missing)),
            Ok(false)
        );
        assert_eq!(
            judge(Path::new("/d"), files(Present, Present, Present, Present)),
            Ok(false)
        );
    }

    #[test]
    fn an_empty_or_missing_file_is_named() {
        let e = judge(Path::new("/d"), files(Present, Present, Empty, Present)).unwrap_err();
        assert_eq!(
            (e.file.as_path(), e.what),
            (Path::new("/d/database/state.redb"), "empty")
        );
        // An empty raft database is left to the store, which names the member.
        assert_eq!(
            judge(Path::new("/d"), files(Present, Present, Present, Empty)),
            Ok(false)
        );
        let e = judge(Path::new("/d"), files(Present, Present, Missing, Present)).unwrap_err();
        assert_eq!(
            (e.file.as_path(), e.what),
            (Path::new("/d/database/state.redb"), "missing")
        );
        let e = judge(Path::new("/d"), files(Present, Missing, Present, Missing)).unwrap_err();
        assert_eq!(e.file, Path::new("/d/server.key"));
        // Only a database left: not new.
        assert!(judge(Path::new("/d"), files(Missing, Missing, Present, Missing)).is_err());
        assert!(e.to_string().contains("restore server.crt and server.key"));
    }
}
