//! `stapes cluster ...` against real `stapesd` processes (started by the testkit from
//! the workspace's build directory: run `cargo build --bins` first), each reached over
//! its own unix socket with `STAPES_SOCKET`, with a throwaway `STAPES_CONF`.
//!
//! Every wait is bounded: each command by [`common::COMMAND_LIMIT`], convergence by
//! [`eventually`] polling.

mod common;

use std::path::Path;

use common::{Stapes, CONVERGE_LIMIT};
use serde_json::Value;
use testkit::{eventually, free_port, Member};

impl Stapes {
    /// `cluster list --format csv` lines.
    async fn members_csv(&self, socket: &Path) -> Vec<String> {
        self.ok(socket, &["cluster", "list", "--format", "csv"])
            .await
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn loopback() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Opens HTTPS with `stapes config set` and enables clustering as `name`.
async fn bootstrap(cli: &Stapes, m: &Member, name: &str) -> String {
    let addr = loopback();
    let s = m.socket();
    cli.ok(&s, &["config", "set", "core.https_address", &addr]).await;
    assert_eq!(
        cli.ok(&s, &["cluster", "enable", name]).await,
        "Clustering enabled\n"
    );
    addr
}

#[tokio::test]
async fn t10_three_members_enable_add_preseed_join_tokens_rename_remove() {
    let n1 = Member::start().await;
    let n2 = Member::start().await;
    let n3 = Member::start().await;
    let cli = Stapes::new();
    let s1 = n1.socket();

    let addr1 = bootstrap(&cli, &n1, "node1").await;
    let list = cli.members_csv(&s1).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(
        list[0].starts_with(&format!("node1,https://{addr1},\"database-leader,database\","))
            && list[0].ends_with(",default,,ONLINE,Fully operational"),
        "{list:?}"
    );

    // Join tokens: quiet prints the token alone, otherwise a header line first.
    let token2 = cli
        .ok(&s1, &["cluster", "add", "node2", "--quiet"])
        .await
        .trim()
        .to_string();
    let decoded: trust::token::JoinToken = trust::token::decode(&token2).expect("a join token");
    assert_eq!(decoded.server_name, "node2");
    assert_eq!(decoded.addresses, vec![addr1.clone()]);
    let out = cli.ok(&s1, &["cluster", "add", "node3"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], "Member node3 join token:");
    let token3 = lines[1].to_string();
    let err = cli.fails(&s1, &["cluster", "add", "node1"]).await;
    assert!(err.contains("already has a member named \"node1\""), "{err}");

    let tokens = cli.ok(&s1, &["cluster", "list-tokens", "--format", "csv"]).await;
    let rows: Vec<Vec<&str>> = tokens.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "{tokens}");
    assert_eq!(rows[0][..2], ["node2", token2.as_str()], "{tokens}");
    assert_eq!(rows[1][..2], ["node3", token3.as_str()], "{tokens}");
    assert!(rows[0][2].ends_with(" UTC"), "{tokens}");

    // node2 and node3 join with `stapes admin init --preseed` on their own sockets.
    for (m, name, token) in [(&n2, "node2", &token2), (&n3, "node3", &token3)] {
        let preseed = format!(
            "cluster:\n  enabled: true\n  server_name: {name}\n  server_address: {}\n  cluster_token: {token}\n",
            loopback()
        );
        cli.ok_stdin(&m.socket(), &["admin", "init", "--preseed"], Some(&preseed))
            .await;
    }
    let tokens = cli.ok(&s1, &["cluster", "list-tokens", "--format", "csv"]).await;
    assert_eq!(tokens, "", "redeemed tokens are gone");

    // Seen from node2: three members, all online.
    let s2 = n2.socket();
    let list = eventually(CONVERGE_LIMIT, "three members online", || async {
        let list = cli.members_csv(&s2).await;
        (list.len() == 3 && list.iter().all(|l| l.contains(",ONLINE,"))).then_some(list)
    })
    .await;
    for (line, name) in list.iter().zip(["node1", "node2", "node3"]) {
        assert!(
            line.starts_with(&format!("{name},https://127.0.0.1:")),
            "{list:?}"
        );
    }
    let show = cli.ok(&s2, &["cluster", "show", "node3"]).await;
    assert!(
        show.starts_with("roles:\n") && show.contains("\nserver_name: node3\n"),
        "{show}"
    );

    // A token that is revoked is no longer listed, and can't be revoked twice.
    cli.ok(&s1, &["cluster", "add", "node4", "-q"]).await;
    assert_eq!(
        cli.ok(&s1, &["cluster", "revoke-token", "node4"]).await,
        "Cluster join token for local:node4 deleted\n"
    );
    let tokens = cli.ok(&s1, &["cluster", "list-tokens", "-f", "csv"]).await;
    assert!(!tokens.contains("node4"), "{tokens}");
    let err = cli.fails(&s1, &["cluster", "revoke-token", "node4"]).await;
    assert_eq!(
        err,
        "Error: No cluster join token for member node4 on remote: local\n"
    );

    // Rename node3 to node5; every member sees it.
    assert_eq!(
        cli.ok(&s1, &["cluster", "rename", "node3", "node5"]).await,
        "Member node3 renamed to node5\n"
    );
    eventually(CONVERGE_LIMIT, "node5 online, node3 gone", || async {
        let list = cli.members_csv(&s2).await;
        let ok = list.len() == 3
            && !list.iter().any(|l| l.starts_with("node3,"))
            && list
                .iter()
                .any(|l| l.starts_with("node5,") && l.contains(",ONLINE,"));
        ok.then_some(())
    })
    .await;

    // `--force` asks first; anything but "yes" aborts.
    let err = cli
        .fails_stdin(&s1, &["cluster", "remove", "node5", "--force"], Some("no\n"))
        .await;
    assert_eq!(err, "Error: User aborted delete operation\n");
    assert_eq!(cli.members_csv(&s1).await.len(), 3);

    // A plain removal of an online member.
    assert_eq!(
        cli.ok(&s1, &["cluster", "remove", "node5"]).await,
        "Member node5 removed\n"
    );
    let list = eventually(CONVERGE_LIMIT, "two members left", || async {
        let list = cli.members_csv(&s2).await;
        (list.len() == 2).then_some(list)
    })
    .await;
    assert!(
        list[0].starts_with("node1,") && list[1].starts_with("node2,"),
        "{list:?}"
    );
    let err = cli.fails(&s1, &["cluster", "remove", "node5"]).await;
    assert_eq!(err, "Error: Cluster member not found\n");
}

#[tokio::test]
async fn t30_standalone_server_refusals() {
    let m = Member::start().await;
    let cli = Stapes::new();
    let s = m.socket();
    for args in [
        &["cluster", "list"][..],
        &["cluster", "list-tokens"],
        &["cluster", "revoke-token", "node2"],
    ] {
        assert_eq!(
            cli.fails(&s, args).await,
            "Error: Server isn't part of a cluster\n",
            "{args:?}"
        );
    }
    assert_eq!(
        cli.fails(&s, &["cluster", "enable", "node1"]).await,
        "Error: This server is not available on the network\n"
    );
    bootstrap(&cli, &m, "node1").await;
    assert_eq!(
        cli.fails(&s, &["cluster", "enable", "local:", "node1"]).await,
        "Error: This server is already clustered\n"
    );
    assert_eq!(
        cli.fails(&s, &["cluster", "add", "local:"]).await,
        "Error: A cluster member name must be provided\n"
    );
    let err = cli.fails(&s, &["cluster", "list", "--format", "markdown"]).await;
    assert!(
        err.contains("Invalid value \"markdown\" for flag \"--format\""),
        "{err}"
    );
    let err = cli.fails(&s, &["cluster", "list", "-c", "nx"]).await;
    assert!(err.contains("Unknown column shorthand char 'x' in 'nx'"), "{err}");
}

#[tokio::test]
async fn t20_member_properties_edit_and_formats() {
    let m = Member::start().await;
    let cli = Stapes::new();
    let s = m.socket();
    let addr = bootstrap(&cli, &m, "node1").await;

    // json and yaml are the members themselves, in Incus's field order.
    let json = cli.ok(&s, &["cluster", "list", "--format", "json"]).await;
    assert!(json.starts_with("[{\"roles\":["), "{json}");
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["server_name"], "node1");
    assert_eq!(v[0]["url"], format!("https://{addr}"));
    let yaml = cli.ok(&s, &["cluster", "list", "--format", "yaml"]).await;
    assert!(yaml.starts_with("- roles:\n"), "{yaml}");
    let table = cli.ok(&s, &["cluster", "ls"]).await;
    assert!(
        table.starts_with("+-") && table.contains(" NAME ") && table.contains("| ONLINE |"),
        "{table}"
    );
    assert_eq!(
        cli.ok(&s, &["cluster", "list-tokens", "--format", "json"]).await,
        "[]\n"
    );

