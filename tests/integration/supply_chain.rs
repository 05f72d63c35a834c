//! The dependency tree, checked offline as `cargo deny` would: every package comes from
//! crates.io (or is this project), and every licence expression is satisfiable with licences
//! this Apache-2.0 project may ship.

use std::process::Command;

/// Licences any dependency may use (SPDX identifiers).
const ALLOWED: &[&str] = &[
    "MIT",
    "MIT-0",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "Unicode-3.0",
    "Unlicense",
    "0BSD",
    "CC0-1.0",
    "BSL-1.0",
];

const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// Whether an SPDX expression (`A OR (B AND C)`, `A WITH E`, old `A/B`) can be met with
/// [`ALLOWED`] licences.
fn allowed(expression: &str) -> bool {
    let spaced = expression
        .replace('/', " OR ")
        .replace('(', " ( ")
        .replace(')', " ) ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut at = 0;
    let ok = or(&tokens, &mut at);
    ok && at == tokens.len()
}

fn or(t: &[&str], at: &mut usize) -> bool {
    let mut ok = and(t, at);
    while t.get(*at) == Some(&"OR") {
        *at += 1;
        ok |= and(t, at);
    }
    ok
}

fn and(t: &[&str], at: &mut usize) -> bool {
    let mut ok = atom(t, at);
    while t.get(*at) == Some(&"AND") {
        *at += 1;
        ok &= atom(t, at);
    }
    ok
}

fn atom(t: &[&str], at: &mut usize) -> bool {
    match t.get(*at) {
        Some(&"(") => {
            *at += 1;
            let ok = or(t, at);
            if t.get(*at) == Some(&")") {
                *at += 1;
                ok
            } else {
                false
            }
        }
        Some(id) => {
            *at += 1;
            let mut licence = (*id).to_owned();
            if t.get(*at) == Some(&"WITH") {
                licence = format!("{licence} WITH {}", t.get(*at + 1).unwrap_or(&""));
                *at += 2;
            }
            ALLOWED.contains(&licence.as_str())
        }
        None => false,
    }
}

#[test]
fn licence_expressions_are_read_right() {
    assert!(allowed("MIT OR Apache-2.0"));
    assert!(allowed("(MIT OR Apache-2.0) AND Unicode-3.0"));
    assert!(allowed("MIT/Apache-2.0"));
    assert!(allowed("Apache-2.0 WITH LLVM-exception OR GPL-3.0"));
    assert!(!allowed("GPL-3.0"));
    assert!(!allowed("MIT AND GPL-2.0"));
    assert!(!allowed("(MIT"));
    assert!(!allowed(""));
}

#[test]
fn every_dependency_comes_from_crates_io_under_an_allowed_licence() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    assert!(packages.len() > 100, "the whole tree is listed");
    let mut problems = Vec::new();
    for p in packages {
        let name = format!(
            "{} {}",
            p["name"].as_str().unwrap(),
            p["version"].as_str().unwrap()
        );
        match p["source"].as_str() {
            None if p["name"] == "exfilwatch" => {}
            Some(CRATES_IO) => {}
            other => problems.push(format!("{name}: source {other:?} is not crates.io")),
        }
        match p["license"].as_str() {
            Some(l) if allowed(l) => {}
            Some(l) => problems.push(format!("{name}: licence {l:?} is not allowed")),
            None => problems.push(format!("{name}: no licence declared")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
