//! The demo's stand-in AI upstream (`make run`): `tollgate-standin [port]`, 8082 by default.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

fn main() {
    let port = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8082);
    tollgate_testkit::standin::Standin::serve_forever(port)
}
