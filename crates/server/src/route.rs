//! The route table: every route states who may call it ([`Access`]) and which member
//! answers it ([`Owner`]). It is the one source of the path patterns: the axum router is
//! built from it (`routes::router`), the gate checks access from it before any body is
//! read, and the forward layer asks [`resolve`] where a request runs.
//!
//! ```text
//!  request ─> auth (Identity) ─> gate: lookup(method, path).access allows the caller? else 403
//!                             ─> forward: resolve(method, uri, view) ─> Local      ─> handler
//!                                                                   ├> Forward(m) ─> member m
//!                                                                   ├> NotFound   ─> 404
//!                                                                   ├> Unavailable ─> 503
//!                                                                   └> BadRequest ─> 400
//! ```
//!
//! Invariants: a path pattern appears once here; a route with no row is unknown (404) and
//! a known path with a method it has no row for answers 501 to everyone, before access is
//! looked at, as Incus does. [`resolve`] is pure: it reads the request line, a state
//! snapshot and this member's facts, and does no I/O.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use axum::routing::MethodRouter;

use crate::context::Ctx;
use crate::routes as h;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone reaches the handler (it shapes what the untrusted see, or checks a token).
    Public,
    /// Any trusted caller, a `metrics` certificate included.
    Metrics,
    /// A caller with full access.
    Full,
    /// Another member, by its own server certificate.
    Member,
    /// Another member, or a local caller on this member's unix socket.
    MemberOrLocal,
    /// A local caller on this member's unix socket (never an identity a member speaks for).
    Local,
    /// Anyone; the secret in the request and the handler's requestor check are the
    /// capability (operation websockets).
    Secret,
}

