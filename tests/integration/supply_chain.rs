//! The dependency tree, checked offline as `cargo deny` and `cargo audit` would: every
//! package comes from crates.io (or is this project), every licence expression is satisfiable
//! with licences this Apache-2.0 project may ship, and no locked version has a vulnerability
//! in a snapshot of the RustSec advisory database (tests/fixtures/rustsec-advisories.tsv,
//! refreshed with scripts/rustsec-snapshot.py).

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
    // File-level copyleft: its terms bind changes to the MPL's own files, which this project
    // ships unchanged from crates.io (`option-ext`, through the Delta table's `dirs`).
    "MPL-2.0",
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

/// (name, version) of every crates.io package in Cargo.lock: the whole tree, build and dev
/// dependencies included, as `cargo audit` reads it.
fn locked_packages() -> Vec<(String, semver::Version)> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let mut out = Vec::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|rest| rest.trim().strip_prefix('='))
                    .map(|v| v.trim().trim_matches('"').to_owned())
            })
        };
        if field("source ").as_deref() != Some(CRATES_IO) {
            continue;
        }
        let (name, version) = (field("name ").unwrap(), field("version ").unwrap());
        out.push((name, semver::Version::parse(&version).unwrap()));
    }
    out
}

/// An advisory of the snapshot: (id, package, kind, patched, unaffected).
struct Advisory {
    id: String,
    package: String,
    kind: String,
    safe: Vec<semver::VersionReq>,
}

fn advisories() -> (String, Vec<Advisory>) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rustsec-advisories.tsv"
    ))
    .unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_owned();
    let advisories = lines
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 5, "{line}");
            let safe = cols[3]
                .split(';')
                .chain(cols[4].split(';'))
                .filter(|r| !r.is_empty())
                .map(|r| semver::VersionReq::parse(r).unwrap_or_else(|e| panic!("{line}: {e}")))
                .collect();
            Advisory {
                id: cols[0].into(),
                package: cols[1].into(),
                kind: cols[2].into(),
                safe,
            }
        })
        .collect();
    (header, advisories)
}

/// Whether `version` is one an advisory's patched or unaffected ranges leave out.
fn affected(advisory: &Advisory, version: &semver::Version) -> bool {
    !advisory.safe.iter().any(|r| r.matches(version))
}

#[test]
fn advisories_are_matched_by_their_patched_and_unaffected_ranges() {
    let advisory = Advisory {
        id: "RUSTSEC-0000-0000".into(),
        package: "p".into(),
        kind: "vulnerability".into(),
        safe: [">= 1.2.3", "< 1.0.0"]
            .iter()
            .map(|r| semver::VersionReq::parse(r).unwrap())
            .collect(),
    };
    let v = |s: &str| semver::Version::parse(s).unwrap();
    assert!(affected(&advisory, &v("1.2.2")));
    assert!(affected(&advisory, &v("1.0.0")));
    assert!(!affected(&advisory, &v("1.2.3")));
    assert!(!affected(&advisory, &v("0.9.9")));
    assert_eq!(advisory.id.len(), 17);
}

/// Vulnerabilities looked at and accepted, each with why and until when: any other fails the
/// test. Keep this list short and dated.
const ACCEPTED: &[(&str, &str)] = &[
    // quick-xml 0.39: quadratic time on start tags with many attributes (denial of service).
    // It parses only the XML answers of the bucket the operator configures (S3 listings,
    // errors), not anything a watched workload sends; polars 0.55 and object_store 0.13 pin
    // 0.39 (object_store 0.14 moves to 0.41 but polars-io still brings 0.13 with it).
    // Until polars releases on object_store 0.14 (checked 2026-12-07).
    (
        "RUSTSEC-2026-0194",
        "quick-xml 0.39 through polars-io and object_store 0.13",
    ),
    (
        "RUSTSEC-2026-0195",
        "quick-xml 0.39 through polars-io and object_store 0.13",
    ),
];

#[test]
fn no_locked_dependency_has_a_known_vulnerability() {
    let (header, advisories) = advisories();
    assert!(advisories.len() > 1000, "{header}");
    let packages = locked_packages();
    assert!(packages.len() > 300, "the whole lock file is read");
    let mut vulnerable = Vec::new();
    let mut warnings = Vec::new();
    for (name, version) in &packages {
        for a in advisories.iter().filter(|a| &a.package == name) {
            if !affected(a, version) {
                continue;
            }
            let line = format!("{name} {version}: {} ({})", a.id, a.kind);
            let accepted = ACCEPTED.iter().find(|(id, _)| *id == a.id);
            match accepted {
                Some((_, why)) => warnings.push(format!("{line}, accepted: {why}")),
                None if a.kind == "vulnerability" => vulnerable.push(line),
                None => warnings.push(line),
            }
        }
    }
    // An accepted advisory that no longer applies is taken off the list.
    for (id, why) in ACCEPTED {
        assert!(
            warnings.iter().any(|w| w.contains(id)),
            "{id} ({why}) no longer applies: remove it from ACCEPTED"
        );
    }
    // Unmaintained and unsound crates are warnings, as `cargo audit` reports them.
    if !warnings.is_empty() {
        eprintln!("{header}\nwarnings:\n{}", warnings.join("\n"));
    }
    assert!(
        vulnerable.is_empty(),
        "{header}\nvulnerable dependencies:\n{}",
        vulnerable.join("\n")
    );
}
