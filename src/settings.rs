//! The settings that are numbers or switches (`OAUTH_POOL_TIMEOUT_MS`, `..._SOFT_THRESHOLD`, ...):
//! each read by one rule here, which the pool applies and `oauth-pool doctor` shows. A value the
//! rule refuses falls back to the default (the pool keeps working), and doctor says so: a typo
//! like `OAUTH_POOL_SOFT_THRESHOLD=90` (meant as 90 %) must not pass unnoticed.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{self, var, Var};

/// The longest a setting in milliseconds can be: 2^31 - 1 ms, about 24.8 days, the longest a
/// JavaScript timer waits. A longer one fires at once: as a response timeout, the runtime
/// transport's, every request failed ("no response headers within 3000000000 ms") while the Rust
/// client's waited. A longer value is taken as this, with a warning.
pub const MAX_MILLIS: u64 = i32::MAX as u64;

/// How a setting's text is read.
#[derive(Clone, Copy)]
enum Rule {
    /// Milliseconds, a whole number above 0, at most [`MAX_MILLIS`].
    Millis,
    /// Milliseconds, a whole number, at most [`MAX_MILLIS`]; 0 turns the feature off.
    MillisOrOff,
    /// Milliseconds, a whole number, 0 for none, at most `max`.
    MillisUpTo(u64),
    /// A fraction above 0 (1 = at 100 %; above 1 never reached).
    Fraction,
    /// `off` turns it off; anything else leaves it on.
    OffSwitch,
}

struct Setting {
    variable: Var,
    rule: Rule,
    default: f64,
}

const SETTINGS: &[Setting] = &[
    Setting {
        variable: var::TIMEOUT_MS,
        rule: Rule::Millis,
        default: 30_000.0,
    },
    Setting {
        variable: var::RESPONSE_TIMEOUT_MS,
        rule: Rule::Millis,
        default: 300_000.0,
    },
    Setting {
        variable: var::HOLD_MAX_MS,
        rule: Rule::MillisOrOff,
        default: 0.0,
    },
    // None by default: the contract's all-cooling 429 says the seconds until the soonest account
    // is usable, and a hold (`OAUTH_POOL_HOLD_MAX_MS`) waits for it; a spread of up to 10 s
    // after each cooldown's end answered a 3 s cooldown held for 5 s with the pool's 429, and a
    // 100 s one with `retry-after: 109`.
    Setting {
        variable: var::JITTER_MS,
        rule: Rule::MillisUpTo(60_000),
        default: 0.0,
    },
    Setting {
        variable: var::SOFT_THRESHOLD,
        rule: Rule::Fraction,
        default: 0.9,
    },
    Setting {
        variable: var::USAGE,
        rule: Rule::OffSwitch,
        default: 1.0,
    },
];

/// What a setting's text means under its rule: the value applied, and a warning when the text
/// was not taken as written (`Err`: not taken at all, the default applies). Messages quote the
/// text as `shown` (bounded and scrubbed: it may be anything a person pasted).
fn read(rule: Rule, text: &str, shown: &str) -> Result<(f64, Option<String>), String> {
    let text = text.trim();
    // Digits past u64 are a number too large, not "not a number": the most applies.
    let whole = || match text.parse::<u64>() {
        Ok(ms) => Ok(ms),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Ok(u64::MAX),
        Err(_) => Err(format!("{shown:?} is not a whole number of milliseconds")),
    };
    let at_most = |ms: u64, max: u64, why: &str| {
        if ms > max {
            (
                max as f64,
                Some(format!(
                    "{shown} is over the most, {max}{why}: {max} applies"
                )),
            )
        } else {
            (ms as f64, None)
        }
    };
    const TIMER: &str = " (about 24.8 days, the longest a JavaScript timer waits)";
    match rule {
        Rule::Millis => match whole()? {
            0 => Err("0 is not a usable timeout (a whole number of milliseconds above 0)".into()),
            ms => Ok(at_most(ms, MAX_MILLIS, TIMER)),
        },
        Rule::MillisOrOff => Ok(at_most(whole()?, MAX_MILLIS, TIMER)),
        Rule::MillisUpTo(max) => Ok(at_most(whole()?, max.min(MAX_MILLIS), "")),
        Rule::Fraction => match text.parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => Ok((
                f,
                (f > 1.0).then(|| {
                    format!("{shown} is over 1: it is a fraction (0.9 = 90 %), and as set no window ever reaches it")
                }),
            )),
            _ => Err(format!("{shown:?} is not a fraction above 0 (0.9 = 90 %)")),
        },
        Rule::OffSwitch => Ok(if text.eq_ignore_ascii_case("off") {
            (0.0, None)
        } else if text.is_empty() || text.eq_ignore_ascii_case("on") {
            (1.0, None)
        } else {
            (1.0, Some(format!("only `off` turns it off: {shown:?} leaves it on")))
        }),
    }
}

fn setting(variable: Var) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.variable == variable)
}

/// The value of a setting as the pool applies it: its text under its rule, else the default.
fn value(variable: Var) -> f64 {
    let Some(s) = setting(variable) else {
        return 0.0;
    };
    config::env(variable)
        .and_then(|text| read(s.rule, &text, "").ok())
        .map_or(s.default, |(v, _)| v)
}

/// A setting in milliseconds.
pub fn millis(variable: Var) -> Duration {
    Duration::from_millis(value(variable) as u64)
}

/// `OAUTH_POOL_SOFT_THRESHOLD`: a fraction of any window the request counts against.
pub fn soft_threshold() -> f64 {
    value(var::SOFT_THRESHOLD)
}

/// `OAUTH_POOL_USAGE`: whether answers are counted.
pub fn usage_counted() -> bool {
    value(var::USAGE) != 0.0
}

