//! The instance driver of a member: which one a daemon runs, and the LXC driver against
//! the conformance suite with real containers.
//!
//! Numbering: t10 driver choice, t20 the LXC driver's conformance (root, Debian's `lxc`
//! and `busybox-static`; skipped with a message without them, failing under `CI=true`).

mod t10_driver;
mod t20_lxc;
