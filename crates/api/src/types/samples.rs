//! Real Incus 6.0 answers and requests, decoded into the types and encoded again.
//!
//! `samples/*.json` are envelopes as a standalone Incus 6.0.4 wrote them
//! (`crates/stapes/tests/fixtures/incus/capture.sh`), and `samples/lab-*.json` answers of
//! the three-member lab cluster. A round trip must give back the same keys, in the same
//! order, with the same JSON types and values: a missing field, a misspelt name, a number
//! sent as a string or a `null` turned into `{}` all fail here.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;

/// A JSON value that keeps the order of object keys as written.
#[derive(Debug, Clone, PartialEq)]
enum Ordered {
    Scalar(Value),
    List(Vec<Ordered>),
    Map(Vec<(String, Ordered)>),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::String(v.into())))
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = a.next_element()? {
                    out.push(x);
                }
                Ok(Ordered::List(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry()? {
                    out.push((k, v));
                }
                Ok(Ordered::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The first place where two documents differ, as a path and both sides.
fn first_difference(path: &str, want: &Ordered, got: &Ordered) -> Option<String> {
    match (want, got) {
        (Ordered::Map(a), Ordered::Map(b)) => {
            let ka: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
            let kb: Vec<&str> = b.iter().map(|(k, _)| k.as_str()).collect();
            if ka != kb {
                return Some(format!("{path}: keys {ka:?} != {kb:?}"));
            }
            a.iter()
                .zip(b)
                .find_map(|((k, x), (_, y))| first_difference(&format!("{path}.{k}"), x, y))
        }
        (Ordered::List(a), Ordered::List(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(&format!("{path}[{i}]"), x, y)),
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path}: want {a:?}, got {b:?}")),
    }
}

/// Decodes `json` as `T`, encodes it again and compares, keys in order.
fn round_trip<T: DeserializeOwned + Serialize>(what: &str, json: &str) {
    let typed: T = serde_json::from_str(json).unwrap_or_else(|e| panic!("{what}: {e}"));
    let again = serde_json::to_string(&typed).expect("serializes");
    let want: Ordered = serde_json::from_str(json).expect("sample is JSON");
    let got: Ordered = serde_json::from_str(&again).expect("output is JSON");
    if let Some(diff) = first_difference(what, &want, &got) {
        panic!("{diff}\n want: {json}\n  got: {again}");
    }
}

/// The `metadata` of a sample envelope, as text.
fn metadata(envelope: &str) -> String {
    let v: Value = serde_json::from_str(envelope).expect("sample is JSON");
    // Re-encode the metadata from the ordered form so its key order is the sample's.
    let o: Ordered = serde_json::from_str(envelope).expect("sample is JSON");
    let Ordered::Map(entries) = o else {
        panic!("not an envelope: {v}")
    };
    let (_, meta) = entries
        .into_iter()
        .find(|(k, _)| k == "metadata")
        .expect("envelope has metadata");
    encode(&meta)
}

fn encode(o: &Ordered) -> String {
    match o {
        Ordered::Scalar(v) => v.to_string(),
        Ordered::List(items) => format!("[{}]", items.iter().map(encode).collect::<Vec<_>>().join(",")),
        Ordered::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), encode(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

macro_rules! sample {
    ($file:literal) => {
        include_str!(concat!("../../samples/", $file))
    };
}

#[test]
fn t10_instances_round_trip() {
    round_trip::<Vec<Instance>>("instances-r1", &metadata(sample!("instances-r1.json")));
    round_trip::<Vec<Instance>>("lab-instances-r1", &metadata(sample!("lab-instances-r1.json")));
    round_trip::<Vec<InstanceFull>>("instances-r2", &metadata(sample!("instances-r2.json")));
    round_trip::<InstanceFull>("c1 full", &metadata(sample!("instance-c1-full.json")));
    round_trip::<InstanceFull>("c2 full (stopped)", &metadata(sample!("instance-c2-full.json")));
    round_trip::<InstanceFull>("lab c1 full", &metadata(sample!("lab-instance-full.json")));
    round_trip::<InstanceState>("state", &metadata(sample!("instance-c1-state.json")));
    round_trip::<InstanceState>("lab state", &metadata(sample!("lab-instance-state.json")));
    round_trip::<Vec<InstanceSnapshot>>("snapshots", &metadata(sample!("snapshots.json")));
}

#[test]
fn t10_images_profiles_pools_round_trip() {
    round_trip::<Vec<Image>>("images", &metadata(sample!("images.json")));
    round_trip::<Image>("image", &metadata(sample!("image.json")));
    round_trip::<Vec<ImageAliasesEntry>>("aliases", &metadata(sample!("image-aliases.json")));
    round_trip::<Vec<Profile>>("profiles", &metadata(sample!("profiles.json")));
    round_trip::<Profile>("profile", &metadata(sample!("profile-p1.json")));
    round_trip::<Vec<StoragePool>>("pools", &metadata(sample!("storage-pools.json")));
    round_trip::<StoragePool>("pool", &metadata(sample!("storage-pool-default.json")));
    round_trip::<StoragePoolState>(
        "pool resources",
        &metadata(sample!("storage-pool-resources.json")),
    );
    round_trip::<Vec<StorageVolume>>("volumes", &metadata(sample!("storage-volumes.json")));
}

#[test]
fn t10_operations_round_trip() {
    for (what, file) in [
        ("create", sample!("lab-operation-create-instance.json")),
        ("create done", sample!("lab-operation-create-instance-done.json")),
        ("exec", sample!("lab-operation-exec.json")),
        ("exec done", sample!("lab-operation-exec-done.json")),
    ] {
        round_trip::<Operation>(what, &metadata(file));
    }
    let op: Operation = serde_json::from_str(&metadata(sample!("lab-operation-exec.json"))).unwrap();
    let fds = op.fds();
    assert_eq!(
        fds.keys().map(String::as_str).collect::<Vec<_>>(),
        ["0", "1", "2", FD_CONTROL]
    );
    let exec: ExecMetadata = op.metadata_as().unwrap();
    assert_eq!(exec.command, ["/bin/busybox", "uname", "-a"]);
    assert!(!exec.interactive);
    assert_eq!(exec.environment["HOME"], "/root");
    assert!(!op.is_final());

    let done: Operation = serde_json::from_str(&metadata(sample!("lab-operation-exec-done.json"))).unwrap();
    assert_eq!(done.exit_code(), Some(0));
    let result: ExecResult = done.metadata_as().unwrap();
    assert_eq!(result.code, 0);
    assert!(result.output.unwrap()["1"].ends_with(".stdout"));
    assert!(done.is_final());

    let created: Operation =
        serde_json::from_str(&metadata(sample!("lab-operation-create-instance-done.json"))).unwrap();
    assert_eq!(
        created.progress(),
        Some(OperationProgress {
            percent: "100".into(),
            speed: "14135784".into(),
            stage: "create_instance_from_image_unpack".into(),
        })
    );
    let upload = r#"{"id":"902416aa-77d5-469e-af97-79caef5e791b","class":"task","description":"Downloading image","created_at":"2026-12-01T20:15:30.741182491Z","updated_at":"2026-12-01T20:15:31.245063086Z","status":"Success","status_code":200,"resources":{},"metadata":{"fingerprint":"e60cf18bb29d5fd21aefe8a069e9a2ba6080d8e4b9975fcd4d6a3ed8718cd1e6","size":"1036730"},"may_cancel":false,"err":"","location":"node1"}"#;
    round_trip::<Operation>("image upload", upload);
    let op: Operation = serde_json::from_str(upload).unwrap();
    let r: ImageUploadResult = op.metadata_as().unwrap();
    assert_eq!(r.size, "1036730");
}

/// What the official client sends, byte for byte in JSON terms (lab traces).
#[test]
fn t10_requests_as_the_official_client_sends_them() {
    let launch = r#"{"architecture":"","config":{},"devices":{},"ephemeral":false,"profiles":null,"stateful":false,"description":"","name":"c1","source":{"type":"image","certificate":"","fingerprint":"e60cf18bb29d5fd21aefe8a069e9a2ba6080d8e4b9975fcd4d6a3ed8718cd1e6","allow_inconsistent":false},"instance_type":"","type":"container","start":true}"#;
    round_trip::<InstancesPost>("launch", launch);
    let built = InstancesPost {
        name: "c1".into(),
        source: InstanceSource {
            kind: "image".into(),
            fingerprint: "e60cf18bb29d5fd21aefe8a069e9a2ba6080d8e4b9975fcd4d6a3ed8718cd1e6".into(),
            ..Default::default()
        },
        kind: kind::CONTAINER.into(),
        start: true,
        ..Default::default()
    };
    assert_eq!(serde_json::to_string(&built).unwrap(), launch);

    let exec = r#"{"command":["sh","-c","echo $FOO $(pwd) $(id -u)"],"wait-for-websocket":true,"interactive":false,"environment":{"FOO":"bar","TERM":"xterm"},"width":0,"height":0,"record-output":false,"user":0,"group":0,"cwd":"/tmp"}"#;
    round_trip::<InstanceExecPost>("exec", exec);
    for state in [
        r#"{"action":"stop","timeout":-1,"force":true,"stateful":false}"#,
        r#"{"action":"start","timeout":0,"force":false,"stateful":false}"#,
    ] {
        round_trip::<InstanceStatePut>("state", state);
    }
    let alias = r#"{"description":"","target":"e60cf18bb29d5fd21aefe8a069e9a2ba6080d8e4b9975fcd4d6a3ed8718cd1e6","name":"bb","type":""}"#;
    round_trip::<ImageAliasesPost>("alias", alias);
    assert_eq!(
        serde_json::to_string(&InstanceExecControl::signal(15)).unwrap(),
        r#"{"command":"signal","args":null,"signal":15}"#
    );
    assert_eq!(
        serde_json::to_string(&InstanceExecControl::window_resize(120, 40)).unwrap(),
        r#"{"command":"window-resize","args":{"height":"40","width":"120"},"signal":0}"#
    );
    round_trip::<ClusterMemberStatePost>("evacuate", r#"{"action":"evacuate","mode":""}"#);
    // `incus move` sends the capitalised fields Go declares without tags.
    round_trip::<InstancePost>(
        "move",
        r#"{"name":"c2","migration":true,"live":false,"instance_only":false,"target":null,"pool":"","project":"","allow_inconsistent":false,"Config":{},"Devices":{},"Profiles":null}"#,
    );
}

#[test]
fn t10_missing_fields_read_as_go_zero_values() {
    let i: InstanceFull = serde_json::from_str(r#"{"name":"c1","config":null}"#).unwrap();
    assert_eq!(i.instance.name, "c1");
    assert!(i.instance.put.config.is_empty());
    assert!(i.state.is_none());
    assert!(i.instance.created_at.is_zero());
    let bad = serde_json::from_str::<InstanceState>(r#"{"pid":"12"}"#);
    assert!(bad.is_err(), "a string where Incus sends a number is refused");
    let a = Instance {
        status_code: status::STOPPED,
        ..Default::default()
    };
    assert!(!a.is_active());
    let b = Instance {
        status_code: status::FROZEN,
        ..Default::default()
    };
    assert!(b.is_active());
}

/// The comparison itself catches what it is there for.
#[test]
fn t30_round_trip_catches_misspelt_reordered_and_retyped_fields() {
    for (what, json) in [
        ("misspelt", r#"{"usage":1,"totl":2}"#),
        ("reordered", r#"{"total":2,"usage":1}"#),
        (
            "null for a map",
            r#"{"status":"Stopped","status_code":102,"disk":null,"memory":{"usage":0,"usage_peak":0,"total":0,"swap_usage":0,"swap_usage_peak":0},"network":null,"pid":0,"processes":0,"cpu":{"usage":0,"allocated_time":0},"started_at":"0001-01-01T00:00:00Z","os_info":null}"#,
        ),
    ] {
        let r = std::panic::catch_unwind(|| {
            if what == "null for a map" {
                round_trip::<InstanceState>(what, json)
            } else {
                round_trip::<InstanceStateDisk>(what, json)
            }
        });
        assert!(r.is_err(), "{what} went unnoticed");
    }
}
