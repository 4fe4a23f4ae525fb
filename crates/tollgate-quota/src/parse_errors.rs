//! JSON bodies for the answers hyper gives by itself. A request whose head hyper cannot
//! parse never reaches a route: hyper answers it (414 for a URI over 65,534 bytes, 431 for
//! a head over its buffer, 400 for a malformed head) with an empty body. Every connection
//! is wrapped so that those answers carry the JSON error body every other answer has.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tollgate_core::quota::{ErrorBody, ErrorDetail};

use crate::error::ErrorCode;

/// A listener whose connections answer hyper's parse errors with JSON.
pub struct JsonParseErrors<L>(pub L);

impl<L: Listener> Listener for JsonParseErrors<L> {
    type Io = JsonParseErrorIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (JsonParseErrorIo { io, replacement: None }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection that rewrites hyper's automatic error answers on their way out.
pub struct JsonParseErrorIo<T> {
    io: T,
    /// The answer written instead of one of hyper's: its bytes, how many are written, and
    /// the length of hyper's answer (reported as written once ours is).
    replacement: Option<(Vec<u8>, usize, usize)>,
}

/// The error body of hyper's answer with this status, if hyper gives one by itself.
fn error_for(status: u16) -> Option<(ErrorCode, &'static str)> {
    match status {
        400 => Some((ErrorCode::InvalidRequest, "the request head is not valid HTTP/1.1")),
        414 => Some((ErrorCode::UriTooLong, "the request URI is longer than 65534 bytes")),
        431 => Some((ErrorCode::HeadersTooLarge, "the request head is larger than this service accepts")),
        _ => None,
    }
}

/// `head` with a JSON body, if `head` is hyper's automatic answer to a parse error: a
/// whole response head alone, status 400, 414 or 431, `content-length: 0`.
fn with_json_body(head: &[u8]) -> Option<Vec<u8>> {
    let status: u16 = std::str::from_utf8(head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?).ok()?.parse().ok()?;
    let (code, message) = error_for(status)?;
    let text = std::str::from_utf8(head).ok()?;
    let lines = text.strip_suffix("\r\n\r\n")?;
    if lines.contains("\r\n\r\n") || !lines.split("\r\n").any(|l| l.eq_ignore_ascii_case("content-length: 0")) {
        return None;
    }
    let body = ErrorBody { error: ErrorDetail { code: code.as_str().to_owned(), message: message.to_owned() } };
    let body = serde_json::to_string(&body).ok()?;
    let mut answer = String::with_capacity(text.len() + body.len() + 64);
    for line in lines.split("\r\n") {
        if line.eq_ignore_ascii_case("content-length: 0") {
            answer.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len()));
        } else {
            answer.push_str(line);
            answer.push_str("\r\n");
        }
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    Some(answer.into_bytes())
}

impl<T: AsyncWrite + Unpin> JsonParseErrorIo<T> {
    /// Writes what is left of a replacement; the length of the answer it replaced when done.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<usize>>> {
        while let Some((bytes, written, replaced)) = &mut self.replacement {
            let Some(rest) = bytes.get(*written..).filter(|rest| !rest.is_empty()) else {
                let replaced = *replaced;
                self.replacement = None;
                return Poll::Ready(Ok(Some(replaced)));
            };
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(None))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonParseErrorIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonParseErrorIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.replacement.is_none() {
            match with_json_body(buf) {
                Some(answer) => self.replacement = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut self.io).poll_write(cx, buf),
            }
        }
        match ready!(self.poll_replacement(cx))? {
            Some(replaced) => Poll::Ready(Ok(replaced)),
            None => Pin::new(&mut self.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_empty_error_answers_get_a_json_body() {
        let head = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 20:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(with_json_body(head).unwrap()).unwrap();
        let body = r#"{"error":{"code":"uri_too_long","message":"the request URI is longer than 65534 bytes"}}"#;
        assert_eq!(
            answer,
            format!(
                "HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 date: Thu, 03 Dec 2026 20:00:00 GMT\r\n\r\n{body}",
                body.len()
            )
        );
        assert!(with_json_body(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n").is_some());
    }

    #[test]
    fn other_answers_pass_unchanged() {
        // The service's own answers have a body; a 200 is never rewritten; nor a partial head.
        for head in [
            &b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 12\r\n\r\n{\"error\":{}}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"{\"key\":1}",
        ] {
            assert!(with_json_body(head).is_none(), "{}", String::from_utf8_lossy(head));
        }
    }
}
