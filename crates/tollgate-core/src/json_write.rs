//! JSON objects written out by hand, for the bodies of local replies.
//!
//! The bodies were built with `serde_json::json!` as a `serde_json::Value` and printed: a
//! tree of B-tree maps, whose building and printing code was 31 KB of the filter, for text
//! only refusals need. Here a body is written straight into a string. The text is what
//! serde_json printed: compact, strings escaped the same way, and members in the order
//! written, which callers keep sorted by name as serde_json's map did (the tests of each
//! reply compare with serde_json's output).

/// A JSON object being written.
pub(crate) struct JsonObject {
    text: String,
}

impl JsonObject {
    pub fn new() -> JsonObject {
        JsonObject { text: String::from("{") }
    }

    /// `"name":`, after a comma unless it is the first member.
    fn name(&mut self, name: &str) {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        self.text.push('"');
        self.text.push_str(name);
        self.text.push_str("\":");
    }

    /// A string member.
    pub fn str(&mut self, name: &str, value: &str) -> &mut JsonObject {
        self.name(name);
        push_string(&mut self.text, value);
        self
    }

    /// A whole-number member.
    pub fn num(&mut self, name: &str, value: u64) -> &mut JsonObject {
        self.name(name);
        self.text.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// A `null` member.
    pub fn null(&mut self, name: &str) -> &mut JsonObject {
        self.name(name);
        self.text.push_str("null");
        self
    }

    /// A member holding an array of strings.
    pub fn strs(&mut self, name: &str, values: &[&str]) -> &mut JsonObject {
        self.name(name);
        self.text.push('[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            push_string(&mut self.text, value);
        }
        self.text.push(']');
        self
    }

    /// The object's text.
    pub fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.text);
        text.push('}');
        text
    }

    /// `{"error": <this object>}`: the OpenAI error shape.
    pub fn finish_as_error(&mut self) -> String {
        let mut text = String::with_capacity(self.text.len() + 11);
        text.push_str("{\"error\":");
        text.push_str(&self.text);
        text.push_str("}}");
        text
    }
}

/// `value` as a JSON string, escaped as serde_json escapes it: `"` and `\`, the control
/// characters as `\b`, `\t`, `\n`, `\f`, `\r` or `\u00XX`, and nothing else.
fn push_string(out: &mut String, value: &str) {
    out.push('"');
    let mut start = 0;
    for (i, byte) in value.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(value.get(start..i).unwrap_or_default());
        start = i + 1;
        if escape.is_empty() {
            out.push_str("\\u00");
            for nibble in [byte >> 4, byte & 0xf] {
                out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
            }
        } else {
            out.push_str(escape);
        }
    }
    out.push_str(value.get(start..).unwrap_or_default());
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut every_ascii: String = (0u8..0x80).map(char::from).collect();
        every_ascii.push_str("é €😀 </script> \u{2028}\u{7f}");
        for value in [every_ascii.as_str(), "", "plain", "\"", "\\", "a\u{1}b", "ends\n"] {
            let mut text = String::new();
            push_string(&mut text, value);
            assert_eq!(text, serde_json::Value::from(value).to_string(), "{value:?}");
        }
    }

    #[test]
    fn an_object_is_written_compact() {
        let mut o = JsonObject::new();
        o.str("a", "x\"").num("b", u64::MAX).null("c");
        let expected = serde_json::json!({ "error": { "a": "x\"", "b": u64::MAX, "c": null } });
        assert_eq!(o.finish_as_error(), expected.to_string());
        assert_eq!(JsonObject::new().num("n", 0).finish_as_error(), r#"{"error":{"n":0}}"#);
        let mut o = JsonObject::new();
        o.strs("d", &["p", "q\""]).strs("e", &[]);
        assert_eq!(o.finish(), serde_json::json!({ "d": ["p", "q\""], "e": [] }).to_string());
        assert_eq!(JsonObject::new().finish(), "{}");
    }
}
