//! The LXC configuration file of one container, written from what the member knows (a
//! pure function, so every line is unit-tested).
//!
//! It follows what Incus 6.0 writes for a container without devices: logs and console
//! log in the container's runtime directory, `proc:rw sys:rw cgroup:mixed`, an automatic
//! `/dev`,
//! unprivileged by default with the id map 0→1000000 for 1000000000 ids and an idmapped
//! root file system (files keep the container's own ids on disk), AppArmor unconfined
//! where the kernel has none. On top, and unlike Incus, no network device at all, and
//! cgroup directories of our own:
//!
//! ```text
//!  <hierarchy>/<prefix>/<name>/container   the container's processes and limits
//!  <hierarchy>/<prefix>/<name>/monitor     LXC's monitor process
//!  <hierarchy>/<prefix>/<name>/lxc.pivot   where the monitor moves itself at stop
//! ```
//!
//! `<prefix>` is per member (see [`super::cgroup_prefix`]), so two members on one host,
//! or Incus beside stapes, never share a cgroup even for containers of the same name,
//! and everything of one container is under one directory that delete removes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use host::cgroup::Version;

/// The host user and group ids an unprivileged container's id 0 maps to, and how many.
pub const IDMAP_BASE: u32 = 1_000_000;
pub const IDMAP_RANGE: u32 = 1_000_000_000;

/// Capabilities a privileged container loses, as Incus drops them.
const PRIVILEGED_CAP_DROP: &str = "sys_time sys_module sys_rawio mac_admin mac_override";

/// The devices a privileged container may use (everything else is denied), as Incus
/// allows them.
const PRIVILEGED_DEVICES: &[&str] = &[
    "b *:* m",
    "c *:* m",
    "c 136:* rwm",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 10:229 rwm",
    "c 10:200 rwm",
];

/// Everything the file depends on.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub name: &'a str,
    pub rootfs: &'a Path,
    /// The container's runtime directory (`LXCPATH/NAME`).
    pub runtime_dir: &'a Path,
    pub cgroup_prefix: &'a str,
    pub privileged: bool,
    /// Whether the kernel has AppArmor enabled.
    pub apparmor: bool,
    /// LXC's name for the architecture (`linux64`), when known.
    pub arch: Option<&'a str>,
    /// Where the memory, cpuset and devices controllers are, if anywhere.
    pub memory: Option<Version>,
    pub cpuset: Option<Version>,
    pub devices: Option<Version>,
    /// The memory limit in bytes and the CPUs (`0-1`), resolved.
    pub memory_limit: Option<u64>,
    pub cpus: Option<&'a str>,
    /// Files and directories of a running lxcfs bound over the container's own
    /// ([`lxcfs_binds`]); empty without lxcfs.
    pub lxcfs: &'a [Bind],
}

/// A bind mount into the container: `source` on the host over `target`, relative to
/// the container's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: String,
    pub dir: bool,
}

/// What LXC's lxcfs mount hook (`/usr/share/lxcfs/lxc.mount.hook`) binds from an lxcfs
/// mounted at `lxcfs`: every file of its `proc/` over the container's `/proc`, and its
/// `sys/devices/system/cpu` (whole when it has `uevent`, else entry by entry). Nothing
/// when no lxcfs runs there (no `proc/`), or for a path that cannot be written on a mount
/// line. Read at each start, so an lxcfs started later counts from the next start.
pub fn lxcfs_binds(lxcfs: &Path) -> Vec<Bind> {
    let mut out = Vec::new();
    let usable = |p: &Path| p.to_str().is_some_and(|t| !t.contains(char::is_whitespace));
    if !usable(lxcfs) {
        return out;
    }
    let entries = |dir: &Path| -> Vec<(String, bool)> {
        let mut list: Vec<(String, bool)> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_str()?.to_string();
                        let is_dir = e.file_type().ok()?.is_dir();
                        (!name.contains(char::is_whitespace)).then_some((name, is_dir))
                    })
                    .collect()
            })
            .unwrap_or_default();
        list.sort();
        list.dedup();
        list
    };
    let proc = lxcfs.join("proc");
    for (name, dir) in entries(&proc) {
        out.push(Bind {
            source: proc.join(&name),
            target: format!("proc/{name}"),
            dir,
        });
    }
    if out.is_empty() {
        return out;
    }
    let cpu = lxcfs.join("sys/devices/system/cpu");
    if cpu.join("uevent").exists() {
        out.push(Bind {
            source: cpu,
            target: "sys/devices/system/cpu".into(),
            dir: true,
        });
    } else {
        for (name, dir) in entries(&cpu) {
            out.push(Bind {
                source: cpu.join(&name),
                target: format!("sys/devices/system/cpu/{name}"),
                dir,
            });
        }
    }
    out
}

/// The container's cgroup (processes and limits), relative to a hierarchy's base.
pub fn container_cgroup(prefix: &str, name: &str) -> String {
    format!("{prefix}/{name}/container")
}

