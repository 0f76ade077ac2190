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

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
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
    /// The source text of a plain number or boolean, so it can be read back as text
    /// exactly as written.
    pub raw: Option<String>,
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

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The node read as text: a string, or a number or boolean as written.
    pub fn as_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Bool(b) => Some(self.raw.clone().unwrap_or_else(|| b.to_string())),
            Value::Int(i) => Some(self.raw.clone().unwrap_or_else(|| i.to_string())),
            Value::Float(f) => Some(self.raw.clone().unwrap_or_else(|| f.to_string())),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// A short rendering for messages (scalars only; containers by kind).
    pub fn show(&self) -> String {
        match self.as_text() {
            Some(text) => text,
            None => self.kind().to_owned(),
        }
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
    match serde_saphyr::from_str_with_options::<Spanned<RawNode>>(text, options) {
        Ok(root) => Ok(convert(root, text)),
        Err(err) => Err(syntax_error(&err)),
    }
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

/// What serde-saphyr hands us: the same shape as [`Value`], with spans on every node.
enum RawNode {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<RawNode>>),
    Map(Vec<(Spanned<RawNode>, Spanned<RawNode>)>),
}

fn convert(node: Spanned<RawNode>, text: &str) -> Node {
    let pos = pos_of(node.referenced);
    // For an alias, `referenced` is the `*name` token and `defined` the anchored node: the
    // spelling comes from where the value is defined.
    let span = node.defined.span();
    let raw = || {
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        let slice = text.get(start..start.checked_add(len)?)?.trim();
        (!slice.is_empty()).then(|| slice.to_owned())
    };
    let (value, raw) = match node.value {
        RawNode::Null => (Value::Null, None),
        RawNode::Bool(b) => (Value::Bool(b), raw()),
        RawNode::Int(i) => (Value::Int(i), raw()),
        RawNode::Float(f) => (Value::Float(f), raw()),
        RawNode::Str(s) => (Value::Str(s), None),
        RawNode::Seq(items) => (
            Value::Seq(items.into_iter().map(|n| convert(n, text)).collect()),
            None,
        ),
        RawNode::Map(entries) => (
            Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (convert(k, text), convert(v, text)))
                    .collect(),
            ),
            None,
        ),
    };
    Node { value, pos, raw }
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_none<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawNode, D::Error> {
        RawNode::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
        Ok(RawNode::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
        Ok(RawNode::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
        Ok(RawNode::Int(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<RawNode, E> {
        Ok(RawNode::Int(v))
    }

    fn visit_u128<E>(self, v: u128) -> Result<RawNode, E> {
        Ok(match i128::try_from(v) {
            Ok(i) => RawNode::Int(i),
            Err(_) => RawNode::Float(v as f64),
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
        Ok(RawNode::Float(v))
    }

    fn visit_char<E>(self, v: char) -> Result<RawNode, E> {
        Ok(RawNode::Str(v.to_string()))
    }

    fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
        Ok(RawNode::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
        Ok(RawNode::Str(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<RawNode, E> {
        match std::str::from_utf8(v) {
            Ok(s) => Ok(RawNode::Str(s.to_owned())),
            Err(_) => Err(E::custom("binary values are not supported")),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<RawNode>>()? {
            items.push(item);
        }
        Ok(RawNode::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<RawNode>>()? {
            let value = map.next_value::<Spanned<RawNode>>()?;
            entries.push((key, value));
        }
        Ok(RawNode::Map(entries))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn get<'a>(node: &'a Node, key: &str) -> &'a Node {
        node.entries()
            .unwrap()
            .iter()
            .find(|(k, _)| k.value == Value::Str(key.into()))
            .map(|(_, v)| v)
            .unwrap()
    }

    #[test]
    fn nodes_carry_line_and_column() {
        let doc = parse("a: 1\nb:\n  - x: true\n    y: text\n").unwrap();
        assert_eq!(doc.pos, Pos { line: 1, column: 1 });
        let a = get(&doc, "a");
        assert_eq!(a.value, Value::Int(1));
        assert_eq!(a.pos, Pos { line: 1, column: 4 });
        let Value::Seq(items) = &get(&doc, "b").value else {
            panic!("not a list")
        };
        let item = &items[0];
        assert_eq!(get(item, "x").value, Value::Bool(true));
        assert_eq!(get(item, "y").pos, Pos { line: 4, column: 8 });
        let (key, _) = &item.entries().unwrap()[1];
        assert_eq!(key.pos, Pos { line: 4, column: 5 });
    }

    #[test]
    fn scalars_keep_their_spelling_as_text() {
        let doc =
            parse("a: 2.10\nb: no\nc: 010\nd: 1_000\ne: 0x1F\nf: True\ng: .inf\nh: ''\n").unwrap();
        let text = |k: &str| get(&doc, k).as_text().unwrap();
        assert_eq!(text("a"), "2.10");
        assert_eq!(text("b"), "no");
        assert_eq!(text("c"), "010");
        assert_eq!(text("d"), "1_000");
        assert_eq!(text("e"), "0x1F");
        assert_eq!(text("f"), "True");
        assert_eq!(get(&doc, "f").value, Value::Bool(true));
        assert_eq!(text("g"), ".inf");
        assert_eq!(text("h"), "");
    }

    #[test]
    fn aliases_and_merges_resolve() {
        let doc = parse("base: &b {limit: 5}\nx: *b\ny:\n  <<: *b\n  window: 1s\n").unwrap();
        assert_eq!(get(get(&doc, "x"), "limit").value, Value::Int(5));
        assert_eq!(get(get(&doc, "y"), "limit").value, Value::Int(5));
        assert_eq!(get(get(&doc, "y"), "window").as_text().unwrap(), "1s");
    }

    #[test]
    fn empty_documents_are_null() {
        assert!(parse("").unwrap().is_null());
        assert!(parse("# only a comment\n").unwrap().is_null());
    }

    #[test]
    fn syntax_errors_have_a_location_and_a_plain_message() {
        let err = parse("a: [1, 2\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 1, column: 4 });
        assert!(err.message.contains("unclosed bracket"), "{}", err.message);
        assert!(!err.message.contains("at line"), "{}", err.message);

        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, column: 1 });
        assert!(
            err.message.contains("duplicate mapping key"),
            "{}",
            err.message
        );

        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.pos.line, 3);
    }

    #[test]
    fn nesting_is_capped() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let err = parse(&deep).unwrap_err();
        assert!(
            err.message.contains("depth") || err.message.contains("nest"),
            "{}",
            err.message
        );
        let ok = format!("{}{}", "[".repeat(20), "]".repeat(20));
        assert!(parse(&ok).is_ok());
    }
}
