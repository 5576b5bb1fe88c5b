//! The conformance suite against the in-process driver: runs on any machine.

use stapes_instance::conformance::FakeBackend;

stapes_instance::conformance_tests!(Some(FakeBackend::new()));
