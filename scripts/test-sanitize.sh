#!/usr/bin/env bash
# The test suite against the addon built with sanitizers (native/CMakeLists.txt,
# cmake-js). SANITIZER=address (the default: AddressSanitizer and
# UndefinedBehaviorSanitizer) or SANITIZER=thread (ThreadSanitizer). Passes only
# if every test passes and no sanitizer wrote a report about the addon, in this
# process or in any process the tests start (workers, peers, fixtures).
# Arguments go to vitest.
set -euo pipefail
cd "$(dirname "$0")/.."

sanitizer=${SANITIZER:-address}
case $sanitizer in
  address) out=build-sanitize runtime=libasan.so package=libasan8 ;;
  thread) out=build-tsan runtime=libtsan.so package=libtsan2 ;;
  *) echo "test:sanitize: SANITIZER must be address or thread, not '$sanitizer'" >&2; exit 2 ;;
esac

# Configured every time: a build directory keeps its cache, and a plain build
# would go on with the options it was first configured with.
npx cmake-js configure -d native -O "$out" --CDSANITIZE="$sanitizer" --log-level warn >/dev/null
npx cmake-js build -d native -O "$out" --CDSANITIZE="$sanitizer" --log-level warn >/dev/null
npm run build --silent

# node itself is not instrumented, so the sanitizer's runtime must be loaded first.
library=$(readlink -f "$("${CXX:-g++}" -print-file-name=$runtime)")
[ -f "$library" ] || { echo "test:sanitize: no $runtime for ${CXX:-g++} (apt-get install $package)" >&2; exit 2; }
reports=$(mktemp -d /tmp/uffd-sanitize.XXXXXX)
# Tests run some processes as nobody (test/93): they must be able to write their logs too.
chmod 1777 "$reports"
trap 'rm -rf "$reports"' EXIT

export USERFAULTFD_NATIVE=$PWD/$out/Release/userfaultfd.node
symbolizer=$(command -v llvm-symbolizer || true)
# detect_leaks=0: LeakSanitizer would report what node and V8 deliberately
# leave allocated at exit; suppressing those by module would hide the addon's
# leaks too (every stack passes through node), so leak checking is off and the
# addon's ownership is covered by the lifetime tests instead.
# handle_sigbus=0: tests kill peers with SIGBUS on purpose (UFFDIO_POISON, the
# SIGBUS feature) and check that they die of it; ASan would turn the signal
# into a crash report and an abort. SIGBUS is no memory-error finding here.
export ASAN_OPTIONS="detect_leaks=0:handle_sigbus=0:abort_on_error=1:log_path=$reports/asan:log_exe_name=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan:log_exe_name=1"
# exitcode=0: ThreadSanitizer also reports races inside node, whose atomics it
# cannot see (it is not instrumented); a process must not fail the test it
# belongs to for those. scripts/tsan-reports.mjs picks the addon's reports out
# of the logs afterwards. handle_sigbus=0 as for ASan.
export TSAN_OPTIONS="exitcode=0:handle_sigbus=0:second_deadlock_stack=1:log_path=$reports/tsan:log_exe_name=1${symbolizer:+:external_symbolizer_path=$symbolizer}"

# Left out under ThreadSanitizer, each for a reason of the runtime, not of the
# addon: test/93 runs node through unshare and setpriv, which crash with the
# runtime preloaded; and one test of test/31 needs the kernel to hand a freed
# range to the next mapping, which the runtime's own mappings take first.
skip=()
if [ "$sanitizer" = thread ]; then
  echo "test:sanitize: ThreadSanitizer: leaving out test/93 (unshare and setpriv crash with the runtime preloaded) and test/31's address-reuse test (the runtime's mappings take the freed range)" >&2
  skip=(--exclude test/93.unprivileged.test.ts)
  # vitest takes one name pattern: a caller's own -t replaces this one.
  case " $* " in
    *" -t "* | *" --testNamePattern"*) ;;
    *) skip+=(-t '^(?!.*forgets a registration when its memory is unmapped)') ;;
  esac
fi

status=0
# vitest's own node, not npx's: npm under the preloaded ThreadSanitizer runtime
# crashes before it starts anything.
LD_PRELOAD=$library node node_modules/vitest/vitest.mjs run "${skip[@]}" "$@" || status=$?
if [ "$sanitizer" = thread ]; then
  if compgen -G "$reports/*" >/dev/null; then
    node scripts/tsan-reports.mjs "$reports"/* >&2 || { echo "test:sanitize: ThreadSanitizer reports about the addon (above)" >&2; status=1; }
  fi
elif compgen -G "$reports/*" >/dev/null; then
  echo "test:sanitize: sanitizer reports:" >&2
  for report in "$reports"/*; do echo "== $report" >&2; cat "$report" >&2; done
  status=1
fi
exit $status
