//! Pure decision logic of the tollgate rate limiter.
//!
//! Nothing here talks to a proxy: time is an argument, shared state sits behind
//! the [`store::SharedStore`] port, and [`decide`] returns what the host should
//! do (continue with headers, or reply locally) instead of doing it.
//!
//! ```
//! use tollgate_core::{Config, Nanos, RequestInfo, decide, store::FakeSharedData};
//!
//! let config = Config::from_json(br#"{
//!   "identity": { "anonymous": { "tier": "free" } },
//!   "tiers": { "free": { "limits": [
//!       { "name": "images-per-day", "limit": 2, "window": "1d", "algorithm": "fixed_window" } ] } },
//!   "routes": [ { "path_prefix": "/v1/images/generations", "cost": 1 } ]
//! }"#).unwrap();
//! let store = FakeSharedData::default();
//! let request = RequestInfo {
//!     method: "POST",
//!     path: "/v1/images/generations",
//!     client_address: Some("203.0.113.7:0"),
//!     ..RequestInfo::default()
//! };
//! let now = Nanos::from_secs(1_700_000_000);
//! assert!(decide(&config, &store, &request, now).reply.is_none());
//! assert!(decide(&config, &store, &request, now).reply.is_none());
//! let third = decide(&config, &store, &request, now);
//! assert_eq!(third.reply.unwrap().status, 429);
//! ```

#![forbid(unsafe_code)]

pub mod breaker;
pub mod config;
pub mod cost;
pub mod decision;
pub mod hash;
pub mod headermap;
pub mod headers;
pub mod identity;
mod json_path;
mod json_write;
pub mod keycache;
pub mod lease;
pub mod limit;
pub mod logging;
pub mod quota;
pub mod reply;
pub mod store;
pub mod time;
pub mod worker;
pub mod worker_block;

pub use config::{Config, ConfigError};
pub use decision::{decide, Decision, Outcome};
pub use identity::RequestInfo;
pub use time::Nanos;
