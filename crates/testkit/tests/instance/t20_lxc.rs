//! The conformance suite (`instance::conformance`) against the LXC driver, with the
//! daemon's own binary as the file helper (`stapesd forkfile`).

use instance::conformance::LxcBackend;
use instance::forkfile::Helper;

fn backend() -> Option<LxcBackend> {
    LxcBackend::new(Helper {
        program: stapes_testkit::bin("stapesd").into(),
        args: vec!["forkfile".into()],
    })
}

instance::conformance_tests!(backend());
