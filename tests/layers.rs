//! The crate's layers hold: no file imports from a layer above its own, a bundled
//! adapter imports no other adapter, no files import each other in a circle, and no
//! source file grows past the size a reader takes in at once.
//!
//! The layers, from the ground up (the crate docs draw them):
//!
//! 1. `vocab/`: events, names, tenants, time, retry and cron values;
//! 2. `backend/`: the adapter contract (`Store`, `Transport` and their types);
//! 3. `adapters/`: the bundled adapters, each on the contract alone;
//! 4. `engine/`: builder, dispatcher, batch runner, cron scheduler, step context;
//! 5. `orderflow/`, `http/`, `testing`, `conformance`, `sim/`: built on the engine.
//!
//! A file depends on the file that *defines* what it names: a path through a
//! module's re-exports (`crate::engine::StepContext`) is followed to the file the
//! item comes from (`engine/context.rs`), so a facade `mod.rs` hides no circle.
//! The reading is lexical (comments and string literals are skipped, `use` trees
//! expanded, inline `mod name { .. }` blocks tracked), which is all this crate's
//! code needs: it has no glob re-exports and no `#[path]` modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a file under `src/` may be, in lines (tests inside it included).
const MAX_LINES: usize = 650;

/// A module path from the crate root, such as `["engine", "context"]`.
type ModPath = Vec<String>;

struct SourceFile {
    /// Path relative to `src/`, with `/` separators.
    name: String,
    module: ModPath,
    lines: usize,
    /// Every `crate::`, `super::` or `self::` path the code names, made absolute.
    paths: Vec<ModPath>,
    /// Names brought into this module by `use` (re-exports and private imports),
    /// each with the absolute path it stands for; `None` where it is external.
    imports: BTreeMap<String, Option<ModPath>>,
}

fn layer(module: &[String]) -> Option<(u8, &'static str)> {
    match module.first().map(String::as_str) {
        Some("vocab") => Some((1, "vocabulary")),
        Some("backend") => Some((2, "adapter contract")),
        Some("adapters") => Some((3, "adapters")),
        Some("engine") => Some((4, "engine")),
        Some("orderflow" | "http" | "testing" | "conformance" | "sim" | "prometheus" | "otel") => {
            Some((5, "built on the engine"))
        }
        _ => None,
    }
}

