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

/// Reads `root` (parsed from `text`) as a `T`, reporting every problem found on the way.
/// `None` when the root itself is unreadable (already reported).
pub(crate) fn read<T: DeserializeOwned>(
    problems: &mut Problems<'_>,
    root: &Node,
    text: &str,
) -> Option<T> {
    let reading = Reading {
        text,
        left_out: RefCell::new(HashSet::new()),
    };
    for _ in 0..MAX_REREADS {
        let reader = NodeReader {
            node: root,
            path: String::new(),
            reading: &reading,
        };
        let problem = match T::deserialize(reader) {
            Ok(value) => return Some(value),
            Err(problem) => problem,
        };
        if !problem.follows_another {
            problems.at(problem.pos, &problem.path, &problem.message);
        }
        match problem.node {
            Some(id) if id != node_id(root) && reading.left_out.borrow_mut().insert(id) => {}
            _ => return None,
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
    /// The node blamed holds a node already left out, so the problem may only be that it now
    /// looks emptier than written (a list of one bad entry, "needs at least one"): it is left
    /// out too, but not reported.
    follows_another: bool,
}

impl Problem {
    fn new(message: String) -> Self {
        Problem {
            pos: Pos::UNKNOWN,
            path: String::new(),
            message,
            node: None,
            follows_another: false,
        }
    }

    /// Blames `node` (at `path`) unless a deeper node is already blamed.
    fn at(mut self, node: &Node, path: &str, reading: &Reading<'_>) -> Self {
        if self.node.is_none() {
            self.pos = node.pos;
            self.path = path.to_owned();
            self.node = Some(node_id(node));
            self.follows_another = reading.holds_left_out(node);
        }
        self
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

/// What every reader of one file shares: the text (for scalars as written) and the nodes
/// left out after a problem.
struct Reading<'a> {
    text: &'a str,
    left_out: RefCell<HashSet<usize>>,
}

impl Reading<'_> {
    /// Whether a node below `node` has been left out.
    fn holds_left_out(&self, node: &Node) -> bool {
        let left_out = self.left_out.borrow();
        let mut below: Vec<&Node> = vec![node];
        while let Some(n) = below.pop() {
            match &n.value {
                Value::Seq(items) => below.extend(items),
                Value::Map(entries) => below.extend(entries.iter().flat_map(|(k, v)| [k, v])),
                _ => {}
            }
            if !std::ptr::eq(n, node) && left_out.contains(&node_id(n)) {
                return true;
            }
        }
        false
    }
}

/// A `serde::Deserializer` over one node of the tree. A problem a visitor raises is blamed on
/// the node by the reader of the list or mapping around it ([`NodeReader::read_child`]).
struct NodeReader<'a> {
    node: &'a Node,
    path: String,
    reading: &'a Reading<'a>,
}

impl<'a> NodeReader<'a> {
    /// Deserializes `node` (at `path`) with `seed`, blaming it for what goes wrong within.
    fn read_child<'de, S: DeserializeSeed<'de>>(
        &self,
        seed: S,
        node: &'a Node,
        path: String,
    ) -> Result<S::Value, Problem> {
        let blamed = path.clone();
        let reader = NodeReader {
            node,
            path,
            reading: self.reading,
        };
        seed.deserialize(reader)
            .map_err(|p| p.at(node, &blamed, self.reading))
    }

    fn is_left_out(&self, node: &Node) -> bool {
        self.reading.left_out.borrow().contains(&node_id(node))
    }

    /// Reads a mapping; for a struct, `fields` are its field names.
    fn read_entries<'de, V: Visitor<'de>>(
        &self,
        visitor: V,
        fields: &'static [&'static str],
    ) -> Result<V::Value, Problem> {
        let Value::Map(entries) = &self.node.value else {
            return self.wrong_kind(&visitor, "a mapping");
        };
        visitor.visit_map(EntriesReader {
            entries: entries.iter(),
            fields,
            value: None,
            parent: self,
        })
    }

    /// "expected <what the reader wanted>, found <what the node is>".
    fn wrong_kind<T>(&self, expected: &dyn Expected, default: &str) -> Result<T, Problem> {
        let wanted = expected.to_string();
        let wanted = if wanted.starts_with("a list") || wanted.starts_with("a mapping") {
            wanted
        } else {
            default.to_owned()
        };
        let found = self.node.kind();
        Err(Problem::new(format!("expected {wanted}, found {found}")))
    }
}

