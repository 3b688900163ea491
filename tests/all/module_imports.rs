//! The library's modules do not import each other: reads `src/`, follows the
//! `mod` declarations from `lib.rs`, and collects every `crate::`, `super::`
//! and `self::` path (in `use` trees and in code).
//!
//! A module's private submodules (`mod x;`) count as part of it: only it can
//! name them. Paths between a module and its own submodules are not counted
//! (a parent re-exporting its children is ordinary).
//!
//! Between top-level modules, some pairs still import each other; they are
//! listed in `KNOWN_TOP_LEVEL_PAIRS`, and the list must stay exact, so that a
//! new pair fails here and a removed one shortens the list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type ModulePath = Vec<String>;

/// Top-level pairs that import each other today (through `delivery::retry`,
/// `delivery::signature` and `Plugin`).
const KNOWN_TOP_LEVEL_PAIRS: [(&str, &str); 2] = [("config", "delivery"), ("delivery", "plugin")];

#[test]
fn no_two_modules_import_each_other() {
    let modules = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        modules.len() > 20,
        "read the library's modules: {modules:?}"
    );
    assert_eq!(
        mutual(&unit_graph(&modules)),
        Vec::<(String, String)>::new()
    );
}

#[test]
fn between_top_level_modules_only_the_known_pairs_import_each_other() {
    let modules = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let top_level: BTreeMap<String, BTreeSet<String>> =
        unit_graph(&modules)
            .into_iter()
            .fold(BTreeMap::new(), |mut graph, (from, to)| {
                let top = |unit: &str| unit.split("::").next().unwrap_or("").to_string();
                let targets: &mut BTreeSet<String> = graph.entry(top(&from)).or_default();
                targets.extend(to.iter().map(|unit| top(unit)));
                graph
            });
    let known: Vec<(String, String)> = KNOWN_TOP_LEVEL_PAIRS
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(mutual(&top_level), known);
}

/// The check itself finds a mutual import, also through a `use` tree, a
/// re-export of the crate root, `super::` and a private submodule.
#[test]
fn the_check_finds_mutual_imports() {
    let modules = |sources: &[(&str, &str)]| -> BTreeMap<ModulePath, String> {
        sources
            .iter()
            .map(|(path, source)| (split(path), source.to_string()))
            .collect()
    };
    let found = |sources: &[(&str, &str)]| mutual(&unit_graph(&modules(sources)));
    let pair = vec![("a".to_string(), "b::c".to_string())];
    let root = "mod a; pub mod b; pub use b::c as short;";
    let b = "pub mod c;";
    assert_eq!(
        found(&[
            ("", root),
            ("a", "use crate::b::c::X;"),
            ("b", b),
            ("b::c", "fn f() { crate::a::g() }")
        ]),
        pair
    );
    assert_eq!(
        found(&[
            ("", root),
            ("a", "mod inner;"),
            ("a::inner", "use crate::{short::X, config};"),
            ("b", b),
            ("b::c", "use super::super::a::Y;")
        ]),
        pair
    );
    // Comments and strings are not code; a submodule may use its parent.
    assert_eq!(
        found(&[
            ("", root),
            (
                "a",
                "// crate::b::c\nfn f() -> &'static str { \"crate::b::c\" }"
            ),
            ("b", b),
            ("b::c", "use crate::a::Y; use super::Z;")
        ]),
        vec![]
    );
}

fn split(path: &str) -> ModulePath {
    path.split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every module of the library with a file, by path (the root is `[]`).
fn load(src: &Path) -> BTreeMap<ModulePath, String> {
    let mut modules = BTreeMap::new();
    let mut todo = vec![(ModulePath::new(), src.join("lib.rs"))];
    while let Some((path, file)) = todo.pop() {
        let source = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let dir = if path.is_empty() || file.ends_with("mod.rs") {
            file.parent().unwrap().to_path_buf()
        } else {
            file.with_extension("")
        };
        for (name, _) in declared(&tokens(&source)) {
            let single = dir.join(format!("{name}.rs"));
            let file = if single.exists() {
                single
            } else {
                dir.join(&name).join("mod.rs")
            };
            let mut child = path.clone();
            child.push(name);
            todo.push((child, file));
        }
        modules.insert(path, source);
    }
    modules
}

/// For each unit (a module with its private submodules), the units it names.
fn unit_graph(modules: &BTreeMap<ModulePath, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut private = BTreeSet::new();
    for (path, source) in modules {
        for (name, is_private) in declared(&tokens(source)) {
            if is_private && !path.is_empty() {
                let mut child = path.clone();
                child.push(name);
                private.insert(child);
            }
        }
    }
    let unit = |path: &[String]| -> ModulePath {
        let mut path = path.to_vec();
        while private.contains(&path) {
            path.pop();
        }
        path
    };
    let aliases = root_aliases(modules.get(&ModulePath::new()).map_or("", String::as_str));
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, source) in modules.iter().filter(|(path, _)| !path.is_empty()) {
        let from = unit(path);
        for named in named_paths(path, &tokens(source)) {
            let named = match named.split_first() {
                Some((first, rest)) if aliases.contains_key(first) => {
                    [aliases[first].clone(), rest.to_vec()].concat()
                }
                _ => named,
            };
            let Some(module) = (1..=named.len())
                .rev()
                .map(|n| &named[..n])
                .find(|prefix| modules.contains_key(*prefix))
            else {
                continue;
            };
            let to = unit(module);
            let related = to.starts_with(&from) || from.starts_with(&to);
            if !related {
                graph
                    .entry(from.join("::"))
                    .or_default()
                    .insert(to.join("::"));
            }
        }
    }
    graph
}

