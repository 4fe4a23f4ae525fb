//! The host operations tollgate-core needs, over proxy-wasm host calls. Every host status
//! is turned into a value; nothing here panics.

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Status};
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