/// The directory holding all of a container's cgroups, relative to a hierarchy's base.
pub fn instance_cgroup(prefix: &str, name: &str) -> String {
    format!("{prefix}/{name}")
}

fn cgroup_key(version: Option<Version>, file: &str) -> String {
    match version {
        Some(Version::V1) => format!("lxc.cgroup.{file}"),
        // Where the controller is unknown, v2 keys: LXC implements v2 device rules with
        // eBPF, whatever the hierarchy offers.
        Some(Version::V2) | None => format!("lxc.cgroup2.{file}"),
    }
}

/// The configuration file's text.
pub fn render(input: &Input<'_>) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(out, "{key} = {value}");
    };
    let dir = input.runtime_dir.display();
    line("lxc.uts.name", input.name);
    if let Some(arch) = input.arch {
        line("lxc.arch", arch);
    }
    line("lxc.rootfs.path", &format!("dir:{}", input.rootfs.display()));
    line("lxc.init.cmd", "/sbin/init");
    line("lxc.net.0.type", "empty");
    line("lxc.log.file", &format!("{dir}/lxc.log"));
    line("lxc.log.level", "warn");
    line("lxc.console.logfile", &format!("{dir}/console.log"));
    line("lxc.console.size", "auto");
    line("lxc.console.buffer.size", "auto");
    line("lxc.mount.auto", "proc:rw sys:rw cgroup:mixed");
    line("lxc.autodev", "1");
    line("lxc.pty.max", "1024");
    line("lxc.tty.max", "0");
    line(
        "lxc.apparmor.profile",
        if input.apparmor { "generated" } else { "unconfined" },
    );
    line(
        "lxc.cgroup.dir.container",
        &container_cgroup(input.cgroup_prefix, input.name),
    );
    line(
        "lxc.cgroup.dir.monitor",
        &format!("{}/monitor", instance_cgroup(input.cgroup_prefix, input.name)),
    );
    line(
        "lxc.cgroup.dir.monitor.pivot",
        &instance_cgroup(input.cgroup_prefix, input.name),
    );
    if input.privileged {
        line("lxc.cap.drop", PRIVILEGED_CAP_DROP);
        let deny = cgroup_key(input.devices, "devices.deny");
        let allow = cgroup_key(input.devices, "devices.allow");
        line(&deny, "a");
        for device in PRIVILEGED_DEVICES {
            line(&allow, device);
        }
    } else {
        line("lxc.idmap", &format!("u 0 {IDMAP_BASE} {IDMAP_RANGE}"));
        line("lxc.idmap", &format!("g 0 {IDMAP_BASE} {IDMAP_RANGE}"));
        line("lxc.rootfs.options", "idmap=container");
    }
    if let Some(bytes) = input.memory_limit {
        let key = match input.memory {
            Some(Version::V1) => "lxc.cgroup.memory.limit_in_bytes".to_string(),
            _ => "lxc.cgroup2.memory.max".to_string(),
        };
        line(&key, &bytes.to_string());
    }
    if let Some(cpus) = input.cpus {
        line(&cgroup_key(input.cpuset, "cpuset.cpus"), cpus);
    }
    // After `lxc.mount.auto`: LXC mounts /proc and /sys first, then these over them.
    for bind in input.lxcfs {
        line(
            "lxc.mount.entry",
            &format!(
                "{} {} none bind,optional,create={} 0 0",
                bind.source.display(),
                bind.target,
                if bind.dir { "dir" } else { "file" }
            ),
        );
    }
    out
}