    // Properties.
    cli.ok(
        &s,
        &["cluster", "set", "node1", "description=rack one", "--property"],
    )
    .await;
    cli.ok(&s, &["cluster", "set", "node1", "failure_domain", "rack1", "-p"])
        .await;
    assert_eq!(
        cli.ok(&s, &["cluster", "get", "node1", "description", "-p"])
            .await,
        "rack one\n"
    );
    assert_eq!(
        cli.ok(&s, &["cluster", "list", "-f", "csv", "-c", "nfd"]).await,
        "node1,rack1,rack one\n"
    );
    assert_eq!(
        cli.ok(&s, &["cluster", "get", "node1", "groups", "-p"]).await,
        "[default]\n"
    );
    cli.ok(&s, &["cluster", "unset", "node1", "description", "-p"])
        .await;
    assert_eq!(
        cli.ok(&s, &["cluster", "get", "node1", "description", "-p"])
            .await,
        "\n"
    );
    assert_eq!(
        cli.fails(&s, &["cluster", "get", "node1", "user.foo"]).await,
        "Error: The key \"user.foo\" does not exist on cluster member \"node1\"\n"
    );
    assert_eq!(
        cli.fails(&s, &["cluster", "get", "node1", "bogus", "-p"]).await,
        "Error: The property \"bogus\" does not exist on the cluster member \"node1\": The property with tag \"bogus\" does not exist\n"
    );
    let err = cli
        .fails(&s, &["cluster", "set", "node1", "roles=database", "-p"])
        .await;
    assert!(
        err.contains("'roles': source data must be an array or slice"),
        "{err}"
    );

