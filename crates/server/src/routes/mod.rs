//! The route table. Unknown paths answer 404 `not found` and known paths with a wrong
//! method 501 `not implemented`, as Incus does; the parts of Incus's API that stapes
//! does not serve yet answer 501 naming the feature ([`not_yet::NOT_YET`]).

mod certificates;
mod cluster;
pub use cluster::validate_certificate_pair;
mod events;
mod internal;
pub mod not_yet;
mod operations;
pub(crate) mod server;
mod system;
mod testing;
mod warnings;

pub use testing::SINK as TEST_SINK;

use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;

use crate::context::Ctx;
use crate::response::{error_response, ApiError};

/// The whole table; `test_routes` adds the `/internal/test/*` routes (`--test-routes`).
pub fn router(ctx: Ctx, test_routes: bool) -> Router {
    let served = if test_routes {
        testing::add(served())
    } else {
        served()
    };
    not_yet::add(served)
        .fallback(not_found)
        .method_not_allowed_fallback(not_implemented)
        .layer(from_fn_with_state(ctx.clone(), crate::forward::layer))
        .layer(from_fn_with_state(ctx.clone(), crate::gate::layer))
        .layer(from_fn_with_state(ctx.clone(), crate::log::layer))
        .layer(from_fn_with_state(ctx.clone(), crate::auth::layer))
        .with_state(ctx)
}

/// What stapes serves.
fn served() -> Router<Ctx> {
    Router::new()
        .route("/", get(server::root))
        .route("/1.0", get(server::get).put(server::put).patch(server::patch))
        .route(
            "/1.0/certificates",
            get(certificates::list).post(certificates::create),
        )
        .route(
            "/1.0/certificates/{fingerprint}",
            get(certificates::get)
                .put(certificates::put)
                .patch(certificates::patch)
                .delete(certificates::delete),
        )
        .route("/1.0/operations", get(operations::list))
        .route(
            "/1.0/operations/{id}",
            get(operations::get).delete(operations::delete),
        )
        .route("/1.0/operations/{id}/wait", get(operations::wait))
        .route("/1.0/operations/{id}/websocket", get(operations::websocket))
        .route("/1.0/events", get(events::stream))
        .route("/1.0/resources", get(system::resources))
        .route("/1.0/metrics", get(system::metrics))
        .route("/1.0/metadata/configuration", get(system::metadata_configuration))
        .route("/1.0/warnings", get(warnings::list))
        .route(
            "/1.0/warnings/{uuid}",
            get(warnings::get)
                .put(warnings::put)
                .patch(warnings::put)
                .delete(warnings::delete),
        )
        .route("/1.0/cluster", get(cluster::get).put(cluster::put))
        .route(
            "/1.0/cluster/certificate",
            get(cluster::certificate_get).put(cluster::certificate_put),
        )
        .route(
            "/1.0/cluster/members",
            get(cluster::list_members).post(cluster::add_member),
        )
        .route(
            "/1.0/cluster/members/{name}",
            get(cluster::get_member)
                .put(cluster::edit_member)
                .patch(cluster::edit_member)
                .post(cluster::rename_member)
                .delete(cluster::delete_member),
        )
        .route("/1.0/cluster/members/{name}/state", get(cluster::member_state))
        .route("/internal/raft/snapshot", post(cluster::raft_snapshot))
        .route("/internal/raft/{kind}", post(cluster::raft_rpc))
        .route("/internal/cluster/join", post(cluster::join))
        .route("/internal/events", get(events::internal))
        .route("/.well-known/acme-challenge/{token}", get(acme_challenge))
        .route("/internal/ready", get(internal::ready))
        .route("/ready", get(internal::readiness))
        .route("/oidc/login", get(crate::oidc::login))
        .route("/oidc/callback", get(crate::oidc::callback))
        .route("/oidc/logout", get(crate::oidc::logout))
        .route("/internal/shutdown", put(internal::shutdown))
}

/// HTTP-01 answers on the HTTPS listener too (no authentication: the CA asks).
async fn acme_challenge(
    axum::extract::State(ctx): axum::extract::State<Ctx>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    use axum::response::IntoResponse;
    match crate::acme::challenge_answer(&ctx, &token) {
        Some(answer) => ([(http::header::CONTENT_TYPE, "text/plain")], answer).into_response(),
        None => error_response(&ApiError::not_found()),
    }
}

async fn not_found() -> Response {
    error_response(&ApiError::not_found())
}

async fn not_implemented() -> Response {
    error_response(&ApiError::not_implemented())
}
