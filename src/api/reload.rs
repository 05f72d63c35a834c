//! `POST /-/reload`: asks the service to re-read its configuration file and rule directory,
//! and answers once the new rules are in force or refused. [`ReloadStatus`] keeps what the
//! last reload did for `/metrics`, as Prometheus reports its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::ApiState;
use super::error::{Answer, refuse};
use crate::common::clock::now_ns;

/// Why a reload was asked for, and where to answer.
#[derive(Debug)]
pub struct ReloadRequest {
    /// "SIGHUP", "POST /-/reload", "file change".
    pub trigger: &'static str,
    /// What the reload changed, or every problem that refused it.
    pub reply: Option<oneshot::Sender<Result<String, String>>>,
}

/// The outcome of the last reload: start-up counts as a successful one.
#[derive(Debug)]
pub struct ReloadStatus {
    successful: AtomicBool,
    success_seconds: AtomicI64,
}

impl Default for ReloadStatus {
    fn default() -> Self {
        ReloadStatus {
            successful: AtomicBool::new(true),
            success_seconds: AtomicI64::new(now_ns() / 1_000_000_000),
        }
    }
}

impl ReloadStatus {
    /// Records a reload that succeeded or failed now.
    pub fn record(&self, ok: bool) {
        self.successful.store(ok, Ordering::Relaxed);
        if ok {
            self.success_seconds
                .store(now_ns() / 1_000_000_000, Ordering::Relaxed);
        }
    }

    /// Whether the last reload succeeded.
    pub fn successful(&self) -> bool {
        self.successful.load(Ordering::Relaxed)
    }

    /// When the last successful reload (or the start) was, seconds since the epoch.
    pub fn success_seconds(&self) -> i64 {
        self.success_seconds.load(Ordering::Relaxed)
    }
}

/// Where the API sends reload requests, when the service can reload.
pub type Reloads = mpsc::Sender<ReloadRequest>;

/// `POST /-/reload`.
#[utoipa::path(post, path = "/-/reload", tag = "operations",
    responses(
        (status = 200, description = "The configuration and rules were re-read; what changed", body = Object),
        (status = 401, description = "Missing or unknown bearer token", body = super::error::ApiError),
        (status = 422, description = "Refused: every problem found; the running rules stay in force", body = super::error::ApiError),
        (status = 503, description = "This process cannot reload (no configuration file)", body = super::error::ApiError),
    ),
    security(("bearer" = [])))]
pub async fn reload(State(state): State<Arc<ApiState>>) -> Answer {
    let unavailable = || {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_unavailable",
            "this process was not started from a configuration file it can re-read",
        )
    };
    let reloads = state.reloads.as_ref().ok_or_else(unavailable)?;
    let (reply, answer) = oneshot::channel();
    let request = ReloadRequest {
        trigger: "POST /-/reload",
        reply: Some(reply),
    };
    reloads.send(request).await.map_err(|_| unavailable())?;
    match answer.await.map_err(|_| unavailable())? {
        Ok(changes) => Ok(axum::Json(json!({"status": "ok", "changes": changes})).into_response()),
        Err(problems) => Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload_failed",
            problems,
        )),
    }
}