/// Whether a value can go on one configuration line as it is.
pub fn fits_a_line(value: &str) -> bool {
    !value.contains(['\n', '\r', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(privileged: bool) -> Input<'a> {
        Input {
            name: "c1",
            rootfs: Path::new("/var/lib/stapes/storage/c1/rootfs"),
            runtime_dir: Path::new("/var/lib/stapes/lxc/c1"),
            cgroup_prefix: "stapes-0123456789ab",
            privileged,
            apparmor: false,
            arch: Some("linux64"),
            memory: Some(Version::V1),
            cpuset: Some(Version::V1),
            devices: Some(Version::V1),
            memory_limit: None,
            cpus: None,
            lxcfs: &[],
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn unprivileged_by_default_like_incus() {
        let text = render(&input(false));
        let l = lines(&text);
        for expected in [
            "lxc.uts.name = c1",
            "lxc.arch = linux64",
            "lxc.rootfs.path = dir:/var/lib/stapes/storage/c1/rootfs",
            "lxc.init.cmd = /sbin/init",
            "lxc.net.0.type = empty",
            "lxc.log.file = /var/lib/stapes/lxc/c1/lxc.log",
            "lxc.console.logfile = /var/lib/stapes/lxc/c1/console.log",
            "lxc.mount.auto = proc:rw sys:rw cgroup:mixed",
            "lxc.apparmor.profile = unconfined",
            "lxc.idmap = u 0 1000000 1000000000",
            "lxc.idmap = g 0 1000000 1000000000",
            "lxc.rootfs.options = idmap=container",
            "lxc.cgroup.dir.container = stapes-0123456789ab/c1/container",
            "lxc.cgroup.dir.monitor = stapes-0123456789ab/c1/monitor",
            "lxc.cgroup.dir.monitor.pivot = stapes-0123456789ab/c1",
        ] {
            assert!(l.contains(&expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("lxc.cap.drop"));
        assert!(!text.contains("devices"));
        assert!(!text.contains("limit"));
    }

    #[test]
    fn privileged_drops_capabilities_and_allows_few_devices() {
        let text = render(&input(true));
        assert!(!text.contains("lxc.idmap"));
        assert!(text.contains("lxc.cap.drop = sys_time sys_module sys_rawio mac_admin mac_override\n"));
        assert!(text.contains("lxc.cgroup.devices.deny = a\n"));
        assert!(text.contains("lxc.cgroup.devices.allow = c 136:* rwm\n"));
        assert_eq!(text.matches("devices.allow").count(), PRIVILEGED_DEVICES.len());
        let v2 = render(&Input {
            devices: None,
            ..input(true)
        });
        assert!(v2.contains("lxc.cgroup2.devices.deny = a\n"));
    }

    #[test]
    fn limits_use_the_keys_of_their_cgroup_version() {
        let v1 = render(&Input {
            memory_limit: Some(256 << 20),
            cpus: Some("0"),
            ..input(false)
        });
        assert!(v1.contains("lxc.cgroup.memory.limit_in_bytes = 268435456\n"));
        assert!(v1.contains("lxc.cgroup.cpuset.cpus = 0\n"));
        let v2 = render(&Input {
            memory: Some(Version::V2),
            cpuset: Some(Version::V2),
            memory_limit: Some(256 << 20),
            cpus: Some("0-1"),
            ..input(false)
        });
        assert!(v2.contains("lxc.cgroup2.memory.max = 268435456\n"));
        assert!(v2.contains("lxc.cgroup2.cpuset.cpus = 0-1\n"));
    }

    #[test]
    fn apparmor_is_generated_where_the_kernel_has_it() {
        let text = render(&Input {
            apparmor: true,
            ..input(false)
        });
        assert!(text.contains("lxc.apparmor.profile = generated\n"));
    }

    #[test]
    fn lxcfs_files_are_bound_over_proc_and_the_cpus() {
        let binds = [
            Bind {
                source: "/var/lib/lxcfs/proc/meminfo".into(),
                target: "proc/meminfo".into(),
                dir: false,
            },
            Bind {
                source: "/var/lib/lxcfs/sys/devices/system/cpu/cpu0".into(),
                target: "sys/devices/system/cpu/cpu0".into(),
                dir: true,
            },
        ];
        let text = render(&Input {
            lxcfs: &binds,
            ..input(false)
        });
        assert!(text.contains(
            "lxc.mount.entry = /var/lib/lxcfs/proc/meminfo proc/meminfo none bind,optional,create=file 0 0\n"
        ));
        assert!(text.contains(
            "lxc.mount.entry = /var/lib/lxcfs/sys/devices/system/cpu/cpu0 sys/devices/system/cpu/cpu0 none bind,optional,create=dir 0 0\n"
        ));
        assert!(!render(&input(false)).contains("lxc.mount.entry"));
    }

    #[test]
    fn lxcfs_binds_follow_the_mounted_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // Not running: no proc/, nothing bound.
        assert!(lxcfs_binds(root).is_empty());
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::create_dir_all(root.join("sys/devices/system/cpu/cpu0")).unwrap();
        for f in ["proc/meminfo", "proc/cpuinfo", "sys/devices/system/cpu/online"] {
            std::fs::write(root.join(f), "").unwrap();
        }
        let targets: Vec<(String, bool)> = lxcfs_binds(root).into_iter().map(|b| (b.target, b.dir)).collect();
        assert_eq!(
            targets,
            [
                ("proc/cpuinfo".to_string(), false),
                ("proc/meminfo".to_string(), false),
                ("sys/devices/system/cpu/cpu0".to_string(), true),
                ("sys/devices/system/cpu/online".to_string(), false),
            ]
        );
        // With `uevent`, the directory as a whole.
        std::fs::write(root.join("sys/devices/system/cpu/uevent"), "").unwrap();
        let last = lxcfs_binds(root).pop().unwrap();
        assert_eq!((last.target.as_str(), last.dir), ("sys/devices/system/cpu", true));
        // A path a mount line cannot carry is left out.
        let spaced = root.join("with space");
        std::fs::create_dir_all(spaced.join("proc")).unwrap();
        std::fs::write(spaced.join("proc/meminfo"), "").unwrap();
        assert!(lxcfs_binds(&spaced).is_empty());
    }

    #[test]
    fn lines_refuse_breaks() {
        assert!(fits_a_line("/srv/c1/rootfs"));
        assert!(!fits_a_line("/srv/c1\nlxc.hook.pre-start = /bin/evil"));
    }
}
