//! The host operations tollgate-core needs, over proxy-wasm host calls. Every host status
//! is turned into a value; nothing here panics.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};
use tollgate_core::config::QuotaService;
use tollgate_core::store::{SharedStore, StoreError};
use tollgate_core::Nanos;

/// Envoy's shared data: one map per `vm_id`, shared by every worker thread.
pub struct HostSharedData;

impl SharedStore for HostSharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            // An empty value comes back as no bytes but with a cas: the key exists.
            Ok((value, Some(cas))) => Ok(Some((value.unwrap_or_default(), cas))),
            Ok((_, None)) | Err(Status::NotFound) => Ok(None),
            Err(_) => Err(StoreError::Host),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Host),
        }
    }
}

pub fn now() -> Nanos {
    let nanos = hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Nanos(nanos)
}

pub fn plugin_configuration() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten()
}

/// The downstream address as Envoy resolved it (honours `xff_num_trusted_hops`).
pub fn source_address() -> Option<String> {
    let bytes = hostcalls::get_property(vec!["source", "address"]).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// `POST path` with a JSON `body` to the quota service's cluster, with the service token
/// if one is configured; the callout's token.
pub fn post_to_quota(quota: &QuotaService, path: &str, body: &str) -> Result<u32, Status> {
    let mut headers = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", quota.authority.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(authorization) = &quota.authorization {
        headers.push(("authorization", authorization.value()));
    }
    let timeout = Duration::from_millis(quota.timeout_ms);
    hostcalls::dispatch_http_call(&quota.cluster, headers, Some(body.as_bytes()), vec![], timeout)
}

/// The HTTP status of a callout's answer; `None` when there was no answer (no headers:
/// the callout failed or timed out in Envoy).
pub fn callout_status(num_headers: usize) -> Option<u16> {
    if num_headers == 0 {
        return None;
    }
    hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten().and_then(|s| s.parse().ok())
}
