#!/usr/bin/env bash
# The test suite against the addon built with AddressSanitizer and
# UndefinedBehaviorSanitizer (native/CMakeLists.txt, cmake-js). Passes only if
# every test passes and no sanitizer wrote a report, in this process or in any
# process the tests start (workers, peers, fixtures). Arguments go to vitest.
set -euo pipefail
cd "$(dirname "$0")/.."

npx cmake-js build -d native -O build-sanitize --CDSANITIZE=ON --log-level warn >/dev/null
npm run build --silent

# node itself is not instrumented, so the ASan runtime must be loaded first.
libasan=$(readlink -f "$("${CXX:-g++}" -print-file-name=libasan.so)")
[ -f "$libasan" ] || { echo "test:sanitize: no libasan.so for ${CXX:-g++} (apt-get install libasan8)" >&2; exit 2; }
reports=$(mktemp -d /tmp/uffd-sanitize.XXXXXX)
trap 'rm -rf "$reports"' EXIT

export USERFAULTFD_NATIVE=$PWD/build-sanitize/Release/userfaultfd.node
export LD_PRELOAD=$libasan
# detect_leaks=0: LeakSanitizer would report what node and V8 deliberately
# leave allocated at exit; suppressing those by module would hide the addon's
# leaks too (every stack passes through node), so leak checking is off and the
# addon's ownership is covered by the lifetime tests instead.
# handle_sigbus=0: tests kill peers with SIGBUS on purpose (UFFDIO_POISON, the
# SIGBUS feature) and check that they die of it; ASan would turn the signal
# into a crash report and an abort. SIGBUS is no memory-error finding here.
export ASAN_OPTIONS="detect_leaks=0:handle_sigbus=0:abort_on_error=1:log_path=$reports/asan:log_exe_name=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan:log_exe_name=1"

status=0
npx vitest run "$@" || status=$?
if compgen -G "$reports/*" >/dev/null; then
  echo "test:sanitize: sanitizer reports:" >&2
  for report in "$reports"/*; do echo "== $report" >&2; cat "$report" >&2; done
  status=1
fi
exit $status
