//! Waiting for a condition instead of sleeping a fixed time: poll it, a short interval
//! apart, until it holds. A wait that gives up panics, naming what it waited for and what
//! it saw last.
//!
//! Two kinds of limit:
//! - [`Wait::at_most`]: a generous deadline, for what a timer or another process must do
//!   (a process to start, a tick to give units back, a breaker to close). Reaching it is
//!   a failure, but a wait normally ends long before.
//! - [`Wait::due`]: the moment by which the condition must hold because the system said so
//!   (a cache TTL, a window's reset, a token bucket's rate). Every poll begun before it may
//!   find the condition false; the first poll begun at or after it must find it true. This
//!   is what `sleep(due - now); assert!(condition)` checked, without sleeping when the
//!   condition holds earlier.

use std::fmt::Display;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Time between two polls, unless [`Wait::every`] says otherwise.
pub const EVERY: Duration = Duration::from_millis(50);
/// How long a wait lasts at most, unless [`Wait::at_most`] or [`Wait::due`] say otherwise.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A wait for a condition; see the module documentation.
#[derive(Debug, Clone)]
#[must_use = "a Wait does nothing until one of its until methods runs it"]
pub struct Wait {
    what: String,
    limit: Limit,
    every: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    After(Duration),
    Due(Instant),
}

impl Wait {
    /// A wait for `what` (a phrase such as "the quota service to answer /healthz"), with
    /// [`DEADLINE`] and [`EVERY`].
    pub fn new(what: impl Into<String>) -> Wait {
        Wait { what: what.into(), limit: Limit::After(DEADLINE), every: EVERY }
    }

    /// Gives up once `deadline` has passed since the wait began.
    pub fn at_most(mut self, deadline: Duration) -> Wait {
        self.limit = Limit::After(deadline);
        self
    }

    /// The condition must hold by `due`: the first poll begun at or after it that finds
    /// it false fails the wait.
    pub fn due(mut self, due: Instant) -> Wait {
        self.limit = Limit::Due(due);
        self
    }

    /// Polls `every` apart (when each poll costs something, such as a request).
    pub fn every(mut self, every: Duration) -> Wait {
        self.every = every;
        self
    }

    /// Polls until `poll` returns `Ok`, and returns its value. `Err` says what the poll
    /// saw instead; the last one goes into the panic message.
    pub fn until_ok<T, E: Display>(self, mut poll: impl FnMut() -> Result<T, E>) -> T {
        let mut polling = self.polling();
        loop {
            let began = Instant::now();
            match polling.next(began, poll()) {
                Ok(value) => return value,
                Err(pause) => sleep(pause),
            }
        }
    }

    /// The same wait, driven by the caller: for a poll that must be awaited (async code
    /// sleeps with its own runtime). See [`Polling::next`].
    pub fn polling(self) -> Polling {
        Polling { wait: self, started: Instant::now() }
    }

    /// Polls until `poll` returns `Some`, and returns its value.
    pub fn until_some<T>(self, mut poll: impl FnMut() -> Option<T>) -> T {
        self.until_ok(|| poll().ok_or("not yet"))
    }

    /// Polls until `done` returns true.
    pub fn until(self, mut done: impl FnMut() -> bool) {
        self.until_ok(|| if done() { Ok(()) } else { Err("not yet") })
    }
}

/// A [`Wait`] whose polls the caller makes:
///
/// ```text
/// let mut polling = Wait::new("the window to roll over").due(due).polling();
/// let value = loop {
///     let began = Instant::now();
///     match polling.next(began, poll().await) {
///         Ok(value) => break value,
///         Err(pause) => tokio::time::sleep(pause).await,
///     }
/// };
/// ```
#[derive(Debug)]
pub struct Polling {
    wait: Wait,
    started: Instant,
}

impl Polling {
    /// What a poll begun at `began` found: its value when `Ok`; else how long to pause
    /// before the next poll. Panics, naming what was awaited and what this poll saw, once
    /// the wait's limit is reached.
    pub fn next<T, E: Display>(&mut self, began: Instant, found: Result<T, E>) -> Result<T, Duration> {
        let last = match found {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let what = &self.wait.what;
        let every = self.wait.every;
        match self.wait.limit {
            Limit::After(deadline) => {
                let waited = self.started.elapsed();
                if waited >= deadline {
                    panic!("gave up waiting for {what} after {waited:.1?} (at most {deadline:?}): {last}");
                }
                Err(every.min(deadline - waited))
            }
            Limit::Due(due) => {
                if began >= due {
                    let late = began - due;
                    panic!("{what} was due {late:.1?} before this poll, and it is not so: {last}");
                }
                // Poll at the moment it is due, not up to an interval later.
                let now = Instant::now();
                Err(every.min(due.saturating_duration_since(now)).max(Duration::from_millis(1)))
            }
        }
    }
}

/// Polls `done` every [`EVERY`] until it returns true; panics after `deadline`, naming
/// `what`.
pub fn until(what: &str, deadline: Duration, done: impl FnMut() -> bool) {
    Wait::new(what).at_most(deadline).until(done);
}

/// Polls `poll` every [`EVERY`] until it returns `Some`; panics after `deadline`, naming
/// `what`.
pub fn until_some<T>(what: &str, deadline: Duration, poll: impl FnMut() -> Option<T>) -> T {
    Wait::new(what).at_most(deadline).until_some(poll)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_comes_ends_the_wait_with_its_value() {
        let mut polls = 0;
        let value = Wait::new("the third poll").every(Duration::from_millis(1)).until_some(|| {
            polls += 1;
            (polls == 3).then_some(polls * 10)
        });
        assert_eq!(value, 30);
    }

    #[test]
    #[should_panic(expected = "gave up waiting for nothing at all after")]
    fn a_condition_that_never_comes_panics_with_what_was_awaited() {
        until("nothing at all", Duration::from_millis(30), || false);
    }

    #[test]
    #[should_panic(expected = "the thing was due")]
    fn a_due_condition_must_hold_at_the_first_poll_after_it_is_due() {
        let due = Instant::now() + Duration::from_millis(20);
        Wait::new("the thing").due(due).until_ok(|| Err::<(), _>("still false"));
    }

    #[test]
    fn a_due_condition_may_hold_before_it_is_due() {
        let due = Instant::now() + Duration::from_secs(60);
        let mut polls = 0;
        Wait::new("the second poll").due(due).every(Duration::from_millis(1)).until(|| {
            polls += 1;
            polls == 2
        });
        assert_eq!(polls, 2);
    }
}
