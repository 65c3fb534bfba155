//! A wait as a person reads it: "in 5 h 0 min (at 14:32 UTC)". Every message that tells someone
//! how long until an account serves again (the pool's 429, its events and toasts, the gateway's
//! body, `POOL_NO_ACCOUNT`), and every cooldown, reset and wait the CLI (`list`, `status`,
//! `doctor`) and the OpenCode tool show (through the binding's `waitWords`), says it this way;
//! machine fields (`retry-after`, `until`, `--json`) keep their numbers. One place, so the
//! surfaces never disagree.

/// "17 s", "4 min 10 s", "5 h 0 min", "2 d 3 h": rounded up, so a wait is never said shorter
/// than it is (17,999 s is "5 h 0 min", not "4 h 59 min").
pub fn duration(ms: i64) -> String {
    let secs = (ms.max(0) as u64).div_ceil(1000).max(1);
    if secs < 60 {
        return format!("{secs} s");
    }
    if secs < 3600 {
        let (m, s) = (secs / 60, secs % 60);
        return if s == 0 {
            format!("{m} min")
        } else {
            format!("{m} min {s} s")
        };
    }
    let minutes = secs.div_ceil(60);
    if minutes < 24 * 60 {
        return format!("{} h {} min", minutes / 60, minutes % 60);
    }
    let hours = secs.div_ceil(3600);
    format!("{} d {} h", hours / 24, hours % 24)
}

/// The UTC clock time of `at` (epoch ms), with the day when it is not `now`'s: "14:32 UTC",
/// "Tue 2 Dec 14:32 UTC", and the year when it is half a year or more away ("Fri 31 Dec 9999
/// 23:59 UTC": a cooldown another writer set years ahead read as this December's). UTC everywhere, the CLI on a person's own terminal too: the engine
/// does not know the reader's zone (a gateway's client, a log read elsewhere), and a time that
/// a toast, a 429 and `status` each give is then the same time written the same way. The
/// seconds are left out (the duration beside it carries them for short waits).
pub fn clock(at: i64, now: i64) -> String {
    // The time of day of the date said: a time past what a date can say is taken at its end.
    let at = at.min(LAST_MS);
    let day = |ms: i64| ms.div_euclid(86_400_000);
    let minute = at.rem_euclid(86_400_000) / 60_000;
    let hm = format!("{:02}:{:02} UTC", minute / 60, minute % 60);
    if day(at) == day(now) {
        return hm;
    }
    const HALF_A_YEAR_MS: i64 = 183 * 86_400_000;
    let (date, year) = weekday_date_month_year(at);
    if at.abs_diff(now) >= HALF_A_YEAR_MS as u64 {
        return format!("{date} {year} {hm}");
    }
    format!("{date} {hm}")
}

const LAST_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z

/// "Tue 2 Dec" and "2025" of `at` (epoch ms, UTC), from httpdate's calendar ("Tue, 02 Dec 2025
/// 14:32:10 GMT"); times outside what an HTTP date can say are taken at its ends.
fn weekday_date_month_year(at: i64) -> (String, String) {
    let ms = at.clamp(0, LAST_MS) as u64;
    let text =
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
    let part = |r: std::ops::Range<usize>| text.get(r).unwrap_or_default();
    let date = format!(
        "{} {} {}",
        part(0..3),
        part(5..7).trim_start_matches('0'),
        part(8..11)
    );
    (date, part(12..16).to_string())
}

/// "in 5 h 0 min (at 14:32 UTC)": how long from `now` until `until`, and when.
pub fn until(until: i64, now: i64) -> String {
    format!(
        "in {} (at {})",
        duration(until.saturating_sub(now)),
        clock(until, now)
    )
}

/// "14:32 UTC (in 5 h 0 min)": the same, for a sentence that names the time ("until …",
/// "not refreshed before …").
pub fn at(until: i64, now: i64) -> String {
    format!(
        "{} (in {})",
        clock(until, now),
        duration(until.saturating_sub(now))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_says_them_and_never_shorter() {
        assert_eq!(duration(17_000), "17 s");
        assert_eq!(duration(16_001), "17 s");
        assert_eq!(duration(0), "1 s");
        assert_eq!(duration(-5), "1 s");
        assert_eq!(duration(60_000), "1 min");
        assert_eq!(duration(250_000), "4 min 10 s");
        assert_eq!(duration(3_600_000), "1 h 0 min");
        assert_eq!(duration(17_999_000), "5 h 0 min");
        assert_eq!(duration(4_320_000), "1 h 12 min");
        assert_eq!(duration(86_400_000 - 1), "1 d 0 h");
        assert_eq!(duration(8 * 86_400_000), "8 d 0 h");
        assert_eq!(duration(2 * 86_400_000 + 3 * 3_600_000), "2 d 3 h");
    }

    #[test]
    fn clock_times_are_utc_with_the_day_when_it_is_not_today() {
        // 2025-12-01T14:32:10Z, a Monday.
        let at = 1_764_599_530_000;
        assert_eq!(clock(at, at - 3_600_000), "14:32 UTC");
        assert_eq!(clock(at, at - 86_400_000), "Mon 1 Dec 14:32 UTC");
        assert_eq!(clock(0, 1), "00:00 UTC");
        assert_eq!(clock(951_782_400_000, 0), "Tue 29 Feb 2000 00:00 UTC");
        assert_eq!(
            clock(951_782_400_000, 951_782_400_000 - 86_400_000),
            "Tue 29 Feb 00:00 UTC"
        );
        assert_eq!(clock(-86_400_000 * 3, 0), "Thu 1 Jan 00:00 UTC");
        assert_eq!(clock(i64::MAX, 0), "Fri 31 Dec 9999 23:59 UTC");
        let year = 365 * 86_400_000;
        assert_eq!(clock(at, at - year), "Mon 1 Dec 2025 14:32 UTC");
        assert_eq!(
            clock(at, at + year / 2 + 86_400_000),
            "Mon 1 Dec 2025 14:32 UTC"
        );
        assert_eq!(clock(at, at - 100 * 86_400_000), "Mon 1 Dec 14:32 UTC");
        assert_eq!(until(at, at - 17_999_000), "in 5 h 0 min (at 14:32 UTC)");
        assert_eq!(super::at(at, at - 17_000), "14:32 UTC (in 17 s)");
    }
}
