//! Finding and reading files: directories, sizes, encodings.

use super::{TempDir, ok};
use crate::config::{MAX_FILE_BYTES, load, parse_str};

#[test]
fn a_single_file_loads() {
    let dir = TempDir::new("single");
    let path = dir.write("only.yaml", "domain: d\ndescriptors: []\n");
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.domains[0].file, path.display().to_string());
}

#[test]
fn an_empty_directory_is_an_error() {
    let dir = TempDir::new("empty");
    let errors = load(dir.path()).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert!(
        errors.0[0].message.starts_with("no config files in "),
        "{errors}"
    );
    assert_eq!(errors.0[0].file, dir.path().display().to_string());

    // Only hidden and non-YAML files: still nothing to load.
    dir.write(".ratelimiter.yaml", "settings: {}\n");
    dir.write("README.md", "# hi\n");
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    let errors = load(dir.path()).unwrap_err();
    assert!(errors.contains("no config files in"), "{errors}");
}

#[test]
fn a_missing_path_is_an_error() {
    let dir = TempDir::new("missing");
    let errors = load(&dir.path().join("nope.yaml")).unwrap_err();
    assert!(errors.contains("nope.yaml: cannot read: "), "{errors}");
}

#[test]
fn files_over_4_mib_are_refused_unread() {
    let dir = TempDir::new("big");
    let mut text = String::from("settings: {}\n");
    text.push('#');
    text.push_str(&"x".repeat(usize::try_from(MAX_FILE_BYTES).unwrap()));
    dir.write("big.yaml", &text);
    dir.write("fine.yaml", "settings: {max_cost: 0}\n");
    let errors = load(dir.path()).unwrap_err();
    assert_eq!(errors.0.len(), 2, "{errors}");
    assert!(errors.0[0].file.ends_with("big.yaml"));
    assert_eq!(errors.0[0].message, "file is larger than 4 MiB");
    assert!(errors.0[1].message.contains("max_cost"));

    // Exactly 4 MiB is fine.
    let mut text = String::from("settings: {}\n#");
    text.push_str(&"x".repeat(usize::try_from(MAX_FILE_BYTES).unwrap() - text.len()));
    assert_eq!(text.len() as u64, MAX_FILE_BYTES);
    ok(&text);
    let path = dir.write("big.yaml", &text);
    std::fs::remove_file(dir.path().join("fine.yaml")).unwrap();
    load(&path).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn files_must_be_utf8() {
    let dir = TempDir::new("utf8");
    dir.write("latin1.yaml", b"settings: {default_domain: caf\xe9}\n");
    let errors = load(dir.path()).unwrap_err();
    assert_eq!(errors.0[0].message, "not valid UTF-8 (at byte 30)");
}

#[test]
fn yml_and_upper_case_extensions_count() {
    let dir = TempDir::new("ext");
    dir.write("a.YAML", "domain: upper\n");
    dir.write("b.yml", "domain: short\n");
    let config = load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.domains.len(), 2);
}

#[cfg(unix)]
#[test]
fn symlinked_files_are_followed_like_a_configmap_mount() {
    let dir = TempDir::new("symlink");
    std::fs::create_dir(dir.path().join("..data")).unwrap();
    dir.write("..data/edge.yaml", "domain: edge\n");
    std::os::unix::fs::symlink("..data/edge.yaml", dir.path().join("edge.yaml")).unwrap();
    std::os::unix::fs::symlink("..data/missing.yaml", dir.path().join("broken.yaml")).unwrap();
    let errors = load(dir.path()).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert!(errors.0[0].file.ends_with("broken.yaml"));
    assert!(errors.0[0].message.starts_with("cannot read: "));
    std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();
    let config = load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.domains[0].domain, "edge");
}

#[test]
fn parse_str_applies_the_same_limits() {
    let big = "#".repeat(usize::try_from(MAX_FILE_BYTES).unwrap() + 1);
    let errors = parse_str("big.yaml", &big).unwrap_err();
    assert_eq!(errors.to_string(), "big.yaml: file is larger than 4 MiB");
}
