#!/usr/bin/env bash
# test-gmem.sh - `npm run test:gmem`: runs the guest_memfd userfaultfd tests
# (test/64.guest-memfd.test.ts, test/66.guest-memfd-uffd.test.ts) and the VM tests (test/65.vm.test.ts,
# test/82.demo-vm.test.ts: npm run demo -- --vm)
# for real, under a kernel that lets userfaultfd register guest_memfd
# mappings, booted with scripts/run-in-qemu.sh. Opt-in: no packaged kernel
# carries that support yet, so you point it at one you built:
#
#   UFFD_GMEM_KERNEL=/path/to/bzImage npm run test:gmem
#
# The image needs uffd support for guest_memfd (the KVM half of "mm, kvm:
# allow uffd support in guest_memfd") and, built in: KVM + KVM_AMD,
# virtio-pci/console, 9p over virtio, overlayfs, devtmpfs (docs/vm.md says how
# one was built). Prints the capability probe as that kernel answers it, then
# the tests' results; exits with vitest's status (2: no kernel given).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KERNEL=${UFFD_GMEM_KERNEL:-}
if [ -z "$KERNEL" ]; then
	echo "test:gmem: set UFFD_GMEM_KERNEL to a bzImage with userfaultfd support for guest_memfd (see docs/vm.md)" >&2
	exit 2
fi
[ -d "$ROOT/dist" ] || { echo "test:gmem: build first (npm run build)" >&2; exit 2; }
cd "$ROOT"
exec "$ROOT/scripts/run-in-qemu.sh" "$KERNEL" bash -c '
	echo "== kernel $(uname -r), /dev/kvm: $([ -c /dev/kvm ] && echo present || echo absent)"
	node dist/cli.js probe | sed -n "/^memory/,\$p"
	exec npx vitest run test/64.guest-memfd.test.ts test/66.guest-memfd-uffd.test.ts test/65.vm.test.ts test/82.demo-vm.test.ts "$@"
' test-gmem "$@"