/// Each setting that is set, as doctor shows it: `{ variable, value, ok, message? }`; not ok
/// when its text was not taken as written.
pub fn check() -> Vec<Value> {
    let mut rows: Vec<Value> = SETTINGS
        .iter()
        .filter_map(|s| {
            // Blank is unset, as for every variable of the pool (a shell's `NAME=`).
            let text = config::env(s.variable).filter(|t| !t.trim().is_empty())?;
            let shown = shown(&text);
            let row = match read(s.rule, &text, &shown) {
                Ok((_, None)) => {
                    json!({ "variable": s.variable.name(), "value": shown, "ok": true })
                }
                Ok((_, Some(warning))) => json!({
                    "variable": s.variable.name(), "value": shown, "ok": false, "message": warning,
                }),
                Err(why) => json!({
                    "variable": s.variable.name(), "value": shown, "ok": false,
                    "message": format!("{why}; the default, {}, applies", s.default),
                }),
            };
            Some(row)
        })
        .collect();
    if let Some(text) = config::env(var::LOG).filter(|t| !t.trim().is_empty()) {
        let shown = shown(&text);
        rows.push(match crate::logging::filter_warning(&text) {
            None => json!({ "variable": var::LOG.name(), "value": shown, "ok": true }),
            Some(warning) => json!({
                "variable": var::LOG.name(), "value": shown, "ok": false, "message": warning,
            }),
        });
    }
    rows
}

/// A setting's text as doctor quotes it: trimmed, bounded and scrubbed (it may be anything a
/// person pasted).
fn shown(text: &str) -> String {
    crate::secret::scrub_message(&text.trim().chars().take(64).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_shown(rule: Rule, text: &str) -> Result<(f64, Option<String>), String> {
        read(rule, text, text.trim())
    }

    #[test]
    fn each_rule_takes_what_it_says_and_says_what_it_does_not() {
        assert_eq!(read_shown(Rule::Millis, " 1500 "), Ok((1500.0, None)));
        assert!(read_shown(Rule::Millis, "0").is_err());
        assert!(read_shown(Rule::Millis, "1.5s").is_err());
        assert!(read_shown(Rule::Millis, "-5").is_err());
        assert_eq!(read_shown(Rule::MillisOrOff, "0"), Ok((0.0, None)));
        let (ms, warning) = read_shown(Rule::MillisUpTo(60_000), "90000").unwrap();
        assert_eq!(ms, 60_000.0);
        assert!(warning.unwrap().contains("over the most"));
        assert_eq!(read_shown(Rule::Fraction, "0.8"), Ok((0.8, None)));
        let (f, warning) = read_shown(Rule::Fraction, "90").unwrap();
        assert_eq!(f, 90.0);
        assert!(warning.unwrap().contains("0.9 = 90 %"));
        assert!(read_shown(Rule::Fraction, "NaN").is_err());
        assert!(read_shown(Rule::Fraction, "0").is_err());
        assert!(read_shown(Rule::Fraction, "90%").is_err());
        assert_eq!(read_shown(Rule::OffSwitch, "OFF"), Ok((0.0, None)));
        assert_eq!(read_shown(Rule::OffSwitch, "on"), Ok((1.0, None)));
        let (on, warning) = read_shown(Rule::OffSwitch, "false").unwrap();
        assert_eq!(on, 1.0);
        assert!(warning.unwrap().contains("only `off`"));
    }

    #[test]
    fn milliseconds_past_a_javascript_timer_are_taken_as_its_longest_said_so() {
        for rule in [Rule::Millis, Rule::MillisOrOff] {
            for text in [
                "3000000000",
                "2147483648",
                "18446744073709551616",
                "99999999999999999999",
            ] {
                let (ms, warning) = read_shown(rule, text).unwrap();
                assert_eq!(ms, MAX_MILLIS as f64, "{text}");
                let warning = warning.unwrap();
                assert!(warning.contains("over the most, 2147483647"), "{warning}");
                assert!(
                    warning.starts_with(text),
                    "quotes what was written: {warning}"
                );
            }
            assert_eq!(
                read_shown(rule, "2147483647"),
                Ok((MAX_MILLIS as f64, None))
            );
        }
        let (ms, _) = read_shown(Rule::MillisUpTo(60_000), "18446744073709551616").unwrap();
        assert_eq!(ms, 60_000.0);
        for text in ["1e3", "0x10", "-1", "1.5", "+-3", ""] {
            assert!(read_shown(Rule::Millis, text).is_err(), "{text}");
        }
    }

    #[test]
    fn every_setting_has_its_documented_default() {
        let default = |v: Var| setting(v).map(|s| s.default);
        assert_eq!(default(var::TIMEOUT_MS), Some(30_000.0));
        assert_eq!(default(var::RESPONSE_TIMEOUT_MS), Some(300_000.0));
        assert_eq!(default(var::HOLD_MAX_MS), Some(0.0));
        assert_eq!(default(var::JITTER_MS), Some(0.0));
        assert_eq!(default(var::SOFT_THRESHOLD), Some(0.9));
    }

    #[test]
    fn doctor_quotes_a_setting_bounded_and_scrubbed() {
        // An access token pasted into the wrong variable (its prefix built here, so that no
        // token-shaped literal sits in the source).
        let pasted = format!("{}-{}", ["sk", "ant", "oat01"].join("-"), "A".repeat(100));
        let shown = crate::secret::scrub_message(&pasted.chars().take(64).collect::<String>());
        let message = read(Rule::Fraction, &pasted, &shown).unwrap_err();
        assert!(!message.contains("AAAAAAAAAAAA"), "{message}");
        assert!(message.len() < 120, "{message}");
    }
}
