#!/usr/bin/env bash
# The soak and load test (tests/integration/soak.rs) on the release build: 50,000 flows/s for
# 60 s, then a higher rate for 30 s. Override with RATES="50000:600" (the 10-minute memory
# soak). Flows are Cilium-shaped (about 1.25 KB); EXFILWATCH_SOAK_SHAPE=simulator streams the
# simulator's smaller ones. Needs what scripts/test.sh installs; prints what
# docs/reliability.md records: flows received/lost/stored, alert latency, API p50/p99 per
# endpoint during the load, and the resident set.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --tests --bins
for run in ${RATES:-50000:60 150000:30}; do
  EXFILWATCH_SOAK_RATE=${run%%:*} EXFILWATCH_SOAK_SECONDS=${run##*:} \
    cargo test --release --locked --test integration soak -- --ignored --nocapture
done
