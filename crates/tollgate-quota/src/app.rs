//! Routes and handlers of the HTTP API.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_core::quota::{
    CheckRequest, CheckResponse, CreateKeyRequest, KeyInfo, ReturnRequest, ReturnResponse, SettleRequest,
    SettleResponse, UsageResponse, VerifyRequest, VerifyResponse,
};

use crate::error::ApiError;
use crate::extract::{ApiJson, BODY_LIMIT};
use crate::keys::{self, KnownTiers};
use crate::metrics::{self, Metrics, Op};
use crate::store::{Store, StoreError};
use crate::validate;

/// Longest a request waits for the store before answering 503.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the store is asked who it is, to notice a restart or failover.
pub const RESTART_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Shared by every request.
pub struct App<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    store: S,
    metrics: Metrics,
    /// SHA-256 of the admin token; the token itself is not kept.
    admin_token_sha256: Option<TokenHash>,
    /// SHA-256 of the service token; `None` only when the service was started without one.
    service_token_sha256: Option<TokenHash>,
    tiers: KnownTiers,
    /// Unix second of the last logged store error: at most one line per second.
    last_error_log: AtomicU64,
}

impl<S> Clone for App<S> {
    fn clone(&self) -> Self {
        App { inner: Arc::clone(&self.inner) }
    }
}

/// Who may call what, and the tiers keys may be made for.
pub struct Settings {
    /// Bearer token of the admin endpoints (`/v1/keys`, `/v1/usage`); `None`: they answer 403.
    pub admin_token: Option<String>,
    /// Who may call the filter's endpoints (`/v1/check`, `/v1/return`, `/v1/keys/verify`).
    pub service_access: ServiceAccess,
    pub tiers: KnownTiers,
}

/// How the filter's endpoints are guarded.
pub enum ServiceAccess {
    /// `authorization: Bearer <token>` with this token; anything else gets 401.
    Token(String),
    /// Anyone may call them (`--insecure-no-auth`): a network policy must keep callers out.
    Open,
}

/// The SHA-256 of a token: the token itself is not kept.
struct TokenHash([u8; 32]);

impl TokenHash {
    fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// The request carries `authorization: Bearer <the token>`. Both sides are hashed first,
    /// which makes the comparison constant-time whatever the lengths.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
        token.is_some_and(|token| bool::from(Sha256::digest(token.as_bytes()).as_slice().ct_eq(&self.0)))
    }
}

/// The service's routes over `store`.
pub fn router<S: Store>(store: S, settings: Settings) -> Router {
    let app = App {
        inner: Arc::new(Inner {
            store,
            metrics: Metrics::new(),
            admin_token_sha256: settings.admin_token.as_deref().map(TokenHash::of),
            service_token_sha256: match &settings.service_access {
                ServiceAccess::Token(token) => Some(TokenHash::of(token)),
                ServiceAccess::Open => None,
            },
            tiers: settings.tiers,
            last_error_log: AtomicU64::new(0),
        }),
    };
    watch_store_restarts(&app);
    // What the filter calls: every route here needs the service token.
    let filter = Router::new()
        .route("/v1/check", post(check::<S>))
        .route("/v1/return", post(give_back::<S>))
        .route("/v1/settle", post(settle::<S>))
        .route("/v1/keys/verify", post(verify_key::<S>))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_service_token::<S>));
    Router::new()
        .merge(filter)
        .route("/v1/keys", post(create_key::<S>).get(list_keys::<S>))
        .route("/v1/keys/{id}", delete(revoke_key::<S>))
        .route("/v1/usage/{*key}", get(usage::<S>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
        .route_layer(middleware::from_fn_with_state(app.clone(), count_requests::<S>))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

/// Asks the store who it is every [`RESTART_CHECK_INTERVAL`] while the app lives. A
/// changed answer is a restart or failover: counts written since the store's last
/// persistence point are gone (callers got that quota back). It is counted in
/// `tollgate_quota_store_restarts_total` and logged once. A store that does not answer
/// is not a restart (readiness and the requests report it); the change shows once it does.
fn watch_store_restarts<S: Store>(app: &App<S>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let app = Arc::downgrade(&app.inner);
    runtime.spawn(async move {
        let mut last: Option<String> = None;
        let mut tick = tokio::time::interval(RESTART_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = app.upgrade() else { return };
            let id = match tokio::time::timeout(STORE_TIMEOUT, inner.store.instance_id()).await {
                Ok(Ok(Some(id))) => id,
                // This store cannot restart apart from the service.
                Ok(Ok(None)) => return,
                Ok(Err(_)) | Err(_) => continue,
            };
            if last.is_none() {
                tracing::info!("store identified: its restarts and failovers will be noticed");
            } else if last.as_ref().is_some_and(|last| *last != id) {
                inner.metrics.store_restart();
                tracing::warn!(
                    "the store restarted or failed over (its run_id changed): counts written since its last \
                     persistence point are lost, and their callers got that quota back"
                );
            }
            last = Some(id);
        }
    });
}

impl<S: Store> App<S> {
    /// Runs one store operation with a deadline, measuring it.
    async fn store<T>(&self, op: Op, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, ApiError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(STORE_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::transient(format!("no answer within {} s", STORE_TIMEOUT.as_secs()))),
        };
        self.inner.metrics.store_call(op, started.elapsed(), result.is_err());
        if let Err(e) = &result {
            self.log_store_error(op, e);
        }
        result.map_err(ApiError::from)
    }

    fn log_store_error(&self, op: Op, e: &StoreError) {
        let second = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if self.inner.last_error_log.swap(second, Ordering::Relaxed) != second {
            tracing::warn!(op = op.as_str(), transient = e.transient, "store error: {}", e.message);
        }
    }
}

/// Present only on requests that carry the admin token.
struct Admin;

impl<S: Store> FromRequestParts<App<S>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App<S>) -> Result<Self, ApiError> {
        match &app.inner.admin_token_sha256 {
            None => Err(ApiError::admin_disabled()),
            Some(expected) if expected.admits(&parts.headers) => Ok(Admin),
            Some(_) => Err(ApiError::unauthorized_admin()),
        }
    }
}

