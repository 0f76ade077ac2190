//! Durations as written in config files: `500ms`, `10s`, `1m`, `1h30m`, `1d`, `1w`, `250us`.
//!
//! A duration is one or more `<whole number><unit>` parts with units from largest to smallest,
//! each at most once (`1h30m`, not `30m1h` or `1h1h`). Units: `w` (7 days), `d`, `h`, `m`,
//! `s`, `ms`, `us` (also `µs`). Fractions are not accepted (`1.5s` → write `1500ms`): all
//! arithmetic downstream is integer microseconds, and a config should say exactly what it
//! means. The total must be more than zero and at most 366 days, which keeps every window
//! far from overflowing `u64` microseconds in any arithmetic the algorithms do.

use crate::algorithm::Micros;

pub(crate) const MICROS_PER_SECOND: Micros = 1_000_000;
pub(crate) const MICROS_PER_DAY: Micros = 86_400 * MICROS_PER_SECOND;
/// The longest window a limit may have.
pub(crate) const MAX_WINDOW: Micros = 366 * MICROS_PER_DAY;

/// Units from largest to smallest: (suffix, microseconds).
const UNITS: [(&str, Micros); 8] = [
    ("w", 7 * MICROS_PER_DAY),
    ("d", MICROS_PER_DAY),
    ("h", 3_600 * MICROS_PER_SECOND),
    ("m", 60 * MICROS_PER_SECOND),
    ("s", MICROS_PER_SECOND),
    ("ms", 1_000),
    ("us", 1),
    ("µs", 1),
];

/// Parses a config duration into microseconds. The error says what is wrong, without the
/// field name (the caller adds where it was).
pub fn parse_duration(s: &str) -> Result<Micros, String> {
    let text = s.trim();
    let hint = "expected a duration like 500ms, 10s, 1m, 1h30m, 1d or 1w";
    if text.is_empty() {
        return Err(format!("empty duration ({hint})"));
    }
    let mut rest = text;
    let mut total: Micros = 0;
    // Index into UNITS of the last unit seen; the next must be smaller.
    let mut last_rank: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!("invalid duration '{text}' ({hint})"));
        }
        let (number, after) = rest.split_at(digits);
        if after.starts_with(['.', ',']) {
            return Err(format!(
                "invalid duration '{text}': whole numbers only (write 1500ms, not 1.5s)"
            ));
        }
        let unit_len = after.len()
            - after
                .trim_start_matches(|c: char| c.is_alphabetic() || c == 'µ')
                .len();
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!(
                "invalid duration '{text}': '{number}' needs a unit ({hint})"
            ));
        }
        let Some(rank) = UNITS.iter().position(|(suffix, _)| *suffix == unit) else {
            return Err(format!(
                "invalid duration '{text}': unknown unit '{unit}' (units: w, d, h, m, s, ms, us)"
            ));
        };
        // `us` and `µs` are the same unit.
        let rank = rank.min(6);
        if last_rank.is_some_and(|last| rank <= last) {
            return Err(format!(
                "invalid duration '{text}': units must go from largest to smallest, each once"
            ));
        }
        last_rank = Some(rank);
        let too_long = || format!("duration '{text}' is longer than 366 days");
        let value: Micros = number.parse().map_err(|_| too_long())?;
        let micros = value.checked_mul(UNITS[rank].1).ok_or_else(too_long)?;
        total = total.checked_add(micros).ok_or_else(too_long)?;
        if total > MAX_WINDOW {
            return Err(too_long());
        }
        rest = next;
    }
    if total == 0 {
        return Err(format!("duration '{text}' must be more than zero"));
    }
    Ok(total)
}

/// The shortest spelling of a duration in the syntax [`parse_duration`] reads, used in default
/// limit names (`10-per-1s`, `5-per-10s`, `100-per-1h30m`). Weeks are used only for whole
/// weeks, so 30 days reads `30d`, not `4w2d`.
pub(crate) fn format_duration(micros: Micros) -> String {
    if micros == 0 {
        return "0s".to_owned();
    }
    let week = UNITS[0].1;
    if micros.is_multiple_of(week) {
        return format!("{}w", micros / week);
    }
    let mut out = String::new();
    let mut rest = micros;
    for (suffix, size) in UNITS.iter().skip(1).take(6) {
        if rest >= *size {
            out.push_str(&format!("{}{}", rest / size, suffix));
            rest %= size;
        }
    }
    out
}
