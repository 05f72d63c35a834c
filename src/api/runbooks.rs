//! `GET /runbooks/` and `GET /runbooks/{name}`: the runbooks of the default alerts, served
//! without a token (they are the project's documentation, and the link in an alert
//! notification is opened by a browser that carries none).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::refuse;
use crate::rules::runbooks;

fn serve(name: &str) -> Response {
    match runbooks::file(name) {
        Some(text) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            text,
        )
            .into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such runbook; GET /runbooks/ lists them",
        )
        .into_response(),
    }
}

/// `GET /runbooks/`: the index.
#[utoipa::path(get, path = "/runbooks/", tag = "operations",
    responses((status = 200, description = "The runbooks, with the MITRE ATT&CK technique of each alert (Markdown)", body = String, content_type = "text/plain")))]
pub async fn index() -> Response {
    serve("")
}

/// `GET /runbooks/{name}`: one alert's runbook, or `quarantine.yaml`.
#[utoipa::path(get, path = "/runbooks/{name}", tag = "operations",
    params(("name" = String, Path, description = "An alert name, or quarantine.yaml")),
    responses(
        (status = 200, description = "The runbook (Markdown)", body = String, content_type = "text/plain"),
        (status = 404, description = "No runbook of that name", body = super::error::ApiError),
    ))]
pub async fn runbook(Path(name): Path<String>) -> Response {
    serve(&name)
}