#[test]
fn no_file_imports_from_a_higher_layer() {
    let graph = Graph::load();
    let mut wrong = Vec::new();
    for (from, targets) in &graph.edges {
        let source = &graph.files[from];
        let Some((own, own_name)) = layer(&source.module) else {
            continue;
        };
        for to in targets {
            let target = &graph.files[to];
            let Some((theirs, their_name)) = layer(&target.module) else {
                continue;
            };
            if theirs > own {
                wrong.push(format!(
                    "{from} ({own_name}) imports {to} ({their_name}), a higher layer"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn each_adapter_depends_on_the_contract_and_the_vocabulary_only() {
    let graph = Graph::load();
    let mut wrong = Vec::new();
    for (from, targets) in &graph.edges {
        let source = &graph.files[from];
        if source.module.first().map(String::as_str) != Some("adapters") {
            continue;
        }
        for to in targets {
            let target = &graph.files[to];
            let same_adapter = target.module.len() > 1 && target.module[..2] == source.module[..2];
            let below = matches!(layer(&target.module), Some((1 | 2, _)));
            if !same_adapter && !below {
                wrong.push(format!("{from} imports {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let graph = Graph::load();
    let circles: Vec<String> = graph
        .strongly_connected()
        .into_iter()
        .filter(|files| files.len() > 1)
        .map(|files| {
            let inside = |to: &String| files.contains(to);
            files
                .iter()
                .map(|from| {
                    let to: Vec<&str> = graph.edges[from]
                        .iter()
                        .filter(|to| inside(to))
                        .map(String::as_str)
                        .collect();
                    format!("  {from} -> {}", to.join(", "))
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert!(
        circles.is_empty(),
        "files that import each other in a circle:\n{}",
        circles.join("\n\n")
    );
}

#[test]
fn no_source_file_is_longer_than_a_reader_takes_in() {
    let graph = Graph::load();
    let long: Vec<String> = graph
        .files
        .values()
        .filter(|file| file.lines > MAX_LINES)
        .map(|file| format!("{}: {} lines", file.name, file.lines))
        .collect();
    assert!(
        long.is_empty(),
        "split these by job (at most {MAX_LINES} lines):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_reading_sees_the_imports_it_must() {
    // Guards the lexer itself: a reading that saw no edges would pass the checks
    // above vacuously.
    let graph = Graph::load();
    let uses = |from: &str, to: &str| graph.edges.get(from).is_some_and(|t| t.contains(to));
    assert!(uses("engine/context.rs", "engine/txn.rs"));
    assert!(uses("engine/context.rs", "backend/error.rs"));
    assert!(uses("backend/store.rs", "backend/completion.rs"));
    assert!(uses("adapters/memory/mod.rs", "backend/delivery.rs"));
    // Through the facades: `crate::engine::Step` is defined in engine/step.rs.
    assert!(uses("orderflow/config.rs", "engine/step.rs"));
    // `use super::*` in a test module names the file itself, not its parent.
    assert!(!uses("vocab/cron.rs", "vocab/mod.rs"));
    assert!(graph.files.len() > 50, "read {} files", graph.files.len());
}

// === The graph ===

struct Graph {
    files: BTreeMap<String, SourceFile>,
    /// File name -> the files that define what it names.
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn load() -> Graph {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = BTreeMap::new();
        for path in rust_files(&src) {
            let name = path
                .strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).expect("readable source");
            let file = SourceFile::read(name.clone(), &text);
            files.insert(name, file);
        }
        let by_module: BTreeMap<ModPath, String> = files
            .values()
            .map(|f| (f.module.clone(), f.name.clone()))
            .collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in files.values() {
            let targets = edges.entry(file.name.clone()).or_default();
            for path in &file.paths {
                if let Some(target) = defining_file(path, &files, &by_module, 0) {
                    if target != file.name {
                        targets.insert(target);
                    }
                }
            }
        }
        Graph { files, edges }
    }

    /// Tarjan's algorithm: the groups of files that reach each other.
    fn strongly_connected(&self) -> Vec<Vec<String>> {
        struct State<'a> {
            graph: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            out: Vec<Vec<String>>,
        }
        fn visit<'a>(s: &mut State<'a>, v: &'a str) {
            let n = s.index.len();
            s.index.insert(v, n);
            s.low.insert(v, n);
            s.stack.push(v);
            s.on_stack.insert(v);
            let graph = s.graph;
            for w in graph.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
            if s.low[v] == s.index[v] {
                let mut group = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack.remove(w);
                    group.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                group.sort();
                s.out.push(group);
            }
        }
        let mut state = State {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            out: Vec::new(),
        };
        for name in self.files.keys() {
            if !state.index.contains_key(name.as_str()) {
                visit(&mut state, name);
            }
        }
        state.out
    }
}

/// The file that defines the item `path` names: the deepest module file on the
/// path, then through that module's imports if the next name is one of them.
fn defining_file(
    path: &[String],
    files: &BTreeMap<String, SourceFile>,
    by_module: &BTreeMap<ModPath, String>,
    depth: usize,
) -> Option<String> {
    if depth > 16 {
        return None;
    }
    let (len, name) = (0..=path.len())
        .rev()
        .find_map(|len| by_module.get(&path[..len]).map(|name| (len, name)))?;
    let file = &files[name];
    if let Some(next) = path.get(len) {
        if let Some(target) = file.imports.get(next) {
            let mut through = target.clone()?;
            through.extend_from_slice(&path[len + 1..]);
            return defining_file(&through, files, by_module, depth + 1);
        }
    }
    Some(name.clone())
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

// === Reading one file ===

impl SourceFile {
    fn read(name: String, text: &str) -> SourceFile {
        let module = module_of(&name);
        let code = strip_comments_and_literals(text);
        let mut file = SourceFile {
            name,
            lines: text.lines().count(),
            paths: Vec::new(),
            imports: BTreeMap::new(),
            module: module.clone(),
        };
        let tokens = tokenize(&code);
        // The module each token sits in: the file's, plus inline `mod x { .. }`.
        let mut inline: Vec<(String, usize)> = Vec::new();
        let mut depth = 0usize;
        let mut i = 0;
        while i < tokens.len() {
            let here: ModPath = module
                .iter()
                .cloned()
                .chain(inline.iter().map(|(m, _)| m.clone()))
                .collect();
            match tokens[i].as_str() {
                "{" => depth += 1,
                "}" => {
                    depth = depth.saturating_sub(1);
                    if inline.last().is_some_and(|(_, d)| *d == depth) {
                        inline.pop();
                    }
                }
                "mod" if tokens.get(i + 2).is_some_and(|t| t == "{") => {
                    inline.push((tokens[i + 1].clone(), depth));
                    depth += 1;
                    i += 3;
                    continue;
                }
                "use" => {
                    let end = (i..tokens.len())
                        .find(|&j| tokens[j] == ";")
                        .unwrap_or(tokens.len());
                    let at_file_level = inline.is_empty();
                    // `pub use` (any visibility) re-exports: a facade, not a use.
                    let re_export = i > 0 && (tokens[i - 1] == "pub" || tokens[i - 1] == ")");
                    for (leaf, path) in expand_use(&tokens[i + 1..end]) {
                        let absolute = absolute(&path, &here, at_file_level.then_some(&file));
                        if let (Some(abs), false) = (&absolute, re_export) {
                            file.paths.push(abs.clone());
                        }
                        if at_file_level && leaf != "*" && leaf != "self" {
                            file.imports.insert(leaf, absolute);
                        }
                    }
                    i = end + 1;
                    continue;
                }
                "crate" | "super" | "self" | "$crate" => {
                    let mut path = vec![tokens[i].clone()];
                    let mut j = i + 1;
                    while tokens.get(j).is_some_and(|t| t == "::")
                        && tokens.get(j + 1).is_some_and(|t| is_ident(t))
                    {
                        path.push(tokens[j + 1].clone());
                        j += 2;
                    }
                    if path.len() > 1 {
                        if let Some(abs) = absolute(&path, &here, None) {
                            file.paths.push(abs);
                        }
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        file
    }
}

/// The module a file under `src/` is: `engine/mod.rs` and `engine.rs` are `engine`.
fn module_of(name: &str) -> ModPath {
    let stem = name.trim_end_matches(".rs");
    let mut parts: ModPath = stem.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// A path made absolute from the module `here`. A path with no `crate`, `super`
/// or `self` in front is relative: to a child module if `file` declares one
/// (known from its imports and the files beside it), else external (`None`).
fn absolute(path: &[String], here: &[String], file: Option<&SourceFile>) -> Option<ModPath> {
    let mut out: ModPath = here.to_vec();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate" | "$crate") => {
            out.clear();
            rest = &path[1..];
        }
        Some("self") => rest = &path[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                out.pop()?;
                rest = &rest[1..];
            }
        }
        Some(first) => {
            // `use child::Item;` in a module file: a child if a file for it exists.
            let file = file?;
            let child = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
            let dir = if file.name.ends_with("mod.rs") || file.name == "lib.rs" {
                child.join(Path::new(&file.name).parent().unwrap_or(Path::new("")))
            } else {
                child.join(file.name.trim_end_matches(".rs"))
            };
            let exists =
                dir.join(format!("{first}.rs")).exists() || dir.join(first).join("mod.rs").exists();
            if !exists {
                return None;
            }
        }
        None => return None,
    }
    out.extend(rest.iter().cloned());
    Some(out)
}

/// The (leaf name, path) pairs a `use` tree brings in; `a::{b, c::d as e}` gives
/// (b, a::b) and (e, a::c::d).
fn expand_use(tokens: &[String]) -> Vec<(String, ModPath)> {
    fn tree(tokens: &[String], at: &mut usize, prefix: &ModPath, out: &mut Vec<(String, ModPath)>) {
        let mut path = prefix.clone();
        while *at < tokens.len() {
            let t = tokens[*at].as_str();
            match t {
                "{" => {
                    *at += 1;
                    loop {
                        tree(tokens, at, &path, out);
                        match tokens.get(*at).map(String::as_str) {
                            Some(",") => {
                                *at += 1;
                                if tokens.get(*at).is_some_and(|t| t == "}") {
                                    *at += 1;
                                    return;
                                }
                            }
                            Some("}") => {
                                *at += 1;
                                return;
                            }
                            _ => return,
                        }
                    }
                }
                "::" => *at += 1,
                "," | "}" => break,
                "as" => {
                    let alias = tokens.get(*at + 1).cloned().unwrap_or_default();
                    *at += 2;
                    out.push((alias, path));
                    return;
                }
                _ => {
                    path.push(t.to_string());
                    *at += 1;
                }
            }
        }
        if path.len() > prefix.len() {
            let leaf = path.last().cloned().unwrap_or_default();
            let path = if leaf == "self" {
                path[..path.len() - 1].to_vec()
            } else {
                path
            };
            let leaf = if leaf == "self" {
                path.last().cloned().unwrap_or_default()
            } else {
                leaf
            };
            out.push((leaf, path));
        }
    }
    let mut out = Vec::new();
    let mut at = 0;
    tree(tokens, &mut at, &Vec::new(), &mut out);
    out
}

fn is_ident(token: &str) -> bool {
    token
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

/// Identifiers, `::`, and single punctuation characters.
fn tokenize(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".to_string());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// The code with comments removed and string and character literals emptied, so
/// that neither a doc link nor a string's braces count as code.
fn strip_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('#') || next == Some('"'))
            && (!prev_is_ident(&chars, i) || (chars[i - 1] == 'b' && !prev_is_ident(&chars, i - 1)))
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{7f}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}
