//! Time as plain numbers: nanoseconds since the Unix epoch, passed in by the host.

/// Nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

pub const NANOS_PER_SEC: u64 = 1_000_000_000;

impl Nanos {
    pub const fn from_secs(secs: u64) -> Self {
        Nanos(secs.saturating_mul(NANOS_PER_SEC))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Nanos(millis.saturating_mul(1_000_000))
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    pub const fn saturating_add(self, nanos: u64) -> Self {
        Nanos(self.0.saturating_add(nanos))
    }

    /// Whole seconds since the epoch, rounded up (a reset instant is never early).
    pub const fn as_secs_ceil(self) -> u64 {
        ceil_secs(self.0)
    }
}

/// Whole seconds in a span of nanoseconds, rounded up: `Retry-After` and `t=` never promise too early.
pub const fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

/// RFC 3339 UTC timestamp with whole seconds (`2026-11-24T00:00:00Z`), rounding up.
pub fn rfc3339(at: Nanos) -> String {
    let secs = at.as_secs_ceil();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since the epoch to a proleptic Gregorian (year, month, day), after H. Hinnant's
/// `civil_from_days`, restricted to dates on or after 1970.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(Nanos(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(Nanos::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(Nanos::from_secs(1_795_478_400)), "2026-11-24T00:00:00Z");
        assert_eq!(rfc3339(Nanos::from_secs(4_102_444_799)), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn rounds_partial_seconds_up() {
        assert_eq!(rfc3339(Nanos(1)), "1970-01-01T00:00:01Z");
        assert_eq!(ceil_secs(0), 0);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(NANOS_PER_SEC), 1);
        assert_eq!(ceil_secs(NANOS_PER_SEC + 1), 2);
    }
}
