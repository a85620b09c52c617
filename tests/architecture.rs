//! The module structure as a rule the build checks: dependencies point one way.
//!
//! Read from the sources (`crate::` and `super::` paths outside comments and test
//! modules): a module imports only modules of a lower layer, and no two files import
//! each other, directly or round a longer cycle — neither between top-level modules nor
//! between the files of one module. The layer table below is the map a maintainer
//! reads first; a new module must be placed in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules by layer, lowest first. A module may import modules of a lower
/// layer only.
const LAYERS: &[(&str, &[&str])] = &[
    // The connection workers hand their gathered log lines on when they park; one thread
    // writes them out.
    ("the log's writer", &["logbatch", "logwrite"]),
    // Which allocator the features choose; each binary installs it.
    ("the allocator", &["allocator"]),
    // The connection workers' threads, and which worker the calling thread is: what a
    // count kept per worker is kept by.
    ("the connection workers", &["workers"]),
    // Short texts read eight bytes at a time: the ids, the log's quoted values.
    ("text a word at a time", &["words"]),
    (
        "plain values and leaf helpers",
        &[
            "secret",
            "systemd",
            "state_dir",
            "metrics",
            "clock",
            "calendar",
            "logfmt",
        ],
    ),
    ("checks and codecs", &["guard", "tls", "forward"]),
    ("envelope layers, shared state", &["envelope", "fleet"]),
    ("validated config, refusal mapping", &["config", "error"]),
    ("egress: outbox, journal, peer clients", &["egress"]),
    (
        "runtime: the live objects built from a config",
        &["runtime"],
    ),
    ("the ingress pipeline", &["pipeline"]),
    ("reload and the status page", &["reload", "status"]),
    (
        "background tasks and the admin listener",
        &["background", "admin"],
    ),
    ("the server: listeners and drain", &["server"]),
    ("tools the binary runs", &["online", "probe", "demo"]),
    ("tools built on tools", &["portal_sim"]),
];

/// `guard::dns` for `src/guard/dns.rs`, `guard` for `src/guard/mod.rs`.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.is_empty() || parts == ["lib"] || parts == ["main"] {
        return None;
    }
    // Unit-test files (`foo/tests.rs`) are test code.
    if parts.last().is_some_and(|p| p == "tests") {
        return None;
    }
    Some(parts.join("::"))
}

fn sources(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            if let Some(m) = module_of(path.strip_prefix(root).unwrap()) {
                out.insert(m, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
}

/// The code without comments and without its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path named after `prefix` (`crate::`, `super::`), with `{a::b, c}` groups
/// expanded one level deep: `crate::{a::b, c}` gives `a::b` and `c`.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before_ok = rest[..i].chars().next_back().map_or(true, |c| !is_ident(c));
        rest = &rest[i + prefix.len()..];
        if !before_ok {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.push(item);
            rest = &group[end.min(group.len())..];
        } else {
            let len = rest
                .find(|c: char| !(is_ident(c) || c == ':'))
                .unwrap_or(rest.len());
            out.push(rest[..len].to_string());
        }
    }
    out.into_iter()
        .map(|p| {
            p.trim()
                .trim_end_matches(':')
                .split("::")
                .filter(|s| !s.is_empty() && s.chars().all(is_ident))
                .collect::<Vec<_>>()
                .join("::")
        })
        .filter(|p| !p.is_empty())
        .collect()
}

/// The longest known module `path` starts with.
fn resolve<'a>(path: &str, modules: &'a BTreeSet<String>) -> Option<&'a String> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len())
        .rev()
        .find_map(|n| modules.get(&segs[..n].join("::")))
}

/// File-level edges: module → modules it names.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    sources(&root, &root, &mut files);
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &files {
        let code = code(text);
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p);
        let mut named: Vec<String> = paths_after(&code, "crate::");
        named.extend(paths_after(&code, "super::").into_iter().map(|p| {
            if parent.is_empty() {
                p
            } else {
                format!("{parent}::{p}")
            }
        }));
        let targets = out.entry(m.clone()).or_default();
        for p in named {
            if let Some(t) = resolve(&p, &modules) {
                // A module's own children are its parts, not a dependency.
                if t != m && !t.starts_with(&format!("{m}::")) {
                    targets.insert(t.clone());
                }
            }
        }
    }
    out
}

fn top(m: &str) -> &str {
    m.split("::").next().unwrap_or(m)
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for next in graph.get(n).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n.as_str()) {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_reader_sees_imports_through_groups_and_past_comments() {
    let src = "use crate::{a::b, c::{D, E}};\n// crate::commented\nlet x = super::f::g();\n";
    let code = code(src);
    assert_eq!(paths_after(&code, "crate::"), ["a::b", "c"]);
    assert_eq!(paths_after(&code, "super::"), ["f::g"]);
    let modules: BTreeSet<String> = ["a".to_string(), "a::b".to_string()].into();
    assert_eq!(
        resolve("a::b::C", &modules).map(String::as_str),
        Some("a::b")
    );
    assert_eq!(resolve("a::x", &modules).map(String::as_str), Some("a"));
    let mut g = BTreeMap::new();
    g.insert("x".to_string(), BTreeSet::from(["y".to_string()]));
    g.insert("y".to_string(), BTreeSet::from(["x".to_string()]));
    assert!(find_cycle(&g).is_some());
    g.remove("y");
    assert!(find_cycle(&g).is_none());
}

#[test]
fn every_top_level_module_has_a_layer_and_imports_only_below_it() {
    let layer: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, ms))| ms.iter().map(move |m| (*m, i)))
        .collect();
    let mut problems = Vec::new();
    for (from, targets) in edges() {
        let Some(&lf) = layer.get(top(&from)) else {
            problems.push(format!("{from}: module not in the layer table"));
            continue;
        };
        for to in targets {
            if top(&to) == top(&from) {
                continue;
            }
            match layer.get(top(&to)) {
                Some(&lt) if lt < lf => {}
                Some(&lt) => problems.push(format!(
                    "{from} ({}) imports {to} ({}): dependencies point down only",
                    LAYERS[lf].0, LAYERS[lt].0
                )),
                None => problems.push(format!("{to}: module not in the layer table")),
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn no_import_cycle_between_the_files_of_a_module() {
    let mut within: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, targets) in edges() {
        let graph = within.entry(top(&from).to_string()).or_default();
        let tos = graph.entry(from.clone()).or_default();
        tos.extend(targets.into_iter().filter(|t| top(t) == top(&from)));
    }
    let cycles: Vec<Vec<String>> = within.values().filter_map(find_cycle).collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}
