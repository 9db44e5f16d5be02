//! The core's structure, as the README states it: no proxy-wasm anywhere in it, and its modules import each
//! other one way (no cycle), so each concept can be read, tested and changed from the bottom up.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the core modules its non-test code names (`crate::<module>`), comments left out.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let path = entry.path();
        let module = path.file_stem().unwrap().to_string_lossy().into_owned();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut uses = BTreeSet::new();
        for line in code.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
        graph.insert(module, uses);
    }
    graph
}

/// A cycle through `start`, if any (depth-first).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, node: &str) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut found = path[at..].to_vec();
        found.push(node.to_string());
        return Some(found);
    }
    path.push(node.to_string());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(found) = cycle(graph, path, next) {
            return Some(found);
        }
    }
    path.pop();
    None
}

#[test]
fn the_core_modules_import_each_other_one_way() {
    let graph = imports();
    assert!(graph.len() >= 15, "core modules not found: {graph:?}");
    for (module, uses) in &graph {
        for used in uses {
            assert!(graph.contains_key(used), "{module} names crate::{used}, which is not a core module");
        }
    }
    for module in graph.keys() {
        if let Some(found) = cycle(&graph, &mut Vec::new(), module) {
            panic!("import cycle among the core's modules: {}", found.join(" -> "));
        }
    }
    // The direction the README states: the document and its errors are at the bottom, the decision near the top.
    for bottom in ["config_document", "config_error", "spiffe_id"] {
        assert!(graph[bottom].is_empty(), "{bottom} imports {:?}", graph[bottom]);
    }
}

#[test]
fn the_core_knows_no_proxy_wasm() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(!manifest.contains("proxy-wasm ="), "core/Cargo.toml depends on proxy-wasm");
    for entry in std::fs::read_dir(root.join("src")).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert!(!text.contains("proxy_wasm::"), "{} uses proxy_wasm", entry.path().display());
    }
}

#[test]
fn the_readme_architecture_table_matches_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme.split("## Architecture").nth(1).unwrap().split("\n## ").next().unwrap_or_default();
    let named: BTreeSet<&str> = section.split('`').skip(1).step_by(2).collect();
    let sources = |dir: &str| -> Vec<String> {
        let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".rs"))
            .collect();
        files.sort();
        files
    };
    for file in sources("core/src").iter().filter(|f| *f != "lib.rs") {
        assert!(
            named.contains(format!("core/src/{file}").as_str()),
            "README's architecture table misses core/src/{file}"
        );
    }
    for (dir, skip) in [("filter/src", ["lib.rs", "test_trap.rs"]), ("cli/src", ["main.rs", "main.rs"])] {
        for file in sources(dir).iter().filter(|f| !skip.contains(&f.as_str())) {
            let listed = named.contains(format!("{dir}/{file}").as_str()) || named.contains(file.as_str());
            assert!(listed, "README's architecture table misses {dir}/{file}");
        }
    }
    for path in named.iter().filter(|n| n.ends_with(".rs") && n.contains('/')) {
        assert!(root.join(path).exists(), "README's architecture table names {path}, which does not exist");
    }
}
