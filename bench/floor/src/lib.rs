//! A proxy-wasm HTTP filter that makes, on every request, the host calls tollgate makes on
//! a request admitted from a worker block (see `src/filter.rs` and BENCHMARKS.md, Host
//! calls), with fixed values and no decision:
//!
//! - request headers: every request header at once (`proxy_get_header_map_pairs`, whose
//!   copy the host allocates through `proxy_on_memory_allocate`), the host's clock, and one
//!   counter increment;
//! - response headers: the seven rate-limit headers of both families, with values as long
//!   as the benchmark's.
//!
//! It exports the per-request callbacks tollgate exports once its unused ones are trimmed
//! (`cargo xtask trim-exports`): context create, request and response headers, delete. Next
//! to tollgate in the same run, the difference is tollgate's own code in the VM (parsing
//! the headers, the decision, formatting the values, the SDK's dispatch); next to the
//! no-op filter, what the host calls cost under load.

#![cfg(target_arch = "wasm32")]

use std::cell::Cell;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
}

const CONTINUE: u32 = 0;
const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const COUNTER: u32 = 0;
const METRIC: &str = "hostcall_floor.requests";

/// The headers tollgate adds to an admitted request of the benchmark (two limits of 10⁹).
const HEADERS: [(&str, &str); 7] = [
    ("ratelimit-policy", "\"rpm\";q=1000000000;w=60, \"per-day\";q=1000000000;w=86400"),
    ("ratelimit", "\"rpm\";r=999999999;t=1, \"per-day\";r=999999999;t=29785"),
    ("x-ratelimit-limit", "1000000000"),
    ("x-ratelimit-remaining", "999999999"),
    ("x-ratelimit-used", "1"),
    ("x-ratelimit-reset", "1796256000"),
    ("x-ratelimit-resource", "per-day"),
];

thread_local! {
    static METRIC_ID: Cell<u32> = const { Cell::new(0) };
    /// Sum of the clock readings, so that the call's result is used.
    static CLOCK: Cell<u64> = const { Cell::new(0) };
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size.max(1)));
    buffer.as_mut_ptr()
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_root: u32, _size: usize) -> bool {
    let mut id = 0;
    // SAFETY: valid pointers for the duration of the call.
    let status = unsafe { proxy_define_metric(COUNTER, METRIC.as_ptr(), METRIC.len(), &mut id) };
    METRIC_ID.set(id);
    status == 0
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context_id: u32, _parent_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context_id: u32, _headers: usize, _end_of_stream: bool) -> u32 {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let mut now: u64 = 0;
    // SAFETY: the out-pointers point at live locals of the right types.
    unsafe {
        if proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) == 0 && !data.is_null() {
            // The host allocated `size` bytes through `proxy_on_memory_allocate`.
            drop(Vec::from_raw_parts(data, 0, size.max(1)));
        }
        proxy_get_current_time_nanoseconds(&mut now);
        proxy_increment_metric(METRIC_ID.get(), 1);
    }
    CLOCK.set(CLOCK.get().wrapping_add(now));
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_context_id: u32, _headers: usize, _end_of_stream: bool) -> u32 {
    for (name, value) in HEADERS {
        // SAFETY: the pointers and lengths are those of live string constants.
        unsafe {
            proxy_add_header_map_value(RESPONSE_HEADERS, name.as_ptr(), name.len(), value.as_ptr(), value.len());
        }
    }
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(_context_id: u32) {}
