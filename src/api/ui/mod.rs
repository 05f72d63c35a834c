//! The web console under `/ui/`: alerts, an alert's evidence, the watched namespaces against
//! their baselines, and a flows explorer; served by `exfilwatch run` from the binary itself.
//!
//! Pages are rendered on the server as HTML with inline SVG charts and need no JavaScript; the
//! stylesheet is the only other resource. Pages are maud templates, checked at compile time:
//! every value spliced into them (pod names, DNS names, labels: attacker-controlled text) is
//! escaped unless marked raw, and nothing in the console marks one. Control characters are
//! shown as `\u{..}` ([`page`]), so none reaches the browser or a copied text unseen.
//! Responses carry a strict Content-Security-Policy (no script at all, styles from the console
//! only, no framing).
//!
//! Sign-in: where API tokens are configured, a browser cannot send a bearer header, so a token
//! entered once on `/ui/login` becomes a session cookie (`HttpOnly`, `SameSite=Strict`,
//! `Secure` behind HTTPS, 8 hours), signed with HMAC-SHA256 under a key made at start-up, and
//! bound to the token: removing the token from `api.tokens_file` ends its sessions, and
//! signing out ends the session on the server too ([`session`]). Failed sign-ins are
//! throttled per client. Bearer tokens work on the console too (an API client that follows an
//! alert's link gets JSON). Without tokens (loopback), there is no sign-in.

mod pages;
mod session;
mod svg;

pub use session::{Sessions, SignIns};

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use super::ApiState;

/// How long a session lasts.
pub const SESSION: Duration = Duration::from_secs(8 * 3600);
/// The session cookie's name.
const COOKIE: &str = "exfilwatch_session";
/// Largest sign-in form accepted.
pub const MAX_FORM: u64 = 4096;

const CSS: &str = include_str!("console.css");

/// Headers of every console response.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `html` with its control characters (but newline and tab) written as `\u{..}`: they can
/// only come from attacker text (the templates hold none), and shown so they are seen.
fn visible_controls(html: String) -> String {
    if !html
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return html;
    }
    let mut out = String::with_capacity(html.len() + 16);
    for c in html.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// How a request to the console is authenticated, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No tokens are configured: the console is open.
    Open,
    Session,
    Bearer,
}

fn access(state: &ApiState, headers: &HeaderMap) -> Option<Access> {
    let tokens = state.tokens.read().unwrap_or_else(|p| p.into_inner());
    if tokens.is_empty() {
        return Some(Access::Open);
    }
    if let Some(value) = cookie_value(headers, COOKIE)
        && state.sessions.valid(value, &tokens, now_s())
    {
        return Some(Access::Session);
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(super::bearer_token)?;
    super::token_known(&tokens, bearer.as_bytes()).then_some(Access::Bearer)
}

/// Lets signed-in requests through; sends the rest to the sign-in page.
async fn require_session(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Response {
    match access(&state, request.headers()) {
        Some(how) => {
            request.extensions_mut().insert(how);
            next.run(request).await
        }
        None => {
            let here = request
                .uri()
                .path_and_query()
                .map_or("/ui/", |p| p.as_str())
                .to_owned();
            let target = format!(
                "/ui/login?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", &here)
                    .finish()
            );
            Redirect::to(&target).into_response()
        }
    }
}

/// Adds the console's security headers.
async fn secure_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// An HTML page: the console's frame around `body`, titled `title`, with `current` the
/// section its navigation marks.
pub fn page(state: &ApiState, title: &str, current: &str, body: Markup) -> Response {
    let signed_in = !state
        .tokens
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .is_empty();
    let html = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · exfilwatch" }
                link rel="stylesheet" href="/ui/console.css";
            }
            body {
                header {
                    a.brand href="/ui/" { "exfilwatch" }
                    nav {
                        @for (href, name) in [
                            ("/ui/", "Alerts"),
                            ("/ui/namespaces", "Namespaces"),
                            ("/ui/flows", "Flows"),
                        ] {
                            a href=(href) class=[(name == current).then_some("current")] { (name) }
                        }
                    }
                    @if signed_in {
                        form.signout method="post" action="/ui/logout" {
                            button type="submit" id="sign-out" { "Sign out" }
                        }
                    }
                }
                main { (body) }
                footer {
                    "exfilwatch " (crate::common::version::VERSION)
                    " (" (crate::common::version::REVISION) ")"
                }
            }
        }
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        visible_controls(html.into_string()),
    )
        .into_response()
}

/// A page saying what went wrong, with `status`.
pub fn problem(state: &ApiState, status: StatusCode, title: &str, detail: &str) -> Response {
    let body = html! {
        h1 { (title) }
        p.problem { (detail) }
    };
    let mut r = page(state, title, "", body);
    *r.status_mut() = status;
    r
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

/// Where to go after signing in: a console path, never another site.
fn safe_next(next: &str) -> &str {
    if next.starts_with("/ui/") && !next.starts_with("/ui//") && !next.contains('\\') {
        next
    } else {
        "/ui/"
    }
}

fn login_form(state: &ApiState, next: &str, message: Option<&str>) -> Response {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(m) = message {
            p.problem id="login-problem" { (m) }
        }
        form.login method="post" action="/ui/login" {
            label for="token" { "API token" }
            input type="password" id="token" name="token" autocomplete="current-password" required;
            input type="hidden" name="next" value=(safe_next(next));
            button type="submit" id="sign-in" { "Sign in" }
        }
        p.hint {
            "A token from " code { "api.tokens_file" } "; it becomes a session of "
            (SESSION.as_secs() / 3600) " hours in this browser."
        }
    };
    page(state, "Sign in", "", body)
}

