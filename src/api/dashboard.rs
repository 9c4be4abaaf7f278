//! `/dashboard`: the operators' page, its script and stylesheet compiled into the binary.
//! The page holds no data: its script reads `GET /admin/overview` with an admin key the
//! operator types in (or passes in the URL fragment), so serving it needs no key.

use poem::{get, http::header, IntoResponse, Response, Route};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLES: &str = include_str!("dashboard/dashboard.css");

/// Only our own script, styles and API; nothing inline, nothing from elsewhere, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Route {
    Route::new()
        .at("/", get(page))
        .at("/dashboard.js", get(script))
        .at("/dashboard.css", get(styles))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    body.with_content_type(content_type)
        .with_header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .with_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .with_header(header::REFERRER_POLICY, "no-referrer")
        .with_header(header::CACHE_CONTROL, "no-cache")
        .into_response()
}

#[poem::handler]
fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

#[poem::handler]
fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

#[poem::handler]
fn styles() -> Response {
    asset(STYLES, "text/css; charset=utf-8")
}