/// Which member answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Answered here from replicated state; `?target=` is ignored, as in Incus.
    Here,
    /// This member's own view, unless `?target=` names another member.
    Target,
    /// The member named by the path parameter.
    Member(&'static str),
    /// The member that holds the instance named by the path parameter (its record's
    /// location); this member for an instance the state does not have (the handler
    /// answers not found).
    Instance(&'static str),
    /// The member encoded in the operation id of the path parameter.
    Operation(&'static str),
    /// Every member: the handler scatters and gathers; `?target=` is its filter.
    Each,
    /// Any member answers (event streams, cluster-wide reads).
    Anywhere,
}

/// The methods a row covers (`Get` covers `HEAD` too, as axum does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Put,
    Patch,
    Post,
    Delete,
    Any,
}

impl Verb {
    fn covers(self, method: &http::Method) -> bool {
        use http::Method as M;
        match self {
            Verb::Get => method == M::GET || method == M::HEAD,
            Verb::Put => method == M::PUT,
            Verb::Patch => method == M::PATCH,
            Verb::Post => method == M::POST,
            Verb::Delete => method == M::DELETE,
            Verb::Any => true,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Put => "PUT",
            Verb::Patch => "PATCH",
            Verb::Post => "POST",
            Verb::Delete => "DELETE",
            Verb::Any => "*",
        }
    }
}

/// One method of one path.
#[derive(Clone, Copy)]
pub struct Route {
    pub verb: Verb,
    pub path: &'static str,
    pub access: Access,
    pub owner: Owner,
    /// Served only with `--test-routes`.
    pub test_only: bool,
    /// The handler; `None` for the parts of Incus not served yet (`routes::not_yet`).
    pub handler: Option<fn() -> MethodRouter<Ctx>>,
}

const fn row(
    verb: Verb,
    path: &'static str,
    access: Access,
    owner: Owner,
    handler: fn() -> MethodRouter<Ctx>,
) -> Route {
    Route {
        verb,
        path,
        access,
        owner,
        test_only: false,
        handler: Some(handler),
    }
}

const fn test_row(verb: Verb, path: &'static str, handler: fn() -> MethodRouter<Ctx>) -> Route {
    Route {
        verb,
        path,
        access: Access::Full,
        owner: Owner::Target,
        test_only: true,
        handler: Some(handler),
    }
}

/// What stapes serves.
fn served() -> Vec<Route> {
    use axum::routing::{delete, get, patch, post, put};
    use Access::*;
    use Owner::*;
    use Verb::{Delete as D, Get as G, Patch as Pa, Post as Po, Put as Pu};
    vec![
        row(G, "/", Public, Here, || get(h::server::root)),
        row(G, "/1.0", Public, Target, || get(h::server::get)),
        row(Pu, "/1.0", Full, Target, || put(h::server::put)),
        row(Pa, "/1.0", Full, Target, || patch(h::server::patch)),
        row(G, "/1.0/certificates", Full, Here, || get(h::certificates::list)),
        // Untrusted callers redeem a trust token here.
        row(Po, "/1.0/certificates", Public, Here, || {
            post(h::certificates::create)
        }),
        row(G, "/1.0/certificates/{fingerprint}", Full, Here, || {
            get(h::certificates::get)
        }),
        row(Pu, "/1.0/certificates/{fingerprint}", Full, Here, || {
            put(h::certificates::put)
        }),
        row(Pa, "/1.0/certificates/{fingerprint}", Full, Here, || {
            patch(h::certificates::patch)
        }),
        row(D, "/1.0/certificates/{fingerprint}", Full, Here, || {
            delete(h::certificates::delete)
        }),
        row(G, "/1.0/operations", Full, Each, || get(h::operations::list)),
        row(G, "/1.0/operations/{id}", Full, Operation("id"), || {
            get(h::operations::get)
        }),
        row(D, "/1.0/operations/{id}", Full, Operation("id"), || {
            delete(h::operations::delete)
        }),
        row(G, "/1.0/operations/{id}/wait", Full, Operation("id"), || {
            get(h::operations::wait)
        }),
        row(
            G,
            "/1.0/operations/{id}/websocket",
            Secret,
            Operation("id"),
            || get(h::operations::websocket),
        ),
        row(G, "/1.0/events", Full, Anywhere, || get(h::events::stream)),
        // Images: records and aliases are replicated, so any member answers; an upload
        // lands on the member that receives it (a streamed route).
        // The untrusted see public images (the handlers filter), as in Incus.
        row(G, "/1.0/images", Public, Here, || get(h::images::list)),
        row(Po, "/1.0/images", Full, Here, || post(h::images::create)),
        row(G, "/1.0/images/aliases", Full, Here, || {
            get(h::images::list_aliases)
        }),
        row(Po, "/1.0/images/aliases", Full, Here, || {
            post(h::images::create_alias)
        }),
        row(G, "/1.0/images/aliases/{*name}", Public, Here, || {
            get(h::images::get_alias)
        }),
        row(Pu, "/1.0/images/aliases/{*name}", Full, Here, || {
            put(h::images::put_alias)
        }),
        row(Pa, "/1.0/images/aliases/{*name}", Full, Here, || {
            patch(h::images::patch_alias)
        }),
        row(Po, "/1.0/images/aliases/{*name}", Full, Here, || {
            post(h::images::rename_alias)
        }),
        row(D, "/1.0/images/aliases/{*name}", Full, Here, || {
            delete(h::images::delete_alias)
        }),
        row(G, "/1.0/images/{fingerprint}", Public, Here, || {
            get(h::images::get)
        }),
        row(Pu, "/1.0/images/{fingerprint}", Full, Here, || {
            put(h::images::put)
        }),
        row(Pa, "/1.0/images/{fingerprint}", Full, Here, || {
            patch(h::images::patch)
        }),
        row(D, "/1.0/images/{fingerprint}", Full, Here, || {
            delete(h::images::delete)
        }),
        // Here, or handed to an online member holding the files.
        row(G, "/1.0/images/{fingerprint}/export", Public, Here, || {
            get(h::images::export)
        }),
        row(G, "/internal/images/{fingerprint}", Access::Member, Here, || {
            get(h::images::internal_export)
        }),
        row(
            Po,
            "/internal/images/{fingerprint}/fetch",
            Access::Member,
            Here,
            || post(h::images::internal_fetch),
        ),
        row(G, "/1.0/resources", Full, Target, || get(h::system::resources)),
        row(G, "/1.0/metrics", Metrics, Target, || get(h::system::metrics)),
        row(G, "/1.0/metadata/configuration", Full, Here, || {
            get(h::system::metadata_configuration)
        }),
        row(G, "/1.0/warnings", Full, Here, || get(h::warnings::list)),
        row(G, "/1.0/warnings/{uuid}", Full, Here, || get(h::warnings::get)),
        row(Pu, "/1.0/warnings/{uuid}", Full, Here, || put(h::warnings::put)),
        row(Pa, "/1.0/warnings/{uuid}", Full, Here, || patch(h::warnings::put)),
        row(D, "/1.0/warnings/{uuid}", Full, Here, || {
            delete(h::warnings::delete)
        }),
        row(G, "/1.0/storage-pools", Full, Here, || get(h::storage::list)),
        // `?target=` defines that member's pending part; the handler reads it.
        row(Po, "/1.0/storage-pools", Full, Here, || post(h::storage::create)),
        row(G, "/1.0/storage-pools/{name}", Full, Target, || {
            get(h::storage::get)
        }),
        row(Pu, "/1.0/storage-pools/{name}", Full, Target, || {
            put(h::storage::put)
        }),
        row(Pa, "/1.0/storage-pools/{name}", Full, Target, || {
            patch(h::storage::put)
        }),
        row(D, "/1.0/storage-pools/{name}", Full, Here, || {
            delete(h::storage::delete)
        }),
        row(G, "/1.0/storage-pools/{name}/resources", Full, Target, || {
            get(h::storage::resources)
        }),
        row(Po, "/internal/storage-pools/{name}", Access::Member, Here, || {
            post(h::storage::internal_make)
        }),
        row(D, "/internal/storage-pools/{name}", Access::Member, Here, || {
            delete(h::storage::internal_remove)
        }),
        // Instances: the list gathers every member's; creation is placed (the handler
        // forwards to the chosen member); the rest runs where the instance is.
        row(G, "/1.0/instances", Full, Each, || get(h::instances::list)),
        row(Po, "/1.0/instances", Full, Here, || post(h::instances::create)),
        row(G, "/internal/instances", Access::Member, Here, || {
            get(h::instances::internal_list)
        }),
        row(G, "/1.0/instances/{name}", Full, Instance("name"), || {
            get(h::instances::get)
        }),
        row(Pu, "/1.0/instances/{name}", Full, Instance("name"), || {
            put(h::instances::put)
        }),
        row(Pa, "/1.0/instances/{name}", Full, Instance("name"), || {
            patch(h::instances::put)
        }),
        row(Po, "/1.0/instances/{name}", Full, Instance("name"), || {
            post(h::instances::rename)
        }),
        row(D, "/1.0/instances/{name}", Full, Instance("name"), || {
            delete(h::instances::delete)
        }),
        row(G, "/1.0/instances/{name}/state", Full, Instance("name"), || {
            get(h::instances::get_state)
        }),
        row(Pu, "/1.0/instances/{name}/state", Full, Instance("name"), || {
            put(h::instances::put_state)
        }),
        row(G, "/1.0/instances/{name}/logs", Full, Instance("name"), || {
            get(h::instances::list_logs)
        }),
        row(
            G,
            "/1.0/instances/{name}/logs/{file}",
            Full,
            Instance("name"),
            || get(h::instances::get_log),
        ),
        row(G, "/1.0/instances/{name}/console", Full, Instance("name"), || {
            get(h::instances::console_log)
        }),
        // Exec and console: websocket operations on the holder; their sockets reach it
        // through any member (`/1.0/operations/{id}/websocket`).
        row(Po, "/1.0/instances/{name}/exec", Full, Instance("name"), || {
            post(h::exec::exec)
        }),
        row(
            Po,
            "/1.0/instances/{name}/console",
            Full,
            Instance("name"),
            || post(h::console::console),
        ),
        row(
            G,
            "/1.0/instances/{name}/logs/exec-output",
            Full,
            Instance("name"),
            || get(h::exec_output::list),
        ),
        row(
            G,
            "/1.0/instances/{name}/logs/exec-output/{file}",
            Full,
            Instance("name"),
            || get(h::exec_output::get),
        ),
        row(
            D,
            "/1.0/instances/{name}/logs/exec-output/{file}",
            Full,
            Instance("name"),
            || delete(h::exec_output::delete),
        ),
        // Files: an SFTP upgrade (tunnelled to the owner) and the older files API.
        row(G, "/1.0/instances/{name}/sftp", Full, Instance("name"), || {
            get(h::files::sftp)
        }),
        row(G, "/1.0/instances/{name}/files", Full, Instance("name"), || {
            get(h::files::get)
        }),
        row(Po, "/1.0/instances/{name}/files", Full, Instance("name"), || {
            post(h::files::post)
        }),
        row(D, "/1.0/instances/{name}/files", Full, Instance("name"), || {
            delete(h::files::delete)
        }),
        // Snapshots, on the member holding the instance; its volumes, to another member.
        row(
            G,
            "/1.0/instances/{name}/snapshots",
            Full,
            Instance("name"),
            || get(h::snapshots::list),
        ),
        row(
            Po,
            "/1.0/instances/{name}/snapshots",
            Full,
            Instance("name"),
            || post(h::snapshots::create),
        ),
        row(
            G,
            "/1.0/instances/{name}/snapshots/{snapshot}",
            Full,
            Instance("name"),
            || get(h::snapshots::get),
        ),
        row(
            Pu,
            "/1.0/instances/{name}/snapshots/{snapshot}",
            Full,
            Instance("name"),
            || put(h::snapshots::put),
        ),
        row(
            Pa,
            "/1.0/instances/{name}/snapshots/{snapshot}",
            Full,
            Instance("name"),
            || patch(h::snapshots::put),
        ),
        row(
            Po,
            "/1.0/instances/{name}/snapshots/{snapshot}",
            Full,
            Instance("name"),
            || post(h::snapshots::post),
        ),
        row(
            D,
            "/1.0/instances/{name}/snapshots/{snapshot}",
            Full,
            Instance("name"),
            || delete(h::snapshots::delete),
        ),
        row(G, "/internal/volumes/{name}", Access::Member, Here, || {
            get(h::copy::internal_volume)
        }),
        row(Po, "/internal/moves/{name}", Access::Member, Here, || {
            post(h::migrate::internal_receive)
        }),
        row(D, "/internal/moves/{name}", Access::Member, Here, || {
            delete(h::migrate::internal_discard)
        }),
        row(G, "/1.0/profiles", Full, Here, || get(h::profiles::list)),
        row(Po, "/1.0/profiles", Full, Here, || post(h::profiles::create)),
        row(G, "/1.0/profiles/{name}", Full, Here, || get(h::profiles::get)),
        row(Pu, "/1.0/profiles/{name}", Full, Here, || put(h::profiles::put)),
        row(Pa, "/1.0/profiles/{name}", Full, Here, || patch(h::profiles::put)),
        row(Po, "/1.0/profiles/{name}", Full, Here, || {
            post(h::profiles::rename)
        }),
        row(D, "/1.0/profiles/{name}", Full, Here, || {
            delete(h::profiles::delete)
        }),
        row(G, "/1.0/cluster", Full, Here, || get(h::cluster::get)),
        row(Pu, "/1.0/cluster", Full, Here, || put(h::cluster::put)),
        // No GET, as in Incus: 501 to everyone.
        row(Pu, "/1.0/cluster/certificate", Full, Here, || {
            put(h::cluster::certificate_put)
        }),
        row(G, "/1.0/cluster/members", Full, Here, || {
            get(h::cluster::list_members)
        }),
        row(Po, "/1.0/cluster/members", Full, Here, || {
            post(h::cluster::add_member)
        }),
        row(G, "/1.0/cluster/members/{name}", Full, Here, || {
            get(h::cluster::get_member)
        }),
        row(Pu, "/1.0/cluster/members/{name}", Full, Here, || {
            put(h::cluster::edit_member)
        }),
        row(Pa, "/1.0/cluster/members/{name}", Full, Here, || {
            patch(h::cluster::edit_member)
        }),
        row(Po, "/1.0/cluster/members/{name}", Full, Here, || {
            post(h::cluster::rename_member)
        }),
        row(D, "/1.0/cluster/members/{name}", Full, Here, || {
            delete(h::cluster::delete_member)
        }),
        row(
            G,
            "/1.0/cluster/members/{name}/state",
            Full,
            Owner::Member("name"),
            || get(h::cluster::member_state),
        ),
        row(
            Po,
            "/1.0/cluster/members/{name}/state",
            Full,
            Owner::Member("name"),
            || post(h::evacuation::post),
        ),
        row(Po, "/internal/raft/snapshot", Access::Member, Here, || {
            post(h::cluster::raft_snapshot)
        }),
        row(Po, "/internal/raft/{kind}", Access::Member, Here, || {
            post(h::cluster::raft_rpc)
        }),
        // The joiner proves the certificate it registers; the handler checks it.
        row(Po, "/internal/cluster/join", Public, Here, || {
            post(h::cluster::join)
        }),
        row(G, "/internal/events", Access::Member, Here, || {
            get(h::events::internal)
        }),
        row(G, "/.well-known/acme-challenge/{token}", Public, Here, || {
            get(h::acme_challenge)
        }),
        row(G, "/internal/ready", MemberOrLocal, Here, || {
            get(h::internal::ready)
        }),
        row(G, "/ready", Public, Here, || get(h::internal::readiness)),
        row(G, "/oidc/login", Public, Here, || get(crate::oidc::login)),
        row(G, "/oidc/callback", Public, Here, || get(crate::oidc::callback)),
        row(G, "/oidc/logout", Public, Here, || get(crate::oidc::logout)),
        row(Pu, "/internal/shutdown", Local, Here, || {
            put(h::internal::shutdown)
        }),
        test_row(Po, h::testing::SINK, || post(h::testing::sink)),
        test_row(G, "/internal/test/source", || get(h::testing::source)),
        test_row(G, "/internal/test/produced", || get(h::testing::produced)),
        test_row(G, "/internal/test/echo", || get(h::testing::echo)),
        test_row(Po, "/internal/test/operations", || {
            post(h::testing::start_operation)
        }),
        test_row(G, "/internal/test/routes", || get(h::testing::routes)),
        test_row(Po, "/internal/test/images/sync", || post(h::images::test_sync)),
        test_row(Po, "/internal/test/snapshots/tick", || {
            post(h::snapshots::test_tick)
        }),
        test_row(Po, "/internal/test/images/{fingerprint}/ensure", || {
            post(h::images::test_ensure)
        }),
    ]
}

/// The rows of [`served`] and of the parts not served yet, with a matcher over their paths.
pub struct Table {
    pub rows: Vec<Route>,
    matcher: matchit::Router<Vec<usize>>,
}

pub static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let mut rows = served();
    for &(methods, path, _) in api::unsupported::NOT_YET {
        let verb = match methods {
            api::unsupported::Methods::All => Verb::Any,
            api::unsupported::Methods::Post => Verb::Post,
        };
        rows.push(Route {
            verb,
            path,
            access: Access::Full,
            owner: Owner::Here,
            test_only: false,
            handler: None,
        });
    }
    let mut by_path: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        by_path.entry(r.path).or_default().push(i);
    }
    let mut matcher = matchit::Router::new();
    for (path, indices) in by_path {
        matcher
            .insert(path, indices)
            .unwrap_or_else(|e| panic!("route table: {path}: {e}"));
    }
    Table { rows, matcher }
});

