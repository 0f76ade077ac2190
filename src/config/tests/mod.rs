//! Tests of the config module: each rule, accepted and rejected, with the message and
//! location a user would see.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod duration;
mod envoy;
mod loader;
mod service;
mod yaml;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Config, ConfigError, ConfigErrors, parse_str};

/// Parses `text` as `t.yaml`, panicking with every problem if it does not load.
fn ok(text: &str) -> Config {
    parse_str("t.yaml", text).unwrap_or_else(|e| panic!("expected to load, got:\n{e}"))
}

/// Parses `text` as `t.yaml`, expecting problems.
fn errs(text: &str) -> ConfigErrors {
    match parse_str("t.yaml", text) {
        Ok(config) => panic!("expected problems, loaded {config:#?}"),
        Err(e) => e,
    }
}

/// The one problem of `text`.
fn one_err(text: &str) -> ConfigError {
    let errors = errs(text);
    assert_eq!(errors.0.len(), 1, "expected one problem, got:\n{errors}");
    errors.0.into_iter().next().unwrap()
}

/// Asserts that `text` has a problem containing `needle` at `line:column`.
#[track_caller]
fn assert_err_at(text: &str, line: usize, column: usize, needle: &str) {
    let errors = errs(text);
    let found = errors
        .0
        .iter()
        .any(|e| e.message.contains(needle) && e.line == Some(line) && e.column == Some(column));
    assert!(
        found,
        "expected a problem at {line}:{column} containing {needle:?}, got:\n{errors}"
    );
}

/// Asserts that `text` has a problem containing `needle`, wherever it is.
#[track_caller]
fn assert_err(text: &str, needle: &str) {
    let errors = errs(text);
    assert!(
        errors.contains(needle),
        "expected a problem containing {needle:?}, got:\n{errors}"
    );
}

/// A scratch directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "ratelimiter-config-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn display_puts_the_location_first_and_one_problem_per_line() {
    let located = ConfigError {
        file: "a.yaml".into(),
        line: Some(3),
        column: Some(7),
        message: "descriptors[0].rate_limit.unit: invalid rate limit unit 'foo'".into(),
    };
    let unlocated = ConfigError {
        file: "b.yaml".into(),
        line: None,
        column: None,
        message: "clients.keys[2].tier: unknown tier 'gold'".into(),
    };
    assert_eq!(
        located.to_string(),
        "a.yaml:3:7: descriptors[0].rate_limit.unit: invalid rate limit unit 'foo'"
    );
    assert_eq!(
        unlocated.to_string(),
        "b.yaml: clients.keys[2].tier: unknown tier 'gold'"
    );
    let both = ConfigErrors(vec![located, unlocated]);
    assert_eq!(both.to_string().lines().count(), 2);
    let boxed: Box<dyn std::error::Error> = Box::new(both);
    assert!(boxed.to_string().starts_with("a.yaml:3:7: "));
}

