//! Reads the spanned YAML tree ([`super::yaml`]) into the config's declared structs
//! (`#[derive(Deserialize)]`, `#[serde(deny_unknown_fields)]`), listing every problem of a
//! file rather than the first.
//!
//! serde stops at its first error. So [`read`] deserializes, and when that fails it records
//! the problem at the node that caused it (an unknown key, a value of the wrong type), leaves
//! that node out — as if it had not been written — and reads again, at most [`MAX_REREADS`]
//! times. The declared structs make every field optional (`#[serde(default)]`); what is
//! required, and every range, is checked after reading, beside the types, with [`At`] saying
//! where each value was written.
//!
//! Scalars read as the config means them: a string field takes a number or boolean as written
//! (`value: 2.10` is the text "2.10"); `key:` with nothing after it is "not given".

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, Expected, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, Visitor,
};

use super::error::{Pos, Problems};
use super::yaml::{Node, Value, index, join};

/// How many times one file is read again after a problem; past it, the file's remaining
/// problems are not listed.
const MAX_REREADS: usize = 100;

/// A value and where it was written: its position and its path (`descriptors[0].key`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct At<T> {
    pub value: T,
    pub pos: Pos,
    pub path: String,
}

/// A value read from text with its `FromStr` (whose error message is reported as written).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Parsed<T>(pub T);

/// Reads `root` as a `T`, reporting every problem found on the way. `None` when the root
/// itself is unreadable (already reported).
pub(crate) fn read<T: DeserializeOwned>(problems: &mut Problems<'_>, root: &Node) -> Option<T> {
    let left_out = RefCell::new(HashSet::new());
    for _ in 0..MAX_REREADS {
        let reader = NodeReader {
            node: root,
            path: String::new(),
            left_out: &left_out,
        };
        match T::deserialize(reader) {
            Ok(value) => return Some(value),
            Err(problem) => {
                problems.at(problem.pos, &problem.path, &problem.message);
                match problem.node {
                    Some(id) if id != node_id(root) && left_out.borrow_mut().insert(id) => {}
                    _ => return None,
                }
            }
        }
    }
    problems.at(root.pos, "", "too many problems; fix these and load again");
    None
}

/// One problem met while reading, and the node to leave out on the next read.
#[derive(Debug)]
pub(crate) struct Problem {
    pos: Pos,
    path: String,
    message: String,
    node: Option<usize>,
}

impl Problem {
    fn new(message: String) -> Self {
        Problem {
            pos: Pos::UNKNOWN,
            path: String::new(),
            message,
            node: None,
        }
    }

    /// Blames `node` (at `path`) unless a deeper node is already blamed.
    fn at(mut self, node: &Node, path: &str) -> Self {
        if self.node.is_none() {
            self.pos = node.pos;
            self.path = path.to_owned();
            self.node = Some(node_id(node));
        }
        self
    }

