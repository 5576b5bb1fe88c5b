//! The dir driver on real directories: pools made, checked, measured and removed;
//! container volumes made, renamed, copied whole and deleted.

mod t10_pools;
mod t10_volumes;
mod t20_snapshots;
mod t30_errors;

/// Whether the test runs as root (owners, device nodes, 0100 directories). Not root
/// under `CI=true`: a failure.
pub fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "this test needs root under CI=true"
        );
        eprintln!("SKIP: not root; run as root to check owners, modes and device nodes");
    }
    root
}

/// A state directory with a `dir` pool config.
pub fn setup(
    name: &str,
    source: Option<std::path::PathBuf>,
) -> (tempfile::TempDir, Box<dyn stapes_storage::Pool>) {
    let state = tempfile::tempdir().expect("tempdir");
    let pool = stapes_storage::open(
        state.path(),
        &stapes_storage::PoolConfig {
            name: name.into(),
            driver: "dir".into(),
            source,
        },
    )
    .expect("open");
    (state, pool)
}
