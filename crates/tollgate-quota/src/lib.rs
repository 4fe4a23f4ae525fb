//! tollgate's quota service: limits shared by every Envoy that runs the tollgate filter,
//! and the API keys the filter verifies, in memory or in Redis (one server or a cluster).
//!
//! `POST /v1/check` is one all-or-nothing decision over every limit of a request, with
//! the semantics of `tollgate_core::limit::evaluate` (GCRA token buckets, fixed windows
//! aligned to the Unix epoch). The wire types are `tollgate_core::quota`'s.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod error;
pub mod extract;
pub mod keys;
pub mod metrics;
pub mod parse_errors;
pub mod store;
pub mod validate;
