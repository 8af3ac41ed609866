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
        .layer(axum::middleware::from_fn(time_limit))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
}

/// Requests handled at once; more wait their turn (their connections are
/// bounded by the listener, `crate::http`).
pub const MAX_CONCURRENT_REQUESTS: usize = 512;

/// The longest a request may take: above the longest job a request waits
/// for (an allocation run or a report of a million members takes about
/// 20 s here; a department of 2.6 million, a minute or more), below the
/// CLI's own 15 minutes. Past it the client gets 503; a change the request
/// asked for is made whole or not at all (a job goes on in the writer).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

async fn time_limit(req: Request, next: axum::middleware::Next) -> Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the request took too long; a change it asked for is made whole or not at all: retry it with the same id\n",
        )
            .into_response(),
    }
}

async fn not_found(s: ConsoleState, req: Request) -> Response {
    if req.uri().path().starts_with("/api/") {
        return crate::api::not_found();
    }
    let (mut parts, _) = req.into_parts();
    let Ok(v) = Visitor::from_request_parts(&mut parts, &s).await;
    crate::console::not_found(&v, &s)
}