    // Edit from stdin (not a terminal).
    cli.ok_stdin(
        &s,
        &["cluster", "edit", "node1"],
        Some("description: edited\nfailure_domain: rack2\nserver_name: ignored\n"),
    )
    .await;
    let show = cli.ok(&s, &["cluster", "show", "node1"]).await;
    assert!(
        show.contains("\nfailure_domain: rack2\ndescription: edited\n")
            && show.contains("\nserver_name: node1\n")
            && show.contains("\nstatus: Online\n"),
        "{show}"
    );
    assert_eq!(
        cli.fails(&s, &["cluster", "show", "nope"]).await,
        "Error: Cluster member not found\n"
    );
}

/// Waits until every member applied as much of the log as the others: a member answers
/// reads from its own copy, a moment behind the one that took the last write.
async fn settle(sockets: &[std::path::PathBuf]) {
    eventually(CONVERGE_LIMIT, "members applied alike", || async {
        let mut applied = std::collections::BTreeSet::new();
        for s in sockets {
            let r = testkit::Target::Unix(s.clone())
                .get("/internal/ready")
                .await
                .ok()?;
            applied.insert(r.metadata()["applied"].to_string());
        }
        (applied.len() == 1).then_some(())
    })
    .await
}

/// `stapes storage` and `stapes profile` through different members of one cluster.
#[tokio::test]
async fn t30_storage_and_profiles_through_any_member() {
    let cluster = testkit::Cluster::start(3).await;
    cluster.wait_healthy(3, CONVERGE_LIMIT).await;
    let cli = Stapes::new();
    let s: Vec<std::path::PathBuf> = cluster.members.iter().map(Member::socket).collect();
    for (i, name) in ["node1", "node2", "node3"].iter().enumerate() {
        cli.ok(&s[i], &["storage", "create", "pool1", "dir", "--target", name])
            .await;
    }
    settle(&s).await;
    let csv = cli.ok(&s[1], &["storage", "list", "-f", "csv"]).await;
    assert!(
        csv.starts_with("pool1,dir,") && csv.trim_end().ends_with("PENDING"),
        "{csv}"
    );
    settle(&s).await;
    cli.ok(&s[2], &["storage", "create", "pool1", "dir"]).await;
    settle(&s).await;
    let csv = cli.ok(&s[0], &["storage", "list", "-f", "csv"]).await;
    assert!(csv.trim_end().ends_with("CREATED"), "{csv}");
    settle(&s).await;
    let shown = cli
        .ok(&s[0], &["storage", "show", "pool1", "--target", "node2"])
        .await;
    let expected = cluster.members[1].dir.join("storage-pools/pool1");
    assert!(
        shown.contains(&format!("source: {}", expected.display())),
        "{shown}"
    );
    settle(&s).await;
    cli.ok(
        &s[1],
        &[
            "profile",
            "device",
            "add",
            "default",
            "root",
            "disk",
            "path=/",
            "pool=pool1",
        ],
    )
    .await;
    settle(&s).await;
    let shown = cli.ok(&s[2], &["profile", "show", "default"]).await;
    assert!(shown.contains("pool: pool1"), "{shown}");
    settle(&s).await;
    let err = cli.fails(&s[0], &["storage", "delete", "pool1"]).await;
    assert!(err.contains("The storage pool is currently in use"), "{err}");
    settle(&s).await;
    cli.ok(&s[2], &["profile", "create", "p1"]).await;
    settle(&s).await;
    cli.ok(&s[0], &["profile", "rename", "p1", "p2"]).await;
    settle(&s).await;
    let csv = cli.ok(&s[1], &["profile", "list", "-f", "csv"]).await;
    assert!(
        csv.contains("default,") && csv.contains("p2,") && !csv.contains("p1,"),
        "{csv}"
    );
}
