//! The parts of the Incus API that stapes does not serve yet, in one table.
//!
//! Every `/1.0` path of Incus's API (`api10` in Incus's `cmd/incusd/api_1.0.go`) that
//! stapes does not implement answers `501 <Feature> are not supported by this server
//! yet`, after the trust check (an untrusted caller gets the usual 403), so clients
//! and users learn what is missing instead of a bare `not found`. Paths Incus does not
//! have stay 404. When a feature arrives, its rows leave this table.
//!
//! Paths are written as the router takes them, parameters named by position (`{p1}`,
//! `{p2}`, a catch-all `{*p1}`): the router needs one name per position, and nothing
//! reads them. Below a path that is served, a row takes the served route's name for
//! that position (`/1.0/storage-pools/{name}/volumes`). The server turns each row into a route (`server::routes::not_yet`).

/// Which methods of a path a row covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// Every method: stapes serves nothing at this path.
    All,
    /// Only `POST`: stapes serves the path's other methods.
    Post,
}

/// `(methods, path, feature)`. The feature is named so that "<feature> are not
/// supported by this server yet" reads well.
pub const NOT_YET: &[(Methods, &str, &str)] = &[
    (Methods::All, "/1.0/cluster/groups", "Cluster groups"),
    (Methods::All, "/1.0/cluster/groups/{p1}", "Cluster groups"),
    (
        Methods::Post,
        "/1.0/images/{fingerprint}/export",
        "Image pushes to another server",
    ),
    (
        Methods::All,
        "/1.0/images/{fingerprint}/refresh",
        "Image refreshes",
    ),
    (Methods::All, "/1.0/images/{fingerprint}/secret", "Image secrets"),
    (
        Methods::All,
        "/1.0/instances/{name}/access",
        "Instance access listings",
    ),
    (Methods::All, "/1.0/instances/{name}/backups", "Instance backups"),
    (
        Methods::All,
        "/1.0/instances/{name}/backups/{p2}",
        "Instance backups",
    ),
    (
        Methods::All,
        "/1.0/instances/{name}/backups/{p2}/export",
        "Instance backups",
    ),
    (Methods::All, "/1.0/instances/{name}/bitmaps", "Instance bitmaps"),
    (
        Methods::All,
        "/1.0/instances/{name}/debug/memory",
        "Instance debugging tools",
    ),
    (
        Methods::All,
        "/1.0/instances/{name}/debug/repair",
        "Instance debugging tools",
    ),
    (
        Methods::All,
        "/1.0/instances/{name}/metadata",
        "Instance metadata and templates",
    ),
    (
        Methods::All,
        "/1.0/instances/{name}/metadata/templates",
        "Instance metadata and templates",
    ),
    (Methods::All, "/1.0/instances/{name}/nbd", "Instance NBD exports"),
    (
        Methods::All,
        "/1.0/instances/{name}/nvram",
        "Instance NVRAM variables",
    ),
    (
        Methods::All,
        "/1.0/instances/{name}/nvram/{p2}",
        "Instance NVRAM variables",
    ),
    (
        Methods::All,
        "/1.0/instances/{name}/nvram/{p2}/{p3}",
        "Instance NVRAM variables",
    ),
    (
        Methods::All,
        "/1.0/instances/{name}/port-forward",
        "Instance port forwards",
    ),
    (Methods::All, "/1.0/instances/{name}/rebuild", "Instance rebuilds"),
    (Methods::All, "/1.0/network-acls", "Network ACLs"),
    (Methods::All, "/1.0/network-acls/{p1}", "Network ACLs"),
    (Methods::All, "/1.0/network-acls/{p1}/log", "Network ACLs"),
    (Methods::All, "/1.0/network-address-sets", "Network address sets"),
    (
        Methods::All,
        "/1.0/network-address-sets/{p1}",
        "Network address sets",
    ),
    (Methods::All, "/1.0/network-allocations", "Network allocations"),
    (Methods::All, "/1.0/network-integrations", "Network integrations"),
    (
        Methods::All,
        "/1.0/network-integrations/{p1}",
        "Network integrations",
    ),
    (Methods::All, "/1.0/network-zones", "Network zones"),
    (Methods::All, "/1.0/network-zones/{p1}", "Network zones"),
    (Methods::All, "/1.0/network-zones/{p1}/records", "Network zones"),
    (
        Methods::All,
        "/1.0/network-zones/{p1}/records/{p2}",
        "Network zones",
    ),
    (Methods::All, "/1.0/networks", "Networks"),
    (Methods::All, "/1.0/networks/{p1}", "Networks"),
    (Methods::All, "/1.0/networks/{p1}/forwards", "Networks"),
    (Methods::All, "/1.0/networks/{p1}/forwards/{p2}", "Networks"),
    (Methods::All, "/1.0/networks/{p1}/leases", "Networks"),
    (Methods::All, "/1.0/networks/{p1}/load-balancers", "Networks"),
    (Methods::All, "/1.0/networks/{p1}/load-balancers/{p2}", "Networks"),
    (
        Methods::All,
        "/1.0/networks/{p1}/load-balancers/{p2}/state",
        "Networks",
    ),
    (Methods::All, "/1.0/networks/{p1}/peers", "Networks"),
    (Methods::All, "/1.0/networks/{p1}/peers/{p2}", "Networks"),
    (Methods::All, "/1.0/networks/{p1}/state", "Networks"),
    (Methods::All, "/1.0/projects", "Projects"),
    (Methods::All, "/1.0/projects/{p1}", "Projects"),
    (Methods::All, "/1.0/projects/{p1}/access", "Projects"),
    (Methods::All, "/1.0/projects/{p1}/state", "Projects"),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/buckets",
        "Storage buckets",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/buckets/{p2}",
        "Storage buckets",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/buckets/{p2}/backups",
        "Storage buckets",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/buckets/{p2}/backups/{p3}",
        "Storage buckets",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/buckets/{p2}/backups/{p3}/export",
        "Storage buckets",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/buckets/{p2}/keys",
        "Storage buckets",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/buckets/{p2}/keys/{p3}",
        "Storage buckets",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/backups",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/backups/{p4}",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/backups/{p4}/export",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/bitmaps",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/bitmaps/{p4}",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/files",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/nbd",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/rebuild",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/sftp",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/snapshots",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/snapshots/{p4}",
        "Storage volumes",
    ),
    (
        Methods::All,
        "/1.0/storage-pools/{name}/volumes/{p2}/{p3}/state",
        "Storage volumes",
    ),
];
