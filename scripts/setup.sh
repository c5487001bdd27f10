#!/usr/bin/env bash
# Ferry's set-up: installs what a fresh Debian 12 machine lacks, idempotently.
#  - Debian packages: QEMU 10.0 from bookworm-backports (Debian 12's own 7.2 loses guest writes during
#    migration under TCG), qemu-utils, busybox-static, iproute2, a C compiler for the guest tool, nftables
#    (the fault tests cut only migration or only management traffic inside a lab host), iputils-ping (the
#    ICMP guest-downtime probe).
#    prometheus for its promtool (the observability test checks the /metrics text with it; ~25 s to install).
#    chromium: the web console's browser tests drive Debian's own browser with playwright-core (never a downloaded one).
#  - the guest kernel and its virtio modules, from Debian's linux-image-cloud-amd64, into Ferry's cache.
#  - npm dependencies, the static ferry-guest binary, the web console's bundle (web/dist) and ferry's (build/cli).
# Each step checks first and does nothing when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}
mkdir -p "$CACHE"
log() { printf 'setup: %s\n' "$*" >&2; }
need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "error FERRY_E_SETUP_NOT_ROOT: $1 needs root (apt-get). Run as root, or install it yourself."
    exit 2
  fi
}

apt_updated=0
apt_update() { if [ $apt_updated = 0 ]; then apt-get update -qq >&2; apt_updated=1; fi; }
APT_LOG="$CACHE/apt.log"
apt_install() { # quiet on success; the log is printed when it fails
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$APT_LOG" 2>&1 \
    || { cat "$APT_LOG" >&2; log "error FERRY_E_SETUP_APT: apt-get install $* failed"; exit 1; }
}

qemu_major() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 || { echo 0; return; }
  qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1
}

# 1. Debian packages ---------------------------------------------------------------------------
missing=()
# xorriso: cloud-init seeds; mmdebstrap, sfdisk, mke2fs, grub-mkimage (+ grub-pc-bin): `ferry image build debian-12`.
for pair in busybox:busybox-static ip:iproute2 cc:gcc qemu-img:qemu-utils nft:nftables xorriso:xorriso mmdebstrap:mmdebstrap sfdisk:fdisk mke2fs:e2fsprogs grub-mkimage:grub-common ping:iputils-ping promtool:prometheus chromium:chromium; do
  bin=${pair%%:*}; pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || missing+=("$pkg")
done
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
[ -e /usr/lib/grub/i386-pc/boot.img ] || missing+=(grub-pc-bin)
# PostgreSQL: the store contract suite and the HA test start a throwaway server (initdb, pg_ctl).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ "$(qemu_major)" -lt 10 ]; then
  need_root "QEMU 10 from bookworm-backports"
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # Take the mirror from the machine's own Debian source so that no host is written here.
    src=/etc/apt/sources.list.d/debian.sources
    uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' "$src" 2>/dev/null | grep -v security | head -1)
    [ -n "$uri" ] || uri=$(sed -n 's/^deb \(\[[^]]*\] \)\?\([^ ]*\) bookworm main.*/\2/p' /etc/apt/sources.list 2>/dev/null | head -1)
    [ -n "$uri" ] || { log "error FERRY_E_SETUP_NO_MIRROR: no Debian mirror found in $src"; exit 1; }
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
      > /etc/apt/sources.list.d/ferry-backports.sources
    log "added bookworm-backports source"
  fi
  apt_update
  log "installing QEMU 10 from bookworm-backports"
  apt_install -t bookworm-backports qemu-system-x86 qemu-utils qemu-block-extra
fi
if [ ${#missing[@]} -gt 0 ]; then
  need_root "${missing[*]}"
  apt_update
  log "installing ${missing[*]}"
  apt_install "${missing[@]}"
fi

# 2. Guest kernel -------------------------------------------------------------------------------
KDIR="$CACHE/kernel"
if ! ls "$KDIR"/boot/vmlinuz-* >/dev/null 2>&1; then
  need_root "the guest kernel download"
  apt_update
  # linux-image-cloud-amd64 is a meta package: download the versioned package it depends on.
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-cloud-amd64\(-unsigned\)\?\).*/\1/p' | head -1)
  [ -n "$kpkg" ] || { log "error FERRY_E_SETUP_KERNEL: cannot resolve linux-image-cloud-amd64"; exit 1; }
  tmp=$(mktemp -d); chmod 777 "$tmp"  # apt's sandbox user (_apt) downloads into it
  (cd "$tmp" && apt-get download -qq "$kpkg" >&2)
  rm -rf "$KDIR.tmp"; mkdir -p "$KDIR.tmp"
  dpkg-deb -x "$tmp"/*.deb "$KDIR.tmp"
  rm -rf "$tmp" "$KDIR"; mv "$KDIR.tmp" "$KDIR"
  log "guest kernel $kpkg unpacked into $KDIR"
fi

# 3. npm dependencies ---------------------------------------------------------------------------
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm dependencies"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund >&2; else npm install --no-audit --no-fund >&2; fi
fi

# 4. The guest tool -----------------------------------------------------------------------------
if [ -f guest/ferry-guest.c ]; then
  mkdir -p build
  if [ ! -x build/ferry-guest ] || [ guest/ferry-guest.c -nt build/ferry-guest ]; then
    log "building ferry-guest (static)"
    cc -static -O2 -Wall -Wextra -pthread -o build/ferry-guest guest/ferry-guest.c
  fi
fi
# 5. The web console's bundle, and the ferry program's (bin/ferry.js starts it in a second less) --------
node --import tsx scripts/build-web.ts --if-stale >&2
node --import tsx scripts/build-cli.ts --if-stale >&2

log "ready (qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), cache $CACHE)"
