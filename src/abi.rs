//! The filter's only unsafe code: the request's header map fetched with one raw host call
//! and kept as the bytes the host wrote.
//!
//! Why not the SDK's `hostcalls::get_map`: it copies every name and value into a `String`
//! of its own (two allocations per header, about half a microsecond per request inside
//! Envoy), and it panics on a value that is not UTF-8, which HTTP/1.1 allows (obs-text,
//! e.g. a Latin-1 `User-Agent`). A panic kills the VM for every request on the worker.
//! [`tollgate_core::headermap`] reads these bytes in place instead, whatever they hold.

#![allow(unsafe_code)]

use proxy_wasm::types::MapType;

#[link(wasm_import_module = "env")]
extern "C" {
    // The ABI's `proxy_get_header_map_pairs(map_type, *data, *size) -> status`. Integers
    // here (the SDK declares enums): a status the host might add must not be an invalid
    // enum value.
    fn proxy_get_header_map_pairs(map_type: u32, return_map_data: *mut *mut u8, return_map_size: *mut usize) -> u32;
}

/// `proxy_result_t::ok`.
const STATUS_OK: u32 = 0;

/// The request headers, serialized as the ABI does ([`tollgate_core::headermap`]).
/// `None` if the host refused the call (not seen from `on_http_request_headers`).
pub fn request_header_map() -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes at most a pointer and a length through the two out-pointers,
    // which point at live locals of the right types.
    let status = unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size) };
    if status != STATUS_OK {
        return None;
    }
    if data.is_null() || size == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the host obtained `data` from this module's `proxy_on_memory_allocate(size)`
    // (the SDK's: a leaked boxed `[u8]` of exactly `size` bytes, the layout of a `Vec<u8>`
    // with length and capacity `size`) and filled all `size` bytes. Nothing else owns the
    // buffer, so the `Vec` takes ownership and frees it once, when dropped.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}
