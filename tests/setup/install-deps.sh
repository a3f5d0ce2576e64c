#!/bin/sh
# Install the system packages the kmm-e2e qemu tests need (idempotent).
#
# Run as root on a Debian 12 (bookworm) machine, before `cargo test -p kmm-e2e`:
#   tests/setup/install-deps.sh
# Only packages missing according to `dpkg -s` are installed, with one `apt-get update` first.
# Kernel packages are NOT installed here: the tests fetch them with `apt-get download` into a cache.
set -eu

PACKAGES="qemu-system-x86 busybox-static kmod cpio xz-utils zstd gzip openssl gcc make libc6-dev docker-registry skopeo apache2-utils time"

missing=""
for p in $PACKAGES; do
    if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all present:$(echo " $PACKAGES")"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

echo "install-deps: installing:$missing"
$SUDO apt-get update -q
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
