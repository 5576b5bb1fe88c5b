//! Random command sequences against the state machine's invariants: a refused command
//! changes nothing, replaying what was applied (through its log encoding) gives the same
//! state, a snapshot restores to the same state, and member references resolve.
//!
//! Names, fingerprints, ids and addresses come from small sets, so sequences collide
//! often: duplicates, renames onto taken names, tokens of removed members, and so on.

use api::types::Certificate;
use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use time::OffsetDateTime;

use super::*;

fn pick(prefix: &'static str) -> impl Strategy<Value = String> {
    (0..4u8).prop_map(move |i| format!("{prefix}{i}"))
}

/// `None` (standalone) or a member id, sometimes one that is never a member's.
fn location() -> impl Strategy<Value = Option<MemberId>> {
    prop_oneof![Just(None), (1..=5u64).prop_map(Some)]
}

fn time() -> impl Strategy<Value = OffsetDateTime> {
    (0..3i64).prop_map(|s| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s))
}

fn certificate() -> impl Strategy<Value = Certificate> {
    (
        pick("fp"),
        pick("n"),
        prop_oneof![Just("client"), Just("server"), Just("metrics")],
    )
        .prop_map(|(fingerprint, name, kind)| Certificate {
            name,
            kind: kind.into(),
            restricted: false,
            projects: vec![],
            certificate: String::new(),
            description: String::new(),
            fingerprint,
        })
}

fn member() -> impl Strategy<Value = Member> {
    (pick("n"), 1..=4u64, pick("a"), pick("fp")).prop_map(|(name, id, address, fingerprint)| Member {
        name,
        id,
        address,
        certificate: String::new(),
        fingerprint,
        description: String::new(),
        failure_domain: "default".into(),
        architecture: "x86_64".into(),
    })
}

fn token() -> impl Strategy<Value = Token> {
    let kind = prop_oneof![
        pick("c").prop_map(|client_name| TokenKind::Trust {
            client_name,
            restricted: false,
            projects: vec![],
        }),
        pick("n").prop_map(|server_name| TokenKind::Join { server_name }),
    ];
    (0..4u8, kind, location(), time(), proptest::option::of(time())).prop_map(
        |(i, kind, location, created_at, expires_at)| Token {
            id: format!("t{i}"),
            kind,
            secret: format!("s{i}"),
            location,
            created_at,
            expires_at,
        },
    )
}

fn warning() -> impl Strategy<Value = Warning> {
    (pick("w"), pick("k"), location(), time(), pick("m")).prop_map(|(uuid, kind, location, at, message)| {
        Warning {
            uuid,
            status: "new".into(),
            location,
            project: String::new(),
            kind,
            count: 1,
            first_seen_at: at,
            last_seen_at: at,
            last_message: message,
            severity: "moderate".into(),
            entity_url: String::new(),
        }
    })
}

fn spent() -> impl Strategy<Value = Spent> {
    prop_oneof![
        Just(Spent::Used),
        Just(Spent::Expired),
        Just(Spent::Revoked),
        Just(Spent::Replaced)
    ]
}

fn pool_config() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(
        prop_oneof![Just("source".to_string()), Just("size".to_string()), pick("k")],
        pick("v"),
        0..2,
    )
}

fn pools() -> impl Strategy<Value = Command> {
    let driver = || prop_oneof![Just("dir".to_string()), Just("zfs".to_string())];
    prop_oneof![
        (pick("p"), driver(), 1..=5u64, pool_config()).prop_map(|(name, driver, location, config)| {
            PoolCommand::DefinePart {
                name,
                driver,
                location,
                config,
            }
        }),
        (
            pick("p"),
            driver(),
            pool_config(),
            proptest::option::of(pool_config())
        )
            .prop_map(|(name, driver, config, standalone_part)| PoolCommand::Create {
                name,
                driver,
                description: String::new(),
                config,
                standalone_part,
            }),
        (pick("p"), location(), pool_config()).prop_map(|(name, location, config)| {
            PoolCommand::PartCreated {
                name,
                location,
                config,
            }
        }),
        pick("p").prop_map(|name| PoolCommand::MarkCreated { name }),
        (pick("p"), 1..=5u64, pool_config()).prop_map(|(name, location, config)| PoolCommand::AddPart {
            name,
            location,
            config
        }),
        (pick("p"), pick("d"), pool_config()).prop_map(|(name, description, config)| PoolCommand::Update {
            name,
            description,
            config
        }),
        (pick("p"), location(), pool_config()).prop_map(|(name, location, config)| PoolCommand::UpdatePart {
            name,
            location,
            config
        }),
        pick("p").prop_map(|name| PoolCommand::BeginDelete { name }),
        pick("p").prop_map(|name| PoolCommand::Delete { name }),
    ]
    .prop_map(Command::from)
}

