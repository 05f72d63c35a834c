//! What every request passes before a handler runs: its size, its time, and where it comes
//! from.
//!
//! - **Size**: a query string of at most 8 KiB; a body only on the routes that declare one
//!   with [`body`] (the sign-in form, the policies to check), within the size they declare;
//!   no chunked bodies.
//! - **Time**: a response within `api.request_timeout`, or a 503.
//! - **Origin**: a state-changing request (any method but GET, HEAD and OPTIONS) that a
//!   browser marks as cross-site (`Sec-Fetch-Site: cross-site`, or an `Origin` that is not
//!   this API's) is refused, so that no page elsewhere can reload the rules or sign a
//!   browser in or out. Without tokens, the `Host` must be one this API answers to (its
//!   listen address, `localhost` on loopback, `api.external_url`'s host): a page on another
//!   name that re-resolves to 127.0.0.1 (DNS rebinding) reads nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::error::refuse;

/// Longest query string accepted.
pub const MAX_QUERY: usize = 8 * 1024;

/// Refuses long query strings before any handler runs, and counts every request refused
/// with a 4xx status.
pub async fn bounded(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let query = request.uri().query().map_or(0, str::len);
    if query > MAX_QUERY {
        state.telemetry.bad_requests.inc();
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a query string of at most {MAX_QUERY} bytes"),
        )
        .into_response();
    }
    let response = next.run(request).await;
    if response.status().is_client_error() {
        state.telemetry.bad_requests.inc();
    }
    response
}

/// `route` taking a body of at most `limit` bytes (0: none), told by `Content-Length`; a
/// chunked body is refused, so no body is ever read past its route's declaration.
pub fn body<S: Clone + Send + Sync + 'static>(
    limit: u64,
    route: axum::routing::MethodRouter<S>,
) -> axum::routing::MethodRouter<S> {
    route.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| within(limit, request, next),
    ))
}

async fn within(limit: u64, request: Request, next: Next) -> Response {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    if length <= limit && !chunked {
        return next.run(request).await;
    }
    let detail = if limit == 0 {
        "this route takes no body".to_owned()
    } else {
        format!("this route takes a body of at most {limit} bytes, with a Content-Length")
    };
    refuse(StatusCode::PAYLOAD_TOO_LARGE, "too_large", detail).into_response()
}

/// Answers 503 when the handler has not answered within `api.request_timeout`.
pub async fn deadline(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.limits.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            state
                .telemetry
                .http
                .timed_out
                .fetch_add(1, Ordering::Relaxed);
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("no answer within api.request_timeout ({limit:?})"),
            )
            .into_response()
        }
    }
}

/// Refuses cross-site state changes, and, without tokens, hosts the API does not answer to.
pub async fn same_site(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let open = state
        .tokens
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .is_empty();
    let refusal = if open && !host_allowed(&state.hosts, request.headers()) {
        Some(format!(
            "Host {:?} is not one this API answers to without tokens (api.listen or api.external_url)",
            crate::common::text::printable(
                request
                    .headers()
                    .get(header::HOST)
                    .map_or("", |h| h.to_str().unwrap_or("(not text)"))
            )
        ))
    } else if changes_state(request.method()) && cross_site(&state.hosts, request.headers()) {
        Some(format!(
            "a {} from another site is refused (Origin or Sec-Fetch-Site says cross-site)",
            request.method()
        ))
    } else {
        None
    };
    match refusal {
        None => next.run(request).await,
        Some(message) => {
            state
                .telemetry
                .http
                .cross_site
                .fetch_add(1, Ordering::Relaxed);
            refuse(StatusCode::FORBIDDEN, "cross_site", message).into_response()
        }
    }
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the request's `Host` is one of `hosts` (compared without case). Probes, curl and
/// every browser send one; a request without it (HTTP/1.0) is let through, since a browser
/// page cannot send one.
fn host_allowed(hosts: &[String], headers: &HeaderMap) -> bool {
    match headers.get(header::HOST) {
        None => true,
        Some(host) => host
            .to_str()
            .is_ok_and(|h| hosts.iter().any(|a| a.eq_ignore_ascii_case(h))),
    }
}

/// Whether a browser says the request comes from another site: `Sec-Fetch-Site` other than
/// `same-origin` and `none` (typed in, bookmarked), or, from browsers that do not send it, an
/// `Origin` whose host is not one of `hosts`.
fn cross_site(hosts: &[String], headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => false,
        Some(Ok(origin)) => {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            !host.is_some_and(|h| hosts.iter().any(|a| a.eq_ignore_ascii_case(h)))
        }
        // `Origin: null` (a sandboxed frame, a redirect across sites) and anything unreadable.
        Some(Err(_)) => true,
    }
}

