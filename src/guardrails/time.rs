//! Local time for quiet hours and delivery slots, through the IANA time
//! zone database (`chrono-tz`), so a rule written as "22:00 to 08:00" holds
//! in the user's wall-clock time on both sides of a DST change.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};

/// An IANA time zone.
pub type Tz = chrono_tz::Tz;

/// Parses an IANA zone name (`Europe/Berlin`, `UTC`); `None` if unknown.
pub fn parse_timezone(name: &str) -> Option<Tz> {
    name.parse().ok()
}

/// Minutes after local midnight of the instant `at_ms` in `tz`.
pub(crate) fn local_minute(at_ms: i64, tz: Tz) -> u32 {
    let local = utc(at_ms).with_timezone(&tz);
    local.hour() * 60 + local.minute()
}

pub(crate) fn utc(at_ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at_ms).unwrap_or(DateTime::UNIX_EPOCH)
}

/// The first instant at or after local `date` + `minute` that exists in
/// `tz`: a wall-clock time skipped by a spring-forward change maps to the
/// end of the gap; one repeated by a fall-back change to its first
/// occurrence.
fn at_local(date: NaiveDate, minute: u32, tz: Tz) -> i64 {
    let time = NaiveTime::from_hms_opt(minute / 60, minute % 60, 0).expect("minute < 1440");
    let mut naive = date.and_time(time);
    for _ in 0..=180 {
        match tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => return t.timestamp_millis(),
            LocalResult::Ambiguous(first, _) => return first.timestamp_millis(),
            LocalResult::None => naive += Duration::minutes(1),
        }
    }
    // No zone has a gap over three hours; fall back to reading it as UTC.
    naive.and_utc().timestamp_millis()
}

/// The next instant strictly after `after_ms` whose local time in `tz` is
/// `minute` (minutes after midnight).
pub(crate) fn next_local(after_ms: i64, minute: u32, tz: Tz) -> i64 {
    let today = utc(after_ms).with_timezone(&tz).date_naive();
    let mut date = today;
    for _ in 0..3 {
        let t = at_local(date, minute, tz);
        if t > after_ms {
            return t;
        }
        date = date.succ_opt().unwrap_or(date);
    }
    after_ms + 24 * 3_600_000
}
