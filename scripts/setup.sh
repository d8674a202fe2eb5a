#!/usr/bin/env bash
# Installs what building and testing Sluice needs on Debian, only where it is missing:
# protoc (the gRPC code generator), libclang (RocksDB's bindings are generated with it) and
# etcd (the metadata store of the distributed deployment; the tests start their own),
# Prometheus and promtool (the monitoring tests run the alert rules and dashboards against it),
# the font sluice-bench draws its charts with, and Python with venv (the chart checks install
# their tools from PyPI into a virtualenv).
set -euo pipefail

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# bindgen loads libclang.so or libclang-N.so; libclang-cpp (pulled in by other packages)
# does not count, so match those names exactly.
libclang_found=false
for candidate in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
        /usr/lib/x86_64-linux-gnu/libclang.so* /usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so*; do
    # A pattern that matches nothing stays as written and does not exist.
    if [ -e "$candidate" ]; then
        libclang_found=true
        break
    fi
done
$libclang_found || missing+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3 python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install a current Rust toolchain with rustup (https://rustup.rs)" >&2
    exit 1
fi
