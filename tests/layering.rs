//! The walls of the workspace (ARCHITECTURE.md, "Arrows point down only"):
//! read from the source itself, so a change that reaches up fails here,
//! naming the edge.
//!
//! - Crates: core depends on neither side; the gateway never on the
//!   authority; the authority never on the gateway.
//! - Modules: within each crate, the graph of `crate::x` / `super::x`
//!   references between top-level modules has no loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The identifiers following each `prefix` in `text` (`crate::proxy::x`
/// gives `proxy`).
fn names_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// Top-level module -> the top-level modules it names, for one crate's
/// `src` (unit tests, after `#[cfg(test)]`, are left out).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("name")
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read");
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut named: Vec<&str> = names_after(text, "crate::");
        // In a file directly under src, `super::` is the crate root.
        if rel.components().count() == 1 {
            named.extend(names_after(text, "super::"));
        }
        let entry = graph.entry(top.clone()).or_default();
        for n in named {
            if n != top {
                entry.insert(n.to_owned());
            }
        }
    }
    graph
}

/// A loop in the graph, as the modules along it, if there is one.
fn find_loop(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// The `gatehouse-*` crates a manifest depends on (normal dependencies).
fn workspace_deps(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).expect("manifest");
    let deps = text
        .split("\n[dependencies]\n")
        .nth(1)
        .map(|s| s.split("\n[").next().unwrap_or(""))
        .unwrap_or("");
    deps.lines()
        .filter_map(|l| l.split('=').next())
        .map(str::trim)
        .filter(|n| n.starts_with("gatehouse"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_crates_and_modules_import_downward_only() {
    let r = root();
    let deps = |c: &str| workspace_deps(&r.join("crates").join(c).join("Cargo.toml"));
    assert!(
        deps("core").is_empty(),
        "core depends on {:?}",
        deps("core")
    );
    assert_eq!(
        deps("gateway"),
        BTreeSet::from(["gatehouse-core".to_owned()]),
        "the gateway depends only on core"
    );
    assert_eq!(
        deps("authority"),
        BTreeSet::from(["gatehouse-core".to_owned()]),
        "the authority depends only on core"
    );
    for c in ["core", "gateway", "authority"] {
        let graph = module_graph(&r.join("crates").join(c).join("src"));
        assert!(!graph.is_empty(), "no modules read in crates/{c}");
        if let Some(cycle) = find_loop(&graph) {
            panic!(
                "crates/{c}: modules import each other: {}\n{graph:#?}",
                cycle.join(" -> ")
            );
        }
    }
    let bin = module_graph(&r.join("src"));
    if let Some(cycle) = find_loop(&bin) {
        panic!("src: modules import each other: {}", cycle.join(" -> "));
    }
}

#[test]
fn a_loop_between_modules_is_found() {
    // The check above can fail: a two-module loop is reported as such.
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
        ("c".to_owned(), BTreeSet::new()),
    ]);
    let cycle = find_loop(&graph).expect("loop found");
    assert_eq!(cycle, ["a", "b", "a"]);
    assert_eq!(
        names_after("use crate::proxy::x; crate::y", "crate::"),
        ["proxy", "y"]
    );
}
