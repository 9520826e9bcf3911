//! Cron expressions and time zones: the first line of the input is the
//! expression, the second the zone, and the next eight bytes (little endian)
//! the instant, in milliseconds since the Unix epoch, to read it from.
//!
//! A schedule that parses must fire strictly after the instant it is asked
//! about, in order, and only inside the window asked for.

use flowline::{Schedule, Timestamp};

/// The most fires looked for in one window.
const LIMIT: usize = 16;

/// Parses the expression and zone in `data` and walks its next fires.
pub fn check(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (Some(expression), Some(zone)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Ok(expression), Ok(zone)) = (std::str::from_utf8(expression), std::str::from_utf8(zone))
    else {
        return;
    };
    let rest = parts.next().unwrap_or_default();
    let mut millis = [0u8; 8];
    let n = rest.len().min(8);
    millis[..n].copy_from_slice(&rest[..n]);
    let from = Timestamp::from_millis(i64::from_le_bytes(millis));

    let schedule = match Schedule::parse(expression, zone) {
        Ok(schedule) => schedule,
        Err(err) => {
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    assert_eq!(schedule.expression(), expression);
    let mut cursor = from;
    for _ in 0..LIMIT {
        let Some(next) = schedule.next_after(cursor) else {
            break;
        };
        assert!(next > cursor, "{schedule:?}: {next} is not after {cursor}");
        cursor = next;
    }
    // The fires in the next ten minutes (an every-second schedule walks 600).
    let until = Timestamp::from_millis(from.as_millis().saturating_add(600_000));
    let fires = schedule.fires_between(from, until, LIMIT);
    assert!(fires.len() <= LIMIT);
    assert!(fires.windows(2).all(|w| w[0] < w[1]), "{fires:?}");
    assert!(fires.iter().all(|t| *t > from && *t <= until), "{fires:?}");
}