    /// "expected <what the reader wanted>, found <what the node is>".
    fn wrong_kind(node: &Node, expected: &dyn Expected, default: &str) -> Self {
        let wanted = expected.to_string();
        let wanted = if wanted.starts_with("a list") || wanted.starts_with("a mapping") {
            wanted
        } else {
            default.to_owned()
        };
        Problem::new(format!("expected {wanted}, found {}", node.kind()))
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl de::Error for Problem {
    fn custom<M: fmt::Display>(message: M) -> Self {
        Problem::new(message.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let hint = super::unknown_key_hint(field, expected)
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        Problem::new(format!("unknown key '{field}'{hint}"))
    }

    fn invalid_type(found: Unexpected<'_>, expected: &dyn Expected) -> Self {
        let found = match found {
            Unexpected::Bool(_) => "true/false",
            Unexpected::Unsigned(_) | Unexpected::Signed(_) | Unexpected::Float(_) => "a number",
            Unexpected::Unit | Unexpected::Option => "nothing (null)",
            Unexpected::Seq => "a list",
            Unexpected::Map => "a mapping",
            _ => "a string",
        };
        Problem::new(format!("expected {expected}, found {found}"))
    }
}

fn node_id(node: &Node) -> usize {
    std::ptr::from_ref(node) as usize
}

/// A `serde::Deserializer` over one node of the tree.
struct NodeReader<'a> {
    node: &'a Node,
    path: String,
    left_out: &'a RefCell<HashSet<usize>>,
}

impl<'a> NodeReader<'a> {
    fn child(&self, node: &'a Node, path: String) -> Self {
        NodeReader {
            node,
            path,
            left_out: self.left_out,
        }
    }

    fn is_left_out(&self, node: &Node) -> bool {
        self.left_out.borrow().contains(&node_id(node))
    }

    /// Runs a visitor on this node, blaming the node for what the visitor refuses.
    fn blame<T>(&self, result: Result<T, Problem>) -> Result<T, Problem> {
        result.map_err(|p| p.at(self.node, &self.path))
    }

    fn wrong_kind<T>(&self, expected: &dyn Expected, default: &str) -> Result<T, Problem> {
        Err(Problem::wrong_kind(self.node, expected, default).at(self.node, &self.path))
    }

    /// A whole number, `0..=u64::MAX`.
    fn whole_number(&self) -> Result<u64, Problem> {
        let fail = |message: String| Err(Problem::new(message).at(self.node, &self.path));
        match &self.node.value {
            Value::Int(i) if *i < 0 => fail(format!("must not be negative, found {i}")),
            Value::Int(i) => u64::try_from(*i).or_else(|_| fail(format!("{i} is too large"))),
            Value::Float(_) => fail(format!(
                "expected a whole number, found {}",
                self.node.show()
            )),
            _ => fail(format!(
                "expected a whole number, found {}",
                self.node.kind()
            )),
        }
    }
}

impl<'de> Deserializer<'de> for NodeReader<'_> {
    type Error = Problem;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        let result = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => match i64::try_from(*i) {
                Ok(i) => visitor.visit_i64(i),
                Err(_) => visitor.visit_i128(*i),
            },
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(_) => return self.deserialize_seq(visitor),
            Value::Map(_) => return self.deserialize_map(visitor),
        };
        self.blame(result)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.node.value {
            Value::Bool(b) => self.blame(visitor.visit_bool(b)),
            _ => self.wrong_kind(&"", "true or false"),
        }
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        let n = self.whole_number()?;
        self.blame(visitor.visit_u64(n))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.node.as_text() {
            Some(text) => self.blame(visitor.visit_string(text)),
            None => self.wrong_kind(&"", "a string"),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        if self.node.is_null() {
            self.blame(visitor.visit_none())
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Problem> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        let Value::Seq(items) = &self.node.value else {
            return self.wrong_kind(&visitor, "a list");
        };
        let items = ItemsReader {
            items: items.iter().enumerate(),
            parent: &self,
        };
        self.blame(visitor.visit_seq(items))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        let Value::Map(entries) = &self.node.value else {
            return self.wrong_kind(&visitor, "a mapping");
        };
        let entries = EntriesReader {
            entries: entries.iter(),
            value: None,
            parent: &self,
        };
        self.blame(visitor.visit_map(entries))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Problem> {
        if name == AT_MARKER {
            let reader = self.child(self.node, self.path.clone());
            return visitor.visit_map(AtReader { reader, next: 0 });
        }
        self.deserialize_map(visitor)
    }

    /// A struct field's name (a mapping's key).
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match &self.node.value {
            Value::Str(name) => self.blame(visitor.visit_str(name)),
            _ => {
                let message = format!("key is not a string: {}", self.node.show());
                Err(Problem::new(message).at(self.node, &self.path))
            }
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u128 f32 f64 char bytes byte_buf unit unit_struct
        tuple tuple_struct enum
    }
}

/// The items of a list, skipping those left out (paths keep the written index).
struct ItemsReader<'r, 'a, I> {
    items: I,
    parent: &'r NodeReader<'a>,
}

impl<'de, 'a, I: Iterator<Item = (usize, &'a Node)>> SeqAccess<'de> for ItemsReader<'_, 'a, I> {
    type Error = Problem;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Problem> {
        let Some((i, item)) = self.items.find(|(_, n)| !self.parent.is_left_out(n)) else {
            return Ok(None);
        };
        let reader = self.parent.child(item, index(&self.parent.path, i));
        seed.deserialize(reader).map(Some)
    }
}

/// The entries of a mapping, skipping those whose key or value is left out.
struct EntriesReader<'r, 'a, I> {
    entries: I,
    value: Option<(&'a Node, String)>,
    parent: &'r NodeReader<'a>,
}

impl<'de, 'a, I: Iterator<Item = &'a (Node, Node)>> MapAccess<'de> for EntriesReader<'_, 'a, I> {
    type Error = Problem;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Problem> {
        let parent = self.parent;
        let Some((key, value)) = self
            .entries
            .find(|(k, v)| !parent.is_left_out(k) && !parent.is_left_out(v))
        else {
            return Ok(None);
        };
        self.value = Some((value, join(&parent.path, &key.show())));
        // A key is blamed with the mapping's path: "settings: unknown key 'colour'".
        seed.deserialize(parent.child(key, parent.path.clone()))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Problem> {
        let Some((value, path)) = self.value.take() else {
            return Err(Problem::new("a value without a key".to_owned()));
        };
        seed.deserialize(self.parent.child(value, path))
    }
}

/// The struct name [`At`] asks for, which [`NodeReader`] answers with the node's position.
const AT_MARKER: &str = "$ratelimiter::config::At";

/// Hands [`At`]'s visitor the node's line, column and path, then the value itself, as the
/// entries `line`, `column`, `path`, `value`.
struct AtReader<'a> {
    reader: NodeReader<'a>,
    next: usize,
}

const AT_FIELDS: [&str; 4] = ["line", "column", "path", "value"];

impl<'de> MapAccess<'de> for AtReader<'_> {
    type Error = Problem;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Problem> {
        match AT_FIELDS.get(self.next) {
            Some(field) => seed.deserialize(field.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Problem> {
        let reader = &self.reader;
        self.next += 1;
        match self.next {
            1 => seed.deserialize(reader.node.pos.line.into_deserializer()),
            2 => seed.deserialize(reader.node.pos.column.into_deserializer()),
            3 => seed.deserialize(reader.path.clone().into_deserializer()),
            _ => seed.deserialize(reader.child(reader.node, reader.path.clone())),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for At<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(AT_MARKER, &AT_FIELDS, AtVisitor(PhantomData))
    }
}

struct AtVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for AtVisitor<T> {
    type Value = At<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value read from a config file")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<At<T>, A::Error> {
        let missing = || de::Error::custom("a position is read only from a config file");
        let (_, line) = map.next_entry::<String, usize>()?.ok_or_else(missing)?;
        let (_, column) = map.next_entry::<String, usize>()?.ok_or_else(missing)?;
        let (_, path) = map.next_entry::<String, String>()?.ok_or_else(missing)?;
        let (_, value) = map.next_entry::<String, T>()?.ok_or_else(missing)?;
        Ok(At {
            value,
            pos: Pos { line, column },
            path,
        })
    }
}

impl<'de, T: FromStr<Err: fmt::Display>> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_string(ParsedVisitor(PhantomData))
    }
}

/// Parses inside the visitor, so that a refusal is blamed on the value's node.
struct ParsedVisitor<T>(PhantomData<T>);

impl<T: FromStr<Err: fmt::Display>> Visitor<'_> for ParsedVisitor<T> {
    type Value = Parsed<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Parsed<T>, E> {
        text.parse().map(Parsed).map_err(E::custom)
    }
}
