//! The host's control groups: which hierarchies are mounted where (cgroup v1, v2, or the
//! hybrid of both), where a process's cgroups are, and the usage figures and limits of a
//! cgroup whatever its version.
//!
//! ```text
//!  /proc/self/mountinfo ──parse──> Layout { hierarchies: [v1 "memory" at /sys/fs/cgroup/memory,
//!                                                         v2 at /sys/fs/cgroup/unified, ...] }
//!  /proc/PID/cgroup ──parse──> [Membership { controllers, path }]
//!  Layout::dirs(memberships) ──> Dirs { per hierarchy: mountpoint + path below the mount root }
//!  Dirs::usage() / set_memory_limit() / set_cpus(): v1 or v2 file names chosen per controller
//! ```
//!
//! A controller lives in at most one place: on a v1 hierarchy that names it, else on the
//! v2 hierarchy if its root offers it (`cgroup.controllers`). A hybrid host (v1 for the
//! controllers, an empty v2 mount at `/sys/fs/cgroup/unified`) and a pure v2 host are both
//! handled: the file names differ (`memory.usage_in_bytes` or `memory.current`), the
//! meaning does not. The parsing is pure and unit-tested; only [`Layout::read`],
//! [`Dirs::usage`] and the setters touch the file system.

use std::path::{Path, PathBuf};

use crate::read::{read_trimmed, read_u64};

/// The cgroup version of a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// v1: the controllers of the mount (and `name=X` for a named hierarchy); v2: the
    /// controllers its root offers.
    pub controllers: Vec<String>,
    pub mountpoint: PathBuf,
    /// The path inside the hierarchy that is mounted (`/` on a host; a sub-path in a
    /// container that sees only its own part).
    pub root: String,
}

/// The cgroup hierarchies mounted on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub hierarchies: Vec<Hierarchy>,
}

/// A line of `/proc/PID/cgroup`: the process's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Empty for the v2 line (`0::/path`).
    pub controllers: Vec<String>,
    pub path: String,
}

/// Where one process's (or one would-be process's) cgroups are on the host, per hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirs {
    pub dirs: Vec<(Hierarchy, PathBuf)>,
}

/// What a cgroup has used; `None` where the controller is not there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of memory in use now.
    pub memory: Option<u64>,
    /// The most bytes ever in use.
    pub memory_peak: Option<u64>,
    /// The memory limit in bytes; `None` when unlimited or unknown.
    pub memory_limit: Option<u64>,
    /// Processes (tasks) in the cgroup.
    pub processes: Option<u64>,
    /// CPU time used, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// The CPUs the cgroup may run on (`0-1,3`).
    pub cpus: Option<String>,
}

/// A failed write to a cgroup file.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("the {0} cgroup controller is not available on this host")]
    NoController(&'static str),
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
}

/// v1 reports "no limit" as the largest page-aligned `i64`; anything this large is none.
const V1_UNLIMITED: u64 = 1 << 62;

impl Layout {
    /// The hierarchies mounted in this process's mount namespace.
    pub fn read() -> Layout {
        let text =
            crate::read::read_bounded(Path::new("/proc/self/mountinfo"), 4 * 1024 * 1024).unwrap_or_default();
        let mut layout = Layout::parse(&text);
        for h in &mut layout.hierarchies {
            if h.version == Version::V2 {
                h.controllers = read_trimmed(&h.mountpoint.join("cgroup.controllers"))
                    .map(|c| c.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default();
            }
        }
        layout
    }

    /// The cgroup mounts of a `mountinfo` text. v2 controllers are left empty (they are
    /// not in `mountinfo`); [`Layout::read`] fills them. A hierarchy mounted twice counts
    /// once (the first mount).
    pub fn parse(mountinfo: &str) -> Layout {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for line in mountinfo.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if fields.len() < 5 || right.len() < 3 {
                continue;
            }
            let (root, mountpoint) = (unescape(fields[3]), unescape(fields[4]));
            let hierarchy = match right[0] {
                "cgroup2" => Hierarchy {
                    version: Version::V2,
                    controllers: Vec::new(),
                    mountpoint: PathBuf::from(mountpoint),
                    root,
                },
                "cgroup" => Hierarchy {
                    version: Version::V1,
                    controllers: v1_controllers(right[2]),
                    mountpoint: PathBuf::from(mountpoint),
                    root,
                },
                _ => continue,
            };
            let seen = hierarchies
                .iter()
                .any(|h| h.version == hierarchy.version && h.controllers == hierarchy.controllers);
            if !seen {
                hierarchies.push(hierarchy);
            }
        }
        Layout { hierarchies }
    }

