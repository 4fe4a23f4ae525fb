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
    pub code: ErrorCode,
    /// For people: what was wrong and, for a field, its path first (`limits[1].window: ...`).
    pub message: String,
}

/// The `code` of an error body, one variant per code: a code cannot be mistyped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidJson,
    BodyTooLarge,
    /// hyper's own 414 (see `parse_errors`).
    UriTooLong,
    /// hyper's own 431 (see `parse_errors`).
    HeadersTooLarge,
    Unauthorized,
    AdminDisabled,
    NotFound,
    MethodNotAllowed,
    InternalError,
    /// A store failure worth retrying soon: answered with `Retry-After: 1`.
    StoreUnavailable,
    /// A store failure that needs an operator.
    StoreError,
}

impl ErrorCode {
    /// The code as error bodies spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::AdminDisabled => "admin_disabled",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::StoreError => "store_error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Equal to the code as error bodies spell it.
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    /// A field of the request is invalid: the message starts with its path.
    pub fn invalid(path: &str, message: impl fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, format!("{path}: {message}"))
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidJson, message)
    }

    pub fn body_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!("the request body is larger than {} KiB", limit_bytes / 1024),
        )
    }

    pub fn unauthorized_admin() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "this endpoint needs the admin token as 'Authorization: Bearer <token>'",
        )
    }

    pub fn unauthorized_service() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "this endpoint needs the service token (the filter's quota_service.token) as \
             'Authorization: Bearer <token>'",
        )
    }

    pub fn admin_disabled() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorCode::AdminDisabled,
            "admin endpoints are disabled: no admin token is configured (start the service with \
             --admin-token or TOLLGATE_QUOTA_ADMIN_TOKEN)",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed, "this path does not take that method")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::InternalError, message)
    }

    fn is_transient_store_error(&self) -> bool {
        self.code == ErrorCode::StoreUnavailable
    }
}

/// Store failures are 503: `store_unavailable` with `Retry-After: 1` when they are
/// transient, `store_error` (no retry hint) when an operator must look.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = if e.transient { ErrorCode::StoreUnavailable } else { ErrorCode::StoreError };
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
        let body = ErrorBody { error: ErrorDetail { code: self.code.as_str().to_owned(), message: self.message } };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_spell_every_code_as_before() {
        for (code, spelled) in [
            (ErrorCode::InvalidRequest, "invalid_request"),
            (ErrorCode::InvalidJson, "invalid_json"),
            (ErrorCode::BodyTooLarge, "body_too_large"),
            (ErrorCode::UriTooLong, "uri_too_long"),
            (ErrorCode::HeadersTooLarge, "headers_too_large"),
            (ErrorCode::Unauthorized, "unauthorized"),
            (ErrorCode::AdminDisabled, "admin_disabled"),
            (ErrorCode::NotFound, "not_found"),
            (ErrorCode::MethodNotAllowed, "method_not_allowed"),
            (ErrorCode::InternalError, "internal_error"),
            (ErrorCode::StoreUnavailable, "store_unavailable"),
            (ErrorCode::StoreError, "store_error"),
        ] {
            let response = ApiError::new(StatusCode::BAD_REQUEST, code, "m \"q\"").into_response();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            let expected = format!(r#"{{"error":{{"code":"{spelled}","message":"m \"q\""}}}}"#);
            assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
            assert_eq!(code.to_string(), spelled);
        }
    }
}
