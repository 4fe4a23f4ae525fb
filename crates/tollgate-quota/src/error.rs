//! The one error type of the HTTP API: it knows its status, headers and JSON body.

use std::fmt;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tollgate_core::quota::{ErrorBody, ErrorDetail};

use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable: `invalid_request`, `unauthorized`, `store_unavailable`, ...
    pub code: &'static str,
    /// For people: what was wrong and, for a field, its path first (`limits[1].window: ...`).
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    /// A field of the request is invalid: the message starts with its path.
    pub fn invalid(path: &str, message: impl fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", format!("{path}: {message}"))
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    pub fn body_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {} KiB", limit_bytes / 1024),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs the admin token as 'Authorization: Bearer <token>'",
        )
    }

    pub fn admin_disabled() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "admin endpoints are disabled: no admin token is configured (start the service with \
             --admin-token or TOLLGATE_QUOTA_ADMIN_TOKEN)",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this path does not take that method")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    fn is_transient_store_error(&self) -> bool {
        self.code == "store_unavailable"
    }
}

/// Store failures are 503: `store_unavailable` with `Retry-After: 1` when they are
/// transient, `store_error` (no retry hint) when an operator must look.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = if e.transient { "store_unavailable" } else { "store_error" };
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, format!("the quota store failed: {}", e.message))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.is_transient_store_error();
        let authenticate = self.status == StatusCode::UNAUTHORIZED;
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if retry {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if authenticate {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tollgate-quota\""));
        }
        response
    }
}
