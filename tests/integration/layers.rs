//! The layering of `src/`: production code imports only from layers below its own. The layers
//! are read from docs/architecture.md, so the document and the check cannot drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `layer N: a b c` lines of docs/architecture.md, as module -> N.
fn layers() -> BTreeMap<String, usize> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let mut layers = BTreeMap::new();
    for line in doc.lines() {
        let Some(rest) = line.trim().strip_prefix("layer ") else {
            continue;
        };
        let (n, modules) = rest.split_once(':').unwrap();
        for module in modules.split_whitespace() {
            let previous = layers.insert(module.to_owned(), n.trim().parse().unwrap());
            assert!(previous.is_none(), "{module} is listed twice");
        }
    }
    layers
}

/// The production part of a source file: without comments, and without the items marked
/// `#[cfg(test)]` (unit tests, test helpers), which may import from anywhere; nothing of a
/// file that is a test module as a whole (`#![cfg(test)]`).
fn production_code(text: &str) -> String {
    if text.lines().any(|l| l.trim() == "#![cfg(test)]") {
        return String::new();
    }
    let mut code = String::new();
    let mut skipping = false;
    let mut depth = 0i64;
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        if line.trim() == "#[cfg(test)]" {
            skipping = true;
            depth = 0;
            continue;
        }
        if skipping {
            depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
            // The item ends where its braces close, or at its `;` when it has none.
            if depth <= 0 && (line.contains('}') || line.trim_end().ends_with(';')) {
                skipping = false;
            }
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// Every `crate::module` a file's production code names.
fn imports(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let name: String = rest[at + 7..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        found.push(name);
        rest = &rest[at + 7..];
    }
    // `use crate::{a, b}` names several at once.
    for group in code.split("use crate::{").skip(1) {
        let inner = group.split('}').next().unwrap_or("");
        found.extend(
            inner
                .split(',')
                .filter_map(|p| p.trim().split("::").next())
                .filter(|m| !m.is_empty())
                .map(str::to_owned),
        );
    }
    found.retain(|m| !m.is_empty());
    found
}

/// The top-level module a file of `src/` belongs to.
fn module_of(path: &Path) -> String {
    let relative = path.strip_prefix(root().join("src")).unwrap();
    let first = relative.components().next().unwrap();
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_point_down_the_layers_of_the_architecture_document() {
    let layers = layers();
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    let mut violations = Vec::new();
    let mut modules_seen = Vec::new();
    for path in &files {
        let module = module_of(path);
        if module == "lib" || module == "main" {
            continue;
        }
        modules_seen.push(module.clone());
        let Some(&own) = layers.get(&module) else {
            violations.push(format!(
                "{}: module {module} is in no layer of docs/architecture.md",
                path.display()
            ));
            continue;
        };
        let code = production_code(&std::fs::read_to_string(path).unwrap());
        for import in imports(&code) {
            if import == module {
                continue;
            }
            match layers.get(&import) {
                Some(&layer) if layer < own => {}
                Some(&layer) => violations.push(format!(
                    "{}: {module} (layer {own}) imports {import} (layer {layer})",
                    path.strip_prefix(root()).unwrap().display()
                )),
                None => violations.push(format!(
                    "{}: imports crate::{import}, which is in no layer",
                    path.display()
                )),
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // Every layer entry names a module that exists, so the document describes the code.
    for module in layers.keys() {
        assert!(
            modules_seen.contains(module),
            "docs/architecture.md lists {module}, which is not a module of src/"
        );
    }
}

#[test]
fn the_checker_sees_an_upward_import() {
    let code = production_code(
        "//! uses crate::cli in a comment only\nuse crate::flow::FlowEvent;\n#[cfg(test)]\nuse crate::sim;\nuse crate::{app, common::clock};\n#[cfg(test)]\nfn helper() {\n    crate::cli::run();\n}\nfn f() { crate::api::serve(); }\n#[cfg(test)]\nmod tests {\n    use crate::cli;\n}\n",
    );
    let mut found = imports(&code);
    found.sort();
    found.dedup();
    assert_eq!(found, ["api", "app", "common", "flow"]);
    let helpers = "//! Test helpers.\n#![cfg(test)]\nuse crate::cli;\n";
    assert!(imports(&production_code(helpers)).is_empty());
}
