#!/usr/bin/env bash
# Interoperability check by hand: `exfilwatch run` against an Observer server generated from
# the upstream Hubble API definitions (scripts/upstream-observer.py, Python grpcio).
#   scripts/interop-upstream.sh [PATH/TO/hubble-api/api/v1]
# Needs python3 with grpcio-tools (installed here when missing) and the upstream protos.
set -euo pipefail
cd "$(dirname "$0")/.."
protos=${1:-../shared/reference/hubble-api/api/v1}
[ -d "$protos" ] || { echo "upstream protos not found at $protos" >&2; exit 2; }
python3 -c 'import grpc_tools' 2>/dev/null || python3 -m pip install --quiet grpcio-tools
cargo build --locked --quiet
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
trap 'kill $server_pid 2>/dev/null || true; rm -rf "$work"' EXIT
python3 scripts/upstream-observer.py --protos "$protos" --port "$port" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do grep -q "upstream observer on" "$work/server.log" && break; sleep 0.1; done
printf 'hubble:\n  address: http://127.0.0.1:%s\n  namespaces: [ai-training]\n' "$port" >"$work/config.yaml"
./target/debug/exfilwatch run --config "$work/config.yaml" >"$work/summary.txt" 2>"$work/run.log" &
run_pid=$!
sleep 3
kill -TERM $run_pid
wait $run_pid
cat "$work/summary.txt"
grep -q '^flows: 5$' "$work/summary.txt"
grep -q 'HUBBLE_RING_BUFFER *12345678901' "$work/summary.txt"
grep -q '^node status events: 1$' "$work/summary.txt"
grep -q 'ai-training/llm-pretrain-worker-2 -> paste.example.net:443/TCP' "$work/summary.txt"
echo "interop with the upstream-generated Observer server: ok"