fn profile() -> impl Strategy<Value = Profile> {
    let device = (
        prop_oneof![Just("disk"), Just("nic"), Just("")],
        prop_oneof![Just("/"), Just("/mnt"), Just("")],
        pick("p"),
    )
        .prop_map(|(kind, path, pool)| {
            BTreeMap::from([
                ("type".to_string(), kind.to_string()),
                ("path".to_string(), path.to_string()),
                ("pool".to_string(), pool),
            ])
        });
    (
        prop_oneof![Just(DEFAULT_PROFILE.to_string()), pick("pr")],
        btree_map(prop_oneof![Just("root".to_string()), pick("dev")], device, 0..2),
        btree_map(
            prop_oneof![Just("user.x".to_string()), Just("bogus".to_string())],
            pick("v"),
            0..2,
        ),
    )
        .prop_map(|(name, devices, config)| Profile {
            name,
            description: String::new(),
            config,
            devices,
        })
}

fn instances() -> impl Strategy<Value = Command> {
    let status = || {
        prop_oneof![
            Just(InstanceStatus::Creating),
            Just(InstanceStatus::Running),
            Just(InstanceStatus::Stopped),
            Just(InstanceStatus::Error),
        ]
    };
    let profiles = || vec(prop_oneof![Just(DEFAULT_PROFILE.to_string()), pick("pr")], 0..3);
    let devices = || {
        btree_map(
            Just("root".to_string()),
            pick("p").prop_map(|pool| {
                BTreeMap::from([
                    ("type".to_string(), "disk".to_string()),
                    ("path".to_string(), "/".to_string()),
                    ("pool".to_string(), pool),
                ])
            }),
            0..2,
        )
    };
    let config = || {
        btree_map(
            prop_oneof![
                Just("volatile.base_image".to_string()),
                Just("limits.memory".to_string()),
                Just("bogus".to_string())
            ],
            pick("v"),
            0..2,
        )
    };
    prop_oneof![
        (pick("i"), location(), profiles(), devices(), config(), status()).prop_map(
            |(name, location, profiles, devices, config, status)| InstanceCommand::Create {
                instance: Box::new(InstanceRecord {
                    name,
                    location,
                    kind: "container".into(),
                    architecture: "x86_64".into(),
                    description: String::new(),
                    config,
                    devices,
                    profiles,
                    ephemeral: false,
                    status,
                    created_at: OffsetDateTime::UNIX_EPOCH,
                }),
            }
        ),
        (pick("i"), profiles(), devices(), config()).prop_map(|(name, profiles, devices, config)| {
            InstanceCommand::Update {
                name,
                description: String::new(),
                config,
                devices,
                profiles,
                ephemeral: false,
            }
        }),
        (pick("i"), status()).prop_map(|(name, status)| InstanceCommand::SetStatus { name, status }),
        (pick("i"), pick("i")).prop_map(|(name, new_name)| InstanceCommand::Rename { name, new_name }),
        pick("i").prop_map(|name| InstanceCommand::Delete { name }),
    ]
    .prop_map(Command::from)
}

fn snapshots() -> impl Strategy<Value = Command> {
    let name = || prop_oneof![pick("s"), Just("a/b".to_string()), Just("..".to_string())];
    let expiry = || prop_oneof![Just(None), Just(Some(OffsetDateTime::UNIX_EPOCH))];
    prop_oneof![
        (pick("i"), name(), expiry()).prop_map(|(instance, name, expires_at)| SnapshotCommand::Create {
            instance,
            snapshot: Box::new(SnapshotRecord {
                name,
                architecture: "x86_64".into(),
                description: String::new(),
                config: BTreeMap::new(),
                devices: BTreeMap::new(),
                profiles: vec![],
                ephemeral: false,
                stateful: false,
                created_at: OffsetDateTime::UNIX_EPOCH,
                expires_at,
            }),
        }),
        (pick("i"), name(), name()).prop_map(|(instance, name, new_name)| SnapshotCommand::Rename {
            instance,
            name,
            new_name
        }),
        (pick("i"), name(), expiry()).prop_map(|(instance, name, expires_at)| SnapshotCommand::SetExpiry {
            instance,
            name,
            expires_at
        }),
        (pick("i"), name()).prop_map(|(instance, name)| SnapshotCommand::Delete { instance, name }),
    ]
    .prop_map(Command::from)
}

