//! What a decision tells the host: the [`Decision`], its [`Outcome`], who was metered
//! ([`Caller`]), and reports for stats.

use crate::config::{Config, FailureMode, Mode};
use crate::headers::Headers;
use crate::lease::RefilledLease;
use crate::reply::LocalReply;
use crate::store::UpdateReport;

use super::settle::Reservation;
use super::Callout;

/// What happened to a request, for stats and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No route or a cost-0 route, or no limit of the caller's tier applies: untouched.
    Unlimited,
    Allowed,
    Limited,
    /// Would have been limited; shadow mode let it through.
    ShadowLimited,
    /// Unknown token, or no token where anonymous access is off.
    Unauthenticated,
    /// Malformed or duplicated credentials.
    Malformed,
    /// The client's network sent too many failing credentials (429, no callout).
    CredentialsLimited,
    /// A metered route's body could not be read (400) or was too large (413).
    BadRequest,
    /// Refused before a tier was known, let through by shadow mode.
    ShadowRejected,
    /// Shared data could not be updated; admitted unmetered (`on_contention: allow`).
    StoreBypassed,
    /// Shared data could not be updated; refused with 503 (`on_contention: deny`).
    StoreRefused,
    /// The quota service could not answer and the policy is to refuse (503).
    QuotaUnavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unlimited => "unlimited",
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::ShadowLimited => "shadow_limited",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Malformed => "malformed",
            Outcome::CredentialsLimited => "credentials_limited",
            Outcome::BadRequest => "bad_request",
            Outcome::ShadowRejected => "shadow_rejected",
            Outcome::StoreBypassed => "store_bypassed",
            Outcome::StoreRefused => "store_refused",
            Outcome::QuotaUnavailable => "quota_unavailable",
        }
    }
}

/// How the quota service figured in a decision, for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaReport {
    /// The breaker was open: no callout was made.
    pub short_circuited: bool,
    pub breaker_opened: bool,
    pub breaker_closed: bool,
    /// The service could not answer and a global limit fell back to this mode.
    pub degraded: Option<FailureMode>,
    /// Admitted from a lease's balance (no callout of its own, or a refill ahead of need).
    pub from_lease: bool,
    /// Units a refill of this request leased (0: no refill granted).
    pub leased_units: u64,
    /// Answers with status 200 whose body could not be read: failures that the host,
    /// counting by status, took for successes.
    pub unreadable_answers: u32,
    /// The worker had `max_pending_verifications` key verifications in flight: this
    /// request's was not sent (503).
    pub verifications_full: bool,
}

/// What a decision did with worker blocks (see [`crate::worker_block`]), for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockReport {
    /// This request took a worker block (from a slot or from a lease's balance).
    pub taken: bool,
    /// Blocks given back to make room for this one.
    pub given_back: u32,
}

/// Everything the host needs to act on a request.
#[derive(Debug)]
pub struct Decision {
    pub outcome: Outcome,
    /// Index of the caller's tier in `config.tiers`, once known.
    pub tier: Option<usize>,
    /// `Some`: send this reply and stop the request. `None`: let it continue.
    pub reply: Option<LocalReply>,
    /// Headers to add to the upstream response when the request continues.
    pub response_headers: Headers,
    /// The limit that refused (or would have refused) the request.
    pub limited_by: Option<String>,
    /// Who was metered, safe to log ([`Decision::caller_name`]); never a token.
    pub caller: Option<Caller>,
    pub store: UpdateReport,
    pub blocks: BlockReport,
    pub quota: QuotaReport,
    /// A lease this request refilled: the worker remembers it to return it when idle.
    pub lease: Option<RefilledLease>,
    /// A refill of a lease to send ahead of need: the request is decided already and does
    /// not wait for it. The worker queues it for its root context, which sends it (its
    /// answer outlives the request) and gives the answer to [`super::refilled_ahead`].
    pub refill: Option<Box<Callout>>,
    /// Images or tokens this admitted request reserved: the host settles them with
    /// [`super::settle`] once the response has ended.
    pub reservation: Option<Box<Reservation>>,
}

/// Who is metered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A configured key, by its index in `config.keys`: its name and fingerprint were made
    /// with the configuration, so a request of a key allocates neither.
    Key(usize),
    /// A key verified by the quota service (`key:<id>`) or an anonymous network
    /// (`ip:<network>`).
    Named(String),
}

impl Caller {
    /// `key:<id>` or `ip:<network>`.
    pub fn name<'a>(&'a self, config: &'a Config) -> &'a str {
        match self {
            Caller::Key(index) => config.keys.get(*index).map_or("key:?", |k| k.caller.as_str()),
            Caller::Named(name) => name,
        }
    }
}

impl Decision {
    pub(crate) fn new(outcome: Outcome) -> Decision {
        Decision {
            outcome,
            tier: None,
            reply: None,
            response_headers: Headers::new(),
            limited_by: None,
            caller: None,
            store: UpdateReport::default(),
            blocks: BlockReport::default(),
            quota: QuotaReport::default(),
            lease: None,
            refill: None,
            reservation: None,
        }
    }

    /// Who was metered: `key:<id>` or `ip:<network>`.
    pub fn caller_name<'a>(&'a self, config: &'a Config) -> Option<&'a str> {
        self.caller.as_ref().map(|c| c.name(config))
    }

    /// A refusal before any limit was looked at (credentials, an unavailable service):
    /// the reply, or in shadow mode a header saying what would have happened.
    pub(crate) fn refuse(outcome: Outcome, reply: LocalReply, mode: Mode) -> Decision {
        match mode {
            Mode::Enforce => Decision { reply: Some(reply), ..Decision::new(outcome) },
            Mode::Shadow => {
                let mut d = Decision::new(Outcome::ShadowRejected);
                d.response_headers.push("x-tollgate-shadow", &format!("would-reject; status={}", reply.status));
                d
            }
        }
    }
}
