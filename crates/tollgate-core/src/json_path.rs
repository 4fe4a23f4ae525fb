//! Where a JSON parse failed, as a path (`stream_options.include_usage`, `routes[0]`).
//!
//! serde_json reports a line and a column. Tracking the path while parsing would cost
//! code for every type parsed (a wrapper of each, in every build) and time on every
//! parse; an error is rare, so the path is recovered from the position instead, by
//! re-reading the text up to it. The reader is lenient: it never fails, whatever the
//! bytes, and at worst names a shorter path.

/// The path of the value serde_json's `error` points at in `text`, as
/// `key.key[index]`; empty for the top level (or an error without a position).
pub(crate) fn error_path(text: &[u8], error: &serde_json::Error) -> String {
    if error.line() == 0 {
        return String::new();
    }
    // Line `l` starts after the (l-1)th newline; the column counts bytes from there.
    let mut newlines = text.iter().enumerate().filter(|&(_, &b)| b == b'\n');
    let line_start = error.line().checked_sub(2).and_then(|n| newlines.nth(n)).map_or(0, |(i, _)| i + 1);
    // The column counts the bytes serde_json had read: a value of the wrong type is
    // reported just after the value (or before a container's `[` or `{`), a syntax
    // error just after the byte that broke it, which must not count (a `}` read where
    // a value was expected would close the object that holds the field).
    let broken_by_last = usize::from(error.classify() == serde_json::error::Category::Syntax);
    let at = line_start.saturating_add(error.column()).saturating_sub(broken_by_last);
    path_at(text, at)
}

/// One container open at a position, and which of its members the position is in.
enum Frame {
    /// In an object: the last key read (as written, between its quotes), and whether its
    /// `:` was seen (then the position is in that key's value).
    Object {
        key: Option<(usize, usize)>,
        in_value: bool,
    },
    Array {
        index: usize,
    },
}

/// The path of the member of the containers open at byte `at` of `text`.
fn path_at(text: &[u8], at: usize) -> String {
    let at = at.min(text.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < at {
        let Some(&b) = text.get(i) else { break };
        match b {
            b'{' => stack.push(Frame::Object { key: None, in_value: false }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { key, in_value }) => (*key, *in_value) = (None, false),
                Some(Frame::Array { index }) => *index = index.saturating_add(1),
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { in_value, .. }) = stack.last_mut() {
                    *in_value = true;
                }
            }
            b'"' => {
                let end = string_end(text, i + 1);
                if let Some(Frame::Object { key, in_value: false }) = stack.last_mut() {
                    *key = Some((i + 1, end.min(text.len())));
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match *frame {
            Frame::Object { key: Some((start, end)), in_value: true } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&String::from_utf8_lossy(text.get(start..end).unwrap_or_default()));
            }
            Frame::Object { .. } => break,
            Frame::Array { index } => {
                path.push('[');
                path.push_str(itoa::Buffer::new().format(index));
                path.push(']');
            }
        }
    }
    path
}

/// The index of the `"` closing a string whose text starts at `from` (or the length of
/// `text` if it is never closed).
fn string_end(text: &[u8], mut from: usize) -> usize {
    while let Some(&b) = text.get(from) {
        match b {
            b'"' => return from,
            b'\\' => from += 2,
            _ => from += 1,
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Outer {
        #[serde(default)]
        n: Option<u64>,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
    }

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(default)]
        flag: Option<bool>,
    }

    /// The path named for the error of parsing `text` as an `Outer`.
    fn path_of(text: &str) -> String {
        let e = serde_json::from_str::<Outer>(text).unwrap_err();
        error_path(text.as_bytes(), &e)
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_key() {
        assert_eq!(path_of(r#"{"n":"3"}"#), "n");
        assert_eq!(path_of(r#"{"n": -1 }"#), "n");
        assert_eq!(path_of(r#"{"n":[1]}"#), "n");
        assert_eq!(path_of(r#"{"n":{"a":1}}"#), "n");
        assert_eq!(path_of(r#"{"inner":{"flag":"yes"}}"#), "inner.flag");
        assert_eq!(path_of("{\n  \"x\": [1, {\"y\": 2}],\n  \"inner\": {\n    \"flag\": 3\n  }\n}"), "inner.flag");
        assert_eq!(path_of(r#"{"list":[{"flag":true},{"flag":1}]}"#), "list[1].flag");
        assert_eq!(path_of(r#"{"list":[{},5]}"#), "list[1]");
        assert_eq!(path_of(r#"{"x":"a \"quoted\", {tricky} key","n":true}"#), "n");
    }

    #[test]
    fn a_syntax_error_is_named_by_where_it_is() {
        assert_eq!(path_of(r#"{"inner":{"flag":tru}}"#), "inner.flag");
        assert_eq!(path_of(r#"{"list":[{},}"#), "list[1]");
        assert_eq!(path_of(r#"{"n":1,}"#), "");
        assert_eq!(path_of("not json"), "");
        assert_eq!(path_of(r#"{"n":1} }"#), "", "trailing characters");
        assert_eq!(path_of(r#"{"n":3"#), "n");
        assert_eq!(path_of(""), "");
    }

    #[test]
    fn any_bytes_give_a_path() {
        for text in [&b"{\"a\":\"\\"[..], b"\"", b"}}]]", b"{\"\xff\":[", b"[[[,,,", b"{:::}"] {
            let _ = path_at(text, text.len());
            let _ = path_at(text, usize::MAX);
        }
        assert_eq!(path_at(b"[[1,2],[3", 9), "[1][0]");
        assert_eq!(path_at(b"{\"a\":{\"b\"", 9), "a");
    }
}