/// A matched route and its path parameters.
pub struct Found<'a> {
    pub route: &'a Route,
    pub params: Vec<(&'a str, String)>,
}

impl Found<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Table {
    /// The row for `method path`; `None` for an unknown path or a method it does not serve
    /// (the router answers 404 or 501). Test rows count only with `test_routes`.
    pub fn lookup<'a>(
        &'a self,
        method: &http::Method,
        path: &'a str,
        test_routes: bool,
    ) -> Option<Found<'a>> {
        let m = self.matcher.at(path).ok()?;
        let route = m
            .value
            .iter()
            .map(|&i| &self.rows[i])
            .find(|r| r.verb.covers(method) && (test_routes || !r.test_only))?;
        let params = m.params.iter().map(|(k, v)| (k, v.to_string())).collect();
        Some(Found { route, params })
    }
}

/// Whether `path` is for members only, whatever the method: refused to anyone else
/// before anything else is looked at (an OpenID token included).
pub fn member_only(path: &str) -> bool {
    TABLE
        .matcher
        .at(path)
        .is_ok_and(|m| m.value.iter().any(|&i| TABLE.rows[i].access == Access::Member))
}

/// Where a request runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Here.
    Local,
    /// On the member of this name; `wait` is what the call may add to the forwarding
    /// bound (an operation wait's own timeout).
    Forward {
        member: String,
        wait: Duration,
    },
    NotFound(String),
    Unavailable(String),
    BadRequest(String),
}

