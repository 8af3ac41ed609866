//! The node's HTTP server: the JSON API and the web console side by side,
//! each over the application layer ([`crate::app`]); the only module that
//! knows both.

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request};
use axum::response::Response;

use crate::app::App;
use crate::console::{ConsoleState, Visitor};

/// Every route: `/api/v1/...` (JSON, bearer tokens) and the console's pages
/// (HTML, sessions). Unknown paths get a JSON 404 under `/api/`, the
/// console's page elsewhere (API clients get no console session).
pub fn router(app: App) -> Router {
    let console = ConsoleState::new(app.clone());
    let fallback_state = console.clone();
    Router::new()
        .merge(crate::api::routes().with_state(app))
        .merge(crate::console::routes().with_state(console))
        .fallback(move |req: Request| not_found(fallback_state.clone(), req))
        .layer(DefaultBodyLimit::max(crate::api::MAX_BODY))
}

async fn not_found(s: ConsoleState, req: Request) -> Response {
    if req.uri().path().starts_with("/api/") {
        return crate::api::not_found();
    }
    let (mut parts, _) = req.into_parts();
    let Ok(v) = Visitor::from_request_parts(&mut parts, &s).await;
    crate::console::not_found(&v, &s)
}
