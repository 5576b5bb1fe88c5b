//! `GET /1.0/resources`: the host's hardware, shaped like Incus's `api.Resources` (Incus 6.0).
//!
//! Everything comes from procfs and sysfs (plus udev's own files in `/dev/disk` and `/run/udev`):
//! nothing is executed, nothing is written, every file read is bounded ([`MAX_READ`]), and a
//! missing or unreadable file degrades to an empty or zero value, never to an error or a panic,
//! since containers and VMs lack many of these files.
//!
//! Where each part comes from:
//!
//! - `cpu`: the threads are the `/sys/devices/system/cpu/cpuN` directories that have a
//!   `topology`; `topology/{physical_package_id,die_id,core_id,cluster_id}` place them in
//!   sockets and cores (threads sharing `thread_siblings_list` form one core),
//!   `cpuN/{online,nodeM}` and `cpu/isolated` fill each thread, the socket's first thread gives
//!   `cache/indexK/{level,size,type}` and `cpufreq/{cpuinfo,scaling}_{min,max}_freq` (kHz, sent
//!   in MHz), each core's first thread gives `cpufreq/scaling_cur_freq`; name, vendor and flags
//!   come from the `/proc/cpuinfo` block of the socket's first thread; the architecture is
//!   `/proc/sys/kernel/arch` (what `uname -m` prints). Without `/sys`, the threads come from the
//!   `/proc/cpuinfo` blocks.
//! - `memory`: `/proc/meminfo` (`used` = total - free - cached - buffers; huge pages in bytes);
//!   the total is replaced by the size of the online blocks of `/sys/devices/system/memory`
//!   when they can be counted, as Incus does; `nodes` from
//!   `/sys/devices/system/node/nodeN/{meminfo,memoryK}`.
//! - `storage`: the entries of `/sys/class/block` that have a `device` (so disks, not
//!   partitions, loop or zram devices); `dev`, `size` (sectors of 512 bytes), `ro`,
//!   `removable`, `wwid`, `queue/{rotational,physical_block_size}`, the bus (`device/subsystem`)
//!   as `type`, `device/{model,firmware_rev,numa_node}`, partitions from the disk's
//!   sub-directories with a `partition` file, by-id and by-path names from `/dev/disk`, and
//!   udev's `/run/udev/data/bMAJ:MIN` (finer type, model, serial, firmware, rpm).
//! - `network`: as Incus, only interfaces of `/sys/class/net` with a `device` (physical or
//!   paravirtual cards, no bridges, veths or loopback), one card per PCI address, then the
//!   PCI functions of class `0x02` bound to no interface; SR-IOV virtual functions are listed
//!   under their parent. Ports come from the device's `net/` directory (`type`, `address`,
//!   `dev_port`, `carrier`, `speed`, `duplex`), the card from the device directory (`vendor`,
//!   `device`, `driver`, `numa_node`, `sriov_*`, `vdpa*`).
//! - `pci`: every `/sys/bus/pci/devices` entry (ids, driver, NUMA node, IOMMU group).
//!   Vendor and product names of network cards and PCI devices come from the `pci.ids`
//!   database when the host has an uncompressed one.
//! - `system`: `/sys/class/dmi/id/*`; without it only `type` is set and `firmware`, `chassis`
//!   and `motherboard` are `null`, as in Incus. The type (`physical`, `container`,
//!   `virtual-machine`) is detected from the files `systemd-detect-virt` also looks at.
//! - `load`: `/proc/loadavg` and the number of process directories in `/proc`. Incus names
//!   the third average `Average10Min`, although the kernel's is over 15 minutes.
//! - `gpu` and `usb` are empty lists: reading them is out of scope.
//!
//! Left out because they need ioctls (not available without `unsafe` here): a port's
//! `port_type`, `transceiver_type`, `auto_negotiation` (always `false`) and supported modes, and
//! a card's `firmware_version`. Infiniband details and PCI VPD are not read either (`vpd` is
//! `{}`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::read::{read_bounded, read_trimmed, read_u64, MAX_READ};

/// `/proc/cpuinfo` grows by a couple of KiB per thread, so it gets its own bound.
const MAX_CPUINFO: u64 = 8 * 1024 * 1024;
/// Upper bound on how much of the `pci.ids` database (about 1.5 MiB) is scanned.
const MAX_PCI_IDS: u64 = 16 * 1024 * 1024;
/// Upper bound on the ids a CPU list (`0-3,5`) may expand to.
const MAX_CPU_LIST: usize = 1 << 16;
/// How many nested `device` links are followed to find a device's own directory.
const MAX_DEVICE_DEPTH: usize = 16;
/// Size of the sectors in which `/sys/class/block/*/size` counts.
const SECTOR: u64 = 512;

const PROC_CPUINFO: &str = "/proc/cpuinfo";
const PROC_MEMINFO: &str = "/proc/meminfo";
const PROC_LOADAVG: &str = "/proc/loadavg";
const PROC_ARCH: &str = "/proc/sys/kernel/arch";
const PROC_OSRELEASE: &str = "/proc/sys/kernel/osrelease";
const SYS_CPU: &str = "/sys/devices/system/cpu";
const SYS_NODE: &str = "/sys/devices/system/node";
const SYS_MEMORY: &str = "/sys/devices/system/memory";
const SYS_CLASS_BLOCK: &str = "/sys/class/block";
const SYS_CLASS_NET: &str = "/sys/class/net";
const SYS_BUS_PCI: &str = "/sys/bus/pci/devices";
const SYS_DMI: &str = "/sys/class/dmi/id";
const DEV_DISK_BY_ID: &str = "/dev/disk/by-id";
const DEV_DISK_BY_PATH: &str = "/dev/disk/by-path";
const RUN_UDEV_DATA: &str = "/run/udev/data";
const PCI_IDS: &[&str] = &[
    "/usr/share/hwdata/pci.ids",
    "/usr/share/misc/pci.ids",
    "/usr/share/pci.ids",
];

/// The host's resources as the JSON object `GET /1.0/resources` returns in its `metadata`.
pub fn gather() -> Value {
    serde_json::to_value(collect()).unwrap_or_else(|_| Value::Object(Default::default()))
}

/// The host's resources, typed.
pub fn collect() -> Resources {
    Host::real().resources()
}

