//! What a request costs in the units a limit counts: requests, images or tokens.
//!
//! The adapter hands the core a metered route's request body, and later the response's
//! body or stream; the core parses them here: [`body`] reads what a request asks for (a
//! [`Demand`]), [`usage`] and [`sse`] read what the response says was used (a [`Usage`]).
//! Nothing here reads a body from the host; the adapter does that.

pub mod body;
pub mod reading;
pub mod sse;
pub mod usage;
pub mod usage_request;

use serde::Deserialize;

/// What a limit counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Requests, times the route's `cost` (the default).
    #[default]
    Requests,
    /// Images generated (`n`, optionally weighted by size and quality).
    Images,
    /// Tokens of the prompt.
    InputTokens,
    /// Tokens generated.
    OutputTokens,
    /// Prompt and generated tokens together.
    Tokens,
    /// What the tokens cost by the model's price (`prices`), in the unit prices are given
    /// in (for instance micro-dollars).
    Cost,
}

impl Unit {
    /// The word a 429 body and the docs use for a number of these units.
    pub fn noun(self, n: u64) -> &'static str {
        let one = n == 1;
        match self {
            Unit::Requests if one => "request",
            Unit::Requests => "requests",
            Unit::Images if one => "image",
            Unit::Images => "images",
            Unit::InputTokens if one => "input token",
            Unit::InputTokens => "input tokens",
            Unit::OutputTokens if one => "output token",
            Unit::OutputTokens => "output tokens",
            Unit::Tokens if one => "token",
            Unit::Tokens => "tokens",
            Unit::Cost => "cost units",
        }
    }

    /// Whether the unit is only known once the response has said what was used.
    pub fn settles(self) -> bool {
        matches!(self, Unit::InputTokens | Unit::OutputTokens | Unit::Tokens | Unit::Cost)
    }

    /// Whether a route serving `api` can count this unit: images only where images are
    /// generated; tokens wherever a body is read.
    pub fn counted_by(self, api: Api) -> bool {
        match self {
            Unit::Images => api == Api::OpenaiImages,
            _ => true,
        }
    }

    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Images => "images",
            Unit::InputTokens => "input_tokens",
            Unit::OutputTokens => "output_tokens",
            Unit::Tokens => "tokens",
            Unit::Cost => "cost",
        }
    }
}

/// The API a metered route serves: how its request and response bodies read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `POST /v1/images/generations`: `n`, `size`, `quality`, `model`.
    OpenaiImages,
    /// `POST /v1/chat/completions`: `model`, `messages`, `max_completion_tokens` or
    /// `max_tokens`, `n`, `stream`, `stream_options.include_usage`.
    OpenaiChat,
    /// `POST /v1/responses`: `model`, `input`, `instructions`, `max_output_tokens`, `stream`.
    OpenaiResponses,
    /// `POST /v1/embeddings`: `model`, `input`.
    OpenaiEmbeddings,
    /// `POST /v1/messages`: `model`, `system`, `messages`, `max_tokens`, `stream`.
    AnthropicMessages,
}

/// What a request body asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    pub model: Option<String>,
    /// Images to generate (1 unless the body says otherwise; 0 for text APIs).
    pub images: u64,
    /// The image size and quality asked for, when given.
    pub size: Option<String>,
    pub quality: Option<String>,
    /// An estimate of the prompt's tokens: its text in bytes, a token per 4 bytes rounded
    /// up (a prompt of 400 bytes counts as 100 tokens).
    pub input_tokens: u64,
    /// The most tokens the request may generate, when it says (`max_tokens` and the like),
    /// times the number of choices (`n`).
    pub max_output_tokens: Option<u64>,
    /// The client asked for a stream of server-sent events.
    pub stream: bool,
    /// A streaming chat request asked for the final usage event
    /// (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The body says something of `stream_options`.
    pub stream_options: bool,
}

/// What a response says was used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// The larger of each count: streamed usage events repeat or grow their counts
    /// (Anthropic's `message_delta` carries the cumulative output), never shrink them.
    pub fn merge(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.max(other.input_tokens),
            output_tokens: self.output_tokens.max(other.output_tokens),
        }
    }
}

/// A model's price, per 1,000 tokens, in the unit of the configuration's `prices`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    pub input_per_1k: u64,
    pub output_per_1k: u64,
}

impl Price {
    /// What these tokens cost, each part rounded up.
    pub fn of(&self, input_tokens: u64, output_tokens: u64) -> u64 {
        let part = |tokens: u64, per_1k: u64| tokens.saturating_mul(per_1k).div_ceil(1000);
        part(input_tokens, self.input_per_1k).saturating_add(part(output_tokens, self.output_per_1k))
    }
}

/// What one request is charged in each unit: images and tokens are reserved before the
/// request goes upstream (tokens at the most the request may use), and their cost at the
/// model's price, when it has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charges {
    pub images: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub price: Option<Price>,
}

impl Charges {
    /// The units charged to a limit counting `unit`; `requests` is the route's cost.
    pub fn of(&self, unit: Unit, requests: u64) -> u64 {
        match unit {
            Unit::Requests => requests,
            Unit::Images => self.images,
            Unit::InputTokens => self.input_tokens,
            Unit::OutputTokens => self.output_tokens,
            Unit::Tokens => self.input_tokens.saturating_add(self.output_tokens),
            Unit::Cost => self.price.map_or(0, |p| p.of(self.input_tokens, self.output_tokens)),
        }
    }
}

/// Tokens in `bytes` of text: a token per 4 bytes, rounded up.
pub fn tokens_in(bytes: usize) -> u64 {
    u64::try_from(bytes.div_ceil(4)).unwrap_or(u64::MAX)
}
