//! Times proxy-wasm host calls inside Envoy.
//!
//! A request `POST /` with `x-probe: <call>` and `x-n: <count>` makes the module perform
//! that host call `count` times in a row while it handles the request headers, and answer
//! with `x-per-call-ns`: the time per call on the host's clock. Calls made on response
//! headers (`add_response_header`) are timed there and reported in the same header of the
//! upstream's response. The harness takes the minimum over several requests: the cost of
//! a call when everything is warm, which is what a call adds at the least.
//!
//! The calls are the ones tollgate makes on its paths (see BENCHMARKS.md):
//! `request_headers` (every request header at once), `request_header` (one present
//! header), `absent_header`, `source_address` (the `source.address` property),
//! `shared_get` and `shared_set` (a 96-byte value), `increment_metric`, `time`, and
//! `add_response_header`. `nothing` times the empty loop.

#![cfg(target_arch = "wasm32")]

use std::cell::Cell;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, value_size: usize, cas: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;
const SHARED_KEY: &[u8] = b"hostcall-probe/slot";
const METRIC: &[u8] = b"hostcall_probe.calls";

thread_local! {
    /// The response-phase call to time for the current stream, and how often.
    static PENDING: Cell<Option<u64>> = const { Cell::new(None) };
    static METRIC_ID: Cell<u32> = const { Cell::new(0) };
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host copies data into the VM through this allocator; `free` gives it back.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size.max(1)));
    buffer.as_mut_ptr()
}

/// Frees what the host allocated through `proxy_on_memory_allocate`.
fn free(data: *mut u8, size: usize) {
    if !data.is_null() {
        // SAFETY: `data` came from `proxy_on_memory_allocate(size)` (capacity ≥ size).
        drop(unsafe { Vec::from_raw_parts(data, 0, size.max(1)) });
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_root: u32, _size: usize) -> bool {
    let mut id = 0;
    // SAFETY: valid pointers for the duration of the call.
    unsafe {
        proxy_define_metric(0, METRIC.as_ptr(), METRIC.len(), &mut id);
        proxy_set_shared_data(SHARED_KEY.as_ptr(), SHARED_KEY.len(), [7u8; 96].as_ptr(), 96, 0);
    }
    METRIC_ID.with(|m| m.set(id));
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context: u32, _parent: u32) {}

fn now() -> u64 {
    let mut t = 0;
    // SAFETY: a valid pointer for the duration of the call.
    unsafe { proxy_get_current_time_nanoseconds(&mut t) };
    t
}

fn request_header(name: &str) -> Option<String> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: valid pointers; the host allocates `data` through our allocator.
    unsafe { proxy_get_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len(), &mut data, &mut size) };
    if data.is_null() {
        return None;
    }
    // SAFETY: the host wrote `size` bytes at `data`.
    let value = String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(data, size) }).into_owned();
    free(data, size);
    Some(value)
}

/// One host call of the kind `probe` names; returns false for an unknown name.
fn call(probe: &str, metric: u32) -> bool {
    let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0usize, 0u32);
    // SAFETY (all arms): pointers valid for the call; host-allocated data is freed below.
    unsafe {
        match probe {
            "nothing" => {}
            "request_headers" => {
                proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size);
            }
            "request_header" => {
                let key = b"authorization";
                proxy_get_header_map_value(REQUEST_HEADERS, key.as_ptr(), key.len(), &mut data, &mut size);
            }
            "absent_header" => {
                let key = b"x-api-key";
                proxy_get_header_map_value(REQUEST_HEADERS, key.as_ptr(), key.len(), &mut data, &mut size);
            }
            "source_address" => {
                let path = b"source\0address";
                proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size);
            }
            "shared_get" => {
                proxy_get_shared_data(SHARED_KEY.as_ptr(), SHARED_KEY.len(), &mut data, &mut size, &mut cas);
            }
            "shared_set" => {
                proxy_set_shared_data(SHARED_KEY.as_ptr(), SHARED_KEY.len(), [7u8; 96].as_ptr(), 96, 0);
            }
            "increment_metric" => {
                proxy_increment_metric(metric, 1);
            }
            "time" => {
                std::hint::black_box(now());
            }
            _ => return false,
        }
    }
    free(data, size);
    true
}

fn reply(status: u32, headers: &[(&str, &str)]) {
    // The ABI's header map: count, then (key size, value size) pairs, then NUL-ended strings.
    let mut map = Vec::new();
    map.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (k, v) in headers {
        map.extend_from_slice(&(k.len() as u32).to_le_bytes());
        map.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in headers {
        map.extend_from_slice(k.as_bytes());
        map.push(0);
        map.extend_from_slice(v.as_bytes());
        map.push(0);
    }
    // SAFETY: valid pointers for the duration of the call.
    unsafe { proxy_send_local_response(status, std::ptr::null(), 0, std::ptr::null(), 0, map.as_ptr(), map.len(), -1) };
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context: u32, _headers: usize, _end_of_stream: bool) -> u32 {
    let probe = request_header("x-probe").unwrap_or_default();
    let n: u64 = request_header("x-n").and_then(|n| n.parse().ok()).unwrap_or(1000).max(1);
    if probe == "add_response_header" {
        PENDING.with(|p| p.set(Some(n)));
        return CONTINUE;
    }
    let metric = METRIC_ID.with(Cell::get);
    let start = now();
    for _ in 0..n {
        if !call(&probe, metric) {
            reply(400, &[("x-probe-error", "unknown probe")]);
            return PAUSE;
        }
    }
    let per_call = (now() - start) as f64 / n as f64;
    reply(200, &[("x-per-call-ns", &format!("{per_call:.1}"))]);
    PAUSE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_context: u32, _headers: usize, _end_of_stream: bool) -> u32 {
    let Some(n) = PENDING.with(|p| p.take()) else {
        return CONTINUE;
    };
    let (name, value) = (b"x-ratelimit-remaining", b"999999998");
    let start = now();
    for _ in 0..n {
        // SAFETY: valid pointers for the duration of the call.
        unsafe { proxy_add_header_map_value(RESPONSE_HEADERS, name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
    }
    let per_call = format!("{:.1}", (now() - start) as f64 / n as f64);
    let key = b"x-per-call-ns";
    // SAFETY: valid pointers for the duration of the call.
    unsafe {
        proxy_replace_header_map_value(RESPONSE_HEADERS, key.as_ptr(), key.len(), per_call.as_ptr(), per_call.len())
    };
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(_context: u32) {}