// ---------------------------------------------------------------------------------------------
// The shape (Incus's `shared/api/resource.go`; `omitempty` fields are skipped when empty).
// ---------------------------------------------------------------------------------------------

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    pub cpu: Cpu,
    pub memory: Memory,
    pub gpu: Gpu,
    pub network: Network,
    pub storage: Storage,
    pub usb: Usb,
    pub pci: Pci,
    pub system: System,
    pub load: Load,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Cpu {
    pub architecture: String,
    pub sockets: Vec<CpuSocket>,
    /// Number of threads over all sockets.
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuSocket {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    pub socket: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<CpuCache>,
    pub cores: Vec<CpuCore>,
    /// MHz, the average of the cores' current frequencies.
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency_minimum: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency_turbo: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuCache {
    pub level: u64,
    #[serde(rename = "type")]
    pub kind: String,
    /// Bytes.
    pub size: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuCore {
    pub core: u64,
    /// Only used to order the cores (the `cluster` key is newer than Incus 6.0).
    #[serde(skip)]
    pub cluster: u64,
    pub die: u64,
    pub threads: Vec<CpuThread>,
    /// MHz.
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency: u64,
    /// `null` when `/proc/cpuinfo` has no `flags` line (as on arm64), like Incus.
    pub flags: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuThread {
    pub id: i64,
    pub numa_node: u64,
    /// Index of the thread within its core.
    pub thread: u64,
    pub online: bool,
    pub isolated: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<MemoryNode>,
    /// Bytes, like every other memory value.
    pub hugepages_total: u64,
    pub hugepages_used: u64,
    pub hugepages_size: u64,
    pub used: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryNode {
    pub numa_node: u64,
    pub hugepages_used: u64,
    pub hugepages_total: u64,
    pub used: u64,
    pub total: u64,
}

/// GPUs are not read: always empty.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Gpu {
    pub cards: Vec<Value>,
    pub total: u64,
}

/// USB devices are not read: always empty.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usb {
    pub devices: Vec<Value>,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Network {
    pub cards: Vec<NetworkCard>,
    /// Cards plus their SR-IOV virtual functions.
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkCard {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver_version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sriov: Option<NetworkSriov>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vdpa: Option<NetworkVdpa>,
    pub numa_node: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub usb_address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkPort {
    /// Interface name.
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub port: u64,
    /// `ethernet`, `infiniband`, `ATM` or `unknown` (empty when the type is unreadable).
    pub protocol: String,
    /// Always `false`: only ethtool knows.
    pub auto_negotiation: bool,
    pub link_detected: bool,
    /// Mbit/s.
    #[serde(skip_serializing_if = "is_zero")]
    pub link_speed: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_duplex: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkSriov {
    pub current_vfs: u64,
    pub maximum_vfs: u64,
    /// `null` when no virtual function was found, like Incus.
    pub vfs: Option<Vec<NetworkCard>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkVdpa {
    pub name: String,
    pub device: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Storage {
    pub disks: Vec<Disk>,
    /// Disks plus their partitions.
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Disk {
    /// Kernel name, e.g. `nvme0n1`.
    pub id: String,
    /// `major:minor`.
    pub device: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// Bus (`scsi`, `nvme`, `virtio`, ...), refined by udev to `sata`, `usb` or `cdrom`.
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub read_only: bool,
    /// Bytes.
    pub size: u64,
    pub removable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub wwn: String,
    pub numa_node: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device_path: String,
    /// Physical block size in bytes.
    pub block_size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub firmware_version: String,
    /// 0 for solid state, 1 for rotational of unknown speed.
    pub rpm: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub serial: String,
    pub device_id: String,
    pub partitions: Vec<Partition>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub usb_address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Partition {
    pub id: String,
    pub device: String,
    pub read_only: bool,
    pub size: u64,
    pub partition: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Pci {
    pub devices: Vec<PciDevice>,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PciDevice {
    pub driver: String,
    pub driver_version: String,
    pub numa_node: u64,
    pub pci_address: String,
    pub vendor: String,
    pub vendor_id: String,
    pub product: String,
    pub product_id: String,
    pub iommu_group: u64,
    pub vpd: PciVpd,
}

/// Vital product data: not read, so serialized as `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PciVpd {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product_name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub entries: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct System {
    pub uuid: String,
    pub vendor: String,
    pub product: String,
    pub family: String,
    pub version: String,
    pub sku: String,
    pub serial: String,
    /// `physical`, `container` or `virtual-machine`.
    #[serde(rename = "type")]
    pub kind: String,
    pub firmware: Option<Firmware>,
    pub chassis: Option<Chassis>,
    pub motherboard: Option<Motherboard>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Firmware {
    pub vendor: String,
    pub date: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Chassis {
    pub vendor: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub serial: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Motherboard {
    pub vendor: String,
    pub product: String,
    pub serial: String,
    pub version: String,
}

/// Incus's Go struct has no JSON tags, hence the capitalized keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Load {
    #[serde(rename = "Average1Min")]
    pub average_1min: f64,
    #[serde(rename = "Average5Min")]
    pub average_5min: f64,
    /// The kernel's 15-minute average, under Incus's name.
    #[serde(rename = "Average10Min")]
    pub average_10min: f64,
    #[serde(rename = "Processes")]
    pub processes: i64,
}

// ---------------------------------------------------------------------------------------------
// Bounded, failure-tolerant file access.
// ---------------------------------------------------------------------------------------------

fn read_text(path: &Path) -> String {
    read_trimmed(path).unwrap_or_default()
}

fn read_i64(path: &Path) -> Option<i64> {
    read_trimmed(path)?.parse().ok()
}

/// A PCI id file (`0x8086`) without its prefix.
fn read_id(path: &Path) -> String {
    let text = read_text(path);
    text.strip_prefix("0x").map(str::to_string).unwrap_or(text)
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// The names in a directory, sorted; empty when it cannot be listed.
fn list_dir(path: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(path) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The last component of where a symlink finally leads (`driver` -> `e1000e`).
fn resolved_name(path: &Path) -> Option<String> {
    let real = fs::canonicalize(path).ok()?;
    Some(real.file_name()?.to_string_lossy().into_owned())
}

/// The last component of a symlink's own target, without resolving further.
fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The NUMA node in a device's `numa_node` file (`-1`, missing or unreadable: 0).
fn device_numa_node(dir: &Path) -> u64 {
    read_i64(&dir.join("numa_node"))
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// The NUMA node of a CPU: the `nodeN` link in its directory (0 when there is none).
fn cpu_numa_node(dir: &Path) -> u64 {
    list_dir(dir)
        .iter()
        .filter(|name| exists(&dir.join(name).join("numastat")))
        .find_map(|name| name.strip_prefix("node")?.parse().ok())
        .unwrap_or(0)
}

/// Follows `device` links down to the directory holding the device's own attributes: the
/// walk stops where `device` is a file (a PCI product id) or missing.
fn device_dir(path: &Path) -> PathBuf {
    let mut dir = path.to_path_buf();
    for _ in 0..MAX_DEVICE_DEPTH {
        let next = dir.join("device");
        match fs::metadata(&next) {
            Ok(meta) if meta.is_dir() => dir = next,
            _ => break,
        }
    }
    dir
}

/// The PCI address of a device, looking through a virtio device to its PCI parent.
fn pci_address(device: &Path) -> Option<String> {
    let dir = device_dir(device);
    if !exists(&dir.join("subsystem")) {
        return None;
    }
    let mut real = fs::canonicalize(&dir).ok()?;
    let mut subsystem = resolved_name(&real.join("subsystem"))?;
    if subsystem == "virtio" {
        real = real.parent()?.to_path_buf();
        subsystem = resolved_name(&real.join("subsystem"))?;
    }
    if subsystem != "pci" {
        return None;
    }
    Some(real.file_name()?.to_string_lossy().into_owned())
}

/// The `bus:device` USB address of a device, from the nearest ancestor with `busnum`/`devnum`.
fn usb_address(device: &Path) -> Option<String> {
    let real = fs::canonicalize(device).ok()?;
    if !real.to_string_lossy().contains("/usb") {
        return None;
    }
    real.ancestors()
        .find(|dir| exists(&dir.join("busnum")) && exists(&dir.join("devnum")))
        .and_then(|dir| {
            let bus = read_u64(&dir.join("busnum"))?;
            let dev = read_u64(&dir.join("devnum"))?;
            Some(format!("{bus}:{dev}"))
        })
}

/// A device's driver name and version: the module's `version`, else the kernel release.
fn driver_info(dir: &Path, kernel_release: &str) -> (String, String) {
    let driver = dir.join("driver");
    if !exists(&driver) {
        return (String::new(), String::new());
    }
    let name = resolved_name(&driver).unwrap_or_default();
    let version = read_trimmed(&driver.join("module").join("version"))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| kernel_release.to_string());
    (name, version)
}

// ---------------------------------------------------------------------------------------------
// Parsers for the text formats, kept free of I/O.
// ---------------------------------------------------------------------------------------------

/// Expands a kernel id list (`0-3,5`); `None` when malformed or absurdly long.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u64>> {
    let mut ids = Vec::new();
    for chunk in text.trim().split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (low, high) = match chunk.split_once('-') {
            Some((low, high)) => (low.trim().parse::<u64>().ok()?, high.trim().parse::<u64>().ok()?),
            None => {
                let id = chunk.parse::<u64>().ok()?;
                (id, id)
            }
        };
        let count = usize::try_from(high.checked_sub(low)?).ok()?.checked_add(1)?;
        if ids.len().saturating_add(count) > MAX_CPU_LIST {
            return None;
        }
        ids.extend(low..=high);
    }
    Some(ids)
}

/// The values of a `meminfo` file Incus uses, in bytes (huge page counts stay counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub used: u64,
    pub cached: u64,
    pub buffers: u64,
    pub hugepages_total: u64,
    pub hugepages_free: u64,
    pub hugepages_size: u64,
}

/// Parses `/proc/meminfo` or a node's `meminfo` (whose keys start with `Node N`).
pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut info = MemInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (Some(key), Some(value)) = (key.split_whitespace().last(), parse_meminfo_value(value)) else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut info.total,
            "MemFree" => &mut info.free,
            "MemUsed" => &mut info.used,
            "Cached" => &mut info.cached,
            "Buffers" => &mut info.buffers,
            "HugePages_Total" => &mut info.hugepages_total,
            "HugePages_Free" => &mut info.hugepages_free,
            "Hugepagesize" => &mut info.hugepages_size,
            _ => continue,
        };
        *slot = value;
    }
    info
}

/// `24684084 kB` in bytes, or a bare count.
fn parse_meminfo_value(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let number: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        None => Some(number),
        Some("kB") => number.checked_mul(1024),
        Some(_) => None,
    }
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<f64>().ok().filter(|v| v.is_finite()));
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// A cache `size` file (`32K`) in bytes.
pub fn parse_cache_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, multiplier) = match text.as_bytes().last()? {
        b'K' => (&text[..text.len() - 1], 1 << 10),
        b'M' => (&text[..text.len() - 1], 1 << 20),
        b'G' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// What Incus takes from one `processor` block of `/proc/cpuinfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuInfo {
    pub vendor: String,
    /// `model name` (x86), or `cpu` (POWER).
    pub name: String,
    pub flags: Option<Vec<String>>,
    pub physical_id: Option<u64>,
    pub core_id: Option<u64>,
}

/// Splits `/proc/cpuinfo` into its `processor : N` blocks, by processor number.
pub fn parse_cpuinfo(text: &str) -> BTreeMap<i64, CpuInfo> {
    let mut blocks = BTreeMap::new();
    let mut current: Option<(i64, CpuInfo)> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key == "processor" {
            blocks.extend(current.take());
            current = value.parse().ok().map(|id| (id, CpuInfo::default()));
            continue;
        }
        let Some((_, info)) = current.as_mut() else {
            continue;
        };
        match key {
            "vendor_id" => info.vendor = value.to_string(),
            "model name" | "cpu" => info.name = value.to_string(),
            "flags" => info.flags = Some(value.split_whitespace().map(str::to_string).collect()),
            "physical id" => info.physical_id = value.parse().ok(),
            "core id" => info.core_id = value.parse().ok(),
            _ => {}
        }
    }
    blocks.extend(current);
    blocks
}

/// Undoes udev's `\xNN` escaping (as in `ID_MODEL_ENC`).
pub fn udev_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x'))
            .then(|| bytes.get(i + 2..i + 4))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `E:KEY=value` properties of a udev database entry.
pub fn parse_udev_properties(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("E:")?.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// Vendor and product names of some PCI vendors, from a `pci.ids` database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciNames {
    /// vendor id -> (vendor name, product id -> product name); ids in lower case.
    vendors: HashMap<String, (String, HashMap<String, String>)>,
}

impl PciNames {
    /// Scans a `pci.ids` database, keeping only the vendors asked for.
    pub fn parse<R: BufRead>(mut reader: R, wanted: &BTreeSet<String>) -> PciNames {
        let mut names = PciNames::default();
        let mut current: Option<String> = None;
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(product) = line.strip_prefix('\t') {
                names.add_product(current.as_deref(), product);
                continue;
            }
            if line.starts_with("C ") || names.vendors.len() == wanted.len() {
                break; // the device classes follow the vendors, or all were found
            }
            current = split_pci_id(line)
                .filter(|(id, _)| wanted.contains(id))
                .map(|(id, name)| {
                    names.vendors.insert(id.clone(), (name, HashMap::new()));
                    id
                });
        }
        names
    }

    fn add_product(&mut self, vendor: Option<&str>, line: &str) {
        let Some((_, products)) = vendor.and_then(|v| self.vendors.get_mut(v)) else {
            return;
        };
        if line.starts_with('\t') {
            return; // a subsystem
        }
        if let Some((id, name)) = split_pci_id(line) {
            products.insert(id, name);
        }
    }

    /// The vendor's name, and the product's when known.
    pub fn lookup(&self, vendor_id: &str, product_id: &str) -> (String, String) {
        let Some((vendor, products)) = self.vendors.get(&vendor_id.to_ascii_lowercase()) else {
            return (String::new(), String::new());
        };
        let product = products
            .get(&product_id.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default();
        (vendor.clone(), product)
    }
}

/// `8086  Intel Corporation` -> (`8086`, `Intel Corporation`).
fn split_pci_id(line: &str) -> Option<(String, String)> {
    let (id, name) = line.split_once(char::is_whitespace)?;
    Some((id.to_ascii_lowercase(), name.trim().to_string()))
}

/// SMBIOS chassis type names (DMTF SMBIOS specification, 7.4.1).
fn chassis_type_name(code: u64) -> &'static str {
    const NAMES: [&str; 36] = [
        "Other",
        "Unknown",
        "Desktop",
        "Low Profile Desktop",
        "Pizza Box",
        "Mini Tower",
        "Tower",
        "Portable",
        "Laptop",
        "Notebook",
        "Hand Held",
        "Docking Station",
        "All in One",
        "Sub Notebook",
        "Space-saving",
        "Lunch Box",
        "Main Server Chassis",
        "Expansion Chassis",
        "SubChassis",
        "Bus Expansion Chassis",
        "Peripheral Chassis",
        "RAID Chassis",
        "Rack Mount Chassis",
        "Sealed-case PC",
        "Multi-system chassis",
        "Compact PCI",
        "Advanced TCA",
        "Blade",
        "Blade Enclosure",
        "Tablet",
        "Convertible",
        "Detachable",
        "IoT Gateway",
        "Embedded PC",
        "Mini PC",
        "Stick PC",
    ];
    code.checked_sub(1)
        .and_then(|i| NAMES.get(usize::try_from(i).ok()?))
        .copied()
        .unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// The gatherers.
// ---------------------------------------------------------------------------------------------

/// Where the host's `/proc`, `/sys`, `/dev`, `/run` and `/usr` are: `/`, or a scratch tree
/// in tests.
#[derive(Debug, Clone)]
struct Host {
    root: PathBuf,
}

/// One CPU thread and where it sits.
#[derive(Debug, Clone)]
struct ThreadTopology {
    id: i64,
    socket: u64,
    core: u64,
    die: u64,
    cluster: u64,
    /// Threads with the same key share a core.
    core_key: String,
    dir: PathBuf,
}

/// A socket while its threads are added.
#[derive(Debug)]
struct SocketBuilder {
    socket: CpuSocket,
    flags: Option<Vec<String>>,
    cores: BTreeMap<String, CpuCore>,
}

impl SocketBuilder {
    fn add_thread(&mut self, topology: &ThreadTopology, isolated: &BTreeSet<u64>) {
        let core = self
            .cores
            .entry(topology.core_key.clone())
            .or_insert_with(|| CpuCore {
                core: topology.core,
                cluster: topology.cluster,
                die: topology.die,
                threads: Vec::new(),
                frequency: read_u64(&topology.dir.join("cpufreq/scaling_cur_freq")).unwrap_or(0) / 1000,
                flags: self.flags.clone(),
            });
        let online = read_u64(&topology.dir.join("online")).is_none_or(|v| v != 0);
        core.threads.push(CpuThread {
            id: topology.id,
            numa_node: cpu_numa_node(&topology.dir),
            thread: core.threads.len() as u64,
            online,
            isolated: u64::try_from(topology.id).is_ok_and(|id| isolated.contains(&id)),
        });
    }

    fn finish(self) -> CpuSocket {
        let mut cores: Vec<CpuCore> = self.cores.into_values().collect();
        cores.sort_by_key(|c| (c.cluster, c.core, c.threads.first().map_or(0, |t| t.id)));
        let frequencies: Vec<u64> = cores.iter().map(|c| c.frequency).filter(|f| *f > 0).collect();
        let frequency = match frequencies.len() as u64 {
            0 => 0,
            n => frequencies.iter().sum::<u64>() / n,
        };
        CpuSocket {
            cores,
            frequency,
            ..self.socket
        }
    }
}

impl Host {
    fn real() -> Host {
        Host {
            root: PathBuf::from("/"),
        }
    }

    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    fn resources(&self) -> Resources {
        let cpuinfo = parse_cpuinfo(&read_bounded(&self.path(PROC_CPUINFO), MAX_CPUINFO).unwrap_or_default());
        let mut resources = Resources {
            cpu: self.cpu(&cpuinfo),
            memory: self.memory(),
            gpu: Gpu::default(),
            network: self.network(),
            storage: self.storage(),
            usb: Usb::default(),
            pci: self.pci(),
            system: self.system(&cpuinfo),
            load: self.load(),
        };
        self.fill_pci_names(&mut resources);
        resources
    }

    fn kernel_release(&self) -> String {
        read_text(&self.path(PROC_OSRELEASE))
    }

    // --- cpu ---------------------------------------------------------------------------------

    fn cpu(&self, cpuinfo: &BTreeMap<i64, CpuInfo>) -> Cpu {
        let isolated: BTreeSet<u64> = read_trimmed(&self.path(SYS_CPU).join("isolated"))
            .and_then(|list| parse_cpu_list(&list))
            .unwrap_or_default()
            .into_iter()
            .collect();
        let threads = self.cpu_threads(cpuinfo);
        let mut sockets: BTreeMap<u64, SocketBuilder> = BTreeMap::new();
        for thread in &threads {
            sockets
                .entry(thread.socket)
                .or_insert_with(|| self.new_socket(thread, cpuinfo))
                .add_thread(thread, &isolated);
        }
        Cpu {
            architecture: self.architecture(),
            sockets: sockets.into_values().map(SocketBuilder::finish).collect(),
            total: threads.len() as u64,
        }
    }

    fn architecture(&self) -> String {
        read_trimmed(&self.path(PROC_ARCH))
            .filter(|arch| !arch.is_empty())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string())
    }

    /// The threads, sorted by id: from sysfs, else from `/proc/cpuinfo`.
    fn cpu_threads(&self, cpuinfo: &BTreeMap<i64, CpuInfo>) -> Vec<ThreadTopology> {
        let base = self.path(SYS_CPU);
        let mut threads: Vec<ThreadTopology> = list_dir(&base)
            .iter()
            .filter_map(|name| {
                let id: i64 = name.strip_prefix("cpu")?.parse().ok()?;
                let dir = base.join(name);
                exists(&dir.join("topology")).then(|| sysfs_thread(id, dir))
            })
            .collect();
        if threads.is_empty() {
            threads = cpuinfo
                .iter()
                .map(|(id, info)| cpuinfo_thread(*id, info, &base))
                .collect();
        }
        threads.sort_by_key(|t| t.id);
        threads
    }

    fn new_socket(&self, first: &ThreadTopology, cpuinfo: &BTreeMap<i64, CpuInfo>) -> SocketBuilder {
        let info = cpuinfo
            .get(&first.id)
            .or_else(|| cpuinfo.values().next())
            .cloned()
            .unwrap_or_default();
        let freq = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| read_u64(&first.dir.join("cpufreq").join(n)))
                .unwrap_or(0)
                / 1000
        };
        let socket = CpuSocket {
            name: info.name,
            vendor: info.vendor,
            socket: first.socket,
            cache: cpu_caches(&first.dir.join("cache")),
            cores: Vec::new(),
            frequency: 0,
            frequency_minimum: freq(["cpuinfo_min_freq", "scaling_min_freq"]),
            frequency_turbo: freq(["cpuinfo_max_freq", "scaling_max_freq"]),
        };
        SocketBuilder {
            socket,
            flags: info.flags,
            cores: BTreeMap::new(),
        }
    }

    // --- memory ------------------------------------------------------------------------------

    fn memory(&self) -> Memory {
        let mut info = parse_meminfo(&read_bounded(&self.path(PROC_MEMINFO), MAX_READ).unwrap_or_default());
        let block_size = self.memory_block_size();
        if let Some(total) = block_size.and_then(|size| online_memory(&self.path(SYS_MEMORY), size)) {
            info.total = total;
        }
        let page = info.hugepages_size;
        Memory {
            nodes: self.memory_nodes(page, block_size),
            hugepages_total: info.hugepages_total.saturating_mul(page),
            hugepages_used: info
                .hugepages_total
                .saturating_sub(info.hugepages_free)
                .saturating_mul(page),
            hugepages_size: page,
            used: info
                .total
                .saturating_sub(info.free)
                .saturating_sub(info.cached)
                .saturating_sub(info.buffers),
            total: info.total,
        }
    }

    /// `block_size_bytes` is hexadecimal without a prefix.
    fn memory_block_size(&self) -> Option<u64> {
        let text = read_trimmed(&self.path(SYS_MEMORY).join("block_size_bytes"))?;
        u64::from_str_radix(text.trim_start_matches("0x"), 16)
            .ok()
            .filter(|size| *size > 0)
    }

    fn memory_nodes(&self, page: u64, block_size: Option<u64>) -> Vec<MemoryNode> {
        let base = self.path(SYS_NODE);
        let mut nodes: Vec<MemoryNode> = list_dir(&base)
            .iter()
            .filter_map(|name| {
                let id: u64 = name.strip_prefix("node")?.parse().ok()?;
                let dir = base.join(name);
                let info = parse_meminfo(&read_bounded(&dir.join("meminfo"), MAX_READ)?);
                let blocks = block_size.and_then(|size| online_memory(&dir, size));
                Some(MemoryNode {
                    numa_node: id,
                    hugepages_used: info
                        .hugepages_total
                        .saturating_sub(info.hugepages_free)
                        .saturating_mul(page),
                    hugepages_total: info.hugepages_total.saturating_mul(page),
                    used: info.used,
                    total: blocks.unwrap_or(info.total),
                })
            })
            .collect();
        nodes.sort_by_key(|n| n.numa_node);
        nodes
    }

    // --- storage -----------------------------------------------------------------------------

    fn storage(&self) -> Storage {
        let base = self.path(SYS_CLASS_BLOCK);
        let by_id = dev_links(&self.path(DEV_DISK_BY_ID));
        let by_path = dev_links(&self.path(DEV_DISK_BY_PATH));
        let disks: Vec<Disk> = list_dir(&base)
            .iter()
            .filter_map(|name| self.disk(&base.join(name), name, &by_id, &by_path))
            .collect();
        let total = disks.iter().map(|d| 1 + d.partitions.len() as u64).sum();
        Storage { disks, total }
    }

    fn disk(
        &self,
        entry: &Path,
        name: &str,
        by_id: &[(String, String)],
        by_path: &[(String, String)],
    ) -> Option<Disk> {
        let device = entry.join("device");
        if !exists(&device) {
            return None; // partitions, loop, zram, device-mapper...
        }
        let dev = read_trimmed(&entry.join("dev"))?; // multipath members have none
        let kind = resolved_name(&device.join("subsystem")).unwrap_or_default();
        if kind == "rbd" {
            return None; // not local
        }
        let last_link = |links: &[(String, String)]| {
            links
                .iter()
                .rev()
                .find(|(_, target)| target == name)
                .map(|(link, _)| link.clone())
        };
        let mut disk = Disk {
            id: name.to_string(),
            device: dev,
            model: read_text(&device.join("model")),
            kind,
            read_only: read_u64(&entry.join("ro")) == Some(1),
            size: read_u64(&entry.join("size")).unwrap_or(0).saturating_mul(SECTOR),
            removable: read_u64(&entry.join("removable")) == Some(1),
            wwn: read_text(&entry.join("wwid")),
            numa_node: device_numa_node(&device),
            device_path: last_link(by_path).unwrap_or_default(),
            block_size: read_u64(&entry.join("queue/physical_block_size")).unwrap_or(0),
            firmware_version: read_text(&device.join("firmware_rev")),
            rpm: 0,
            serial: String::new(),
            device_id: last_link(by_id).unwrap_or_default(),
            partitions: partitions(entry),
            pci_address: pci_address(&device).unwrap_or_default(),
            usb_address: usb_address(&device).unwrap_or_default(),
        };
        if name.starts_with("sr") && disk.removable {
            disk.kind = "cdrom".to_string();
            if disk.size == 0x1f_ffff * SECTOR {
                disk.size = 0; // what most drives report without a medium
            }
        }
        self.add_udev_info(&mut disk);
        if disk.rpm == 0 {
            disk.rpm = read_u64(&entry.join("queue/rotational")).unwrap_or(0);
        }
        Some(disk)
    }

    fn add_udev_info(&self, disk: &mut Disk) {
        let Some(text) = read_bounded(
            &self.path(RUN_UDEV_DATA).join(format!("b{}", disk.device)),
            MAX_READ,
        ) else {
            return;
        };
        let props = parse_udev_properties(&text);
        let get = |key: &str| props.get(key).map(String::as_str).filter(|v| !v.is_empty());
        if get("ID_CDROM") == Some("1") {
            disk.kind = "cdrom".to_string();
        } else if get("ID_USB_DRIVER") == Some("usb-storage") {
            disk.kind = "usb".to_string();
        } else if get("ID_ATA_SATA") == Some("1") {
            disk.kind = "sata".to_string();
        }
        if disk.firmware_version.is_empty() {
            disk.firmware_version = get("ID_REVISION").unwrap_or_default().to_string();
        }
        let serial = [
            "SCSI_IDENT_SERIAL",
            "ID_SCSI_SERIAL",
            "ID_SERIAL_SHORT",
            "ID_SERIAL",
        ]
        .into_iter()
        .find_map(get);
        disk.serial = serial.unwrap_or_default().to_string();
        let model = get("ID_MODEL_ENC")
            .map(|m| udev_decode(m).trim().to_string())
            .or_else(|| get("ID_MODEL").map(str::to_string));
        if let Some(model) = model {
            disk.model = model;
        }
        if let Some(rpm) = get("ID_ATA_ROTATION_RATE_RPM").and_then(|v| v.parse().ok()) {
            disk.rpm = rpm;
        }
    }

    // --- network -----------------------------------------------------------------------------

    fn network(&self) -> Network {
        let release = self.kernel_release();
        let mut known = BTreeSet::new();
        let mut cards = Vec::new();
        let mut vfs: BTreeMap<String, Vec<NetworkCard>> = BTreeMap::new();
        let net = self.path(SYS_CLASS_NET);
        for name in list_dir(&net) {
            let device = net.join(&name).join("device");
            if !exists(&device) {
                continue; // virtual interfaces
            }
            let address = pci_address(&device).unwrap_or_default();
            if !address.is_empty() && !known.insert(address.clone()) {
                continue; // another port of a card already seen
            }
            let card = NetworkCard {
                pci_address: address,
                ..network_card(&device, &release)
            };
            place_card(card, &device, &mut cards, &mut vfs);
        }
        let bus = self.path(SYS_BUS_PCI);
        for address in list_dir(&bus) {
            let device = bus.join(&address);
            if known.contains(&address) || !read_text(&device.join("class")).starts_with("0x02") {
                continue;
            }
            let card = NetworkCard {
                pci_address: address,
                ..network_card(&device, &release)
            };
            place_card(card, &device, &mut cards, &mut vfs);
        }
        let mut total = cards.len() as u64;
        for card in &mut cards {
            if let Some(sriov) = card.sriov.as_mut() {
                sriov.vfs = vfs.remove(&card.pci_address);
                total += sriov.vfs.as_ref().map_or(0, |v| v.len() as u64);
            }
        }
        Network { cards, total }
    }

    // --- pci ---------------------------------------------------------------------------------

    fn pci(&self) -> Pci {
        let release = self.kernel_release();
        let bus = self.path(SYS_BUS_PCI);
        let devices: Vec<PciDevice> = list_dir(&bus)
            .into_iter()
            .map(|address| pci_device(&bus.join(&address), address, &release))
            .collect();
        Pci {
            total: devices.len() as u64,
            devices,
        }
    }

    /// Fills vendor and product names from `pci.ids`, read once for every PCI id in use.
    fn fill_pci_names(&self, resources: &mut Resources) {
        let network = &mut resources.network.cards;
        let wanted: BTreeSet<String> = network
            .iter()
            .flat_map(|c| std::iter::once(c).chain(c.sriov.iter().flat_map(|s| s.vfs.iter().flatten())))
            .map(|c| c.vendor_id.to_ascii_lowercase())
            .chain(
                resources
                    .pci
                    .devices
                    .iter()
                    .map(|d| d.vendor_id.to_ascii_lowercase()),
            )
            .filter(|id| !id.is_empty())
            .collect();
        if wanted.is_empty() {
            return;
        }
        let Some(names) = self.pci_names(&wanted) else {
            return;
        };
        for card in network.iter_mut() {
            name_card(card, &names);
        }
        for device in &mut resources.pci.devices {
            (device.vendor, device.product) = names.lookup(&device.vendor_id, &device.product_id);
        }
    }

    fn pci_names(&self, wanted: &BTreeSet<String>) -> Option<PciNames> {
        let file = PCI_IDS
            .iter()
            .find_map(|path| fs::File::open(self.path(path)).ok())?;
        Some(PciNames::parse(BufReader::new(file.take(MAX_PCI_IDS)), wanted))
    }

    // --- system ------------------------------------------------------------------------------

    fn system(&self, cpuinfo: &BTreeMap<i64, CpuInfo>) -> System {
        let dmi = self.path(SYS_DMI);
        let kind = self.system_type(cpuinfo, &dmi).to_string();
        if !exists(&dmi) {
            return System {
                kind,
                ..System::default()
            };
        }
        let field = |name: &str| read_text(&dmi.join(name));
        System {
            uuid: field("product_uuid"),
            vendor: field("sys_vendor"),
            product: field("product_name"),
            family: field("product_family"),
            version: field("product_version"),
            sku: field("product_sku"),
            serial: field("product_serial"),
            kind,
            firmware: Some(Firmware {
                vendor: field("bios_vendor"),
                date: field("bios_date"),
                version: field("bios_version"),
            }),
            chassis: Some(Chassis {
                vendor: field("chassis_vendor"),
                kind: read_u64(&dmi.join("chassis_type"))
                    .map(chassis_type_name)
                    .unwrap_or_default()
                    .to_string(),
                serial: field("chassis_serial"),
                version: field("chassis_version"),
            }),
            motherboard: Some(Motherboard {
                vendor: field("board_vendor"),
                product: field("board_name"),
                serial: field("board_serial"),
                version: field("board_version"),
            }),
        }
    }

    fn system_type(&self, cpuinfo: &BTreeMap<i64, CpuInfo>, dmi: &Path) -> &'static str {
        if self.in_container() {
            "container"
        } else if self.in_virtual_machine(cpuinfo, dmi) {
            "virtual-machine"
        } else {
            "physical"
        }
    }

    /// The container markers of `systemd-detect-virt --container`.
    fn in_container(&self) -> bool {
        let markers = [
            "/run/systemd/container",
            "/run/host/container-manager",
            "/.dockerenv",
            "/run/.containerenv",
        ];
        if markers.iter().any(|m| exists(&self.path(m))) {
            return true;
        }
        let init_env = read_bounded(&self.path("/proc/1/environ"), MAX_READ).unwrap_or_default();
        if init_env
            .split('\0')
            .any(|var| var.strip_prefix("container=").is_some_and(|v| !v.is_empty()))
        {
            return true;
        }
        let openvz = exists(&self.path("/proc/vz")) && !exists(&self.path("/proc/bc"));
        let release = self.kernel_release().to_ascii_lowercase();
        openvz || release.contains("microsoft") || release.contains("wsl")
    }

    /// The hypervisor markers of `systemd-detect-virt --vm`: the x86 `hypervisor` CPU flag,
    /// Xen's and device tree's hypervisor nodes, and the hypervisors' DMI vendor strings.
    fn in_virtual_machine(&self, cpuinfo: &BTreeMap<i64, CpuInfo>, dmi: &Path) -> bool {
        let flagged = cpuinfo
            .values()
            .next()
            .and_then(|i| i.flags.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == "hypervisor"));
        let nodes = ["/sys/hypervisor/type", "/proc/device-tree/hypervisor/compatible"];
        flagged || nodes.iter().any(|n| exists(&self.path(n))) || dmi_is_virtual(dmi)
    }

    // --- load --------------------------------------------------------------------------------

    fn load(&self) -> Load {
        let averages = read_bounded(&self.path(PROC_LOADAVG), MAX_READ)
            .and_then(|text| parse_loadavg(&text))
            .unwrap_or_default();
        Load {
            average_1min: averages[0],
            average_5min: averages[1],
            average_10min: averages[2],
            processes: self.process_count(),
        }
    }

    /// The numeric directories of `/proc`.
    fn process_count(&self) -> i64 {
        let Ok(entries) = fs::read_dir(self.path("/proc")) else {
            return 0;
        };
        let count = entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .count();
        i64::try_from(count).unwrap_or(i64::MAX)
    }
}

fn sysfs_thread(id: i64, dir: PathBuf) -> ThreadTopology {
    let topology = dir.join("topology");
    let number = |name: &str| {
        read_i64(&topology.join(name))
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0)
    };
    let (core, die) = (number("core_id"), number("die_id"));
    let core_key = ["thread_siblings_list", "core_cpus_list"]
        .iter()
        .find_map(|name| read_trimmed(&topology.join(name)).filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("{die}_{core}"));
    ThreadTopology {
        id,
        socket: number("physical_package_id"),
        core,
        die,
        // The kernel says 65535 when it does not enumerate clusters.
        cluster: Some(number("cluster_id")).filter(|c| *c != 65535).unwrap_or(0),
        core_key,
        dir,
    }
}

fn cpuinfo_thread(id: i64, info: &CpuInfo, base: &Path) -> ThreadTopology {
    let socket = info.physical_id.unwrap_or(0);
    let core = info.core_id.or_else(|| u64::try_from(id).ok()).unwrap_or(0);
    ThreadTopology {
        id,
        socket,
        core,
        die: 0,
        cluster: 0,
        core_key: format!("{socket}_{core}"),
        dir: base.join(format!("cpu{id}")),
    }
}

fn cpu_caches(dir: &Path) -> Vec<CpuCache> {
    list_dir(dir)
        .iter()
        .filter_map(|name| {
            let entry = dir.join(name);
            let level = read_u64(&entry.join("level"))?;
            let size = read_trimmed(&entry.join("size"))
                .and_then(|s| parse_cache_size(&s))
                .unwrap_or(0);
            let kind = read_trimmed(&entry.join("type")).unwrap_or_else(|| "Unknown".to_string());
            Some(CpuCache { level, kind, size })
        })
        .collect()
}

/// The bytes of online memory in the `memoryN` blocks of `dir`; `None` when a block's state
/// cannot be read or none is online (the caller then keeps `meminfo`'s value).
fn online_memory(dir: &Path, block_size: u64) -> Option<u64> {
    let mut online = 0u64;
    for name in list_dir(dir).iter().filter(|n| n.starts_with("memory")) {
        let state = dir.join(name).join("online");
        if !exists(&state) {
            continue;
        }
        if read_trimmed(&state)? == "1" {
            online += 1;
        }
    }
    Some(online.saturating_mul(block_size)).filter(|total| *total > 0)
}

/// The links of a `/dev/disk/by-*` directory with the names of the devices they point to.
fn dev_links(dir: &Path) -> Vec<(String, String)> {
    list_dir(dir)
        .into_iter()
        .filter_map(|link| {
            let target = link_name(&dir.join(&link))?;
            Some((link, target))
        })
        .collect()
}

fn partitions(disk: &Path) -> Vec<Partition> {
    let mut partitions: Vec<Partition> = list_dir(disk)
        .into_iter()
        .filter_map(|name| {
            let dir = disk.join(&name);
            let partition = read_u64(&dir.join("partition"))?;
            Some(Partition {
                device: read_text(&dir.join("dev")),
                read_only: read_u64(&dir.join("ro")) == Some(1),
                size: read_u64(&dir.join("size")).unwrap_or(0).saturating_mul(SECTOR),
                partition,
                id: name,
            })
        })
        .collect();
    partitions.sort_by_key(|p| p.partition);
    partitions
}

/// A network card from its device directory (`/sys/class/net/X/device` or a PCI function).
fn network_card(device: &Path, kernel_release: &str) -> NetworkCard {
    let dir = device_dir(device);
    let (driver, driver_version) = driver_info(&dir, kernel_release);
    NetworkCard {
        driver,
        driver_version,
        ports: network_ports(device),
        sriov: exists(&dir.join("sriov_numvfs")).then(|| NetworkSriov {
            current_vfs: read_u64(&dir.join("sriov_numvfs")).unwrap_or(0),
            maximum_vfs: read_u64(&dir.join("sriov_totalvfs")).unwrap_or(0),
            vfs: None,
        }),
        vdpa: vdpa(&dir),
        numa_node: device_numa_node(&dir),
        vendor_id: read_id(&dir.join("vendor")),
        product_id: read_id(&dir.join("device")),
        usb_address: usb_address(&dir).unwrap_or_default(),
        ..NetworkCard::default()
    }
}

/// Lists a card, or keeps it aside when it is an SR-IOV virtual function of another.
fn place_card(
    card: NetworkCard,
    device: &Path,
    cards: &mut Vec<NetworkCard>,
    vfs: &mut BTreeMap<String, Vec<NetworkCard>>,
) {
    match resolved_name(&device.join("physfn")) {
        Some(parent) => vfs.entry(parent).or_default().push(card),
        None => cards.push(card),
    }
}

fn vdpa(dir: &Path) -> Option<NetworkVdpa> {
    let name = list_dir(dir).into_iter().find(|n| n.starts_with("vdpa"))?;
    let device = list_dir(&dir.join(&name))
        .into_iter()
        .find(|n| n.starts_with("vhost-vdpa-"))?;
    Some(NetworkVdpa { name, device })
}

fn network_ports(device: &Path) -> Vec<NetworkPort> {
    let net = device.join("net");
    list_dir(&net)
        .into_iter()
        .map(|name| network_port(&net.join(&name), name))
        .collect()
}

fn network_port(dir: &Path, id: String) -> NetworkPort {
    let protocol = match read_u64(&dir.join("type")) {
        Some(1) => "ethernet",
        Some(19) => "ATM",
        Some(32) => "infiniband",
        Some(_) => "unknown",
        None => "",
    };
    let link_detected = read_u64(&dir.join("carrier")) == Some(1);
    let speed = read_i64(&dir.join("speed"))
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s != 65535 && *s != u64::from(u32::MAX));
    let duplex = read_text(&dir.join("duplex"));
    NetworkPort {
        id,
        address: read_text(&dir.join("address")),
        port: read_u64(&dir.join("dev_port")).unwrap_or(0),
        protocol: protocol.to_string(),
        auto_negotiation: false,
        link_detected,
        link_speed: speed.filter(|_| link_detected).unwrap_or(0),
        link_duplex: if link_detected && (duplex == "full" || duplex == "half") {
            duplex
        } else {
            String::new()
        },
    }
}

