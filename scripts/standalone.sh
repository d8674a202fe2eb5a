#!/usr/bin/env bash
# Builds Sluice (release) and runs `sluice standalone` on 127.0.0.1:7070 (gRPC) and
# 127.0.0.1:7071 (metrics and health), storing data in ./sluice-data. Extra arguments go to
# `sluice standalone`, e.g. --data-dir /var/lib/sluice.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo run --release --locked -p sluice-cli --bin sluice -- standalone "$@"
