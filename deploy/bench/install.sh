#!/usr/bin/env bash
# Installs what the comparison needs on Debian, where it is missing: Sluice's build tools
# (scripts/setup.sh), RabbitMQ and NATS from Debian's packages, and Sluice's release build.
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

command -v nats-server >/dev/null 2>&1 || apt_install nats-server
command -v curl >/dev/null 2>&1 || apt_install curl
# `sync_interval` (fsync every write before acknowledging) arrived in nats-server 2.10; Debian
# 12 ships 2.9. Debian 13's package is the same statically linked server and needs only
# libc6 >= 2.34, so take it from Debian's archive.
nats_version=$(nats-server --version | sed 's/.*v//')
if [ "$(printf '%s\n2.10.0\n' "$nats_version" | sort -V | head -1)" != 2.10.0 ]; then
    deb=nats-server_2.10.27-1+b2_amd64.deb
    echo "nats-server $nats_version lacks sync_interval; installing Debian 13's $deb" >&2
    tmp=$(mktemp -d)
    curl -fsSL -o "$tmp/$deb" "http://deb.debian.org/debian/pool/main/n/nats-server/$deb"
    $sudo dpkg -i "$tmp/$deb" >/dev/null
    rm -rf "$tmp"
fi

cargo build --release --locked -p sluice-cli -p sluice-bench -p sluice-frontend \
    -p sluice-metadata -p sluice-backend -p sluice-manager