impl<'de> Deserializer<'de> for NodeReader<'_> {
    type Error = Problem;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => match i64::try_from(*i) {
                Ok(i) => visitor.visit_i64(i),
                Err(_) => visitor.visit_i128(*i),
            },
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(_) => self.deserialize_seq(visitor),
            Value::Map(_) => self.deserialize_map(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.node.value {
            Value::Bool(b) => visitor.visit_bool(b),
            _ => self.wrong_kind(&"", "true or false"),
        }
    }

    /// A whole number, `0..=u64::MAX`.
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        let message = match &self.node.value {
            Value::Int(i) if *i < 0 => format!("must not be negative, found {i}"),
            Value::Int(i) => match u64::try_from(*i) {
                Ok(n) => return visitor.visit_u64(n),
                Err(_) => format!("{i} is too large"),
            },
            Value::Float(_) => format!(
                "expected a whole number, found {}",
                self.node.show(self.reading.text)
            ),
            _ => format!("expected a whole number, found {}", self.node.kind()),
        };
        Err(Problem::new(message))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.node.as_text(self.reading.text) {
            Some(text) => visitor.visit_string(text),
            None => self.wrong_kind(&"", "a string"),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match self.node.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
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
        visitor.visit_seq(ItemsReader {
            items: items.iter().enumerate(),
            parent: &self,
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        self.read_entries(visitor, &[])
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Problem> {
        self.read_entries(visitor, fields)
    }

    /// [`At`] asks for its node's position and path as a tuple struct of this name.
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Problem> {
        if name != AT_MARKER {
            return self.deserialize_any(visitor);
        }
        visitor.visit_seq(AtReader {
            reader: &self,
            next: 0,
        })
    }

    /// A struct field's name (a mapping's key).
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        match &self.node.value {
            Value::Str(name) => visitor.visit_str(name),
            _ => {
                let shown = self.node.show(self.reading.text);
                Err(Problem::new(format!("key is not a string: {shown}")))
            }
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Problem> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u128 f32 f64 char bytes byte_buf unit unit_struct
        tuple enum
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
        let parent = self.parent;
        let Some((i, item)) = self.items.find(|(_, n)| !parent.is_left_out(n)) else {
            return Ok(None);
        };
        parent
            .read_child(seed, item, index(&parent.path, i))
            .map(Some)
    }
}

/// The entries of a mapping, skipping those whose key or value is left out.
struct EntriesReader<'r, 'a, I> {
    entries: I,
    /// A struct's field names: a field with nothing after it (`max_cost:`) is not given, so
    /// it is skipped (an unknown key is not: it is reported whatever its value).
    fields: &'static [&'static str],
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
        let fields = self.fields;
        let not_given = |k: &Node, v: &Node| {
            v.value == Value::Null
                && matches!(&k.value, Value::Str(name) if fields.contains(&name.as_str()))
        };
        let skipped =
            |k: &Node, v: &Node| parent.is_left_out(k) || parent.is_left_out(v) || not_given(k, v);
        let Some((key, value)) = self.entries.find(|(k, v)| !skipped(k, v)) else {
            return Ok(None);
        };
        self.value = Some((value, join(&parent.path, &key.show(parent.reading.text))));
        // A key is blamed with the mapping's path: "settings: unknown key 'colour'".
        parent.read_child(seed, key, parent.path.clone()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Problem> {
        let Some((value, path)) = self.value.take() else {
            return Err(Problem::new("a value without a key".to_owned()));
        };
        self.parent.read_child(seed, value, path)
    }
}

/// The name of the tuple struct [`At`] asks for: [`NodeReader`] answers it with the node's
/// line, column and path, then the value itself.
const AT_MARKER: &str = "$ratelimiter::config::At";

struct AtReader<'r, 'a> {
    reader: &'r NodeReader<'a>,
    next: usize,
}

impl<'de> SeqAccess<'de> for AtReader<'_, '_> {
    type Error = Problem;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Problem> {
        let NodeReader { node, path, .. } = self.reader;
        self.next += 1;
        match self.next {
            1 => seed.deserialize(node.pos.line.into_deserializer()),
            2 => seed.deserialize(node.pos.column.into_deserializer()),
            3 => seed.deserialize(path.clone().into_deserializer()),
            4 => self.reader.read_child(seed, node, path.clone()),
            _ => return Ok(None),
        }
        .map(Some)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for At<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_tuple_struct(AT_MARKER, 4, AtVisitor(PhantomData))
    }
}

struct AtVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for AtVisitor<T> {
    type Value = At<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value read from a config file")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<At<T>, A::Error> {
        let missing = || de::Error::custom("a position is read only from a config file");
        let line = seq.next_element()?.ok_or_else(missing)?;
        let column = seq.next_element()?.ok_or_else(missing)?;
        let path = seq.next_element()?.ok_or_else(missing)?;
        let value = seq.next_element()?.ok_or_else(missing)?;
        let pos = Pos { line, column };
        Ok(At { value, pos, path })
    }
}

impl<'de, T: FromStr<Err: fmt::Display>> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map(Parsed).map_err(de::Error::custom)
    }
}

/// Text that is not blank (a name, a domain).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NotBlank(pub String);

impl<'de> Deserialize<'de> for NotBlank {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match String::deserialize(deserializer)? {
            text if text.trim().is_empty() => Err(de::Error::custom("must not be empty")),
            text => Ok(NotBlank(text)),
        }
    }
}

/// A whole number of at least 1 (a limit, a burst, a multiplier, a cost).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct AtLeastOne(pub u64);

impl<'de> Deserialize<'de> for AtLeastOne {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match u64::deserialize(deserializer)? {
            0 => Err(de::Error::custom("must be at least 1")),
            n => Ok(AtLeastOne(n)),
        }
    }
}

/// `deserialize_with`: [`NotBlank`] text.
pub(crate) fn non_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    NotBlank::deserialize(deserializer).map(|NotBlank(text)| text)
}

/// `deserialize_with`: [`AtLeastOne`].
pub(crate) fn at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    AtLeastOne::deserialize(deserializer).map(|AtLeastOne(n)| n)
}

/// `deserialize_with`: a value read from text with its `FromStr`.
pub(crate) fn from_text<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err: fmt::Display>,
{
    Parsed::deserialize(deserializer).map(|Parsed(value)| value)
}
