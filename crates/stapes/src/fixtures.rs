//! Rendering checked against the official client: each test decodes a real Incus 6.0
//! answer (`crates/api/samples/`) and compares what stapes prints with what `incus`
//! printed for the same objects (`tests/fixtures/incus/cli/`, both captured by
//! `tests/fixtures/incus/capture.sh`).

use serde::de::DeserializeOwned;

use crate::format::ListFormat;

macro_rules! api_sample {
    ($file:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../api/samples/", $file))
    };
}

macro_rules! cli_output {
    ($file:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/incus/cli/",
            $file
        ))
    };
}

/// The envelope's metadata decoded as `T`.
pub fn metadata<T: DeserializeOwned>(envelope: &str) -> T {
    let v: serde_json::Value = serde_json::from_str(envelope).expect("sample is JSON");
    serde_json::from_value(v["metadata"].clone()).expect("sample decodes")
}

fn fmt(s: &str) -> ListFormat {
    ListFormat::parse(s).unwrap()
}

/// Compares line by line, so a failure shows where.
#[track_caller]
fn same(got: &str, want: &str) {
    if got != want {
        let g: Vec<&str> = got.lines().collect();
        let w: Vec<&str> = want.lines().collect();
        for i in 0..g.len().max(w.len()) {
            if g.get(i) != w.get(i) {
                panic!(
                    "line {}:\n got: {:?}\nwant: {:?}\n--- got ---\n{got}\n--- want ---\n{want}",
                    i + 1,
                    g.get(i),
                    w.get(i)
                );
            }
        }
        panic!("same lines, different bytes:\n got: {got:?}\nwant: {want:?}");
    }
}

mod storage {
    use super::*;
    use crate::storage::{render_info, render_pools};
    use api::types::{StoragePool, StoragePoolState};

    fn pools() -> Vec<StoragePool> {
        metadata(api_sample!("storage-pools.json"))
    }

    #[test]
    fn t10_storage_list_as_incus_prints_it() {
        same(
            &render_pools(&pools(), fmt("table"), "nDdus").unwrap(),
            cli_output!("storage-list.txt"),
        );
        same(
            &render_pools(&pools(), fmt("csv"), "nDdus").unwrap(),
            cli_output!("storage-list-csv.txt"),
        );
        same(
            &render_pools(&pools(), fmt("yaml"), "nDdus").unwrap(),
            cli_output!("storage-list-yaml.txt"),
        );
    }

    #[test]
    fn t10_storage_show_and_info_as_incus_prints_them() {
        let pool2 = pools().into_iter().find(|p| p.name == "pool2").unwrap();
        same(
            &crate::format::go_yaml(&pool2).unwrap(),
            cli_output!("storage-show.txt"),
        );
        let default: StoragePool = metadata(api_sample!("storage-pool-default.json"));
        let res: StoragePoolState = metadata(api_sample!("storage-pool-resources.json"));
        same(
            &render_info(&default, &res, false).unwrap(),
            cli_output!("storage-info.txt"),
        );
    }
}

mod profile {
    use super::*;
    use crate::profile::render_profiles;
    use api::types::Profile;

    #[test]
    fn t10_profile_list_show_and_devices_as_incus_prints_them() {
        let profiles: Vec<Profile> = metadata(api_sample!("profiles.json"));
        same(
            &render_profiles(&profiles, fmt("table"), "ndu", false).unwrap(),
            cli_output!("profile-list.txt"),
        );
        same(
            &render_profiles(&profiles, fmt("json"), "ndu", false).unwrap(),
            cli_output!("profile-list-json.txt"),
        );
        let p1: Profile = metadata(api_sample!("profile-p1.json"));
        same(
            &crate::format::go_yaml(&p1).unwrap(),
            cli_output!("profile-show.txt"),
        );
        same(
            &crate::format::go_yaml(&p1.put.devices).unwrap(),
            cli_output!("profile-device-show.txt"),
        );
        let empty = api::types::DeviceMap::new();
        same(
            &crate::format::go_yaml(&empty).unwrap(),
            cli_output!("config-device-show.txt"),
        );
    }
}

mod image {
    use super::*;
    use crate::image::{render_aliases, render_image_info, render_images};
    use api::types::{Image, ImageAliasesEntry};

    #[test]
    fn t10_image_list_info_show_and_aliases_as_incus_prints_them() {
        let images: Vec<Image> = metadata(api_sample!("images.json"));
        for (format, columns, want) in [
            ("table", "lfpdatsu", cli_output!("image-list.txt")),
            ("csv", "lfpdatsu", cli_output!("image-list-csv.txt")),
            ("compact", "lfpdatsu", cli_output!("image-list-compact.txt")),
            ("yaml", "lfpdatsu", cli_output!("image-list-yaml.txt")),
            ("table", "lfpdasut", cli_output!("image-list-columns.txt")),
        ] {
            same(
                &render_images(&images, fmt(format), columns, false).unwrap(),
                want,
            );
        }
        let image: Image = metadata(api_sample!("image.json"));
        same(&render_image_info(&image), cli_output!("image-info.txt"));
        same(
            &crate::format::go_yaml(&image.writable()).unwrap(),
            cli_output!("image-show.txt"),
        );
        let aliases: Vec<ImageAliasesEntry> = metadata(api_sample!("image-aliases.json"));
        same(
            &render_aliases(&aliases, &[], fmt("table"), "aftd").unwrap(),
            cli_output!("image-alias-list.txt"),
        );
    }
}

mod list {
    use super::*;
    use crate::list::{parse_list_columns, render_instances};
    use api::types::InstanceFull;