    /// The hierarchy that holds `controller`: a v1 one naming it, else v2 if it offers it.
    pub fn controller(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.version == Version::V1 && h.controllers.iter().any(|c| c == controller))
            .or_else(|| {
                self.hierarchies
                    .iter()
                    .find(|h| h.version == Version::V2 && h.controllers.iter().any(|c| c == controller))
            })
    }

    /// Where the cgroups named by `memberships` (a `/proc/PID/cgroup`) are on the host.
    /// A membership outside what a mount shows (above its root) is left out.
    pub fn dirs(&self, memberships: &[Membership]) -> Dirs {
        let mut dirs = Vec::new();
        for h in &self.hierarchies {
            let found = memberships.iter().find(|m| match h.version {
                Version::V2 => m.controllers.is_empty(),
                Version::V1 => !m.controllers.is_empty() && same_set(&m.controllers, &h.controllers),
            });
            if let Some(m) = found {
                if let Some(dir) = below(&h.mountpoint, &h.root, &m.path) {
                    dirs.push((h.clone(), dir));
                }
            }
        }
        Dirs { dirs }
    }

    /// The cgroups of process `pid`; empty when it is gone.
    pub fn dirs_of(&self, pid: u32) -> Dirs {
        let text = read_trimmed(Path::new(&format!("/proc/{pid}/cgroup"))).unwrap_or_default();
        self.dirs(&parse_memberships(&text))
    }
}

/// The lines of a `/proc/PID/cgroup`.
pub fn parse_memberships(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                controllers: if controllers.is_empty() {
                    Vec::new()
                } else {
                    controllers.split(',').map(str::to_string).collect()
                },
                path: path.to_string(),
            })
        })
        .collect()
}

/// The controllers among a v1 mount's super options (`rw,cpu,cpuacct`, `rw,name=systemd`).
fn v1_controllers(options: &str) -> Vec<String> {
    const NOT_CONTROLLERS: &[&str] = &[
        "rw",
        "ro",
        "relatime",
        "noatime",
        "nosuid",
        "nodev",
        "noexec",
        "clone_children",
        "noprefix",
        "xattr",
        "cpuset_v2_mode",
        "favordynmods",
    ];
    let mut out: Vec<String> = options
        .split(',')
        .filter(|o| !NOT_CONTROLLERS.contains(o) && !o.starts_with("release_agent="))
        .map(str::to_string)
        .collect();
    out.sort();
    out
}

fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

/// `mountpoint` + (`path` without the mount's `root`), or `None` when `path` is not under
/// `root` or would climb out.
fn below(mountpoint: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let rest = if root == "/" {
        path
    } else {
        let rest = path.strip_prefix(root)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    };
    let mut dir = mountpoint.to_path_buf();
    for part in rest.split('/').filter(|p| !p.is_empty()) {
        if part == ".." || part == "." {
            return None;
        }
        dir.push(part);
    }
    Some(dir)
}