fn name_card(card: &mut NetworkCard, names: &PciNames) {
    (card.vendor, card.product) = names.lookup(&card.vendor_id, &card.product_id);
    if let Some(vfs) = card.sriov.as_mut().and_then(|s| s.vfs.as_mut()) {
        for vf in vfs {
            name_card(vf, names);
        }
    }
}

fn pci_device(dir: &Path, address: String, kernel_release: &str) -> PciDevice {
    let (driver, driver_version) = driver_info(dir, kernel_release);
    PciDevice {
        driver,
        driver_version,
        numa_node: device_numa_node(dir),
        pci_address: address,
        vendor: String::new(),
        vendor_id: read_id(&dir.join("vendor")),
        product: String::new(),
        product_id: read_id(&dir.join("device")),
        iommu_group: link_name(&dir.join("iommu_group"))
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
        vpd: PciVpd::default(),
    }
}

/// Whether the DMI strings name a hypervisor (the vendors `systemd-detect-virt` knows).
fn dmi_is_virtual(dmi: &Path) -> bool {
    const VENDORS: &[&str] = &[
        "KVM",
        "OpenStack",
        "KubeVirt",
        "QEMU",
        "VMware",
        "VMW",
        "innotek GmbH",
        "VirtualBox",
        "Xen",
        "Bochs",
        "Parallels",
        "BHYVE",
        "Hyper-V",
        "Apple Virtualization",
        "Google Compute Engine",
    ];
    let fields = [
        "product_name",
        "sys_vendor",
        "board_vendor",
        "bios_vendor",
        "product_version",
    ];
    let values: Vec<String> = fields.iter().map(|f| read_text(&dmi.join(f))).collect();
    let named = values
        .iter()
        .any(|v| VENDORS.iter().any(|vendor| v.starts_with(vendor)));
    let (product, vendor) = (&values[0], &values[1]);
    let hyper_v = vendor == "Microsoft Corporation" && product == "Virtual Machine";
    let ec2 = vendor == "Amazon EC2" && !product.ends_with(".metal") && !product.is_empty();
    named || hyper_v || ec2
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    // --- on this machine ---------------------------------------------------------------------

    #[test]
    fn gather_has_every_top_level_key_with_the_right_types() {
        let value = gather();
        let object = value.as_object().expect("an object");
        for key in [
            "cpu", "memory", "gpu", "network", "storage", "usb", "pci", "system", "load",
        ] {
            assert!(object.contains_key(key), "missing {key}");
        }
        assert_eq!(object.len(), 9);
        assert!(value["cpu"]["architecture"]
            .as_str()
            .is_some_and(|a| !a.is_empty()));
        assert!(value["cpu"]["sockets"].is_array());
        assert!(value["memory"]["hugepages_size"].is_u64());
        for (list, items) in [
            ("gpu", "cards"),
            ("network", "cards"),
            ("storage", "disks"),
            ("usb", "devices"),
            ("pci", "devices"),
        ] {
            assert!(value[list][items].is_array(), "{list}.{items}");
            assert!(value[list]["total"].is_u64(), "{list}.total");
        }
        assert_eq!(value["gpu"], serde_json::json!({"cards": [], "total": 0}));
        assert_eq!(value["usb"], serde_json::json!({"devices": [], "total": 0}));
        for key in [
            "uuid", "vendor", "product", "family", "version", "sku", "serial", "type",
        ] {
            assert!(value["system"][key].is_string(), "system.{key}");
        }
        for key in ["firmware", "chassis", "motherboard"] {
            assert!(
                value["system"][key].is_null() || value["system"][key].is_object(),
                "system.{key}"
            );
        }
        for key in ["Average1Min", "Average5Min", "Average10Min"] {
            assert!(value["load"][key].is_f64(), "load.{key}");
        }
        assert!(value["load"]["Processes"].as_i64().is_some_and(|p| p > 0));
    }

    #[test]
    fn this_machine_has_memory_and_cpus() {
        let resources = collect();
        assert!(resources.memory.total > 0);
        assert!(resources.memory.used <= resources.memory.total);
        assert!(resources.cpu.total >= 1);
        let threads: usize = resources
            .cpu
            .sockets
            .iter()
            .flat_map(|s| &s.cores)
            .map(|c| c.threads.len())
            .sum();
        assert_eq!(threads as u64, resources.cpu.total);
        assert!(["physical", "container", "virtual-machine"].contains(&resources.system.kind.as_str()));
        let disks = resources.storage.disks.len() as u64;
        let partitions: u64 = resources
            .storage
            .disks
            .iter()
            .map(|d| d.partitions.len() as u64)
            .sum();
        assert_eq!(resources.storage.total, disks + partitions);
        assert_eq!(resources.pci.total, resources.pci.devices.len() as u64);
    }

    #[test]
    fn cpu_threads_have_the_incus_keys() {
        let value = gather();
        let socket = &value["cpu"]["sockets"][0];
        assert!(socket["socket"].is_u64());
        let core = &socket["cores"][0];
        assert!(core["core"].is_u64() && core["die"].is_u64());
        assert!(core.get("cluster").is_none(), "cluster is newer than Incus 6.0");
        let thread = &core["threads"][0];
        assert!(thread["id"].is_i64() && thread["numa_node"].is_u64() && thread["thread"].is_u64());
        assert!(thread["online"].is_boolean() && thread["isolated"].is_boolean());
    }

    // --- parsers -----------------------------------------------------------------------------

    #[test]
    fn cpu_lists_expand() {
        assert_eq!(parse_cpu_list("0-3,5"), Some(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpu_list("7\n"), Some(vec![7]));
        assert_eq!(parse_cpu_list(" 1 , 4-5 "), Some(vec![1, 4, 5]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list("1-"), None);
        assert_eq!(parse_cpu_list("0-18446744073709551615"), None);
    }

    #[test]
    fn meminfo_parses_into_bytes() {
        let text = "MemTotal:       24684084 kB\nMemFree:        20890632 kB\nMemAvailable:   23070468 kB\n\
                    Buffers:           29644 kB\nCached:          2297816 kB\nSwapCached:  0 kB\n\
                    HugePages_Total:       4\nHugePages_Free:        1\nHugepagesize:       2048 kB\n\
                    garbage line\nBogus: x kB\n";
        let info = parse_meminfo(text);
        assert_eq!(info.total, 24684084 * 1024);
        assert_eq!(info.free, 20890632 * 1024);
        assert_eq!(info.buffers, 29644 * 1024);
        assert_eq!(info.cached, 2297816 * 1024);
        assert_eq!(
            (info.hugepages_total, info.hugepages_free, info.hugepages_size),
            (4, 1, 2048 * 1024)
        );
    }

    #[test]
    fn node_meminfo_keys_lose_their_prefix() {
        let info = parse_meminfo(
            "Node 0 MemTotal:  7039180 kB\nNode 0 MemUsed:   3676360 kB\nNode 0 HugePages_Free: 2\n",
        );
        assert_eq!(info.total, 7039180 * 1024);
        assert_eq!(info.used, 3676360 * 1024);
        assert_eq!(info.hugepages_free, 2);
    }

    #[test]
    fn loadavg_parses() {
        assert_eq!(
            parse_loadavg("2.59 1.10 0.48 7/129 15765\n"),
            Some([2.59, 1.10, 0.48])
        );
        assert_eq!(parse_loadavg("1.0 2.0"), None);
        assert_eq!(parse_loadavg("x 1 2"), None);
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("32K\n"), Some(32768));
        assert_eq!(parse_cache_size("32M"), Some(32 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size(""), None);
    }

    #[test]
    fn cpuinfo_splits_into_processors() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\
                    physical id\t: 0\ncore id\t\t: 0\nflags\t\t: fpu vme  hypervisor\n\n\
                    processor\t: 1\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\
                    physical id\t: 1\ncore id\t\t: 3\n\n";
        let blocks = parse_cpuinfo(text);
        assert_eq!(blocks.len(), 2);
        let first = &blocks[&0];
        assert_eq!(
            (first.vendor.as_str(), first.name.as_str()),
            ("AuthenticAMD", "AMD EPYC")
        );
        assert_eq!(
            first.flags,
            Some(vec!["fpu".into(), "vme".into(), "hypervisor".into()])
        );
        assert_eq!(
            (
                blocks[&1].physical_id,
                blocks[&1].core_id,
                blocks[&1].flags.clone()
            ),
            (Some(1), Some(3), None)
        );
        let power = parse_cpuinfo("processor\t: 0\ncpu\t\t: POWER9 (architected)\n");
        assert_eq!(power[&0].name, "POWER9 (architected)");
        assert!(parse_cpuinfo("Features: fp asimd\n").is_empty());
    }

    #[test]
    fn udev_escapes_decode() {
        assert_eq!(udev_decode(r"WDC\x20WD10EZEX\x2d00\x20\x20"), "WDC WD10EZEX-00  ");
        assert_eq!(udev_decode(r"plain"), "plain");
        assert_eq!(udev_decode(r"bad\xZZ\x"), r"bad\xZZ\x");
        let props = parse_udev_properties("S:disk/by-id/x\nE:ID_MODEL=Disk\nE:ID_ATA_SATA=1\nG:systemd\n");
        assert_eq!(props.len(), 2);
        assert_eq!(props["ID_MODEL"], "Disk");
    }

    const PCI_IDS_SAMPLE: &str = "# comment\n\
        1af4  Red Hat, Inc.\n\
        \t1000  Virtio network device\n\
        \t\t1af4 0001  Virtio network device\n\
        \t1041  Virtio 1.0 network device\n\
        8086  Intel Corporation\n\
        \t0d57  Something\n\
        \t10d3  82574L Gigabit Network Connection\n\
        C 00  Unclassified device\n\
        \t00  Non-VGA unclassified device\n";

    #[test]
    fn pci_ids_lookup() {
        let wanted: BTreeSet<String> = ["1af4".to_string(), "abcd".to_string()].into();
        let names = PciNames::parse(PCI_IDS_SAMPLE.as_bytes(), &wanted);
        let red_hat = (
            "Red Hat, Inc.".to_string(),
            "Virtio 1.0 network device".to_string(),
        );
        assert_eq!(names.lookup("1af4", "1041"), red_hat);
        assert_eq!(
            names.lookup("1AF4", "0001"),
            ("Red Hat, Inc.".to_string(), String::new())
        );
        assert_eq!(
            names.lookup("8086", "10d3"),
            (String::new(), String::new()),
            "not wanted"
        );
        assert_eq!(names.lookup("abcd", "0000"), (String::new(), String::new()));
    }

    #[test]
    fn chassis_types_name() {
        assert_eq!(chassis_type_name(1), "Other");
        assert_eq!(chassis_type_name(10), "Notebook");
        assert_eq!(chassis_type_name(0x24), "Stick PC");
        assert_eq!(chassis_type_name(0), "");
        assert_eq!(chassis_type_name(99), "");
    }

    // --- fake hosts --------------------------------------------------------------------------

    fn write(root: &Path, path: &str, content: &str) {
        let path = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn link(root: &Path, path: &str, target: &str) {
        let path = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let target = match target.strip_prefix('/') {
            Some(inside) => root.join(inside),
            None => PathBuf::from(target),
        };
        symlink(target, path).unwrap();
    }

    fn dir(root: &Path, path: &str) {
        fs::create_dir_all(root.join(path.trim_start_matches('/'))).unwrap();
    }

    fn host(root: &Path) -> Host {
        Host {
            root: root.to_path_buf(),
        }
    }

    #[test]
    fn an_empty_host_gives_the_full_shape() {
        let tmp = tempfile::tempdir().unwrap();
        let resources = host(tmp.path()).resources();
        let value = serde_json::to_value(&resources).unwrap();
        assert_eq!(value["cpu"]["total"], 0);
        assert_eq!(value["cpu"]["sockets"], serde_json::json!([]));
        assert!(!resources.cpu.architecture.is_empty());
        assert_eq!(value["memory"]["total"], 0);
        assert!(value["memory"].get("nodes").is_none());
        assert_eq!(value["storage"], serde_json::json!({"disks": [], "total": 0}));
        assert_eq!(value["network"], serde_json::json!({"cards": [], "total": 0}));
        assert_eq!(value["pci"], serde_json::json!({"devices": [], "total": 0}));
        assert_eq!(value["system"]["type"], "physical");
        assert!(value["system"]["firmware"].is_null() && value["system"]["chassis"].is_null());
        assert_eq!(value["load"]["Processes"], 0);
        assert_eq!(value["load"]["Average1Min"], 0.0);
    }

    fn fake_cpu(root: &Path, id: u32, core: u32, siblings: &str) {
        let base = format!("/sys/devices/system/cpu/cpu{id}");
        for (name, value) in [
            ("physical_package_id", "0"),
            ("die_id", "0"),
            ("cluster_id", "65535"),
        ] {
            write(root, &format!("{base}/topology/{name}"), value);
        }
        write(root, &format!("{base}/topology/core_id"), &core.to_string());
        write(root, &format!("{base}/topology/thread_siblings_list"), siblings);
        write(
            root,
            &format!("{base}/cpufreq/scaling_cur_freq"),
            &format!("{}", 2_000_000 + core * 1_000_000),
        );
        write(root, &format!("{base}/cpufreq/cpuinfo_min_freq"), "400000");
        write(root, &format!("{base}/cpufreq/cpuinfo_max_freq"), "4500000");
        write(root, &format!("{base}/cache/index0/level"), "1");
        write(root, &format!("{base}/cache/index0/size"), "32K");
        write(root, &format!("{base}/cache/index0/type"), "Data");
        write(root, &format!("{base}/cache/index2/level"), "2");
        write(root, &format!("{base}/cache/index2/size"), "1024K");
        write(root, "/sys/devices/system/node/node0/numastat", "");
        link(root, &format!("{base}/node0"), "/sys/devices/system/node/node0");
    }

    #[test]
    fn cpu_topology_from_sysfs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_cpu(root, 0, 0, "0,2");
        fake_cpu(root, 1, 1, "1");
        fake_cpu(root, 2, 0, "0,2");
        write(root, "/sys/devices/system/cpu/cpu2/online", "0");
        write(root, "/sys/devices/system/cpu/isolated", "1\n");
        write(
            root,
            "/proc/cpuinfo",
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t: fpu sse\n",
        );
        write(root, "/proc/sys/kernel/arch", "x86_64\n");
        let cpu = host(root).resources().cpu;
        assert_eq!(
            (cpu.architecture.as_str(), cpu.total, cpu.sockets.len()),
            ("x86_64", 3, 1)
        );
        let socket = &cpu.sockets[0];
        assert_eq!(
            (socket.name.as_str(), socket.vendor.as_str()),
            ("Xeon", "GenuineIntel")
        );
        assert_eq!(
            (socket.frequency_minimum, socket.frequency_turbo, socket.frequency),
            (400, 4500, 2500)
        );
        assert_eq!(
            socket.cache[1],
            CpuCache {
                level: 2,
                kind: "Unknown".into(),
                size: 1 << 20
            }
        );
        assert_eq!(socket.cores.len(), 2);
        let (first, second) = (&socket.cores[0], &socket.cores[1]);
        assert_eq!(
            (first.core, first.frequency, first.flags.as_ref().map(Vec::len)),
            (0, 2000, Some(2))
        );
        assert_eq!(
            first
                .threads
                .iter()
                .map(|t| (t.id, t.thread, t.online))
                .collect::<Vec<_>>(),
            [(0, 0, true), (2, 1, false)]
        );
        assert!(second.threads[0].isolated && !first.threads[0].isolated);
        assert_eq!(second.cluster, 0);
        let json = serde_json::to_value(socket).unwrap();
        assert_eq!(json["frequency"], 2500);
        assert!(json.get("cores").unwrap()[0].get("cluster").is_none());
    }

    #[test]
    fn cpu_falls_back_to_cpuinfo() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "/proc/cpuinfo",
            "processor : 0\nphysical id : 0\ncore id : 0\n\nprocessor : 1\nphysical id : 1\ncore id : 0\n",
        );
        let cpu = host(tmp.path()).resources().cpu;
        assert_eq!((cpu.total, cpu.sockets.len()), (2, 2));
        assert_eq!(cpu.sockets[1].cores[0].threads[0].id, 1);
        assert_eq!(cpu.sockets[1].cores[0].flags, None);
    }

    #[test]
    fn memory_counts_online_blocks_and_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "/proc/meminfo",
            "MemTotal: 1000 kB\nMemFree: 200 kB\nBuffers: 100 kB\nCached: 300 kB\n\
                                      HugePages_Total: 4\nHugePages_Free: 1\nHugepagesize: 2048 kB\n",
        );
        write(root, "/sys/devices/system/memory/block_size_bytes", "8000000\n");
        write(root, "/sys/devices/system/memory/memory0/online", "1");
        write(root, "/sys/devices/system/memory/memory1/online", "1");
        write(root, "/sys/devices/system/memory/memory2/online", "0");
        let node0 = "Node 0 MemTotal: 500 kB\nNode 0 MemUsed: 50 kB\n\
                     Node 0 HugePages_Total: 2\nNode 0 HugePages_Free: 2\n";
        write(root, "/sys/devices/system/node/node0/meminfo", node0);
        link(
            root,
            "/sys/devices/system/node/node0/memory0",
            "/sys/devices/system/memory/memory0",
        );
        write(
            root,
            "/sys/devices/system/node/node1/meminfo",
            "Node 1 MemTotal: 500 kB\nNode 1 MemUsed: 60 kB\n",
        );
        dir(root, "/sys/devices/system/node/possible");
        let memory = host(root).resources().memory;
        let total = 2 * 0x800_0000;
        assert_eq!(memory.total, total);
        assert_eq!(memory.used, total - 600 * 1024);
        assert_eq!(
            (
                memory.hugepages_total,
                memory.hugepages_used,
                memory.hugepages_size
            ),
            (4 << 21, 3 << 21, 1 << 21)
        );
        assert_eq!(
            memory.nodes,
            [
                MemoryNode {
                    numa_node: 0,
                    hugepages_used: 0,
                    hugepages_total: 2 << 21,
                    used: 50 * 1024,
                    total: 0x800_0000
                },
                MemoryNode {
                    numa_node: 1,
                    hugepages_used: 0,
                    hugepages_total: 0,
                    used: 60 * 1024,
                    total: 500 * 1024
                },
            ]
        );
    }

    #[test]
    fn storage_lists_disks_with_partitions() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let pci = "/sys/devices/pci0000:00/0000:00:02.0";
        write(root, &format!("{pci}/numa_node"), "-1");
        dir(root, "/sys/bus/pci");
        dir(root, "/sys/bus/virtio");
        link(root, &format!("{pci}/subsystem"), "/sys/bus/pci");
        link(root, &format!("{pci}/virtio1/subsystem"), "/sys/bus/virtio");
        let vda = format!("{pci}/virtio1/block/vda");
        link(root, &format!("{vda}/device"), &format!("{pci}/virtio1"));
        for (name, value) in [("dev", "254:0"), ("size", "8"), ("ro", "0"), ("removable", "0")] {
            write(root, &format!("{vda}/{name}"), value);
        }
        write(root, &format!("{vda}/queue/rotational"), "1");
        write(root, &format!("{vda}/queue/physical_block_size"), "4096");
        for (name, value) in [("dev", "254:1"), ("size", "4"), ("ro", "1"), ("partition", "1")] {
            write(root, &format!("{vda}/vda1/{name}"), value);
        }
        link(root, "/sys/class/block/vda", &vda);
        link(root, "/sys/class/block/vda1", &format!("{vda}/vda1"));
        write(root, "/sys/devices/virtual/block/loop0/size", "100");
        link(root, "/sys/class/block/loop0", "/sys/devices/virtual/block/loop0");
        link(root, "/dev/disk/by-id/virtio-abc", "../../vda");
        link(root, "/dev/disk/by-id/virtio-abc-part1", "../../vda1");
        link(root, "/dev/disk/by-path/pci-0000:00:02.0", "../../vda");
        write(
            root,
            "/run/udev/data/b254:0",
            "E:ID_MODEL_ENC=Fast\\x20Disk\\x20\\x20\nE:ID_SERIAL_SHORT=S123\n\
                                              E:ID_ATA_SATA=1\nE:ID_ATA_ROTATION_RATE_RPM=7200\n",
        );
        let storage = host(root).resources().storage;
        assert_eq!(storage.total, 2);
        assert_eq!(storage.disks.len(), 1);
        let disk = &storage.disks[0];
        assert_eq!(
            (disk.id.as_str(), disk.device.as_str(), disk.kind.as_str()),
            ("vda", "254:0", "sata")
        );
        assert_eq!(
            (disk.size, disk.block_size, disk.rpm, disk.numa_node),
            (4096, 4096, 7200, 0)
        );
        assert_eq!((disk.model.as_str(), disk.serial.as_str()), ("Fast Disk", "S123"));
        assert_eq!(
            (disk.device_id.as_str(), disk.device_path.as_str()),
            ("virtio-abc", "pci-0000:00:02.0")
        );
        assert_eq!(disk.pci_address, "0000:00:02.0");
        assert_eq!(
            disk.partitions,
            [Partition {
                id: "vda1".into(),
                device: "254:1".into(),
                read_only: true,
                size: 2048,
                partition: 1
            }]
        );
        let json = serde_json::to_value(disk).unwrap();
        assert!(json.get("wwn").is_none() && json.get("usb_address").is_none());
        assert_eq!(json["device_id"], "virtio-abc");
    }

    #[test]
    fn network_keeps_physical_cards_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let pci = "/sys/devices/pci0000:00/0000:00:03.0";
        dir(root, "/sys/bus/pci");
        dir(root, "/sys/bus/virtio");
        write(root, "/sys/module/virtio_net/version", "");
        dir(root, "/sys/bus/virtio/drivers/virtio_net");
        link(root, &format!("{pci}/subsystem"), "/sys/bus/pci");
        let virtio = format!("{pci}/virtio2");
        link(root, &format!("{virtio}/subsystem"), "/sys/bus/virtio");
        link(
            root,
            &format!("{virtio}/driver"),
            "/sys/bus/virtio/drivers/virtio_net",
        );
        write(root, &format!("{virtio}/vendor"), "0x1af4\n");
        write(root, &format!("{virtio}/device"), "0x0001\n");
        let eth0 = format!("{virtio}/net/eth0");
        link(root, &format!("{eth0}/device"), &virtio);
        for (name, value) in [
            ("type", "1"),
            ("address", "02:fc:00:00:00:01"),
            ("dev_port", "0"),
            ("carrier", "1"),
        ] {
            write(root, &format!("{eth0}/{name}"), value);
        }
        write(root, &format!("{eth0}/speed"), "-1");
        write(root, &format!("{eth0}/duplex"), "full");
        link(root, "/sys/class/net/eth0", &eth0);
        write(root, "/sys/devices/virtual/net/lo/type", "772");
        link(root, "/sys/class/net/lo", "/sys/devices/virtual/net/lo");
        // The card's PCI function, already known, and an unbound Intel NIC with SR-IOV.
        link(root, "/sys/bus/pci/devices/0000:00:03.0", pci);
        write(root, &format!("{pci}/class"), "0x020000");
        let intel = "/sys/devices/pci0000:00/0000:00:04.0";
        for (name, value) in [
            ("class", "0x020000"),
            ("vendor", "0x8086"),
            ("device", "0x10d3"),
            ("numa_node", "1"),
        ] {
            write(root, &format!("{intel}/{name}"), value);
        }
        write(root, &format!("{intel}/sriov_numvfs"), "0");
        write(root, &format!("{intel}/sriov_totalvfs"), "7");
        link(
            root,
            &format!("{intel}/iommu_group"),
            "../../../kernel/iommu_groups/12",
        );
        link(root, "/sys/bus/pci/devices/0000:00:04.0", intel);
        write(root, "/proc/sys/kernel/osrelease", "6.1.0-test\n");
        write(root, "/usr/share/misc/pci.ids", PCI_IDS_SAMPLE);

        let resources = host(root).resources();
        let network = &resources.network;
        assert_eq!((network.total, network.cards.len()), (2, 2));
        let card = &network.cards[0];
        assert_eq!(
            (card.driver.as_str(), card.driver_version.as_str()),
            ("virtio_net", "6.1.0-test")
        );
        assert_eq!(
            (
                card.vendor.as_str(),
                card.vendor_id.as_str(),
                card.product_id.as_str()
            ),
            ("Red Hat, Inc.", "1af4", "0001")
        );
        assert_eq!(card.pci_address, "0000:00:03.0");
        assert_eq!(
            card.ports,
            [NetworkPort {
                id: "eth0".into(),
                address: "02:fc:00:00:00:01".into(),
                port: 0,
                protocol: "ethernet".into(),
                auto_negotiation: false,
                link_detected: true,
                link_speed: 0,
                link_duplex: "full".into(),
            }]
        );
        let intel_card = &network.cards[1];
        assert_eq!(
            (intel_card.pci_address.as_str(), intel_card.numa_node),
            ("0000:00:04.0", 1)
        );
        assert_eq!(intel_card.product, "82574L Gigabit Network Connection");
        let json = serde_json::to_value(intel_card).unwrap();
        assert_eq!(
            json["sriov"],
            serde_json::json!({"current_vfs": 0, "maximum_vfs": 7, "vfs": null})
        );
        assert!(json.get("ports").is_none() && json.get("driver").is_none());

        let pci_devices = &resources.pci.devices;
        assert_eq!(resources.pci.total, 2);
        assert_eq!(
            (pci_devices[1].iommu_group, pci_devices[1].vendor.as_str()),
            (12, "Intel Corporation")
        );
        assert_eq!(
            serde_json::to_value(&pci_devices[0]).unwrap()["vpd"],
            serde_json::json!({})
        );
    }

    #[test]
    fn system_reads_dmi() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for (name, value) in [
            ("sys_vendor", "LENOVO\n"),
            ("product_name", "20HRCTO1WW\n"),
            ("product_family", "ThinkPad X1 Carbon 5th\n"),
            ("chassis_type", "10\n"),
            ("bios_vendor", "LENOVO\n"),
            ("board_name", "20HRCTO1WW\n"),
        ] {
            write(root, &format!("/sys/class/dmi/id/{name}"), value);
        }
        dir(root, "/sys/class/dmi/id/product_uuid"); // unreadable as a file
        let system = host(root).resources().system;
        assert_eq!(
            (system.kind.as_str(), system.vendor.as_str(), system.uuid.as_str()),
            ("physical", "LENOVO", "")
        );
        assert_eq!(system.chassis.as_ref().map(|c| c.kind.as_str()), Some("Notebook"));
        assert_eq!(
            system.firmware.as_ref().map(|f| f.vendor.as_str()),
            Some("LENOVO")
        );
        assert_eq!(
            system.motherboard.as_ref().map(|m| m.product.as_str()),
            Some("20HRCTO1WW")
        );
    }

    #[test]
    fn system_type_detection() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "/sys/class/dmi/id/sys_vendor", "QEMU\n");
        assert_eq!(host(root).resources().system.kind, "virtual-machine");
        write(root, "/run/systemd/container", "lxc\n");
        assert_eq!(host(root).resources().system.kind, "container");
    }

    #[test]
    fn load_reads_loadavg_and_counts_processes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "/proc/loadavg", "1.29 0.41 0.14 2/87 999\n");
        dir(root, "/proc/1");
        dir(root, "/proc/42");
        dir(root, "/proc/sys");
        write(root, "/proc/123", "not a directory");
        let load = host(root).resources().load;
        assert_eq!(
            load,
            Load {
                average_1min: 1.29,
                average_5min: 0.41,
                average_10min: 0.14,
                processes: 2
            }
        );
        let json = serde_json::to_value(&load).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "Average1Min": 1.29, "Average5Min": 0.41, "Average10Min": 0.14, "Processes": 2
            })
        );
    }
}