async fn login_page(
    State(state): State<Arc<ApiState>>,
    axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    let next = q
        .iter()
        .find(|(k, _)| k == "next")
        .map_or("/ui/", |(_, v)| v.as_str());
    if state
        .tokens
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .is_empty()
    {
        return Redirect::to(safe_next(next)).into_response();
    }
    login_form(&state, next, None)
}

/// Now, in seconds since the epoch.
fn now_s() -> i64 {
    crate::common::clock::now_ns() / 1_000_000_000
}

/// The session cookie with `value` for `max_age` seconds (0 clears it).
fn session_cookie(state: &ApiState, value: &str, max_age: u64) -> Option<HeaderValue> {
    let secure = if state.external_https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// `POST /ui/login`: a token from the form becomes a session; failures are counted and
/// logged per client (never with the token), and a client past `api.signin_failures` in a
/// minute waits.
async fn login(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let client = super::server::client(&request)
        .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| {
            a.ip()
        });
    let Ok(body) = axum::body::to_bytes(request.into_body(), MAX_FORM as usize).await else {
        return problem(
            &state,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Sign in",
            "The sign-in form is too large.",
        );
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map_or("", |(_, v)| v.as_str())
    };
    let (token, next) = (get("token").trim(), safe_next(get("next")).to_owned());
    let now = now_s();
    if let session::Attempt::Wait(seconds) = state.signins.attempt(client, now) {
        state
            .telemetry
            .http
            .signin_throttled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut r = login_form(
            &state,
            &next,
            Some(&format!(
                "Too many sign-ins that failed from this address: try again in {seconds} s."
            )),
        );
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let known = {
        let tokens = state.tokens.read().unwrap_or_else(|p| p.into_inner());
        !tokens.is_empty() && super::token_known(&tokens, token.as_bytes())
    };
    if !known {
        let failures = state.signins.failed(client, now);
        state
            .telemetry
            .http
            .signin_failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            client = %client,
            failures,
            "console: a sign-in with a token that is not accepted"
        );
        let mut r = login_form(&state, &next, Some("That token is not accepted."));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    let expires = now + SESSION.as_secs() as i64;
    let value = match state.sessions.issue(token.as_bytes(), expires) {
        Ok(v) => v,
        Err(e) => {
            return problem(&state, StatusCode::INTERNAL_SERVER_ERROR, "Sign in", &e);
        }
    };
    let mut r = Redirect::to(&next).into_response();
    if let Some(v) = session_cookie(&state, &value, SESSION.as_secs()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /ui/logout`: the session ends on the server (a copy of its cookie is refused from
/// now on) and in the browser.
async fn logout(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Some(value) = cookie_value(&headers, COOKIE) {
        let tokens = state.tokens.read().unwrap_or_else(|p| p.into_inner());
        state.sessions.revoke(value, &tokens, now_s());
    }
    let mut r = Redirect::to("/ui/login").into_response();
    if let Some(v) = session_cookie(&state, "", 0) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The console's router: sign-in pages and the stylesheet open, the rest behind a session.
pub fn router(state: Arc<ApiState>) -> Router<Arc<ApiState>> {
    // Each route with the largest body it takes: the sign-in form and the policies to check
    // (form-encoded, up to three bytes a character); none elsewhere.
    use super::guard::body;
    let protected = Router::new()
        .route("/ui/", body(0, get(pages::alerts)))
        .route("/ui/alerts/{fingerprint}", body(0, get(pages::alert)))
        .route("/ui/namespaces", body(0, get(pages::namespaces)))
        .route("/ui/flows", body(0, get(pages::flows)))
        .route("/ui/flows.ndjson", body(0, get(pages::export)))
        .route("/ui/rules/{name}", body(0, get(pages::rule)))
        .route("/ui/policy", body(0, get(pages::policy)))
        .route(
            "/ui/policy/check",
            body(
                3 * super::policy::MAX_POLICY_BODY,
                post(pages::policy_check),
            ),
        )
        .layer(middleware::from_fn_with_state(state, require_session));
    Router::new()
        .route(
            "/ui",
            body(0, get(|| async { Redirect::permanent("/ui/") })),
        )
        .route("/ui/login", body(MAX_FORM, get(login_page).post(login)))
        .route("/ui/logout", body(0, post(logout)))
        .route("/ui/console.css", body(0, get(stylesheet)))
        .merge(protected)
        .layer(middleware::from_fn(secure_headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(visible_controls("a\u{1b}[2mb\n".into()), "a\\u{1b}[2mb\n");
        assert_eq!(visible_controls("plain".into()), "plain");
    }

    #[test]
    fn sign_in_only_returns_to_the_console() {
        assert_eq!(safe_next("/ui/alerts/abc"), "/ui/alerts/abc");
        assert_eq!(safe_next("https://evil.example/"), "/ui/");
        assert_eq!(safe_next("//evil.example/ui/"), "/ui/");
        assert_eq!(safe_next("/ui//evil.example"), "/ui/");
        assert_eq!(safe_next("/ui/\\evil"), "/ui/");
    }
}
