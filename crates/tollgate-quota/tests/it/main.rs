//! Integration tests of the quota service: one scenario suite run against the memory
//! store, a real `redis-server` and a real three-master Redis Cluster; Redis-only
//! behaviour (TTLs, NOSCRIPT, restarts); the HTTP API; the command line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod cli;
mod cluster;
mod http;
mod memory;
mod redis_store;
mod restarts;
mod scenarios;
