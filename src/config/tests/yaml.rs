//! The YAML tree: positions, spellings kept as text, aliases, syntax errors and budgets.

use crate::config::error::Pos;
use crate::config::yaml::{Node, Value, parse};

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
    let written = "a: 2.10\nb: no\nc: 010\nd: 1_000\ne: 0x1F\nf: True\ng: .inf\nh: ''\n";
    let doc = parse(written).unwrap();
    let text = |k: &str| get(&doc, k).as_text(written).unwrap();
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
    let written = "base: &b {limit: 5}\nx: *b\ny:\n  <<: *b\n  window: 1s\n";
    let doc = parse(written).unwrap();
    assert_eq!(get(get(&doc, "x"), "limit").value, Value::Int(5));
    assert_eq!(get(get(&doc, "y"), "limit").value, Value::Int(5));
    assert_eq!(
        get(get(&doc, "y"), "window").as_text(written).unwrap(),
        "1s"
    );
}

#[test]
fn empty_documents_are_null() {
    assert!(parse("").unwrap().value == Value::Null);
    assert!(parse("# only a comment\n").unwrap().value == Value::Null);
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