/// What [`resolve`] knows about this member and the cluster.
pub struct View<'a> {
    pub state: &'a cluster::State,
    pub me: &'a str,
    pub me_id: u64,
    pub clustered: bool,
    pub online: &'a dyn Fn(&str) -> bool,
}

/// Where `method uri` runs, from the table and a state snapshot. Pure.
pub fn resolve(method: &http::Method, uri: &http::Uri, view: &View<'_>) -> Resolved {
    let Some(found) = TABLE.lookup(method, uri.path(), true) else {
        return Resolved::Local;
    };
    match found.route.owner {
        Owner::Here | Owner::Each | Owner::Anywhere => Resolved::Local,
        Owner::Target => match crate::forward::target_of(uri) {
            None => Resolved::Local,
            Some(_) if !view.clustered => Resolved::BadRequest("Target only allowed when clustered".into()),
            Some(name) => to_named(&name, view, Duration::ZERO),
        },
        Owner::Member(param) => match found.param(param) {
            Some(name) if view.clustered => to_named(name, view, Duration::ZERO),
            _ => Resolved::Local,
        },
        Owner::Instance(param) => {
            let Some(rec) = found.param(param).and_then(|n| view.state.instances.get(n)) else {
                return Resolved::Local;
            };
            match rec.location.filter(|at| *at != view.me_id) {
                Some(at) => match view.state.member_by_id(at) {
                    Some(m) => to_named(&m.name, view, Duration::ZERO),
                    None => Resolved::Local,
                },
                None => Resolved::Local,
            }
        }
        Owner::Operation(param) => {
            let Some(id) = found.param(param) else {
                return Resolved::Local;
            };
            // Token operations live in the replicated state: any member answers them.
            if view.state.tokens.contains_key(id) {
                return Resolved::Local;
            }
            let Some(member) = crate::ops::owner_of(id)
                .filter(|o| *o != view.me_id)
                .and_then(|o| view.state.member_by_id(o))
            else {
                return Resolved::Local;
            };
            let wait = if found.route.path.ends_with("/wait") {
                crate::ops::wait_timeout(crate::forward::query_value(uri, "timeout").as_deref())
            } else {
                Duration::ZERO
            };
            to_named(&member.name, view, wait)
        }
    }
}

