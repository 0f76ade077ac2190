//! Durations: every unit, every malformed spelling, and the shortest spelling back.

use crate::algorithm::Micros;
use crate::config::duration::{MAX_WINDOW, MICROS_PER_SECOND, format_duration, parse_duration};

const S: Micros = MICROS_PER_SECOND;

#[test]
fn accepts_every_unit_and_combinations() {
    assert_eq!(parse_duration("250us"), Ok(250));
    assert_eq!(parse_duration("250µs"), Ok(250));
    assert_eq!(parse_duration("500ms"), Ok(500_000));
    assert_eq!(parse_duration("10s"), Ok(10 * S));
    assert_eq!(parse_duration("1m"), Ok(60 * S));
    assert_eq!(parse_duration("1h30m"), Ok(5_400 * S));
    assert_eq!(parse_duration("1d"), Ok(86_400 * S));
    assert_eq!(parse_duration("1w"), Ok(7 * 86_400 * S));
    assert_eq!(parse_duration("1m30s500ms"), Ok(90_500_000));
    assert_eq!(parse_duration(" 10s "), Ok(10 * S));
    assert_eq!(parse_duration("366d"), Ok(MAX_WINDOW));
    assert_eq!(parse_duration("0h1s"), Ok(S));
}

#[test]
fn rejects_malformed_durations() {
    for (input, needle) in [
        ("", "empty duration"),
        ("10", "needs a unit"),
        ("s", "invalid duration"),
        ("1.5s", "whole numbers only"),
        ("10 s", "needs a unit"),
        ("10x", "unknown unit 'x'"),
        ("10S", "unknown unit 'S'"),
        ("30m1h", "largest to smallest"),
        ("1s1s", "largest to smallest"),
        ("-1s", "invalid duration"),
        ("0s", "more than zero"),
        ("0ms0us", "more than zero"),
        ("367d", "longer than 366 days"),
        ("53w", "longer than 366 days"),
        ("99999999999999999999999s", "longer than 366 days"),
        ("18446744073709551615w", "longer than 366 days"),
    ] {
        let err = parse_duration(input).unwrap_err();
        assert!(err.contains(needle), "{input:?}: {err}");
    }
}

#[test]
fn formats_the_shortest_spelling() {
    assert_eq!(format_duration(S), "1s");
    assert_eq!(format_duration(10 * S), "10s");
    assert_eq!(format_duration(60 * S), "1m");
    assert_eq!(format_duration(5_400 * S), "1h30m");
    assert_eq!(format_duration(86_400 * S), "1d");
    assert_eq!(format_duration(7 * 86_400 * S), "1w");
    assert_eq!(format_duration(30 * 86_400 * S), "30d");
    assert_eq!(format_duration(500_000), "500ms");
    assert_eq!(format_duration(1_250), "1ms250us");
    for text in ["1h30m", "250us", "2w", "365d", "1m30s500ms"] {
        assert_eq!(format_duration(parse_duration(text).unwrap()), text);
    }
}