#[test]
fn semantic_problems_name_the_path_of_the_node() {
    let e = one_err(
        "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    );
    assert_eq!(e.file, "t.yaml");
    assert_eq!((e.line, e.column), (Some(6), Some(28)));
    assert_eq!(
        e.message,
        "descriptors[0].descriptors[0].rate_limit.unit: invalid rate limit unit 'fortnight' \
         (expected second, minute, hour, day, week, month or year)"
    );
    assert_eq!(
        e.to_string(),
        format!("t.yaml:6:28: {}", e.message),
        "file:line:column: message"
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let errors = errs(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: often, requests_per_unit: 1}\n  - value: x\n  - key: c\n    shadow_mode: maybe\n    extra: 1\n",
    );
    assert_eq!(errors.0.len(), 4, "{errors}");
    assert!(errors.contains("invalid rate limit unit 'often'"));
    assert!(errors.contains("descriptor has empty key"));
    assert!(errors.contains("expected true or false"));
    assert!(errors.contains("unknown key 'extra'"));
    // In document order.
    let lines: Vec<_> = errors.0.iter().map(|e| e.line.unwrap()).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

#[test]
fn a_file_with_very_many_problems_lists_a_bounded_number() {
    let keys: String = (0..150).map(|i| format!("  extra{i}: 1\n")).collect();
    let errors = errs(&format!("settings:\n{keys}"));
    assert!(errors.contains("unknown key 'extra0'"), "{errors}");
    assert!(errors.contains("unknown key 'extra99'"), "{errors}");
    assert!(!errors.contains("unknown key 'extra100'"), "{errors}");
    assert!(errors.contains("too many problems"), "{errors}");
}

#[test]
fn a_key_with_nothing_after_it_is_not_given() {
    assert_eq!(
        ok("settings:\n  max_cost:\n  headers:\n"),
        ok("settings: {}\n")
    );
}

#[test]
fn an_unknown_key_with_nothing_after_it_is_still_unknown() {
    assert_err_at(
        "settings:\n  colour:\n",
        2,
        3,
        "settings: unknown key 'colour'",
    );
    assert_err_at(
        "domain: d\ndescriptors:\n  - key: a\n    colour:\n",
        4,
        5,
        "descriptors[0]: unknown key 'colour'",
    );
}

#[test]
fn yaml_syntax_errors_have_a_location() {
    let e = one_err("domain: d\ndescriptors:\n  - key: a\n   value: b\n");
    assert_eq!(e.line, Some(4));
    assert!(e.message.starts_with("invalid YAML: "), "{}", e.message);

    assert_err_at("a: 1\na: 2\n", 2, 1, "duplicate mapping key");
    assert_err("a: 1\n---\nb: 2\n", "invalid YAML");
    assert_err("settings: [1, 2\n", "unclosed bracket");
}

#[test]
fn the_top_level_must_be_a_mapping() {
    assert_err_at(
        "- a\n- b\n",
        1,
        1,
        "the top level must be a mapping, found a list",
    );
    assert_err(
        "just text\n",
        "the top level must be a mapping, found a string",
    );
}

#[test]
fn an_empty_file_configures_nothing() {
    for text in ["", "# nothing yet\n", "\n\n"] {
        let config = ok(text);
        assert_eq!(config, ok("{}"));
        assert!(config.domains.is_empty());
        assert!(config.clients.keys.is_empty());
        assert_eq!(config.settings, super::Settings::default());
    }
}

#[test]
fn absurd_input_is_refused_without_panicking() {
    // Deep nesting.
    let deep = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert_err(&deep, "invalid YAML: recursion limit exceeded");
    let deep = format!("a: {}{}\n", "[".repeat(60), "]".repeat(60));
    assert_err(&deep, "invalid YAML: nested deeper than 48 levels");
    let deep_maps = format!(
        "{}x: 1\n",
        (0..200)
            .map(|i| format!("{}k:\n", "  ".repeat(i)))
            .collect::<String>()
    );
    let _ = parse_str("t.yaml", &deep_maps).unwrap_err();
    // An alias bomb.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    assert_err(
        &bomb,
        "invalid YAML: the document is too large or too complex (limit on Nodes reached)",
    );
    // Larger than 4 MiB.
    let big = format!("# {}\n", "x".repeat(4 * 1024 * 1024));
    assert_err(&big, "larger than 4 MiB");
    // Odd scalars.
    assert_err(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: .nan}\n",
        "expected a whole number",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 99999999999999999999999999999999999999999}\n",
        "requests_per_unit",
    );
}

/// Cheap fuzzing: mangled versions of valid configs must never panic.
#[test]
fn mangled_configs_never_panic() {
    let seeds = [
        envoy::README_EXAMPLE_2,
        envoy::README_EXAMPLE_7,
        service::BRIEF_EXAMPLE,
        include_str!("../../../config/ratelimiter.yaml"),
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pieces = [
        "", ":", "-", " ", "\n", "*", "&a", "*a", "[", "]", "{", "}", "'", "\"", "#", "0", "-1",
        "unit", "limit", "window", "key", "tier", "burst", "\t", "1e400", "~", "!!str", "<<",
    ];
    for _ in 0..3_000 {
        let seed = seeds[(next() % seeds.len() as u64) as usize];
        let mut text: Vec<char> = seed.chars().collect();
        for _ in 0..(1 + next() % 4) {
            let at = (next() % (text.len() as u64 + 1)) as usize;
            match next() % 3 {
                0 if at < text.len() => {
                    text.remove(at);
                }
                1 if at < text.len() => {
                    text[at] = pieces[(next() % pieces.len() as u64) as usize]
                        .chars()
                        .next()
                        .unwrap_or(' ');
                }
                _ => {
                    let piece = pieces[(next() % pieces.len() as u64) as usize];
                    for (i, c) in piece.chars().enumerate() {
                        text.insert(at + i, c);
                    }
                }
            }
        }
        let text: String = text.into_iter().collect();
        let _ = parse_str("fuzz.yaml", &text);
    }
}