    fn render(format: &str, columns: &str) -> String {
        let instances: Vec<InstanceFull> = metadata(api_sample!("instances-r2.json"));
        let (cols, _) = parse_list_columns(columns, false, false, false).unwrap();
        render_instances(instances, &[], &cols, fmt(format)).unwrap()
    }

    #[test]
    fn t10_list_as_incus_prints_it() {
        same(&render("table", "ns46tSL"), cli_output!("list.txt"));
        same(&render("json", "ns46tSL"), cli_output!("list-json.txt"));
        same(&render("yaml", "ns46tSL"), cli_output!("list-yaml.txt"));
        same(
            &render("table", "nNbcdlmMpPstSuUe"),
            cli_output!("list-columns.txt"),
        );
        same(&render("compact", "ns"), cli_output!("list-compact.txt"));
        assert_eq!(
            parse_list_columns("nsL4t", false, false, false)
                .unwrap_err()
                .to_string()
                .as_str(),
            cli_output!("list-csv.txt")
                .lines()
                .next()
                .unwrap()
                .trim_start_matches("Error: ")
        );
    }

    /// The lab cluster's `incus list m1: -c nsL4t -f csv` and default table, from the
    /// lab's instances (clustered: the location column).
    #[test]
    fn t10_clustered_list_as_incus_prints_it() {
        let mut instances: Vec<InstanceFull> = metadata(api_sample!("lab-instances-r1.json"));
        for (i, (name, location)) in [("c2", "node1"), ("c3", "node3"), ("c4", "node3")]
            .into_iter()
            .enumerate()
        {
            let mut extra = instances[0].clone();
            extra.instance.name = name.into();
            extra.instance.location = location.into();
            instances.insert(i + 1, extra);
        }
        let (cols, _) = parse_list_columns("nsL4t", false, false, true).unwrap();
        same(
            &render_instances(instances.clone(), &[], &cols, fmt("csv")).unwrap(),
            "c1,RUNNING,node2,,CONTAINER\nc2,RUNNING,node1,,CONTAINER\nc3,RUNNING,node3,,CONTAINER\nc4,RUNNING,node3,,CONTAINER\n",
        );
        let (cols, _) = parse_list_columns(crate::list::DEFAULT_COLUMNS, false, false, true).unwrap();
        let table = render_instances(instances, &[], &cols, fmt("table")).unwrap();
        assert!(table.starts_with("+------+---------+------+------+-----------+-----------+----------+\n| NAME |  STATE  | IPV4 | IPV6 |   TYPE    | SNAPSHOTS | LOCATION |\n"), "{table}");
        assert!(
            table.contains("| c2   | RUNNING |      |      | CONTAINER | 0         | node1    |\n"),
            "{table}"
        );
    }
}

mod instance {
    use super::*;
    use crate::info::render_instance_info;
    use crate::instance_config::render_show;
    use api::types::InstanceFull;

    #[test]
    fn t10_info_as_incus_prints_it() {
        let c1: InstanceFull = metadata(api_sample!("instance-c1-full.json"));
        same(&render_instance_info(&c1, false), cli_output!("info.txt"));
        let c2: InstanceFull = metadata(api_sample!("instance-c2-full.json"));
        same(&render_instance_info(&c2, false), cli_output!("info-stopped.txt"));
    }

    /// The lab cluster's `incus info m1:c1` (its state and location).
    #[test]
    fn t10_clustered_info_as_incus_prints_it() {
        let c1: InstanceFull = metadata(api_sample!("lab-instance-full.json"));
        let text = render_instance_info(&c1, true);
        let want = "Name: c1\nDescription: \nStatus: RUNNING\nType: container\nArchitecture: x86_64\nLocation: node2\nPID: 23195\nCreated: 2026/12/01 20:15 UTC\nLast Used: 2026/12/01 20:15 UTC\nStarted: 2026/12/01 20:15 UTC\n\nResources:\n  Processes: 2\n  CPU usage:\n    CPU usage (in seconds): 0\n  Memory usage:\n    Memory (current): 392.00KiB\n    Memory (peak): 1.28MiB\n  Network usage:\n    lo:\n      Type: loopback\n      State: DOWN\n      MTU: 65536\n      Bytes received: 0B\n      Bytes sent: 0B\n      Packets received: 0\n      Packets sent: 0\n      IP addresses:\n";
        same(&text, want);
    }

    #[test]
    fn t10_config_show_as_incus_prints_it() {
        let c2: InstanceFull = metadata(api_sample!("instance-c2-full.json"));
        same(
            &render_show(&c2.instance, false).unwrap(),
            cli_output!("config-show.txt"),
        );
        same(
            &render_show(&c2.instance, true).unwrap(),
            cli_output!("config-show-expanded.txt"),
        );
    }
}

mod snapshot {
    use super::*;
    use crate::snapshot::render_snapshots;
    use api::types::InstanceSnapshot;

    #[test]
    fn t10_snapshot_list_and_show_as_incus_prints_them() {
        let snaps: Vec<InstanceSnapshot> = metadata(api_sample!("snapshots.json"));
        same(
            &render_snapshots(&snaps, fmt("table"), "nTEs").unwrap(),
            cli_output!("snapshot-list.txt"),
        );
        same(
            &render_snapshots(&snaps, fmt("csv"), "nTEs").unwrap(),
            cli_output!("snapshot-list-csv.txt"),
        );
        let s1 = snaps.iter().find(|s| s.name == "s1").unwrap();
        same(
            &crate::format::go_yaml(s1).unwrap(),
            cli_output!("snapshot-show.txt"),
        );
    }
}
