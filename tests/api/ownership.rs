//! Who owns what, held true by reading the code: every table the migrations create and
//! every trigger function belongs to exactly one crate (its `OWNED`); a trigger runs a
//! function of its table's owner; a function names only its owner's tables; and no
//! crate's SQL names another crate's table — it calls a function of the owner instead.
//! Also the crate drawing in `docs/development.md` against the crates' manifests.
//!
//! SQL is found by its keywords, which the code writes in capitals: a word after
//! `FROM`, `JOIN`, `INTO`, `UPDATE`, `TABLE`, `TRUNCATE` or `REFERENCES` names a table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use printworks_common::db::Owned;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Each crate that owns something, with the folder its code is in.
fn owners() -> Vec<(&'static str, Owned)> {
    vec![
        ("common", printworks_common::db::OWNED),
        ("account", printworks_account::OWNED),
        ("org", printworks_org::OWNED),
        ("pairing", printworks_pairing::OWNED),
        ("relay", printworks_relay::OWNED),
    ]
}

/// Every crate whose code is checked (those that own nothing may name nothing).
const CRATES: &[&str] = &[
    "common",
    "proto",
    "gcode",
    "account",
    "org",
    "pairing",
    "relay",
    "agent",
    "printworks",
];

fn owner_of_table(table: &str) -> Option<&'static str> {
    owners()
        .into_iter()
        .find(|(_, o)| o.tables.contains(&table))
        .map(|(c, _)| c)
}

fn owner_of_function(function: &str) -> Option<&'static str> {
    owners()
        .into_iter()
        .find(|(_, o)| o.functions.contains(&function))
        .map(|(c, _)| c)
}

/// Identifier-like words and single punctuation, in order.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        let ident = c.is_ascii_alphanumeric() || c == '_';
        match (ident, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(&text[s..i]);
                start = None;
            }
            _ => {}
        }
        if !ident && !c.is_whitespace() {
            out.push(&text[i..i + c.len_utf8()]);
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// The tables `text` names in SQL (the word after a table keyword).
fn tables_named(text: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "FROM",
        "JOIN",
        "INTO",
        "UPDATE",
        "TABLE",
        "TRUNCATE",
        "REFERENCES",
    ];
    let w = words(text);
    let mut named = BTreeSet::new();
    for (i, word) in w.iter().enumerate() {
        if KEYWORDS.contains(word)
            && let Some(next) = w.get(i + 1)
            && next.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            named.insert((*next).to_owned());
        }
    }
    named
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// What the migrations leave: tables, functions (with their latest bodies) and
/// triggers (by name: table and function).
#[derive(Default)]
struct Schema {
    tables: BTreeSet<String>,
    functions: BTreeMap<String, String>,
    triggers: BTreeMap<String, (String, String)>,
}

fn schema() -> Schema {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut s = Schema::default();
    for file in files {
        let text: String = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| l.split("--").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        // Function bodies first: between `$$` pairs, named by the CREATE before them.
        let mut rest = text.as_str();
        let mut outside = String::new();
        while let Some(open) = rest.find("$$") {
            let head = &rest[..open];
            let after = &rest[open + 2..];
            let close = after.find("$$").expect("a closed $$ body");
            let w = words(head);
            let name = w
                .iter()
                .rposition(|x| *x == "FUNCTION")
                .and_then(|i| w.get(i + 1))
                .expect("a $$ body belongs to a function");
            s.functions
                .insert((*name).to_owned(), after[..close].to_owned());
            outside.push_str(head);
            rest = &after[close + 2..];
        }
        outside.push_str(rest);
        for statement in outside.split(';') {
            let w = words(statement);
            let at = |k: &str| w.iter().position(|x| *x == k);
            match (w.first().copied(), w.get(1).copied()) {
                (Some("CREATE"), Some("TABLE")) => {
                    s.tables.insert(w[2].to_owned());
                }
                (Some("ALTER"), Some("TABLE")) => {
                    if let (Some(i), Some(_)) = (at("RENAME"), at("TO"))
                        && w.get(i + 1) == Some(&"TO")
                    {
                        s.tables.remove(w[2]);
                        s.tables.insert(w[i + 2].to_owned());
                    }
                }
                (Some("DROP"), Some("TABLE")) => {
                    s.tables.remove(w[2]);
                }
                (Some("CREATE"), Some("TRIGGER")) => {
                    let table = w[at("ON").unwrap() + 1].to_owned();
                    let function = w[at("FUNCTION").unwrap() + 1].to_owned();
                    s.triggers.insert(w[2].to_owned(), (table, function));
                }
                (Some("DROP"), Some("TRIGGER")) => {
                    s.triggers.remove(w[2]);
                }
                _ => {}
            }
        }
    }
    s
}

