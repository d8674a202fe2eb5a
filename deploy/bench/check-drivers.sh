#!/usr/bin/env bash
# Runs sluice-bench's RabbitMQ and NATS driver tests against single brokers started on
# loopback (deploy/bench/install.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/bench/peers.sh
WORK=$(mktemp -d)
stop() {
    rabbit_stop "$WORK/rabbitmq" 1
    nats_stop "$WORK/nats" 1
    rm -rf "$WORK"
}
trap stop EXIT
rabbit_start "$WORK/rabbitmq" 1
nats_start "$WORK/nats" 1 always
SLUICE_BENCH_RABBITMQ=$RABBIT_URLS SLUICE_BENCH_NATS=$NATS_URLS \
    cargo test --locked -p sluice-bench --test peers -- --ignored
