//! The `api_extensions` stapes advertises.
//!
//! Clients gate features on these names (`CheckExtension` in the Go client), so the list
//! holds only what is implemented, named as Incus names it. Later capabilities append to
//! it as they land.

pub const API_EXTENSIONS: &[&str] = &[
    "etag",
    "patch",
    "certificate_update",
    "resources",
    "operation_description",
    "auth_user",
    "certificate_token",
    "certificate_project",
    "event_lifecycle",
    "event_lifecycle_requestor_address",
    "operation_wait",
    "api_filtering",
    "metrics",
    "resources_system",
    "resources_cpu_socket",
    "resources_gpu",
    "resources_numa",
    "resources_disk_sata",
    "resources_network_firmware",
    "resources_v2",
    "server_trusted_proxy",
    "metadata_configuration",
    "warnings",
    "event_location",
    "certificate_self_renewal",
    "clustering",
    "clustering_join",
    "clustering_join_token",
    "clustering_roles",
    "clustering_description",
    "clustering_failure_domains",
    "clustering_server_address",
    "clustering_sizing",
    "cluster_member_state",
    "clustering_update_cert",
    "clustering_edit_roles",
    "oidc",
    "oidc_claim",
    "oidc_scopes",
    "oidc_allowed_subnets",
    "storage",
    "image_create_aliases",
    "instance_create_start",
    // The instance list at recursion=2 and one instance with its state at recursion=1
    // are served: without these names the official client falls back to a request per
    // instance (and its sub-resources) for `incus list` and `incus info`.
    "instances",
    "container_full",
    "instance_get_full",
];