/// `mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let value = digits.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Dirs {
    /// The directory of the hierarchy that holds `controller`, per `layout`.
    pub fn of(&self, layout: &Layout, controller: &str) -> Option<(Version, &Path)> {
        let h = layout.controller(controller)?;
        self.dirs
            .iter()
            .find(|(d, _)| d.version == h.version && d.controllers == h.controllers)
            .map(|(d, p)| (d.version, p.as_path()))
    }

    /// The v2 directory, if the process has one (v2 reports CPU time without a controller).
    fn v2(&self) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(h, _)| h.version == Version::V2)
            .map(|(_, p)| p.as_path())
    }

    /// The usage figures, each from wherever its controller is.
    pub fn usage(&self, layout: &Layout) -> Usage {
        let mut usage = Usage::default();
        match self.of(layout, "memory") {
            Some((Version::V1, dir)) => {
                usage.memory = read_u64(&dir.join("memory.usage_in_bytes"));
                usage.memory_peak = read_u64(&dir.join("memory.max_usage_in_bytes"));
                usage.memory_limit =
                    read_u64(&dir.join("memory.limit_in_bytes")).filter(|l| *l < V1_UNLIMITED);
            }
            Some((Version::V2, dir)) => {
                usage.memory = read_u64(&dir.join("memory.current"));
                usage.memory_peak = read_u64(&dir.join("memory.peak"));
                usage.memory_limit = read_u64(&dir.join("memory.max"));
            }
            None => {}
        }
        usage.processes = self
            .of(layout, "pids")
            .and_then(|(_, dir)| read_u64(&dir.join("pids.current")));
        usage.cpu_ns = match self.of(layout, "cpuacct") {
            Some((Version::V1, dir)) => read_u64(&dir.join("cpuacct.usage")),
            _ => self
                .v2()
                .and_then(|dir| read_trimmed(&dir.join("cpu.stat")))
                .and_then(|stat| cpu_stat_usage_ns(&stat)),
        };
        usage.cpus = match self.of(layout, "cpuset") {
            Some((Version::V1, dir)) => read_trimmed(&dir.join("cpuset.effective_cpus"))
                .filter(|c| !c.is_empty())
                .or_else(|| read_trimmed(&dir.join("cpuset.cpus"))),
            Some((Version::V2, dir)) => read_trimmed(&dir.join("cpuset.cpus.effective")),
            None => None,
        }
        .filter(|c| !c.is_empty());
        usage
    }

    /// Sets (`Some(bytes)`) or lifts (`None`) the memory limit.
    pub fn set_memory_limit(&self, layout: &Layout, limit: Option<u64>) -> Result<(), CgroupError> {
        match self.of(layout, "memory") {
            Some((Version::V1, dir)) => write(
                &dir.join("memory.limit_in_bytes"),
                &limit.map_or("-1".to_string(), |l| l.to_string()),
            ),
            Some((Version::V2, dir)) => write(
                &dir.join("memory.max"),
                &limit.map_or("max".to_string(), |l| l.to_string()),
            ),
            None => Err(CgroupError::NoController("memory")),
        }
    }

    /// Pins to `cpus` (`0-1,3`), or (`None`) to every CPU the parent cgroup has.
    pub fn set_cpus(&self, layout: &Layout, cpus: Option<&str>) -> Result<(), CgroupError> {
        let (version, dir) = self
            .of(layout, "cpuset")
            .ok_or(CgroupError::NoController("cpuset"))?;
        let value = match cpus {
            Some(c) => c.to_string(),
            None => {
                let parent = dir.parent().unwrap_or(dir);
                let effective = match version {
                    Version::V1 => "cpuset.effective_cpus",
                    Version::V2 => "cpuset.cpus.effective",
                };
                read_trimmed(&parent.join(effective))
                    .filter(|c| !c.is_empty())
                    .or_else(|| read_trimmed(&parent.join("cpuset.cpus")))
                    .unwrap_or_default()
            }
        };
        write(&dir.join("cpuset.cpus"), &value)
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// `usage_usec` of a v2 `cpu.stat`, in nanoseconds.
fn cpu_stat_usage_ns(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|us| us.saturating_mul(1000))
}

