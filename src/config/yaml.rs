//! A YAML document as a tree of nodes that each know their line and column.
//!
//! A file is parsed once by serde-saphyr into this generic tree (every node wrapped in
//! `serde_saphyr::Spanned`, which records where it was); [`super::deserialize`] then reads the
//! tree into the declared structs of the two file shapes, with every problem located, which
//! serde straight from the text could not do (it stops at the first).
//!
//! Parsing choices, for predictable configs:
//! - YAML 1.2 booleans only (`yes`, `no`, `on`, `off`, `y`, `n` stay strings: `value: no` is
//!   the string "no", as a descriptor value should be).
//! - `010` and `1_000` stay strings when read as text; numbers keep their source spelling, so
//!   `value: 2.10` is the string "2.10", not "2.1" (a descriptor value is text, as in Go).
//! - Duplicate keys in one mapping are errors; anchors, aliases and `<<` merges work, under
//!   serde-saphyr's budgets against alias bombs; nesting is capped at [`MAX_YAML_DEPTH`].

use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use super::error::Pos;

/// The deepest YAML nesting accepted (mappings and lists). A descriptor level takes two
/// (the list and the mapping), so this leaves room above the 16 descriptor levels allowed,
/// and the descriptor check reports first with a clearer message.
pub(crate) const MAX_YAML_DEPTH: usize = 48;

/// What a node holds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// One node of the document and where it is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub pos: Pos,
    /// Where the node is written in the text (for an alias: where its value is defined), so
    /// that a plain number or boolean can be read back as text exactly as written.
    span: Option<Range<usize>>,
}

impl Node {
    /// How the node is described in a message: "a mapping", "a list", ….
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "true/false",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The node read as text: a string, or a number or boolean as written in `text`.
    pub fn as_text(&self, text: &str) -> Option<String> {
        let written = || {
            let slice = text.get(self.span.clone()?)?.trim();
            (!slice.is_empty()).then(|| slice.to_owned())
        };
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Bool(b) => Some(written().unwrap_or_else(|| b.to_string())),
            Value::Int(i) => Some(written().unwrap_or_else(|| i.to_string())),
            Value::Float(f) => Some(written().unwrap_or_else(|| f.to_string())),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// A short rendering for messages (scalars as written; containers by kind).
    pub fn show(&self, text: &str) -> String {
        self.as_text(text).unwrap_or_else(|| self.kind().to_owned())
    }

    /// The mapping's entries, if this is a mapping.
    pub fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }
}

/// A YAML syntax (or structure) error: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one document. An empty document (or only comments) is a `Null` node.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        with_snippet: false,
        budget: serde_saphyr::budget! { max_depth: MAX_YAML_DEPTH },
    };
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| syntax_error(&e))
}

fn syntax_error(err: &serde_saphyr::Error) -> SyntaxError {
    let pos = err.location().map_or(Pos::UNKNOWN, pos_of);
    let formatter = serde_saphyr::UserMessageFormatter;
    let rendered = err.render_with_options(serde_saphyr::render_options! {
        formatter: &formatter,
        snippets: serde_saphyr::SnippetMode::Off,
    });
    // The location goes in front of the message (file:line:column), not after it.
    let suffix = format!(" at line {}, column {}", pos.line, pos.column);
    let message = rendered.strip_suffix(&suffix).unwrap_or(&rendered).trim();
    SyntaxError {
        pos,
        message: plain_budget_message(message).unwrap_or_else(|| message.to_owned()),
    }
}

/// serde-saphyr words a breached budget for developers (`limits breached: Depth { depth: 49 }`);
/// say it for the person editing the file.
fn plain_budget_message(message: &str) -> Option<String> {
    let (_, breach) = message.split_once("limits breached: ")?;
    let kind: String = breach
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    Some(match kind.as_str() {
        "Depth" => format!("nested deeper than {MAX_YAML_DEPTH} levels"),
        "" => "the document is too large or too complex".to_owned(),
        _ => format!("the document is too large or too complex (limit on {kind} reached)"),
    })
}

fn pos_of(location: Location) -> Pos {
    Pos {
        line: usize::try_from(location.line()).unwrap_or(0),
        column: usize::try_from(location.column()).unwrap_or(0),
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let node = Spanned::<Value>::deserialize(deserializer)?;
        let span = node.defined.span();
        let start = span.byte_offset().and_then(|s| usize::try_from(s).ok());
        let len = span.byte_len().and_then(|l| usize::try_from(l).ok());
        Ok(Node {
            value: node.value,
            pos: pos_of(node.referenced),
            span: start
                .zip(len)
                .map(|(start, len)| start..start.saturating_add(len)),
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Builds the tree from whatever serde-saphyr finds.
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i128::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Value::Map(entries))
    }
}

/// `parent.name`, or `name` at the top level.
pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// `parent[index]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}
