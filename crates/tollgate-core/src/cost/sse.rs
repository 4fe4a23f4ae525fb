//! Server-sent events read as they stream past: the body arrives in chunks that may split
//! an event anywhere, so the scanner keeps the unfinished tail of one chunk for the next.
//! Each finished event's `data` is handed to the caller; the bytes themselves are never
//! changed here.

use std::borrow::Cow;

/// The most an unfinished event may hold: a longer one is dropped (its usage, if any, is
/// then missing, and the request is settled as documented for missing usage).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// The scanner of one response stream.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Bytes of events not finished yet.
    pending: Vec<u8>,
    /// How much of `pending` was searched for an event's end already.
    searched: usize,
    /// The unfinished event outgrew [`MAX_EVENT_BYTES`] and was dropped: skip to its end.
    skipping: bool,
}

impl Scanner {
    /// Feeds the next chunk; calls `on_data` with the `data` of each event it finishes
    /// (several `data:` lines joined by `\n`, as the SSE standard says).
    pub fn feed(&mut self, chunk: &[u8], mut on_data: impl FnMut(&[u8])) {
        // Most chunks end on an event's end: with nothing pending, read them in place.
        if self.pending.is_empty() {
            let done = self.events(chunk, 0, &mut on_data);
            self.keep(chunk.get(done..).unwrap_or_default());
            return;
        }
        self.pending.extend_from_slice(chunk);
        // An event's end may straddle two chunks: search again from just before the last.
        let from = self.searched.saturating_sub(2);
        let pending = std::mem::take(&mut self.pending);
        let done = self.events(&pending, from, &mut on_data);
        self.keep(pending.get(done..).unwrap_or_default());
    }

    /// Hands over the data of every event of `bytes` that ends at or after `from`; returns
    /// where the unfinished rest starts.
    fn events(&mut self, bytes: &[u8], from: usize, on_data: &mut impl FnMut(&[u8])) -> usize {
        let mut start = 0;
        let mut from = from;
        while let Some(end) = event_end(bytes, from.max(start)) {
            if self.skipping {
                self.skipping = false;
            } else if let Some(event) = bytes.get(start..end) {
                let data = data_of(event);
                if !data.is_empty() {
                    on_data(&data);
                }
            }
            start = end;
            from = end;
        }
        start
    }

    /// Keeps the unfinished `rest` of an event for the next chunk, unless it outgrew
    /// [`MAX_EVENT_BYTES`].
    fn keep(&mut self, rest: &[u8]) {
        self.pending.clear();
        if rest.len() > MAX_EVENT_BYTES {
            self.skipping = true;
        } else {
            self.pending.extend_from_slice(rest);
        }
        self.searched = self.pending.len();
    }
}

/// Just past the first blank line (`\n\n`, or `\r\n\r\n`) at or after `from`.
pub(super) fn event_end(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    memchr::memchr_iter(b'\n', rest).find_map(|i| {
        let after = rest.get(i + 1..).unwrap_or_default();
        if after.first() == Some(&b'\n') {
            Some(from + i + 2)
        } else if after.starts_with(b"\r\n") {
            Some(from + i + 3)
        } else {
            None
        }
    })
}

/// The `data` field of one event: its `data:` lines (one leading space dropped), joined
/// by `\n`; borrowed from the event when it has one such line (the usual case). Other
/// fields (`event:`, `id:`, comments) are ignored.
pub(super) fn data_of(event: &[u8]) -> Cow<'_, [u8]> {
    let mut out = Cow::Borrowed(&[][..]);
    let mut lines = 0;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(value) = line.strip_prefix(b"data:") else {
            continue;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        lines += 1;
        if lines == 1 {
            out = Cow::Borrowed(value);
        } else {
            let joined = out.to_mut();
            joined.push(b'\n');
            joined.extend_from_slice(value);
        }
    }
    out
}

#[cfg(test)]
mod tests;
