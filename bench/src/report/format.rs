//! How the report shows numbers: thousands separators, a true minus sign, ranges in
//! brackets and a dash for what was not measured.

use crate::stats::Spread;

pub(super) fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        format!("−{out}")
    } else {
        out
    }
}

pub(super) fn with_range(s: Option<Spread>, show: impl Fn(f64) -> String) -> String {
    match s {
        Some(s) if s.count > 1 => format!("{} ({}–{})", show(s.median), show(s.min), show(s.max)),
        Some(s) => show(s.median),
        None => "–".to_owned(),
    }
}

pub(super) fn ratio_text(s: Option<Spread>) -> String {
    with_range(s, |v| format!("{v:.2}×"))
}

pub(super) fn opt(v: Option<f64>, show: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "–".to_owned(), show)
}

pub(super) fn us(v: f64) -> String {
    if v.abs() >= 100.0 {
        thousands(v)
    } else {
        format!("{v:.1}")
    }
}

pub(super) fn signed_us(v: f64) -> String {
    if v >= 0.0 {
        format!("+{}", us(v))
    } else {
        format!("−{}", us(-v))
    }
}

pub(super) fn trim(v: f64) -> String {
    if v.abs() >= 100.0 {
        thousands(v)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