fn profiles() -> impl Strategy<Value = Command> {
    let name = || prop_oneof![Just(DEFAULT_PROFILE.to_string()), pick("pr")];
    prop_oneof![
        profile().prop_map(|profile| ProfileCommand::Create { profile }),
        profile().prop_map(|profile| ProfileCommand::Update { profile }),
        (name(), name()).prop_map(|(name, new_name)| ProfileCommand::Rename { name, new_name }),
        name().prop_map(|name| ProfileCommand::Delete { name }),
    ]
    .prop_map(Command::from)
}

fn command() -> impl Strategy<Value = Command> {
    let config = btree_map(pick("k"), prop_oneof![Just(String::new()), pick("v")], 0..3)
        .prop_map(|changes| ConfigCommand::SetConfig { changes }.into());
    let trust = prop_oneof![
        certificate().prop_map(|certificate| TrustCommand::AddCertificate { certificate }),
        (pick("fp"), certificate()).prop_map(|(fingerprint, certificate)| TrustCommand::UpdateCertificate {
            fingerprint,
            certificate
        }),
        pick("fp").prop_map(|fingerprint| TrustCommand::DeleteCertificate { fingerprint }),
        (pick("a"), proptest::option::of(pick("k"))).prop_map(|(token, key_authorization)| {
            TrustCommand::SetAcmeChallenge {
                token,
                key_authorization,
            }
        }),
        pick("j").prop_map(|credentials| TrustCommand::SetAcmeAccount { credentials }),
        (pick("c"), pick("k"))
            .prop_map(|(cert_pem, key_pem)| TrustCommand::SetClusterCertificate { cert_pem, key_pem }),
        pick("x").prop_map(|secret| TrustCommand::SetSecret { secret }),
    ]
    .prop_map(Command::from);
    let tokens = prop_oneof![
        token().prop_map(|token| TokenCommand::CreateToken { token }),
        (pick("t"), certificate()).prop_map(|(token_id, certificate)| TokenCommand::RedeemTrustToken {
            token_id,
            certificate
        }),
        (pick("t"), certificate()).prop_map(|(token_id, certificate)| TokenCommand::RedeemJoinToken {
            token_id,
            certificate
        }),
        (pick("t"), spent()).prop_map(|(token_id, how)| TokenCommand::DeleteToken { token_id, how }),
    ]
    .prop_map(Command::from);
    let members = prop_oneof![
        (member(), proptest::option::of(pick("t")))
            .prop_map(|(member, token_id)| MemberCommand::AddMember { member, token_id }),
        (pick("n"), pick("d")).prop_map(|(name, description)| MemberCommand::UpdateMember {
            name,
            description,
            failure_domain: "rack".into(),
        }),
        (pick("n"), pick("n")).prop_map(|(name, new_name)| MemberCommand::RenameMember { name, new_name }),
        (pick("n"), any::<bool>()).prop_map(|(name, force)| MemberCommand::RemoveMember { name, force }),
    ]
    .prop_map(Command::from);
    let warnings = prop_oneof![
        warning().prop_map(|warning| WarningCommand::RecordWarning { warning }),
        (
            pick("w"),
            prop_oneof![Just("new"), Just("acknowledged"), Just("resolved"), Just("bogus")]
        )
            .prop_map(|(uuid, status)| WarningCommand::UpdateWarningStatus {
                uuid,
                status: status.into()
            }),
        pick("w").prop_map(|uuid| WarningCommand::DeleteWarning { uuid }),
    ]
    .prop_map(Command::from);
    let image = (pick("f"), any::<bool>()).prop_map(|(fingerprint, public)| {
        Box::new(api::types::Image {
            fingerprint,
            put: api::types::ImagePut {
                public,
                ..Default::default()
            },
            ..Default::default()
        })
    });
    let alias_put = || {
        (pick("f"), pick("d"))
            .prop_map(|(target, description)| api::types::ImageAliasesEntryPut { description, target })
    };
    let images = prop_oneof![
        (image, location(), vec(pick("a"), 0..2)).prop_map(|(image, location, names)| {
            ImageCommand::CreateImage {
                image,
                location,
                aliases: names
                    .into_iter()
                    .map(|name| api::types::ImageAlias {
                        name,
                        description: String::new(),
                    })
                    .collect(),
            }
        }),
        (pick("f"), any::<bool>()).prop_map(|(fingerprint, public)| ImageCommand::UpdateImage {
            fingerprint,
            put: api::types::ImagePut {
                public,
                ..Default::default()
            }
        }),
        pick("f").prop_map(|fingerprint| ImageCommand::DeleteImage { fingerprint }),
        (pick("f"), location()).prop_map(|(fingerprint, location)| ImageCommand::AddImageLocation {
            fingerprint,
            location
        }),
        (pick("f"), location()).prop_map(|(fingerprint, location)| ImageCommand::RemoveImageLocation {
            fingerprint,
            location
        }),
        (pick("a"), alias_put()).prop_map(|(name, alias)| ImageCommand::CreateAlias { name, alias }),
        (pick("a"), alias_put()).prop_map(|(name, alias)| ImageCommand::UpdateAlias { name, alias }),
        (pick("a"), pick("a")).prop_map(|(name, new_name)| ImageCommand::RenameAlias { name, new_name }),
        pick("a").prop_map(|name| ImageCommand::DeleteAlias { name }),
    ]
    .prop_map(Command::from);
    prop_oneof![
        1 => config,
        3 => images,
        4 => trust,
        4 => tokens,
        4 => members,
        3 => warnings,
        4 => pools(),
        3 => profiles(),
        4 => instances(),
        3 => snapshots(),
        1 => Just(Command::Restore { state: Box::default() }),
    ]
}

