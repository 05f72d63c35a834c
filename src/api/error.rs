//! The API's one error type: every refusal and failure answers `{error, detail}` with its
//! status, `error` a short code and `detail` what to do about it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::flowstore::BadParameter;

/// The body of every error: a short code and what to do about it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    pub error: String,
    pub detail: String,
}

/// A refused or failed request: its status and [`ApiError`] body.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

/// A refusal with `status`.
pub fn refuse(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        detail: detail.into(),
    }
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = ApiError {
            error: self.code.into(),
            detail: self.detail,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<BadParameter> for Refusal {
    fn from(e: BadParameter) -> Refusal {
        refuse(StatusCode::BAD_REQUEST, "bad_parameter", e.to_string())
    }
}

/// What a handler answers: a response, or a refusal.
pub type Answer = Result<Response, Refusal>;
