#!/usr/bin/env bash
# npm run test:arm64: the core test suite on an emulated arm64 Linux kernel.
#
# On this (x86-64) host it cross-compiles the addon and the C test fixtures for
# arm64, stages a copy of the project whose node_modules hold the arm64 builds
# of vitest's native dependencies, then boots an arm64 kernel under
# qemu-system-aarch64 (test/arm64/vm.sh) and runs vitest there. Slow: the
# whole machine is emulated. Arguments are test files (default: the core
# suite: see below) and vitest options (--maxWorkers=1: one test file at a time).
#
# A64_FLAVOUR=arm64-16k runs it on a kernel with 16 KiB pages; see vm.sh for
# the other knobs. Needs (Debian): qemu-system-arm g++-aarch64-linux-gnu cpio.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
WORK=${A64_WORK:-/tmp/userfaultfd-arm64}
# One staging copy per page size, so that both can run at once.
stage=$WORK/stage-${A64_FLAVOUR:-arm64}
cross=aarch64-linux-gnu-

for tool in qemu-system-aarch64 "${cross}g++" cpio; do
  command -v "$tool" >/dev/null || {
    echo "test:arm64: $tool not found; apt-get install qemu-system-arm g++-aarch64-linux-gnu cpio" >&2
    exit 2
  }
done

npm run build --silent
mkdir -p "$stage"
# The project, without host builds; node_modules is installed for arm64 below.
tar -C "$root" --exclude=./node_modules --exclude=./build --exclude='./build-*' --exclude=./prebuilds \
  --exclude=./.git -cf - . | tar -C "$stage" -xf -
if ! cmp -s "$root/package-lock.json" "$stage/node_modules/.package-lock.json.arm64" 2>/dev/null; then
  echo "test:arm64: installing node_modules for linux-arm64" >&2
  (cd "$stage" && rm -rf node_modules && npm ci --cpu=arm64 --os=linux --libc=glibc --ignore-scripts --no-audit --no-fund >/dev/null)
  cp "$root/package-lock.json" "$stage/node_modules/.package-lock.json.arm64"
fi

# The addon, cross-compiled; Node's headers are the same on every architecture.
nodedir=${npm_config_nodedir:-$(node -p "require('path').resolve(process.execPath, '../..')")}
(cd "$stage" && CC=${cross}gcc CXX=${cross}g++ LINK=${cross}g++ AR=${cross}ar \
  npx node-gyp rebuild --arch=arm64 --nodedir="$nodedir" >"$WORK/node-gyp.log" 2>&1) \
  || { echo "test:arm64: cross build failed, see $WORK/node-gyp.log" >&2; exit 1; }
readelf -h "$stage/build/Release/userfaultfd.node" | grep -q 'Machine:[[:space:]]*AArch64'

# The C fixtures, static, where test/native-fixtures.ts looks for them (there
# is no compiler in the guest).
mkdir -p "$stage/build/fixtures"
for source in "$root"/test/fixtures/*.c; do
  name=$(basename "$source" .c)
  "${cross}gcc" -O2 -Wall -Wextra -static -pthread -o "$stage/build/fixtures/$name" "$source"
done

files=0
for arg in "$@"; do case "$arg" in *.test.ts) files=$((files + 1)) ;; esac; done
if [ $files -eq 0 ]; then
  # The core suite: the library's own tests (below 60) and the robustness
  # tests (91-93), not the stress test (hours when emulated) nor the
  # Firecracker and KVM integration tests (60-65).
  options=$#
  set -- "$@" $(cd "$stage" && ls test/*.test.ts | grep -E '/([0-5][0-9]|9[1-9])\.')
  files=$(($# - options))
fi
# One test file at a time unless told otherwise: runs of the suite with two
# at once (on -cpu max) lost vitest's main process (SIGSEGV, or a failed V8
# check) or a worker (92, while 53 held a 1 GiB huge page of the 3 GiB guest);
# the cause is not proven.
case " $* " in *" --maxWorkers"* | *" --no-file-parallelism "* | *" --fileParallelism"*) ;; *) set -- --maxWorkers=1 "$@" ;; esac
echo "test:arm64: running $files test files on ${A64_KVER:-the newest Debian sid ${A64_FLAVOUR:-arm64} kernel}" >&2
# Emulation runs some 20 times slower than this host: the tests' bounds on
# waits stretch by USERFAULTFD_TEST_SLOWDOWN, vitest's per-test limits likewise.
exec "$root/test/arm64/vm.sh" "$stage" sh -c 'uname -srm
echo 1 >/proc/sys/kernel/print-fatal-signals # a crash leaves its registers in the console log
echo "page size: $(node -p "require(\"./dist/index.js\").systemPageSize()")"
export USERFAULTFD_TEST_SLOWDOWN=20
exec node node_modules/vitest/vitest.mjs run --testTimeout=900000 --hookTimeout=900000 "$@"' sh "$@"
