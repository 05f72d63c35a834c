#!/usr/bin/env python3
"""Writes tests/fixtures/rustsec-advisories.tsv from a checkout of the RustSec advisory
database (https://github.com/rustsec/advisory-db, CC0-1.0): one line per advisory that is not
withdrawn, with the facts the supply-chain test checks Cargo.lock against. The test runs
offline; refresh the snapshot with

    git clone --depth 1 https://github.com/rustsec/advisory-db /tmp/advisory-db
    scripts/rustsec-snapshot.py /tmp/advisory-db COMMIT DATE
"""
import pathlib
import sys
import tomllib

root, commit, date = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = []
for path in sorted(root.glob("crates/*/RUSTSEC-*.md")):
    text = path.read_text()
    front = text.split("```toml", 1)[1].split("```", 1)[0]
    doc = tomllib.loads(front)
    advisory, versions = doc["advisory"], doc.get("versions", {})
    if advisory.get("withdrawn"):
        continue
    rows.append("\t".join([
        advisory["id"],
        advisory["package"],
        advisory.get("informational", "vulnerability"),
        ";".join(versions.get("patched", [])),
        ";".join(versions.get("unaffected", [])),
    ]))
out = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/rustsec-advisories.tsv"
out.write_text(
    f"# RustSec advisory database at {commit} ({date}): id, package, kind, patched, unaffected\n"
    + "\n".join(rows) + "\n"
)
print(f"{len(rows)} advisories -> {out}")