/// The `Host` values this API answers to: its address, `localhost` with its port when it
/// listens on loopback, and `external_url`'s authority.
pub fn hosts(listen: std::net::SocketAddr, external_url: &str) -> Vec<String> {
    let mut hosts = vec![listen.to_string()];
    if listen.ip().is_loopback() {
        hosts.push(format!("localhost:{}", listen.port()));
    }
    // On port 80 a browser leaves the port out.
    if listen.port() == 80 {
        let bare: Vec<String> = hosts
            .iter()
            .filter_map(|h| h.strip_suffix(":80").map(str::to_owned))
            .collect();
        hosts.extend(bare);
    }
    if let Some(rest) = external_url
        .strip_prefix("https://")
        .or_else(|| external_url.strip_prefix("http://"))
    {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if !authority.is_empty() {
            hosts.push(authority.to_owned());
            // The default port may be left out of a Host header, or written.
            let port = if external_url.starts_with("https://") {
                443
            } else {
                80
            };
            if !authority.contains(':') || authority.ends_with(']') {
                hosts.push(format!("{authority}:{port}"));
            } else if let Some(bare) = authority.strip_suffix(&format!(":{port}")) {
                hosts.push(bare.to_owned());
            }
        }
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_hosts_are_the_listen_address_localhost_and_the_external_url() {
        let listen = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            hosts(listen, "https://exfilwatch.example/ui"),
            [
                "127.0.0.1:8080",
                "exfilwatch.example",
                "exfilwatch.example:443",
                "localhost:8080"
            ]
        );
        assert_eq!(
            hosts("127.0.0.1:80".parse().unwrap(), "http://127.0.0.1"),
            ["127.0.0.1", "127.0.0.1:80", "localhost", "localhost:80"]
        );
        let any = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(
            hosts(any, "http://exfilwatch.monitoring:8080"),
            ["0.0.0.0:8080", "exfilwatch.monitoring:8080"]
        );
    }

    #[test]
    fn a_host_elsewhere_is_refused_and_none_is_let_through() {
        let hosts = hosts("127.0.0.1:8080".parse().unwrap(), "http://127.0.0.1:8080");
        assert!(host_allowed(
            &hosts,
            &headers(&[("host", "127.0.0.1:8080")])
        ));
        assert!(host_allowed(
            &hosts,
            &headers(&[("host", "LOCALHOST:8080")])
        ));
        assert!(!host_allowed(
            &hosts,
            &headers(&[("host", "evil.example:8080")])
        ));
        assert!(!host_allowed(
            &hosts,
            &headers(&[("host", "127.0.0.1:9999")])
        ));
        assert!(host_allowed(&hosts, &headers(&[])));
    }

    #[test]
    fn cross_site_is_read_from_fetch_metadata_then_origin() {
        let hosts = hosts("127.0.0.1:8080".parse().unwrap(), "http://127.0.0.1:8080");
        let cross = |pairs: &[(&'static str, &'static str)]| cross_site(&hosts, &headers(pairs));
        assert!(cross(&[("sec-fetch-site", "cross-site")]));
        assert!(cross(&[("sec-fetch-site", "same-site")]));
        assert!(!cross(&[("sec-fetch-site", "same-origin")]));
        assert!(!cross(&[("sec-fetch-site", "none")]));
        assert!(cross(&[("origin", "https://evil.example")]));
        assert!(cross(&[("origin", "null")]));
        assert!(!cross(&[("origin", "http://127.0.0.1:8080")]));
        assert!(!cross(&[("origin", "http://localhost:8080")]));
        // curl, scripts: no browser metadata at all.
        assert!(!cross(&[]));
    }
}
