//! Server-sent events read as they stream past: the body arrives in chunks that may split
//! an event anywhere, so the scanner keeps the unfinished tail of one chunk for the next.
//! Each finished event's `data` is handed to the caller; the bytes themselves are never
//! changed here.

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
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        // An event's end may straddle two chunks: search again from just before the last.
        let mut from = self.searched.saturating_sub(2);
        while let Some(end) = event_end(&self.pending, from.max(start)) {
            if self.skipping {
                self.skipping = false;
            } else if let Some(event) = self.pending.get(start..end) {
                let data = data_of(event);
                if !data.is_empty() {
                    on_data(&data);
                }
            }
            start = end;
            from = end;
        }
        self.pending.drain(..start.min(self.pending.len()));
        self.searched = self.pending.len();
        if self.pending.len() > MAX_EVENT_BYTES {
            self.pending.clear();
            self.searched = 0;
            self.skipping = true;
        }
    }
}

/// Just past the first blank line (`\n\n`, or `\r\n\r\n`) at or after `from`.
pub(super) fn event_end(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    rest.iter().enumerate().filter(|(_, &b)| b == b'\n').find_map(|(i, _)| {
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
/// by `\n`. Other fields (`event:`, `id:`, comments) are ignored.
pub(super) fn data_of(event: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(value) = line.strip_prefix(b"data:") else {
            continue;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if !out.is_empty() {
            out.push(b'\n');
        }
        out.extend_from_slice(value);
    }
    out
}

#[cfg(test)]
mod tests;