fn to_named(name: &str, view: &View<'_>, wait: Duration) -> Resolved {
    if name == view.me {
        Resolved::Local
    } else if !view.state.members.contains_key(name) {
        Resolved::NotFound("Cluster member not found".into())
    } else if !(view.online)(name) {
        Resolved::Unavailable(format!("Cluster member \"{name}\" is offline"))
    } else {
        Resolved::Forward {
            member: name.to_string(),
            wait,
        }
    }
}

/// Whether the caller `id` may call a route of `access`; `via_member` says a member
/// speaks for the caller (then it is never local).
pub fn allows(access: Access, id: &trust::Identity, via_member: bool) -> bool {
    use trust::AuthMethod;
    let local = id.method == AuthMethod::Unix && !via_member;
    match access {
        Access::Public | Access::Secret => true,
        Access::Metrics => id.trusted(),
        Access::Full => id.full_access(),
        Access::Member => id.method == AuthMethod::Cluster,
        Access::MemberOrLocal => id.method == AuthMethod::Cluster || local,
        Access::Local => local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn state() -> cluster::State {
        let mut state = cluster::State::default();
        for (name, id) in [("node1", 1), ("node2", 2), ("node3", 3)] {
            state.members.insert(
                name.into(),
                cluster::Member {
                    name: name.into(),
                    id,
                    address: format!("127.0.0.{id}:8443"),
                    certificate: String::new(),
                    fingerprint: String::new(),
                    description: String::new(),
                    failure_domain: "default".into(),
                    architecture: "x86_64".into(),
                },
            );
        }
        state
    }

    fn at(state: &cluster::State, clustered: bool, method: &Method, uri: &str) -> Resolved {
        let online = |name: &str| name != "node3";
        let view = View {
            state,
            me: "node1",
            me_id: 1,
            clustered,
            online: &online,
        };
        resolve(method, &uri.parse().unwrap(), &view)
    }

    fn fwd(member: &str, wait: u64) -> Resolved {
        Resolved::Forward {
            member: member.into(),
            wait: Duration::from_secs(wait),
        }
    }

    #[test]
    fn instance_routes_go_to_the_member_in_the_record() {
        let mut s = state();
        for (name, at) in [("c1", Some(1)), ("c2", Some(2)), ("c3", Some(3)), ("c0", None)] {
            s.instances.insert(
                name.into(),
                cluster::InstanceRecord {
                    name: name.into(),
                    location: at,
                    kind: "container".into(),
                    architecture: "x86_64".into(),
                    description: String::new(),
                    config: Default::default(),
                    devices: Default::default(),
                    profiles: vec![],
                    ephemeral: false,
                    status: cluster::InstanceStatus::Running,
                    created_at: time::OffsetDateTime::UNIX_EPOCH,
                },
            );
        }
        let g = Method::GET;
        for uri in [
            "/1.0/instances/c2",
            "/1.0/instances/c2/state",
            "/1.0/instances/c2/logs/lxc.log",
            "/1.0/instances/c2/console",
            "/1.0/instances/c2/sftp",
            "/1.0/instances/c2/files?path=/root",
            "/1.0/instances/c2?target=node1",
        ] {
            assert_eq!(at(&s, true, &g, uri), fwd("node2", 0), "{uri}");
        }
        assert_eq!(
            at(&s, true, &Method::PUT, "/1.0/instances/c2/state"),
            fwd("node2", 0)
        );
        assert_eq!(
            at(&s, true, &Method::DELETE, "/1.0/instances/c2"),
            fwd("node2", 0)
        );
        for m in [Method::POST, Method::DELETE] {
            assert_eq!(
                at(&s, true, &m, "/1.0/instances/c2/files?path=/x"),
                fwd("node2", 0)
            );
        }
        assert_eq!(
            at(&s, true, &g, "/1.0/instances/c3"),
            Resolved::Unavailable("Cluster member \"node3\" is offline".into())
        );
        // Its own, one it does not know (the handler says not found), the lists, creation.
        for (m, uri) in [
            (&g, "/1.0/instances/c1"),
            (&g, "/1.0/instances/c0"),
            (&g, "/1.0/instances/nope"),
            (&g, "/1.0/instances"),
            (&g, "/1.0/instances?target=node2"),
            (&Method::POST, "/1.0/instances?target=node2"),
        ] {
            assert_eq!(at(&s, true, m, uri), Resolved::Local, "{uri}");
        }
    }

    #[test]
    fn every_pattern_is_unique_and_every_row_has_its_method_once() {
        let mut seen = std::collections::BTreeSet::new();
        for r in &TABLE.rows {
            assert!(
                seen.insert((r.path, r.verb.as_str())),
                "{} {}",
                r.verb.as_str(),
                r.path
            );
        }
    }

    #[test]
    fn here_each_and_anywhere_ignore_target() {
        let s = state();
        let g = Method::GET;
        assert_eq!(
            at(&s, true, &g, "/1.0/certificates?target=node2"),
            Resolved::Local
        );
        assert_eq!(at(&s, true, &g, "/1.0/operations?target=node2"), Resolved::Local);
        assert_eq!(at(&s, true, &g, "/1.0/events?target=node2"), Resolved::Local);
        assert_eq!(at(&s, true, &g, "/1.0/nosuchthing?target=node2"), Resolved::Local);
        // A method the path does not serve: the router answers 501 here.
        assert_eq!(
            at(&s, true, &Method::DELETE, "/1.0?target=node2"),
            Resolved::Local
        );
    }

    #[test]
    fn target_names_self_other_unknown_offline() {
        let s = state();
        let g = Method::GET;
        assert_eq!(at(&s, true, &g, "/1.0"), Resolved::Local);
        assert_eq!(at(&s, true, &g, "/1.0?target=node1"), Resolved::Local);
        assert_eq!(at(&s, true, &g, "/1.0/resources?target=node2"), fwd("node2", 0));
        assert_eq!(at(&s, true, &Method::PATCH, "/1.0?target=node2"), fwd("node2", 0));
        assert_eq!(
            at(&s, true, &Method::HEAD, "/1.0/metrics?target=node2"),
            fwd("node2", 0)
        );
        assert_eq!(
            at(&s, true, &g, "/1.0?target=node9"),
            Resolved::NotFound("Cluster member not found".into())
        );
        assert_eq!(
            at(&s, true, &g, "/1.0?target=node3"),
            Resolved::Unavailable("Cluster member \"node3\" is offline".into())
        );
        assert_eq!(
            at(&s, false, &g, "/1.0?target=node2"),
            Resolved::BadRequest("Target only allowed when clustered".into())
        );
        assert_eq!(
            at(&s, true, &Method::POST, "/internal/test/sink?target=node2"),
            fwd("node2", 0)
        );
    }

    #[test]
    fn member_named_in_the_path() {
        let s = state();
        let g = Method::GET;
        assert_eq!(
            at(&s, true, &g, "/1.0/cluster/members/node2/state"),
            fwd("node2", 0)
        );
        assert_eq!(
            at(&s, true, &g, "/1.0/cluster/members/node1/state?target=node2"),
            Resolved::Local
        );
        assert_eq!(
            at(&s, true, &g, "/1.0/cluster/members/node9/state"),
            Resolved::NotFound("Cluster member not found".into())
        );
        assert_eq!(
            at(&s, true, &g, "/1.0/cluster/members/node3/state"),
            Resolved::Unavailable("Cluster member \"node3\" is offline".into())
        );
        // Standalone: the handler says it is not clustered.
        assert_eq!(
            at(&s, false, &g, "/1.0/cluster/members/node2/state"),
            Resolved::Local
        );
        // The member itself is not owned by the member it names.
        assert_eq!(
            at(&s, true, &Method::PUT, "/1.0/cluster/members/node2"),
            Resolved::Local
        );
    }

    #[test]
    fn operations_go_to_the_member_their_id_names() {
        let mut s = state();
        let g = Method::GET;
        let on2 = crate::ops::new_id(2, 1);
        assert_eq!(
            at(&s, true, &g, &format!("/1.0/operations/{on2}")),
            fwd("node2", 0)
        );
        assert_eq!(
            at(&s, true, &Method::DELETE, &format!("/1.0/operations/{on2}")),
            fwd("node2", 0)
        );
        assert_eq!(
            at(&s, true, &g, &format!("/1.0/operations/{on2}/wait?timeout=30")),
            fwd("node2", 30)
        );
        assert_eq!(
            at(&s, true, &g, &format!("/1.0/operations/{on2}/websocket?secret=x")),
            fwd("node2", 0)
        );
        // `target` changes nothing.
        assert_eq!(
            at(&s, true, &g, &format!("/1.0/operations/{on2}?target=node1")),
            fwd("node2", 0)
        );
        let on3 = crate::ops::new_id(3, 1);
        assert_eq!(
            at(&s, true, &g, &format!("/1.0/operations/{on3}")),
            Resolved::Unavailable("Cluster member \"node3\" is offline".into())
        );
        // Here, a member that does not exist, a method not served, other paths, malformed ids.
        for uri in [
            format!("/1.0/operations/{}", crate::ops::new_id(1, 1)),
            format!("/1.0/operations/{}", crate::ops::new_id(9, 1)),
            format!("/1.0/operations/{on2}/other"),
            "/1.0/operations".to_string(),
            "/1.0/operations/nonsense".to_string(),
            format!("/1.0/instances/{on2}"),
        ] {
            assert_eq!(at(&s, true, &g, &uri), Resolved::Local, "{uri}");
        }
        assert_eq!(
            at(&s, true, &Method::PUT, &format!("/1.0/operations/{on2}")),
            Resolved::Local
        );
        // A token lives in the replicated state.
        s.tokens.insert(
            on2.clone(),
            cluster::Token {
                id: on2.clone(),
                kind: cluster::TokenKind::Join {
                    server_name: "node4".into(),
                },
                secret: String::new(),
                location: Some(2),
                created_at: time::OffsetDateTime::UNIX_EPOCH,
                expires_at: None,
            },
        );
        assert_eq!(
            at(&s, true, &g, &format!("/1.0/operations/{on2}")),
            Resolved::Local
        );
    }

    #[test]
    fn storage_pools_one_members_view_and_cluster_wide_writes() {
        let s = state();
        let g = Method::GET;
        // Show, edit and space: the member `?target=` names.
        for (m, uri) in [
            (&g, "/1.0/storage-pools/p?target=node2"),
            (&Method::PUT, "/1.0/storage-pools/p?target=node2"),
            (&Method::PATCH, "/1.0/storage-pools/p?target=node2"),
            (&g, "/1.0/storage-pools/p/resources?target=node2"),
        ] {
            assert_eq!(at(&s, true, m, uri), fwd("node2", 0), "{m} {uri}");
        }
        assert_eq!(at(&s, true, &g, "/1.0/storage-pools/p"), Resolved::Local);
        // Creating with `?target=` defines that member's part, from any member; the
        // list, delete and profiles are cluster-wide.
        for (m, uri) in [
            (&Method::POST, "/1.0/storage-pools?target=node2"),
            (&g, "/1.0/storage-pools?target=node2"),
            (&Method::DELETE, "/1.0/storage-pools/p?target=node2"),
            (&Method::PUT, "/1.0/profiles/default?target=node2"),
        ] {
            assert_eq!(at(&s, true, m, uri), Resolved::Local, "{m} {uri}");
        }
        assert!(member_only("/internal/storage-pools/p"));
        assert!(!member_only("/1.0/storage-pools/p"));
    }

    #[test]
    fn access_by_caller() {
        use trust::{AuthMethod, Identity};
        let id = |method, cert_type: Option<&str>| Identity {
            method,
            username: String::new(),
            address: String::new(),
            cert_type: cert_type.map(str::to_string),
        };
        let nobody = id(AuthMethod::Untrusted, None);
        let metrics = id(AuthMethod::Tls, Some("metrics"));
        let client = id(AuthMethod::Tls, Some("client"));
        let unix = id(AuthMethod::Unix, None);
        let member = id(AuthMethod::Cluster, None);
        assert!(allows(Access::Public, &nobody, false) && allows(Access::Secret, &nobody, false));
        assert!(!allows(Access::Metrics, &nobody, false) && allows(Access::Metrics, &metrics, false));
        assert!(!allows(Access::Full, &metrics, false) && allows(Access::Full, &client, false));
        assert!(allows(Access::Member, &member, false) && !allows(Access::Member, &unix, false));
        assert!(allows(Access::MemberOrLocal, &unix, false) && !allows(Access::MemberOrLocal, &unix, true));
        assert!(allows(Access::Local, &unix, false) && !allows(Access::Local, &member, false));
        assert!(!allows(Access::Local, &unix, true));
    }

    #[test]
    fn member_only_paths() {
        assert!(member_only("/internal/raft/append") && member_only("/internal/raft/snapshot"));
        assert!(member_only("/internal/events"));
        assert!(!member_only("/internal/ready") && !member_only("/internal/cluster/join"));
        assert!(!member_only("/1.0/certificates") && !member_only("/nosuch"));
    }
}