#[test]
fn every_table_and_trigger_function_has_one_owner_and_triggers_run_their_owners_code() {
    let s = schema();
    let mut failures = Vec::new();
    for table in &s.tables {
        let owners: Vec<&str> = owners()
            .into_iter()
            .filter(|(_, o)| o.tables.contains(&table.as_str()))
            .map(|(c, _)| c)
            .collect();
        if owners.len() != 1 {
            failures.push(format!("table {table} is owned by {owners:?}"));
        }
    }
    for (krate, owned) in owners() {
        for t in owned.tables {
            if !s.tables.contains(*t) {
                failures.push(format!("{krate} owns {t}, which no migration creates"));
            }
        }
        for f in owned.functions {
            if !s.functions.contains_key(*f) {
                failures.push(format!(
                    "{krate} owns function {f}, which no migration creates"
                ));
            }
        }
    }
    for (function, body) in &s.functions {
        let Some(owner) = owner_of_function(function) else {
            failures.push(format!("function {function} has no owner"));
            continue;
        };
        for t in tables_named(body) {
            if owner_of_table(&t).is_some_and(|o| o != owner) {
                failures.push(format!("{owner}'s function {function} names {t}"));
            }
        }
    }
    for (trigger, (table, function)) in &s.triggers {
        let (t, f) = (owner_of_table(table), owner_of_function(function));
        if t.is_none() || t != f {
            failures.push(format!(
                "trigger {trigger} on {table} ({t:?}) runs {function} ({f:?})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_crate_names_another_crates_table_in_sql() {
    let mut failures = Vec::new();
    let mut seen = 0;
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root().join("services").join(krate).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for table in tables_named(&text) {
                let Some(owner) = owner_of_table(&table) else {
                    continue;
                };
                seen += 1;
                if owner != *krate {
                    failures.push(format!(
                        "{}: names {table}, which {owner} owns",
                        file.strip_prefix(root()).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The scan sees the code's SQL at all.
    assert!(seen > 50, "only {seen} table names found");
}

/// `crate -> dependency, dependency` lines of the drawing in docs/development.md.
fn drawn_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(root().join("docs/development.md")).unwrap();
    let start = doc
        .find("<!-- crate-dependencies -->")
        .expect("docs/development.md has the crate drawing");
    let block = &doc[start..];
    let block = &block[block.find("```").unwrap() + 3..];
    let block = &block[block.find('\n').unwrap() + 1..block.find("\n```").unwrap()];
    let mut deps = BTreeMap::new();
    for line in block.lines().filter(|l| l.contains("->")) {
        let (from, to) = line.split_once("->").unwrap();
        let to: BTreeSet<String> = to
            .split(',')
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty() && d != "(none)")
            .collect();
        deps.insert(from.trim().to_owned(), to);
    }
    deps
}

/// The `printworks-*` crates each crate depends on (not dev-dependencies).
fn manifest_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let mut deps = BTreeMap::new();
    for krate in CRATES {
        let manifest =
            std::fs::read_to_string(root().join("services").join(krate).join("Cargo.toml"))
                .unwrap();
        let section = manifest
            .split("\n[")
            .find(|s| s.starts_with("dependencies]"))
            .unwrap_or("");
        let mine: BTreeSet<String> = section
            .lines()
            .filter_map(|l| l.trim().strip_prefix("printworks-"))
            .map(|l| l.split(['.', ' ', '=']).next().unwrap().to_owned())
            .collect();
        deps.insert((*krate).to_owned(), mine);
    }
    deps
}

#[test]
fn the_crate_drawing_in_the_docs_is_the_crates_as_they_are() {
    assert_eq!(
        drawn_dependencies(),
        manifest_dependencies(),
        "docs/development.md draws other dependencies than the manifests have"
    );
}