/// Removes the cgroup directory `dir` and everything below it, deepest first (a cgroup
/// directory can only be removed once it has no children and no processes). Missing
/// directories are fine; the first other failure is returned after trying the rest.
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let mut first_error = None;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            // Only directories: the files of a cgroup are its interface, not children.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if let Err(e) = remove_tree(&entry.path()) {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const UNIFIED: &str = "\
25 22 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn hybrid_layout_puts_controllers_on_v1() {
        let mut layout = Layout::parse(HYBRID);
        assert_eq!(layout.hierarchies.len(), 7);
        // As Layout::read does for v2: this host's unified mount offers only hugetlb.
        layout.hierarchies[6].controllers = s(&["hugetlb"]);
        let mem = layout.controller("memory").unwrap();
        assert_eq!(mem.version, Version::V1);
        assert_eq!(mem.mountpoint, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(
            layout.controller("name=systemd").unwrap().mountpoint,
            Path::new("/sys/fs/cgroup/systemd")
        );
        assert_eq!(layout.controller("hugetlb").unwrap().version, Version::V2);
        assert!(layout.controller("io").is_none());
    }

    #[test]
    fn comounted_v1_controllers_and_options() {
        let text =
            "1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,nosuid,cpuacct,cpu,clone_children\n";
        let layout = Layout::parse(text);
        assert_eq!(layout.hierarchies[0].controllers, s(&["cpu", "cpuacct"]));
        let dirs = layout.dirs(&parse_memberships("3:cpu,cpuacct:/a/b\n"));
        assert_eq!(dirs.dirs[0].1, Path::new("/sys/fs/cgroup/cpu,cpuacct/a/b"));
    }

    #[test]
    fn unified_layout_and_process_dirs() {
        let mut layout = Layout::parse(UNIFIED);
        layout.hierarchies[0].controllers = s(&["cpuset", "cpu", "io", "memory", "pids"]);
        assert_eq!(layout.controller("memory").unwrap().version, Version::V2);
        let dirs = layout.dirs(&parse_memberships("0::/stapes-1/c1/container\n"));
        assert_eq!(
            dirs.of(&layout, "memory").unwrap(),
            (Version::V2, Path::new("/sys/fs/cgroup/stapes-1/c1/container"))
        );
        assert!(dirs.of(&layout, "cpuacct").is_none());
    }

    #[test]
    fn memberships_map_to_their_hierarchies() {
        let layout = Layout::parse(HYBRID);
        let text =
            "9:name=systemd:/\n4:memory:/stapes-1/c1/container\n3:cpuset:/stapes-1/c1/container\n0::/\n";
        let m = parse_memberships(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[3].controllers, Vec::<String>::new());
        let dirs = layout.dirs(&m);
        assert_eq!(
            dirs.of(&layout, "memory").unwrap(),
            (
                Version::V1,
                Path::new("/sys/fs/cgroup/memory/stapes-1/c1/container")
            )
        );
        // cpu has no membership line here: left out rather than guessed.
        assert!(dirs.of(&layout, "cpu").is_none());
    }

    #[test]
    fn mount_roots_are_stripped_and_never_climbed_out_of() {
        let text = "1 0 0:1 /lxc/c1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let layout = Layout::parse(text);
        let ok = layout.dirs(&parse_memberships("4:memory:/lxc/c1/sub\n"));
        assert_eq!(ok.dirs[0].1, Path::new("/sys/fs/cgroup/memory/sub"));
        let outside = layout.dirs(&parse_memberships("4:memory:/lxc/c10\n"));
        assert!(outside.dirs.is_empty());
        let climbing = layout.dirs(&parse_memberships("4:memory:/lxc/c1/../../x\n"));
        assert!(climbing.dirs.is_empty());
    }

    #[test]
    fn escaped_mount_points() {
        let text = "1 0 0:1 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Layout::parse(text).hierarchies[0].mountpoint,
            Path::new("/mnt/with space")
        );
    }

    #[test]
    fn usage_reads_v1_and_v2_file_names() {
        let tmp = tempfile::tempdir().unwrap();
        let v1 = tmp.path().join("v1");
        let v2 = tmp.path().join("v2");
        for d in ["memory", "pids", "cpuacct", "cpuset"] {
            std::fs::create_dir_all(v1.join(d).join("c")).unwrap();
        }
        std::fs::create_dir_all(v2.join("c")).unwrap();
        let w = |p: PathBuf, v: &str| std::fs::write(p, v).unwrap();
        w(v1.join("memory/c/memory.usage_in_bytes"), "671744\n");
        w(v1.join("memory/c/memory.max_usage_in_bytes"), "708608\n");
        w(v1.join("memory/c/memory.limit_in_bytes"), "9223372036854771712\n");
        w(v1.join("pids/c/pids.current"), "2\n");
        w(v1.join("cpuacct/c/cpuacct.usage"), "3069353\n");
        w(v1.join("cpuset/c/cpuset.effective_cpus"), "0-1\n");
        let mountinfo = format!(
            "1 0 0:1 / {m}/memory rw - cgroup cgroup rw,memory\n\
             2 0 0:2 / {m}/pids rw - cgroup cgroup rw,pids\n\
             3 0 0:3 / {m}/cpuacct rw - cgroup cgroup rw,cpuacct\n\
             4 0 0:4 / {m}/cpuset rw - cgroup cgroup rw,cpuset\n",
            m = v1.display()
        );
        let layout = Layout::parse(&mountinfo);
        let dirs = layout.dirs(&parse_memberships(
            "1:memory:/c\n2:pids:/c\n3:cpuacct:/c\n4:cpuset:/c\n",
        ));
        let usage = dirs.usage(&layout);
        assert_eq!(
            usage,
            Usage {
                memory: Some(671744),
                memory_peak: Some(708608),
                memory_limit: None,
                processes: Some(2),
                cpu_ns: Some(3069353),
                cpus: Some("0-1".into()),
            }
        );
        dirs.set_memory_limit(&layout, Some(64 << 20)).unwrap();
        assert_eq!(
            std::fs::read_to_string(v1.join("memory/c/memory.limit_in_bytes")).unwrap(),
            "67108864"
        );
        dirs.set_memory_limit(&layout, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(v1.join("memory/c/memory.limit_in_bytes")).unwrap(),
            "-1"
        );
        w(v1.join("cpuset/cpuset.effective_cpus"), "0-3\n");
        dirs.set_cpus(&layout, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(v1.join("cpuset/c/cpuset.cpus")).unwrap(),
            "0-3"
        );

        w(v2.join("c/memory.current"), "1000\n");
        w(v2.join("c/memory.peak"), "2000\n");
        w(v2.join("c/memory.max"), "max\n");
        w(v2.join("c/pids.current"), "3\n");
        w(v2.join("c/cpu.stat"), "usage_usec 1500\nuser_usec 1000\n");
        w(v2.join("c/cpuset.cpus.effective"), "1\n");
        let mut layout = Layout::parse(&format!("1 0 0:1 / {} rw - cgroup2 cgroup2 rw\n", v2.display()));
        layout.hierarchies[0].controllers = s(&["cpuset", "memory", "pids"]);
        let dirs = layout.dirs(&parse_memberships("0::/c\n"));
        assert_eq!(
            dirs.usage(&layout),
            Usage {
                memory: Some(1000),
                memory_peak: Some(2000),
                memory_limit: None,
                processes: Some(3),
                cpu_ns: Some(1_500_000),
                cpus: Some("1".into()),
            }
        );
        dirs.set_memory_limit(&layout, None).unwrap();
        assert_eq!(std::fs::read_to_string(v2.join("c/memory.max")).unwrap(), "max");
        dirs.set_cpus(&layout, Some("0")).unwrap();
        assert_eq!(std::fs::read_to_string(v2.join("c/cpuset.cpus")).unwrap(), "0");
    }

    #[test]
    fn missing_controllers_are_errors_for_limits() {
        let layout = Layout::parse(UNIFIED);
        let dirs = layout.dirs(&parse_memberships("0::/c\n"));
        assert!(matches!(
            dirs.set_memory_limit(&layout, Some(1)),
            Err(CgroupError::NoController("memory"))
        ));
        assert_eq!(dirs.usage(&layout).memory, None);
    }

    #[test]
    fn trees_are_removed_deepest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("stapes-1");
        std::fs::create_dir_all(top.join("c1/container/inner")).unwrap();
        std::fs::create_dir_all(top.join("c1/lxc.pivot")).unwrap();
        remove_tree(&top.join("c1")).unwrap();
        assert!(!top.join("c1").exists());
        remove_tree(&top.join("c1")).unwrap();
    }
}