/// Pairs (in order) of which each names the other.
fn mutual(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (a, targets) in graph {
        for b in targets {
            if a < b && graph.get(b).is_some_and(|back| back.contains(a)) {
                pairs.push((a.clone(), b.clone()));
            }
        }
    }
    pairs
}

/// The crate root's `pub use a::b;` and `pub use a::{b, c as d};`: name → path.
fn root_aliases(source: &str) -> BTreeMap<String, ModulePath> {
    let tokens = tokens(source);
    let mut aliases = BTreeMap::new();
    for (i, token) in tokens.iter().enumerate() {
        if token == "use" && i > 0 && tokens[i - 1] == "pub" {
            let (trees, _) = tree(&tokens, i + 1, &[]);
            for (path, name) in trees {
                aliases.insert(name, path);
            }
        }
    }
    aliases
}

/// `mod x;` declarations: (name, whether private).
fn declared(tokens: &[String]) -> Vec<(String, bool)> {
    let mut found = Vec::new();
    for i in 0..tokens.len().saturating_sub(2) {
        if tokens[i] == "mod" && tokens[i + 2] == ";" {
            let private = i == 0 || (tokens[i - 1] != "pub" && tokens[i - 1] != ")");
            found.push((tokens[i + 1].clone(), private));
        }
    }
    found
}

/// Every path starting with `crate`, `super` or `self`, made absolute.
fn named_paths(module: &[String], tokens: &[String]) -> Vec<ModulePath> {
    let mut paths = Vec::new();
    // Inline modules (`mod tests { ... }`): their names and the depth inside them.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].as_str() {
            "{" => {
                depth += 1;
                if i >= 2 && tokens[i - 2] == "mod" {
                    inline.push((tokens[i - 1].clone(), depth));
                }
            }
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            "crate" | "super" | "self"
                if tokens.get(i + 1).is_some_and(|t| t == "::")
                    && (i == 0 || tokens[i - 1] != "::") =>
            {
                let mut here = module.to_vec();
                here.extend(inline.iter().map(|(name, _)| name.clone()));
                let (trees, end) = tree(tokens, i, &[]);
                for (path, _) in trees {
                    let mut absolute = ModulePath::new();
                    for (n, segment) in path.iter().enumerate() {
                        match segment.as_str() {
                            "crate" if n == 0 => absolute.clear(),
                            "self" if n == 0 => absolute = here.clone(),
                            "super" if n == 0 => {
                                absolute = here.clone();
                                absolute.pop();
                            }
                            "super" => {
                                absolute.pop();
                            }
                            _ => absolute.push(segment.clone()),
                        }
                    }
                    paths.push(absolute);
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    paths
}

/// A path or `use` tree from `tokens[start]`: every (path, name it binds),
/// and where it ends.
fn tree(tokens: &[String], start: usize, prefix: &[String]) -> (Vec<(ModulePath, String)>, usize) {
    let is_ident = |t: &str| {
        t.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
    };
    let mut path = prefix.to_vec();
    let mut i = start;
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("{") => {
                let mut all = Vec::new();
                i += 1;
                while tokens.get(i).is_some_and(|t| t != "}") {
                    let (trees, end) = tree(tokens, i, &path);
                    all.extend(trees);
                    i = end;
                    if tokens.get(i).is_some_and(|t| t == ",") {
                        i += 1;
                    }
                }
                return (all, i + 1);
            }
            Some("*") => return (vec![(path, String::new())], i + 1),
            Some("self") if !path.is_empty() && tokens.get(i + 1).is_none_or(|t| t != "::") => {
                i += 1;
            }
            Some(t) if is_ident(t) => {
                path.push(t.to_string());
                i += 1;
            }
            _ => {}
        }
        if tokens.get(i).is_some_and(|t| t == "::") {
            i += 1;
            continue;
        }
        let mut name = path.last().cloned().unwrap_or_default();
        if tokens.get(i).is_some_and(|t| t == "as") {
            name = tokens.get(i + 1).cloned().unwrap_or_default();
            i += 2;
        }
        return (vec![(path, name)], i);
    }
}

/// Identifiers, `::` and single punctuation, without comments, strings and
/// character literals.
fn tokens(source: &str) -> Vec<String> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == 'r' && matches!(next, Some('"' | '#')) {
            // A raw string r"..." or r#"..."#; else an identifier starting with r.
            let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
            if chars.get(i + 1 + hashes) == Some(&'"') {
                let close: String = std::iter::once('"')
                    .chain("#".repeat(hashes).chars())
                    .collect();
                let rest: String = chars[i + 2 + hashes..].iter().collect();
                let len = rest.find(&close).map_or(rest.len(), |at| at + close.len());
                i += 2 + hashes + rest[..len].chars().count();
            } else {
                tokens.push("r".to_string());
                i += 1;
            }
        } else if c == '\'' {
            // 'x' and '\n' are characters; 'a (a lifetime) is skipped as a quote.
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && next == Some(':') {
            tokens.push("::".to_string());
            i += 2;
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            i += 1;
        }
    }
    tokens
}
