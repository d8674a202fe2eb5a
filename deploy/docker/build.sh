#!/usr/bin/env bash
# Builds the Sluice image (deploy/docker/Dockerfile) and checks it: every binary runs inside it
# as the non-root user.
#
#   deploy/docker/build.sh [--local-base] [--extra-ca FILE] [TAG]    TAG default: sluice:<version>
#
# It builds with buildah (Debian's package; `docker build` or `podman build` take the same
# Dockerfile). By default both stages start from the public debian:bookworm-slim. With
# --local-base, no container registry is needed: the base is made from Debian's packages with
# mmdebstrap, and buildah builds in chroot isolation (for machines where containers cannot get
# cgroups of their own). Either way the build downloads Debian packages and crates, and
# compiles Sluice (RocksDB included) in release mode: 20 to 40 minutes on two cores.
# --extra-ca FILE: a CA to trust for crates.io besides Debian's, where a TLS-inspecting proxy
# stands between the build and the Internet; it is a build secret, in no layer of the image.
set -euo pipefail
cd "$(dirname "$0")/../.."

local_base=false
extra_ca=""
while [ $# -gt 0 ]; do
    case "$1" in
        --local-base) local_base=true; shift ;;
        --extra-ca) extra_ca=$2; shift 2 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag=${1:-sluice:$version}

missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
$local_base && { command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap); }
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The secret is always given, empty without --extra-ca, so the Dockerfile's mount resolves.
secret=$(mktemp)
trap 'rm -f "$secret"' EXIT
[ -z "$extra_ca" ] || cp "$extra_ca" "$secret"
args=(--layers --tag "$tag" --file deploy/docker/Dockerfile --secret "id=extra-ca,src=$secret")
if $local_base; then
    base=localhost/sluice-debian-base:bookworm
    if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
        tarball=$(mktemp --suffix=.tar)
        trap 'rm -f "$tarball" "$secret"' EXIT
        echo "making $base from Debian's packages with mmdebstrap" >&2
        mmdebstrap --variant=apt --format=tar bookworm "$tarball" \
            "deb http://deb.debian.org/debian bookworm main" \
            "deb http://deb.debian.org/debian bookworm-updates main" \
            "deb http://deb.debian.org/debian-security bookworm-security main"
        container=$(buildah from scratch)
        mnt=$(buildah mount "$container")
        tar -xf "$tarball" -C "$mnt"
        buildah umount "$container" >/dev/null
        buildah commit --rm "$container" "$base" >/dev/null
    fi
    args+=(--isolation chroot --build-arg "BASE=$base")
fi
buildah bud "${args[@]}" .

# Every binary answers inside the image, as the user the chart runs it as.
container=$(buildah from "$tag")
trap 'buildah rm "$container" >/dev/null 2>&1 || true; rm -f "$secret"' EXIT
run() { buildah run --isolation chroot "$container" -- "$@"; }
[ "$(run id -u)" = 10001 ] || { echo "the image does not run as user 10001" >&2; exit 1; }
for bin in sluice sluice-frontend sluice-metadata sluice-backend sluice-manager sluice-bench; do
    run "$bin" --version
done
run etcd --version | head -1
echo "built and checked $tag"
