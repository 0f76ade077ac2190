//! Config problems: each one names its file and, where known, its line and column.
//!
//! The loader never stops at the first problem. It collects every one it can find (a YAML
//! syntax error ends only the file it is in) so an operator fixes a config in one pass, and the
//! process can refuse to start with the whole list.

use std::fmt;

use super::deserialize::At;
use super::yaml::join;

/// One problem in one config file.
///
/// `message` starts with the path of the offending node (`descriptors[0].rate_limit.unit: …`)
/// when the problem belongs to a node, so a problem stays findable even without a location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; `None` when no location is known.
    pub line: Option<usize>,
    /// 1-based, in characters; `None` when no location is known.
    pub column: Option<usize>,
    pub message: String,
}

impl ConfigError {
    /// A problem with no location (a whole file, or a whole directory).
    pub(crate) fn file_level(file: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(f, "{}:{}:{}: {}", self.file, line, column, self.message)
            }
            (Some(line), None) => write!(f, "{}:{}: {}", self.file, line, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config, in the order found (files in name order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// Whether any problem's rendered line contains `needle` (for tests and callers that
    /// look for one kind of problem).
    pub fn contains(&self, needle: &str) -> bool {
        self.0.iter().any(|e| e.to_string().contains(needle))
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where a limit was written, for problems found after loading (a quota too large for the
/// store to count exactly is found when the limiter compiles the config).
///
/// Not part of a limit's identity: two limits written alike are equal wherever they are.
#[derive(Clone, Debug, Default, Eq)]
pub struct Source {
    pub file: String,
    pub pos: Pos,
    /// The limit's path in its file: `clients.tiers.free[0]`.
    pub path: String,
}

impl PartialEq for Source {
    fn eq(&self, _: &Source) -> bool {
        true
    }
}

impl Source {
    /// A problem with the limit written here.
    pub fn problem(&self, message: impl fmt::Display) -> ConfigError {
        let mut errors = Vec::new();
        Problems {
            file: &self.file,
            errors: &mut errors,
        }
        .at(self.pos, &self.path, message);
        errors.remove(0)
    }
}

/// Where a problem is: a 1-based line and column, or nothing known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const UNKNOWN: Pos = Pos { line: 0, column: 0 };
}

/// Collects the problems of one file. Semantic checks report through it and carry on.
pub(crate) struct Problems<'a> {
    pub file: &'a str,
    pub errors: &'a mut Vec<ConfigError>,
}

impl Problems<'_> {
    /// A problem at `pos`, about the node at `path` (`""` for the file's top level).
    pub fn at(&mut self, pos: Pos, path: &str, message: impl fmt::Display) {
        let message = if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        let known = pos.line > 0;
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: known.then_some(pos.line),
            column: (known && pos.column > 0).then_some(pos.column),
            message: one_line(&message),
        });
    }
}

impl Problems<'_> {
    /// Where a value was written, kept with what is made of it.
    pub fn source<T>(&self, at: &At<T>) -> Source {
        Source {
            file: self.file.to_owned(),
            pos: at.pos,
            path: at.path.clone(),
        }
    }

    /// A problem with a value, where it was written.
    pub fn about<T>(&mut self, at: &At<T>, message: impl fmt::Display) {
        self.at(at.pos, &at.path, message);
    }

    /// A problem with a value, unless one is already reported at or below it (an entry of a
    /// list that could not be read leaves the list looking emptier than it was written).
    pub fn about_unless_reported<T>(&mut self, at: &At<T>, message: impl fmt::Display) {
        if !self.any_under(&at.path) {
            self.about(at, message);
        }
    }

    /// "`field` is missing from `parent`", unless a problem with that field (a value that
    /// could not be read) is already reported.
    pub fn missing<T>(&mut self, parent: &At<T>, field: &str, message: impl fmt::Display) {
        if !self.any_under(&join(&parent.path, field)) {
            self.about(parent, message);
        }
    }

    /// Whether a problem is already reported at `path` or anywhere below it.
    pub fn any_under(&self, path: &str) -> bool {
        self.errors.iter().any(|e| {
            e.file == self.file
                && e.message.strip_prefix(path).is_some_and(|rest| {
                    rest.starts_with(':') || rest.starts_with('.') || rest.starts_with('[')
                })
        })
    }
}

/// Messages are rendered one per line: never let a message break that.
pub(crate) fn one_line(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
