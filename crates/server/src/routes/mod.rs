//! The route table. Unknown paths answer 404 `not found` and known paths with a wrong
//! method 501 `not implemented`, as Incus does; the parts of Incus's API that stapes
//! does not serve yet answer 501 naming the feature ([`not_yet::NOT_YET`]).

pub(crate) mod certificates;
pub(crate) mod cluster;
pub(crate) mod console;
pub(crate) mod copy;
pub use cluster::validate_certificate_pair;
pub(crate) mod evacuation;
pub(crate) mod events;
pub(crate) mod exec;
pub(crate) mod exec_output;
pub(crate) mod files;
pub(crate) mod images;
pub(crate) mod instances;
pub(crate) mod internal;
pub(crate) mod migrate;
pub mod not_yet;
pub(crate) mod operations;
pub(crate) mod profiles;
pub(crate) mod server;
pub(crate) mod snapshots;
pub(crate) mod storage;
pub(crate) mod system;
pub(crate) mod testing;
pub(crate) mod warnings;

pub use testing::SINK as TEST_SINK;

use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::Router;

use crate::context::Ctx;
use crate::response::{error_response, ApiError};
use crate::route::TABLE;

/// The whole table ([`crate::route::TABLE`]); `test_routes` adds the `/internal/test/*`
/// routes (`--test-routes`).
pub fn router(ctx: Ctx, test_routes: bool) -> Router {
    let mut served: std::collections::BTreeMap<&str, axum::routing::MethodRouter<Ctx>> = Default::default();
    for route in TABLE.rows.iter().filter(|r| test_routes || !r.test_only) {
        if let Some(handler) = route.handler {
            let method_router = match served.remove(route.path) {
                Some(existing) => existing.merge(handler()),
                None => handler(),
            };
            served.insert(route.path, method_router);
        }
    }
    let served = served
        .into_iter()
        .fold(Router::new(), |router, (path, method_router)| {
            router.route(path, method_router)
        });
    not_yet::add(served)
        .fallback(not_found)
        .method_not_allowed_fallback(not_implemented)
        .layer(from_fn_with_state(ctx.clone(), crate::forward::layer))
        .layer(axum::middleware::from_fn(crate::tunnel::connect_guard))
        .layer(from_fn_with_state((ctx.clone(), test_routes), crate::gate::layer))
        .layer(from_fn_with_state(ctx.clone(), crate::log::layer))
        .layer(from_fn_with_state(ctx.clone(), crate::auth::layer))
        .layer(axum::middleware::from_fn(crate::unread::layer))
        .layer(axum::middleware::from_fn(crate::tunnel::h2_websocket))
        .with_state(ctx)
}

/// HTTP-01 answers on the HTTPS listener too (no authentication: the CA asks).
pub(crate) async fn acme_challenge(
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
