//! Facts about the host a member runs on, and the few commands it runs on the host.
//!
//! - [`info`]: what does not change while the daemon runs (host name, kernel, OS, the
//!   architectures), and `sysinfo` (uptime, load, memory) for the member state.
//! - [`addresses`]: where clients can reach the API, from the host's interfaces.
//! - [`resources`]: `GET /1.0/resources`, the hardware from procfs and sysfs.
//! - [`cgroup`]: the host's control-group layout (v1, v2 or both) and where a process's
//!   cgroups are, for the limits and usage figures of instances.
//! - [`ip`]: the `ip` command runner, for `core.anycast_address`.
//! - [`read`]: bounded reads of procfs, sysfs and cgroupfs files, shared by the above.
//!
//! Nothing here knows HTTP or the replicated state: callers pass in what they read from
//! the configuration.

pub mod addresses;
pub mod cgroup;
pub mod info;
pub mod ip;
pub mod read;
pub mod resources;

pub use addresses::listen_addresses;
pub use info::{sysinfo, HostInfo};
