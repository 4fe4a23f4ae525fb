//! Ports on 127.0.0.1 that nobody listens on right now.
//!
//! A port found free can be taken by someone else before the process it is meant for binds
//! it; starters that can tell (`redis-server` exits) try another one.

use std::net::{TcpListener, TcpStream};

fn bind_any() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"))
}

fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().unwrap_or_else(|e| panic!("address of a bound socket: {e}")).port()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    port_of(&bind_any())
}

/// `N` distinct free ports (all held at once while they are picked).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] = std::array::from_fn(|_| bind_any());
    listeners.each_ref().map(port_of)
}

/// A free port whose Redis Cluster bus port (`port + 10000`) is free as well.
pub fn free_port_with_bus() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Whether something accepts TCP connections on `port`.
pub fn is_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_free() {
        let [a, b, c] = free_ports::<3>();
        assert!(a != b && b != c && a != c);
        assert!(!is_open(a));
        let bus = free_port_with_bus();
        assert!(bus <= 55_000);
    }
}