/// Every member reference names a current member, and every alias an image.
fn references_resolve(s: &State) -> Result<(), TestCaseError> {
    let refs = s
        .tokens
        .values()
        .map(|t| t.location)
        .chain(s.warnings.values().map(|w| w.location))
        .chain(
            s.pools
                .values()
                .flat_map(|p| p.parts.iter().map(|part| part.location)),
        )
        .chain(s.images.values().flat_map(|i| i.locations.iter().copied()))
        .chain(s.instances.values().map(|i| i.location));
    for (name, a) in &s.image_aliases {
        prop_assert!(
            s.images.contains_key(&a.target),
            "alias {name} names a deleted image"
        );
    }
    for at in refs.flatten() {
        prop_assert!(
            s.member_by_id(at).is_some(),
            "member {at} is referenced but gone: {s:?}"
        );
    }
    for (instance, snaps) in &s.snapshots {
        prop_assert!(
            s.instances.contains_key(instance) && !snaps.is_empty(),
            "snapshots of {instance} outlive it"
        );
    }
    Ok(())
}

/// A profile's disks name pools that exist, and a pool's global keys are never
/// member-specific.
fn pools_and_profiles_agree(s: &State) -> Result<(), TestCaseError> {
    for p in s.all_profiles() {
        for d in p.devices.values() {
            if let Some(pool) = d.get("pool") {
                prop_assert!(
                    s.pools.contains_key(pool),
                    "profile {} names missing pool {pool}",
                    p.name
                );
            }
        }
    }
    for p in s.pools.values() {
        prop_assert!(p.config.keys().all(|k| !is_member_specific(k)), "{p:?}");
    }
    // An instance's profiles exist, and its root disk is on a pool that exists.
    for (name, i) in &s.instances {
        prop_assert_eq!(name, &i.name);
        prop_assert!(i.profiles.iter().all(|p| s.profile(p).is_some()), "{i:?}");
        let pool = i.root_pool(s);
        prop_assert!(
            pool.is_some_and(|p| s.pools.contains_key(&p)),
            "{i:?} has no root disk on a pool"
        );
    }
    Ok(())
}

