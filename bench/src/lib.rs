//! A proxy-wasm HTTP filter that does nothing: the floor of any wasm filter in Envoy.
//!
//! It exports the same entry points as a filter built with the Rust SDK (so Envoy makes
//! the same calls into the VM for every request: context create, request and response
//! headers, body and trailers, log, done, delete) and answers each at once, without a
//! single call back into the host. Written against the ABI directly, without the SDK:
//! the module stays a few hundred bytes, the floor is Envoy's cost alone, and the SDK
//! stays in `src/` only (`make lint` checks that).

#![cfg(target_arch = "wasm32")]
#![no_std]

use core::arch::wasm32;

/// `Action::Continue` of the ABI.
const CONTINUE: u32 = 0;

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host copies data into the VM through this allocator. A no-op filter never asks for
/// any, but the host requires the export: whole new pages are enough.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> usize {
    const PAGE: usize = 65536;
    match wasm32::memory_grow(0, size.div_ceil(PAGE).max(1)) {
        usize::MAX => 0,
        first_page => first_page * PAGE,
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_root_context_id: u32, _plugin_configuration_size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context_id: u32, _parent_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context_id: u32, _headers: usize, _end_of_stream: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(_context_id: u32, _body_size: usize, _end_of_stream: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(_context_id: u32, _trailers: usize) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_context_id: u32, _headers: usize, _end_of_stream: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(_context_id: u32, _body_size: usize, _end_of_stream: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(_context_id: u32, _trailers: usize) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_log(_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_done(_context_id: u32) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(_context_id: u32) {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    wasm32::unreachable()
}
