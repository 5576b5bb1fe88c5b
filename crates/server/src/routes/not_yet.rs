//! Routes for the parts of the Incus API that stapes does not serve yet, from the one
//! table [`api::unsupported::NOT_YET`]: `501 <Feature> are not supported by this server
//! yet` after the trust check (an untrusted caller gets the usual 403).

use api::unsupported::Methods;
use axum::extract::Extension;
use axum::response::Response;
use axum::routing::{any, on, MethodFilter};
use axum::Router;
use trust::Identity;

use crate::context::Ctx;
use crate::response::{error_response, ApiError};

/// Adds a route for every row of [`api::unsupported::NOT_YET`].
pub fn add(mut router: Router<Ctx>) -> Router<Ctx> {
    for &(methods, path, feature) in api::unsupported::NOT_YET {
        let handler = move |Extension(id): Extension<Identity>| async move { answer(&id, feature) };
        router = match methods {
            Methods::All => router.route(path, any(handler)),
            Methods::Post => router.route(path, on(MethodFilter::POST, handler)),
        };
    }
    router
}

fn answer(id: &Identity, feature: &str) -> Response {
    if !id.full_access() {
        return error_response(&ApiError::forbidden());
    }
    error_response(&ApiError::not_implemented_yet(feature))
}
