#!/usr/bin/env bash
# Runs exfilwatch's whole test suite on a fresh machine: installs what the tests need when it
# is missing, builds with the committed Cargo.lock, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust toolchain: pinned in rust-toolchain.toml; rustup installs it on first use.
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }

# Everything the build and the tests need that a fresh machine lacks.
scripts/setup.sh
export PATH="$PWD/.tools/venv/bin:$PATH"

# The test runner. cargo-nextest runs the integration tests in parallel processes; plain
# cargo test is the fallback where it cannot be installed.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install --locked cargo-nextest >/dev/null 2>&1 || echo "cargo-nextest unavailable: using cargo test" >&2
fi

cargo build --locked --all-targets
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi

# The real `hubble observe -o jsonpb` captures of the development workspace, when present:
# every line must replay without a bad line.
captures=../shared/fixtures/hubble-flows
exfilwatch="${CARGO_TARGET_DIR:-target}/debug/exfilwatch"
if [ -d "$captures" ]; then
  lines=$(cat "$captures"/*.jsonl | grep -c .)
  summary=$(mktemp)
  "$exfilwatch" replay --output json "$captures"/*.jsonl >"$summary" 2>/dev/null
  python3 - "$summary" "$lines" <<'PY'
import json, sys
summary, lines = json.load(open(sys.argv[1])), int(sys.argv[2])
assert summary["bad_lines"] == 0, f"bad lines in the Hubble captures: {summary['files']}"
assert summary["flows"] == lines, f"{summary['flows']} flows from {lines} lines"
print(f"hubble captures: {lines} lines, {summary['flows']} flows, 0 bad lines")
PY
  # A corrupted copy: every bad line is reported with its number, the rest still replays.
  corrupted=$(mktemp)
  cat "$captures"/*.jsonl | awk 'NR==10 {print substr($0, 1, 50); next} NR==20 {print "{\"flow\":{\"verdict\":\"SIDEWAYS\"}}"; next} {print}' >"$corrupted"
  "$exfilwatch" replay --output json "$corrupted" >"$summary" 2>/dev/null
  python3 - "$summary" "$lines" <<'PY'
import json, sys
summary, lines = json.load(open(sys.argv[1])), int(sys.argv[2])
bad = summary["files"][0]["bad"]
assert summary["bad_lines"] == 2 and summary["flows"] == lines - 2, summary["bad_lines"]
assert ":10: invalid JSON" in bad[0] and ":20: invalid JSON: unknown Verdict value" in bad[1], bad
print(f"corrupted copy: bad lines reported as {bad[0].split(': ')[0]} and {bad[1].split(': ')[0]}")
PY
  rm -f "$summary" "$corrupted"
  # Benign traffic raises nothing: the scan, DNS-exfiltration and coverage rules, pointed at
  # the captures' own namespaces, stay silent over all of them.
  benign=$(mktemp -d)
  mkdir -p "$benign/rules"
  python3 - rules/default.yaml "$benign/rules/r.yaml" <<'PY'
import sys
text = open(sys.argv[1]).read().replace("names: [ai-training]", "names: [bookinfo, kube-system, istio-system, jaeger, default]")
rules = ["- name: " + r for r in text.split("\n- name: ")[1:] if r.startswith(("TrainingPodScanning", "TrainingPodDnsExfiltration", "ExfilwatchCoverageGap"))]
assert len(rules) == 3, rules
open(sys.argv[2], "w").write("\n".join(rules))
PY
  printf 'rules:\n  dir: rules\nhubble:\n  namespaces: []\n' >"$benign/c.yaml"
  "$exfilwatch" replay --config "$benign/c.yaml" --output json "$captures"/*.jsonl >"$benign/out.json" 2>/dev/null
  python3 -c 'import json,sys; a=json.load(open(sys.argv[1]))["alerts"]; assert not a, a; print("hubble captures: scan, DNS-exfiltration and coverage rules raise no alert")' "$benign/out.json"
  rm -rf "$benign"
else
  echo "note: $captures not present; the real-capture replay check did not run"
fi
