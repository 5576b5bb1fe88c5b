//! Routes for the parts of the Incus API that stapes does not serve yet, from the one
//! table [`api::unsupported::NOT_YET`]: `501 <Feature> are not supported by this server
//! yet` after the trust check (the route table makes them full-access routes: an
//! untrusted caller gets the usual 403).

use api::unsupported::Methods;
use axum::routing::{any, on, MethodFilter};
use axum::Router;

use crate::context::Ctx;
use crate::response::{error_response, ApiError};

/// Adds a route for every row of [`api::unsupported::NOT_YET`].
pub fn add(mut router: Router<Ctx>) -> Router<Ctx> {
    for &(methods, path, feature) in api::unsupported::NOT_YET {
        let handler = move || async move { error_response(&ApiError::not_implemented_yet(feature)) };
        router = match methods {
            Methods::All => router.route(path, any(handler)),
            Methods::Post => router.route(path, on(MethodFilter::POST, handler)),
        };
    }
    router
}
