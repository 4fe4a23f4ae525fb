//! Where the Redis store keeps things: every key name it reads or writes is made here.
//!
//! - `tg:{<metered key>}`: hash, field = limit name, value = "<definition> <a> <b>", written
//!   by `lua/check.lua`, `lua/return.lua` and `lua/settle.lua`; it expires when every limit
//!   in it is full again (`lua/expiry.lua`). The braces make the metered key the Redis
//!   Cluster hash tag.
//! - `tg:{<metered key>}:settle:<id>`: string "1", a settlement applied (`lua/settle.lua`),
//!   in the slot of its meter; it expires after `store::settle_marker_ttl`.
//! - `tg:apikey:<sha256>`: string, the key's record as JSON (what `verify` reads).
//! - `tg:apikeys`: hash, id → the same JSON (what `list` and `revoke` read).

/// The hash of every API key's record, by id.
pub(super) const KEY_INDEX: &str = "tg:apikeys";

/// The hash holding a metered key's limits.
pub(super) fn meter_key(key: &str) -> String {
    format!("tg:{{{key}}}")
}

/// The string marking the settlement `id` of a metered key as applied; same hash tag
/// (so same Cluster slot) as the key's meter.
pub(super) fn settle_marker_key(key: &str, id: &str) -> String {
    format!("tg:{{{key}}}:settle:{id}")
}

/// The string holding the record of the API key whose token hashes to `sha256`.
pub(super) fn lookup_key(sha256: &str) -> String {
    format!("tg:apikey:{sha256}")
}
