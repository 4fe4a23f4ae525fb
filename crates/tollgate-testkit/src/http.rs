//! HTTP for tests: replies, a client that treats every status as a reply, and raw
//! HTTP/1.1 over TCP (for malformed or duplicate headers, and for exact bytes).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long a request may take before the test gives up on it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP response.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// A client (connections kept alive and reused) for which no status is an error and
/// redirects are not followed.
pub fn client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

/// Sends `method url` with `headers` and `body` (none if empty); panics if no reply comes.
pub fn send(agent: &ureq::Agent, method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let result = if body.is_empty() {
        agent.run(builder.body(()).expect("valid request"))
    } else {
        agent.run(builder.body(body).expect("valid request"))
    };
    let response = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    to_reply(response)
}

/// `GET url`; `None` if it cannot be sent or no reply comes.
pub fn try_get(agent: &ureq::Agent, url: &str) -> Option<Reply> {
    agent.get(url).call().ok().map(to_reply)
}

/// A ureq response as a [`Reply`].
pub fn to_reply(mut response: ureq::http::Response<ureq::Body>) -> Reply {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = response.body_mut().read_to_string().expect("read body");
    Reply { status, headers, body }
}

/// Sends `bytes` verbatim to 127.0.0.1:`port` and reads the reply until the connection
/// closes; `None` if it cannot connect or what comes back is not an HTTP response.
pub fn try_exchange(port: u16, bytes: &[u8], timeout: Duration) -> Option<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.write_all(bytes).ok()?;
    let mut response = Vec::new();
    // A reset after a complete reply is fine; parse whatever arrived.
    let _ = stream.read_to_end(&mut response);
    parse_http1(&response)
}

/// [`try_exchange`] that panics (with what came back) when there is no HTTP reply.
pub fn exchange(port: u16, bytes: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to {port}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("set a read timeout");
    stream.write_all(bytes).expect("write request");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    parse_http1(&response).unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&response)))
}

/// A raw HTTP/1.1 request from `request` (request line and header lines, optionally a
/// blank line and a body): line ends become CRLF, and `Connection: close` is added unless
/// a Connection header is there.
pub fn raw_request(request: &str) -> Vec<u8> {
    let (head, body) = match request.split_once("\r\n\r\n") {
        Some(parts) => parts,
        None => request.split_once("\n\n").unwrap_or((request, "")),
    };
    let mut lines: Vec<&str> = head.lines().filter(|l| !l.is_empty()).collect();
    if !lines.iter().any(|l| l.to_ascii_lowercase().starts_with("connection:")) {
        lines.push("Connection: close");
    }
    let mut bytes = lines.join("\r\n");
    bytes.push_str("\r\n\r\n");
    bytes.push_str(body);
    bytes.into_bytes()
}

/// `GET path` over a new connection to 127.0.0.1:`port` (closed after the reply); `None`
/// if nothing answers.
pub fn get(port: u16, path: &str) -> Option<Reply> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    try_exchange(port, request.as_bytes(), Duration::from_secs(10))
}

/// Parses an HTTP/1.x response (Content-Length, chunked, or read-until-close body).
pub fn parse_http1(bytes: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(bytes);
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let reply = Reply { status, headers, body: String::new() };
    let body = if reply.header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        dechunk(rest)
    } else if let Some(len) = reply.header("content-length").and_then(|l| l.parse().ok()) {
        rest.get(..len).unwrap_or(rest).to_owned()
    } else {
        rest.to_owned()
    };
    Some(Reply { body, ..reply })
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16);
        let Ok(size) = size else { break };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(after.get(..size).unwrap_or(""));
        rest = after.get(size..).unwrap_or("").trim_start_matches("\r\n");
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_chunked_and_until_close_bodies() {
        let fixed = parse_http1(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nokEXTRA").unwrap();
        assert_eq!((fixed.status, fixed.body.as_str(), fixed.header("x-a")), (200, "ok", Some("1")));
        let chunked =
            parse_http1(b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (429, "abcde"));
        let until_close = parse_http1(b"HTTP/1.0 400 Bad\r\n\r\nall of it").unwrap();
        assert_eq!(until_close.body, "all of it");
        assert!(parse_http1(b"garbage").is_none());
    }

    #[test]
    fn raw_requests_get_crlf_and_connection_close() {
        let bytes = raw_request("POST /x HTTP/1.1\nHost: h\nContent-Length: 2\n\n{}");
        assert_eq!(bytes, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        let kept = raw_request("GET / HTTP/1.1\nConnection: keep-alive");
        assert_eq!(kept, b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n");
    }
}
