//! A stand-in for an AI API upstream, for the demo (`make run`) and the tests: it answers
//! `POST /v1/chat/completions` like OpenAI, with `usage`, and as server-sent events when
//! the request streams; and `POST /v1/images/generations` with `n` images.
//!
//! Request headers steer it, so that tests can ask for each case:
//! - `x-standin-status: 500`: answer that status, with an OpenAI-shaped error;
//! - `x-standin-output-tokens: N`: the completion's tokens (default 40);
//! - `x-standin-no-usage: 1`: leave `usage` out;
//! - `x-standin-stall-after: K`: stream K events, then stall (a client that gives up
//!   mid-stream sees no end);
//! - `x-standin-chunks: N`: stream N delta events (each in its own chunk) instead of the six
//!   words of the default answer (the benchmark's long stream);
//! - `x-standin-gate: NAME`: answer only once the test opens the gate `NAME` ([`open_gate`]),
//!   so that many requests are in flight at once.
//!
//! A streamed response that asks for usage (`stream_options.include_usage`) gets the
//! usage event split across two writes, as a real stream may split it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

/// A running stand-in; stopped on drop.
pub struct Standin {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Standin {
    /// Listens on `127.0.0.1:port` (0: a free port) and serves in the background.
    pub fn start(port: u16) -> Standin {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the stand-in upstream");
        let port = listener.local_addr().expect("local address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(stream) = stream {
                    let stopping = Arc::clone(&stopping);
                    thread::spawn(move || serve(stream, &stopping));
                }
            }
        });
        Standin { port, stop }
    }

    /// Serves until the process ends (the demo's binary).
    pub fn serve_forever(port: u16) -> ! {
        let standin = Standin::start(port);
        eprintln!("stand-in AI upstream on 127.0.0.1:{}", standin.port);
        loop {
            thread::park();
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Gates opened so far, in this process (the stand-ins of a test run in it).
static GATES: (Mutex<Vec<String>>, Condvar) = (Mutex::new(Vec::new()), Condvar::new());

/// Lets every request held at gate `name` be answered, and those that come later.
pub fn open_gate(name: &str) {
    let (gates, opened) = &GATES;
    if let Ok(mut gates) = gates.lock() {
        gates.push(name.to_owned());
    }
    opened.notify_all();
}

/// Waits until gate `name` is open, or the stand-in stops.
fn wait_at_gate(name: &str, stop: &AtomicBool) {
    let (gates, opened) = &GATES;
    let Ok(mut open) = gates.lock() else {
        return;
    };
    while !open.iter().any(|g| g == name) && !stop.load(Ordering::Relaxed) {
        match opened.wait_timeout(open, Duration::from_millis(100)) {
            Ok((next, _)) => open = next,
            Err(_) => return,
        }
    }
}

/// A request as the stand-in needs it.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn serve(stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while !stop.load(Ordering::Relaxed) {
        let Some(request) = read_request(&mut reader) else {
            return;
        };
        if respond(&mut writer, &request, stop).is_err() {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut request = Request { method, path, headers, body: Vec::new() };
    if let Some(length) = request.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        request.body = body;
    } else if request.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            request.body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(request)
}

fn respond(out: &mut TcpStream, request: &Request, stop: &AtomicBool) -> std::io::Result<()> {
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    if let Some(gate) = request.header("x-standin-gate") {
        wait_at_gate(gate, stop);
    }
    if let Some(status) = request.header("x-standin-status").and_then(|s| s.parse::<u16>().ok()) {
        let error = json!({ "error": { "message": "the stand-in was asked to fail", "type": "server_error", "param": null, "code": null } });
        return send(out, status, "application/json", error.to_string().as_bytes());
    }
    match (request.method.as_str(), request.path.split('?').next().unwrap_or_default()) {
        ("POST", "/v1/images/generations") => {
            let n = body["n"].as_u64().unwrap_or(1);
            let data: Vec<Value> =
                (0..n).map(|i| json!({ "url": format!("https://example.com/img/{i}.png") })).collect();
            send(out, 200, "application/json", json!({ "created": 1_700_000_000, "data": data }).to_string().as_bytes())
        }
        ("POST", "/v1/chat/completions") => {
            let input = request.header("x-standin-input-tokens").and_then(|v| v.parse().ok()).unwrap_or(10u64);
            let output = request.header("x-standin-output-tokens").and_then(|v| v.parse().ok()).unwrap_or(40u64);
            let usage = (request.header("x-standin-no-usage").is_none()).then(
                || json!({ "prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output }),
            );
            if body["stream"].as_bool() == Some(true) {
                let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
                let stall_after = request.header("x-standin-stall-after").and_then(|v| v.parse::<usize>().ok());
                let chunks = request.header("x-standin-chunks").and_then(|v| v.parse::<usize>().ok());
                stream_chat(out, usage.filter(|_| include_usage), Stream { stall_after, chunks }, stop)
            } else {
                let mut completion = json!({
                    "id": "chatcmpl-standin", "object": "chat.completion", "created": 1_700_000_000, "model": body["model"],
                    "choices": [ { "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" } ],
                });
                if let Some(usage) = usage {
                    completion["usage"] = usage;
                }
                send(out, 200, "application/json", completion.to_string().as_bytes())
            }
        }
        _ => send(out, 404, "text/plain", b"not found"),
    }
}

fn send(out: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n", body.len());
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// One HTTP/1.1 chunk, in one write (one packet with `TCP_NODELAY`).
fn chunk(out: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
    framed.extend_from_slice(bytes);
    framed.extend_from_slice(b"\r\n");
    out.write_all(&framed)?;
    out.flush()
}

/// How a streamed answer goes: where it stalls, and how many delta events it has.
struct Stream {
    stall_after: Option<usize>,
    /// `None`: the six words of the default answer.
    chunks: Option<usize>,
}

fn delta_event(word: &str) -> String {
    let event = json!({ "id": "chatcmpl-standin", "object": "chat.completion.chunk", "choices": [ { "index": 0, "delta": { "content": word } } ], "usage": null });
    format!("data: {event}\n\n")
}

fn stream_chat(out: &mut TcpStream, usage: Option<Value>, stream: Stream, stop: &AtomicBool) -> std::io::Result<()> {
    out.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")?;
    let events: Vec<String> = match stream.chunks {
        // One event, formatted once: the stand-in stays cheap next to the Envoy it feeds.
        Some(n) => vec![delta_event(" word"); n],
        None => ["It", " is", " a", " stand", "-in", "."].iter().map(|w| delta_event(w)).collect(),
    };
    for (i, event) in events.iter().enumerate() {
        if stream.stall_after == Some(i) {
            // Hold the stream open until the client leaves (or the stand-in stops).
            for _ in 0..600 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
                if out.write_all(b"").is_err() {
                    break;
                }
            }
            return Err(std::io::Error::other("stalled"));
        }
        chunk(out, event.as_bytes())?;
    }
    if let Some(usage) = usage {
        let event = format!(
            "data: {}\n\n",
            json!({ "id": "chatcmpl-standin", "object": "chat.completion.chunk", "choices": [], "usage": usage })
        );
        let (a, b) = event.as_bytes().split_at(event.len() / 2);
        chunk(out, a)?;
        chunk(out, b)?;
    }
    chunk(out, b"data: [DONE]\n\n")?;
    chunk(out, b"")
}
