//! A JSON body extractor whose every rejection is an [`ApiError`] (JSON, naming the field),
//! never axum's plain-text one.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::body_too_large(BODY_LIMIT)
            } else {
                ApiError::invalid_json(format!("the request body could not be read: {}", rejection.body_text()))
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a whole body; an error names the path of the bad field (`limits[1].window_secs`).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Most bodies are valid: parse them without tracking the path, and parse again with
    // the tracking only to explain an error.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    parse_explained(bytes)
}

fn parse_explained<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid_json(format!("the request body is not valid JSON: {inner}"))
        } else if path.is_empty() || path == "." {
            ApiError::invalid("body", inner)
        } else {
            ApiError::invalid(&path, inner)
        }
    })?;
    deserializer.end().map_err(|e| ApiError::invalid_json(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::quota::CheckRequest;

    #[test]
    fn errors_name_the_field() {
        let e = parse::<CheckRequest>(br#"{"key":"k","cost":1,"limits":[{"name":"a","limit":"x","window_secs":1}]}"#)
            .unwrap_err();
        assert!(e.message.starts_with("limits[0].limit: invalid type"), "{}", e.message);
        let e = parse::<CheckRequest>(br#"{"key":"k","cost":1}"#).unwrap_err();
        assert!(e.message.starts_with("body: missing field `limits`"), "{}", e.message);
        assert_eq!(parse::<CheckRequest>(b"{\"key\":").unwrap_err().code, "invalid_json");
        assert_eq!(parse::<CheckRequest>(br#"{"key":"k","cost":1,"limits":[]} x"#).unwrap_err().code, "invalid_json");
    }
}
