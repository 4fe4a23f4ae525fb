//! Request bodies of the metered APIs, read into a [`Demand`].
//!
//! Only the fields that set a cost are read; the rest of the body is skipped without
//! being copied (the prompt is measured as raw JSON, never decoded). A body that is not
//! JSON, or whose fields have the wrong type, is an error that names the field: the
//! request gets a 400 that says so. A field that is absent takes its documented default.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{tokens_in, Api, Demand};
use crate::json_path;

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON, or a field of the wrong type: what the parser said, with the field's path.
    Malformed(String),
    /// A field has a value the API does not allow (`n` of 0, a negative `max_tokens`...).
    Invalid { field: &'static str, expected: &'static str },
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Malformed(detail) => write!(f, "the request body is not valid JSON for this API: {detail}"),
            BodyError::Invalid { field, expected } => {
                write!(f, "the request body's `{field}` is invalid: expected {expected}")
            }
        }
    }
}

/// The largest `n` or token count a body may ask for: beyond it no limit could admit it.
const MAX_COUNT: u64 = 1_000_000_000;

/// The fields of every metered API that set a cost, read in one pass: one parser for all
/// the APIs keeps the filter small. Each API reads its own; the others are absent.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default, borrow)]
    size: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    quality: Option<Cow<'a, str>>,
    /// Images' prompt; Chat's and Anthropic's messages; Responses' and Embeddings' input;
    /// Responses' instructions; Anthropic's system prompt.
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(default, borrow)]
    messages: Option<&'a RawValue>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
    #[serde(default, borrow)]
    instructions: Option<&'a RawValue>,
    #[serde(default, borrow)]
    system: Option<&'a RawValue>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Reads what a request body of `api` asks for.
pub fn read(api: Api, body: &[u8]) -> Result<Demand, BodyError> {
    fn parse(body: &[u8]) -> Result<Fields<'_>, BodyError> {
        // serde would read a struct from a JSON array too: the APIs take objects only.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(BodyError::Malformed("expected a JSON object".to_owned()));
        }
        let malformed = |e: serde_json::Error| {
            let path = json_path::error_path(body, &e);
            BodyError::Malformed(if path.is_empty() { e.to_string() } else { format!("at `{path}`: {e}") })
        };
        let mut de = serde_json::Deserializer::from_slice(body);
        let value = Fields::deserialize(&mut de).map_err(malformed)?;
        de.end().map_err(malformed)?;
        Ok(value)
    }
    let size = |raw: Option<&RawValue>| raw.map_or(0, |r| r.get().len());
    let b: Fields<'_> = parse(body)?;
    let model = b.model.map(Cow::into_owned);
    let stream = b.stream.unwrap_or(false);
    let demand = match api {
        Api::OpenaiImages => Demand {
            model,
            images: count("n", b.n.unwrap_or(1))?,
            size: b.size.map(Cow::into_owned),
            quality: b.quality.map(Cow::into_owned),
            input_tokens: tokens_in(size(b.prompt)),
            // No text is generated (a model's image tokens are settled from its usage).
            max_output_tokens: Some(0),
            ..Demand::default()
        },
        Api::OpenaiChat => {
            let choices = count("n", b.n.unwrap_or(1))?;
            let (field, max) = match (b.max_completion_tokens, b.max_tokens) {
                (Some(m), _) => ("max_completion_tokens", Some(m)),
                (None, m) => ("max_tokens", m),
            };
            Demand {
                model,
                input_tokens: tokens_in(size(b.messages)),
                max_output_tokens: max.map(|m| count(field, m)).transpose()?.map(|m| m.saturating_mul(choices)),
                stream,
                stream_options: b.stream_options.is_some(),
                include_usage: b.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
                ..Demand::default()
            }
        }
        Api::OpenaiResponses => Demand {
            model,
            input_tokens: tokens_in(size(b.input).saturating_add(size(b.instructions))),
            max_output_tokens: b.max_output_tokens.map(|m| count("max_output_tokens", m)).transpose()?,
            stream,
            ..Demand::default()
        },
        Api::OpenaiEmbeddings => {
            Demand { model, input_tokens: tokens_in(size(b.input)), max_output_tokens: Some(0), ..Demand::default() }
        }
        Api::AnthropicMessages => Demand {
            model,
            input_tokens: tokens_in(size(b.messages).saturating_add(size(b.system))),
            max_output_tokens: b.max_tokens.map(|m| count("max_tokens", m)).transpose()?,
            stream,
            ..Demand::default()
        },
    };
    Ok(demand)
}

/// A count a body asks for: 1 to [`MAX_COUNT`] (`n`), or 0 allowed for token maxima.
fn count(field: &'static str, n: u64) -> Result<u64, BodyError> {
    let least = u64::from(field == "n");
    if n < least || n > MAX_COUNT {
        let expected =
            if field == "n" { "a whole number from 1 to 1000000000" } else { "a whole number up to 1000000000" };
        return Err(BodyError::Invalid { field, expected });
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
