//! The agent's modules are layered: a lower module never imports a higher one,
//! so there is no import circle among the crate's top-level modules (issue 7:
//! events → cluster → workers → runtime → events was one). This reads the
//! sources (tests excluded) and fails naming the circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn identifiers_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c}`: every first segment in the group.
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let first = item.trim().split("::").next().unwrap_or("").trim();
                out.insert(first.to_string());
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.insert(rest[..end].to_string());
        }
    }
    out.retain(|m| m.starts_with(|c: char| c.is_ascii_lowercase()));
    out
}

fn collect(dir: &Path, top: Option<&str>, graph: &mut BTreeMap<String, BTreeSet<String>>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let module = top.map(str::to_string).unwrap_or(name);
        if path.is_dir() {
            collect(&path, Some(&module), graph);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs")
            || matches!(module.as_str(), "lib" | "main")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut deps = identifiers_after(code, "crate::");
        deps.remove(&module);
        graph.entry(module).or_default().extend(deps);
    }
}

#[test]
fn no_import_circle_among_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    collect(&src, None, &mut graph);
    assert!(graph.len() > 10, "found the modules: {graph:?}");
    for start in graph.keys() {
        // Depth-first from `start`, remembering the path, until `start` comes back.
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((module, path)) = stack.pop() {
            for dep in graph.get(&module).into_iter().flatten() {
                if dep == start {
                    panic!("import circle: {} -> {start}", path.join(" -> "));
                }
                if seen.insert(dep.clone()) {
                    let mut next = path.clone();
                    next.push(dep.clone());
                    stack.push((dep.clone(), next));
                }
            }
        }
    }
}
