#!/usr/bin/env bash
# run-in-qemu.sh - runs a command under another Linux kernel, booted with qemu
# (software emulation, -cpu max), with this machine's own userland: the host's
# / is mounted read-only over 9p under a tmpfs overlay, so node, the built
# addon and vitest run unchanged, and every write inside is discarded at
# power-off. /dev/kvm exists inside when the kernel has KVM_AMD (qemu emulates
# SVM), so KVM guests run nested.
#
#   scripts/run-in-qemu.sh KERNEL CMD [ARGS...]
#
# KERNEL is a bzImage with everything the guest needs built in (no modules):
# virtio-pci, virtio-console, 9p over virtio, overlayfs, devtmpfs, and for VM
# tests KVM + KVM_AMD. CMD runs as root in the current directory with PATH,
# HOME and LANG carried over; its stdout and stderr come back here, and its
# exit status is this script's: 124 if it timed out, 125 if no status came
# back (the console's tail is printed).
#
# A kernel that has them as modules (a distribution's) works too: list the
# module files in load order, dependencies first, in QEMU_MODULES (.ko or
# .ko.xz), e.g. for Debian's: netfs 9pnet 9pnet_virtio 9p overlay irqbypass
# ccp kvm kvm-amd from /usr/lib/modules/<version>/kernel/...
#
# Environment: QEMU_TIMEOUT seconds for boot + command (default 900),
# QEMU_MEM MiB (default 3072), QEMU_SMP (default 2), QEMU_CONSOLE_LOG (the
# kernel's console, default: a temp file removed at exit).
# The boot itself (initramfs, qemu command line, output and status) is
# scripts/qemu-boot.sh's.
# Needs: qemu-system-x86_64 and a static busybox (apt-get install -y qemu-system-x86 busybox-static).
set -euo pipefail

die() { echo "run-in-qemu: $*" >&2; exit 125; }
[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
KERNEL=$1
shift
[ -f "$KERNEL" ] || die "no kernel image at $KERNEL"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing (apt-get install -y qemu-system-x86)"
BUSYBOX=$(command -v busybox || true)
{ [ -n "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1; } || die "a static busybox is needed (apt-get install -y busybox-static)"

RUN=$(mktemp -d /tmp/run-in-qemu.XXXXXX)
trap 'rm -rf "$RUN"' EXIT
BOOT=$(dirname "$(readlink -f "$0")")/qemu-boot.sh

# shellcheck disable=SC2086 # QEMU_MODULES is a list of files
"$BOOT" initramfs "$RUN/initrd.gz" "$BUSYBOX" "" ${QEMU_MODULES:-} > /dev/null
{
	echo '#!/bin/bash'
	for v in PATH HOME LANG; do
		if [ -n "${!v+x}" ]; then printf 'export %s=%q\n' "$v" "${!v}"; fi
	done
	printf 'cd -- %q || exit 126\n' "$PWD"
	printf 'exec'
	printf ' %q' "$@"
	printf '\n'
} > "$RUN/cmd.sh"
set +e
"$BOOT" run --arch x86_64 --share hostroot=/ --ports --timeout "${QEMU_TIMEOUT:-900}" \
	--mem "${QEMU_MEM:-3072}" --smp "${QEMU_SMP:-2}" ${QEMU_CONSOLE_LOG:+--console "$QEMU_CONSOLE_LOG"} \
	"$KERNEL" "$RUN/initrd.gz" "$RUN/cmd.sh"
exit $?