fn encoded(s: &State) -> String {
    serde_json::to_string(s).expect("state serializes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn p_random_commands_keep_the_invariants(cmds in vec(command(), 0..60)) {
        let mut s = State::default();
        let mut log = Vec::new();
        for cmd in &cmds {
            let before = encoded(&s);
            match s.apply(cmd) {
                Ok(()) => log.push(serde_json::to_vec(cmd).expect("commands serialize")),
                Err(e) => prop_assert_eq!(encoded(&s), before, "{} refused ({}) but changed the state", cmd.name(), e),
            }
            references_resolve(&s)?;
            pools_and_profiles_agree(&s)?;
        }
        // Replay, through the log's encoding, on a fresh state.
        let mut replayed = State::default();
        for bytes in &log {
            let cmd: Command = serde_json::from_slice(bytes).expect("commands decode");
            prop_assert!(replayed.apply(&cmd).is_ok(), "{} applied once, refused on replay", cmd.name());
        }
        prop_assert_eq!(&replayed, &s);
        prop_assert_eq!(encoded(&replayed), encoded(&s));
        // A snapshot restores to the same state, read back or installed as a command.
        let restored: State = serde_json::from_str(&encoded(&s)).expect("snapshots decode");
        prop_assert_eq!(&restored, &s);
        let mut installed = State::default();
        installed.apply(&Command::Restore { state: Box::new(restored) }).expect("restore applies");
        prop_assert_eq!(encoded(&installed), encoded(&s));
    }
}

/// A member's things keep pointing at it through a rename, and are let go when it is
/// removed.
#[test]
fn member_references_follow_renames_and_removal() {
    let mut s = State::default();
    let m = Member {
        name: "node1".into(),
        id: 7,
        address: "a".into(),
        certificate: String::new(),
        fingerprint: "fp".into(),
        description: String::new(),
        failure_domain: "default".into(),
        architecture: "x86_64".into(),
    };
    let at = |s: &mut State, c: Command| s.apply(&c).unwrap();
    at(
        &mut s,
        MemberCommand::AddMember {
            member: m,
            token_id: None,
        }
        .into(),
    );
    let w = Warning {
        uuid: "w".into(),
        status: "new".into(),
        location: Some(7),
        project: String::new(),
        kind: "k".into(),
        count: 1,
        first_seen_at: OffsetDateTime::UNIX_EPOCH,
        last_seen_at: OffsetDateTime::UNIX_EPOCH,
        last_message: String::new(),
        severity: "low".into(),
        entity_url: String::new(),
    };
    at(
        &mut s,
        WarningCommand::RecordWarning { warning: w.clone() }.into(),
    );
    let t = Token {
        id: "t".into(),
        kind: TokenKind::Join {
            server_name: "node2".into(),
        },
        secret: "s".into(),
        location: Some(7),
        created_at: OffsetDateTime::UNIX_EPOCH,
        expires_at: None,
    };
    at(&mut s, TokenCommand::CreateToken { token: t }.into());
    at(
        &mut s,
        MemberCommand::RenameMember {
            name: "node1".into(),
            new_name: "renamed".into(),
        }
        .into(),
    );
    assert_eq!(s.location_name(s.tokens["t"].location, "here"), "renamed");
    // The same warning recurs on the renamed member: one record, counted twice.
    at(
        &mut s,
        WarningCommand::RecordWarning { warning: w.clone() }.into(),
    );
    assert_eq!(s.warnings.len(), 1);
    assert_eq!(s.warnings["w"].count, 2);
    assert_eq!(
        s.warnings["w"].render(s.location_name(Some(7), "here")).location,
        "renamed"
    );
    // A reference to a member that is not there is refused.
    let mut stray = w.clone();
    stray.location = Some(8);
    assert_eq!(
        s.apply(&WarningCommand::RecordWarning { warning: stray }.into()),
        Err(StateError::MemberNotFound)
    );
    at(
        &mut s,
        MemberCommand::RemoveMember {
            name: "renamed".into(),
            force: false,
        }
        .into(),
    );
    assert!(s.warnings.is_empty(), "its warnings go with it");
    assert_eq!(s.tokens["t"].location, None, "its tokens stay, placed nowhere");
    assert_eq!(s.location_name(None, "here"), "here");
}

/// Becoming a cluster places what the standalone server had on its first member.
#[test]
fn a_standalone_state_is_adopted_by_the_first_member() {
    let mut s = State::default();
    let t = Token {
        id: "t".into(),
        kind: TokenKind::Trust {
            client_name: "c".into(),
            restricted: false,
            projects: vec![],
        },
        secret: "s".into(),
        location: None,
        created_at: OffsetDateTime::UNIX_EPOCH,
        expires_at: None,
    };
    s.apply(&TokenCommand::CreateToken { token: t }.into()).unwrap();
    s.adopt_standalone(3);
    assert_eq!(s.tokens["t"].location, Some(3));
}