/// Lets through only requests that carry the service token (all, with `--insecure-no-auth`).
async fn require_service_token<S: Store>(State(app): State<App<S>>, request: Request, next: Next) -> Response {
    match &app.inner.service_token_sha256 {
        Some(expected) if !expected.admits(request.headers()) => ApiError::unauthorized_service().into_response(),
        _ => next.run(request).await,
    }
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn check<S: Store>(
    State(app): State<App<S>>,
    ApiJson(request): ApiJson<CheckRequest>,
) -> Result<Json<CheckResponse>, ApiError> {
    let check = validate::check(request)?;
    let response = app.store(Op::Check, app.inner.store.check(&check)).await?;
    app.inner.metrics.decision(validate::tier_of(&check.key), response.admitted);
    Ok(Json(response))
}

async fn give_back<S: Store>(
    State(app): State<App<S>>,
    ApiJson(request): ApiJson<ReturnRequest>,
) -> Result<Json<ReturnResponse>, ApiError> {
    let ret = validate::give_back(request)?;
    let returned = app.store(Op::Return, app.inner.store.give_back(&ret)).await?;
    app.inner.metrics.give_back(validate::tier_of(&ret.key), returned.iter().sum());
    Ok(Json(ReturnResponse { returned }))
}

async fn settle<S: Store>(
    State(app): State<App<S>>,
    ApiJson(request): ApiJson<SettleRequest>,
) -> Result<Json<SettleResponse>, ApiError> {
    let settle = validate::settle(request)?;
    let applied = app.store(Op::Settle, app.inner.store.settle(&settle)).await?;
    app.inner.metrics.settle(validate::tier_of(&settle.key), applied);
    Ok(Json(SettleResponse { applied }))
}

async fn create_key<S: Store>(
    State(app): State<App<S>>,
    _: Admin,
    ApiJson(request): ApiJson<CreateKeyRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let new_key = keys::new_key(&request.tier, &request.name, &app.inner.tiers)?;
    let created = app.store(Op::CreateKey, keys::store_key(&app.inner.store, new_key)).await?;
    tracing::info!(id = %created.id, tier = %created.tier, "API key created");
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list_keys<S: Store>(State(app): State<App<S>>, _: Admin) -> Result<Json<Vec<KeyInfo>>, ApiError> {
    let keys = app.store(Op::ListKeys, keys::list(&app.inner.store)).await?;
    Ok(Json(keys))
}

async fn revoke_key<S: Store>(
    State(app): State<App<S>>,
    _: Admin,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::invalid("id", e.body_text()))?;
    if app.store(Op::RevokeKey, app.inner.store.revoke_key(&id)).await? {
        tracing::info!(%id, "API key revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no API key has the id {id:?}")))
    }
}

async fn verify_key<S: Store>(
    State(app): State<App<S>>,
    ApiJson(request): ApiJson<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    let sha256 = validate::sha256_hex(&request.sha256, "sha256")?;
    let found = app.store(Op::FindKey, app.inner.store.find_key(&sha256)).await?;
    Ok(Json(match found {
        Some(record) => VerifyResponse { known: true, id: Some(record.id), tier: Some(record.tier) },
        None => VerifyResponse { known: false, id: None, tier: None },
    }))
}

async fn usage<S: Store>(
    State(app): State<App<S>>,
    _: Admin,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<UsageResponse>, ApiError> {
    let Path(key) = key.map_err(|e| ApiError::invalid("key", e.body_text()))?;
    validate::metered_key(&key, "key")?;
    let limits = app.store(Op::Usage, app.inner.store.usage(&key)).await?;
    Ok(Json(UsageResponse { key, limits }))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz<S: Store>(State(app): State<App<S>>) -> Result<Json<serde_json::Value>, ApiError> {
    app.store(Op::Ping, app.inner.store.ping()).await?;
    Ok(Json(json!({ "status": "ready" })))
}

async fn metrics<S: Store>(State(app): State<App<S>>) -> Result<Response, ApiError> {
    let text = app.inner.metrics.encode().map_err(|_| ApiError::internal("metrics could not be encoded"))?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Counts every routed request by its route template and status.
async fn count_requests<S: Store>(State(app): State<App<S>>, request: Request, next: Next) -> Response {
    let endpoint = request.extensions().get::<MatchedPath>().map_or("", |p| metrics::endpoint(p.as_str()));
    let response = next.run(request).await;
    app.inner.metrics.request(endpoint, response.status().as_u16());
    response
}
