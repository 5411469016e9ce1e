#!/usr/bin/env bash
# Self-test of the two C programs: bench/native/c_handler.c serving test/fixtures/fc_peer.c.
# Builds both (warnings are errors here), runs them together over a 64 MiB memory file for each
# memory type and handler option, then checks fc_peer's --malformed reporting against a trivial
# listener and against c_handler. Needs root (the userfaultfd syscall without
# UFFD_USER_MODE_ONLY) and python3. Prints every JSON result, then a summary table; exits 0
# only if every run gave the expected result. Figures are unpinned unless a case says otherwise:
# on 2-vCPU VMs thread placement moves them by several times from run to run.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d)
mem=/dev/shm/fc-selftest-$$.bin
regions=48M,16M
failures=0
case_no=0
background=()

cleanup() {
	for pid in "${background[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	rm -rf "$tmp" "$mem"
}
trap cleanup EXIT

for prog in "$here/c_handler.c" "$root/test/fixtures/fc_peer.c"; do
	out="$tmp/$(basename "$prog" .c)"
	cc -O2 -Wall -Wextra -pthread -o "$out" "$prog" 2>"$tmp/cc.err"
	if [ -s "$tmp/cc.err" ]; then
		cat "$tmp/cc.err"
		echo "FAIL: $prog does not build warning-free"
		exit 1
	fi
done

# Random but reproducible bytes: any misplaced page or offset shows up as a mismatch
python3 -c 'import random, sys; random.seed(1); open(sys.argv[1], "wb").write(random.randbytes(64 << 20))' "$mem"

# check NAME OK DETAILS: OK is 0 when the case passed. (Conditions are evaluated as
# "ok=0; { cond; } || ok=1" because set -e would stop the script on a failing last test.)
check() {
	if [ "$2" -eq 0 ]; then
		echo "PASS $1"
	else
		echo "FAIL $1: $3"
		failures=$((failures + 1))
	fi
}

# run_case NAME "HANDLER ARGS" PEER ARGS...: c_handler and fc_peer together; both must exit 0
run_case() {
	local name=$1 handler_args=$2 sock hpid prc=0 hrc=0 ok
	shift 2
	case_no=$((case_no + 1))
	sock="$tmp/case$case_no.sock"
	# shellcheck disable=SC2086 # handler_args is a list of words
	timeout 150 "$tmp/c_handler" --socket "$sock" --mem-file "$mem" $handler_args \
		>"$tmp/h.out" 2>"$tmp/h.err" &
	hpid=$!
	timeout 120 "$tmp/fc_peer" --socket "$sock" --mem-file "$mem" --regions "$regions" "$@" \
		>"$tmp/p.out" 2>"$tmp/p.err" || prc=$?
	# A peer that failed before connecting leaves the handler waiting in accept()
	[ "$prc" -eq 0 ] || kill "$hpid" 2>/dev/null || true
	wait "$hpid" || hrc=$?
	echo "== $name"
	echo "   handler: c_handler $handler_args"
	echo "   peer:    fc_peer --regions $regions $*"
	cat "$tmp/p.out" "$tmp/p.err" "$tmp/h.out" "$tmp/h.err" | sed 's/^/   /'
	printf '%s\t%s\t%s\n' "$name" "$(head -n1 "$tmp/p.out")" "$(head -n1 "$tmp/h.out")" >>"$tmp/summary"
	ok=0
	{ grep -q '"ok":true' "$tmp/p.out" && [ "$prc" -eq 0 ] && [ "$hrc" -eq 0 ]; } || ok=1
	check "$name" "$ok" "peer exit $prc, handler exit $hrc"
}

# run_floor NAME PEER ARGS...: fc_peer alone, no userfaultfd
run_floor() {
	local name=$1 prc=0 ok
	shift
	"$tmp/fc_peer" --no-uffd --regions "$regions" "$@" >"$tmp/p.out" 2>"$tmp/p.err" || prc=$?
	echo "== $name"
	echo "   peer:    fc_peer --no-uffd --regions $regions $*"
	cat "$tmp/p.out" "$tmp/p.err" | sed 's/^/   /'
	printf '%s\t%s\t\n' "$name" "$(head -n1 "$tmp/p.out")" >>"$tmp/summary"
	ok=0
	{ grep -q '"ok":true' "$tmp/p.out" && [ "$prc" -eq 0 ]; } || ok=1
	check "$name" "$ok" "peer exit $prc"
}

run_case "anon missing, 1 thread" ""
run_case "anon missing, 2 threads" "" --threads 2
run_case "anon missing, seq order" "" --order seq
run_case "anon missing, write touch" "" --write
run_case "memfd missing" "" --memory memfd
run_case "memfd minor (CONTINUE)" "" --memory memfd --mode minor
run_case "anon --remove 64" "" --remove 64
run_case "memfd --remove 64" "" --memory memfd --remove 64
run_case "memfd minor --remove 64" "" --memory memfd --mode minor --remove 64
run_case "--format v1.1" "" --format v1.1
run_case "--format v1.7" "" --format v1.7
run_case "--readahead 16" "--readahead 16"
run_case "--readahead 16, 2 threads seq" "--readahead 16" --threads 2 --order seq
run_case "--zeropage" "--zeropage" --expect-zero
run_case "--spin-us 50" "--spin-us 50"
run_case "both pinned to CPU 0" "--cpu 0" --cpu 0
run_case "split: handler CPU 0, peer CPU 1" "--cpu 0" --cpu 1
free_huge=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
if [ "$free_huge" -ge 32 ]; then
	run_case "hugetlb missing" "" --memory hugetlb
	run_case "hugetlb --remove 8" "" --memory hugetlb --remove 8
else
	echo "SKIP hugetlb: $free_huge free 2 MiB pages, 32 needed (raise /proc/sys/vm/nr_hugepages)"
fi
run_floor "floor (no uffd), read touch"
run_floor "floor (no uffd), write touch" --write
run_floor "floor (no uffd), memfd read touch" --memory memfd

# The checks must be able to fail: zero pages where the file's bytes belong are mismatches
sock="$tmp/negative.sock"
timeout 60 "$tmp/c_handler" --socket "$sock" --mem-file "$mem" --zeropage >/dev/null 2>&1 &
hpid=$!
prc=0
timeout 60 "$tmp/fc_peer" --socket "$sock" --mem-file "$mem" --regions 4M >"$tmp/p.out" 2>&1 || prc=$?
wait "$hpid" || true
echo "== negative: --zeropage handler, peer expects the file's bytes (must report ok false, exit 1)"
sed 's/^/   /' "$tmp/p.out"
ok=0
{ grep -q '"ok":false' "$tmp/p.out" && [ "$prc" -eq 1 ]; } || ok=1
check "negative: wrong bytes are reported" "$ok" "peer exit $prc"

# --pause-after: exactly N pages served, then the peer waits for SIGKILL and the handler sees the hang-up
sock="$tmp/pause.sock"
timeout 60 "$tmp/c_handler" --socket "$sock" --mem-file "$mem" >"$tmp/h.out" 2>&1 &
hpid=$!
"$tmp/fc_peer" --socket "$sock" --mem-file "$mem" --regions "$regions" --threads 2 --pause-after 100 \
	>"$tmp/p.out" 2>&1 &
ppid=$!
background+=("$ppid")
for _ in $(seq 100); do
	grep -q paused "$tmp/p.out" && break
	sleep 0.1
done
kill -KILL "$ppid"
wait "$ppid" 2>/dev/null || true
hrc=0
wait "$hpid" || hrc=$?
echo "== --pause-after 100, 2 threads, then SIGKILL"
sed 's/^/   /' "$tmp/p.out" "$tmp/h.out"
ok=0
{ grep -qx '{"paused":100}' "$tmp/p.out" && grep -q '"faults":100,' "$tmp/h.out" && [ "$hrc" -eq 0 ]; } || ok=1
check "--pause-after 100" "$ok" "handler exit $hrc"

# --malformed: a listener that reads the handshake and closes; then c_handler, which must refuse each
cat >"$tmp/listener.py" <<'EOF'
import os, socket, sys, time
path, hold = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(1)
c, _ = s.accept()
c.recvmsg(65536, socket.CMSG_SPACE(8 * 4))
os.unlink(path)
time.sleep(hold)
c.close()
EOF
for kind in bad-json missing-field overlap overflow no-fd two-fds not-uffd unaligned not-array empty; do
	sock="$tmp/mal-$kind.sock"
	python3 "$tmp/listener.py" "$sock" 0 &
	lpid=$!
	prc=0
	"$tmp/fc_peer" --socket "$sock" --mem-file "$mem" --regions "$regions" --malformed "$kind" \
		>"$tmp/p.out" 2>&1 || prc=$?
	wait "$lpid" || true
	echo "== --malformed $kind, closing listener: $(cat "$tmp/p.out")"
	ok=0
	{ grep -qx "{\"malformed\":\"$kind\",\"closedByHandler\":true}" "$tmp/p.out" && [ "$prc" -eq 0 ]; } || ok=1
	check "--malformed $kind (listener)" "$ok" "peer exit $prc"

	sock="$tmp/malh-$kind.sock"
	timeout 30 "$tmp/c_handler" --socket "$sock" --mem-file "$mem" >/dev/null 2>"$tmp/h.err" &
	hpid=$!
	prc=0
	"$tmp/fc_peer" --socket "$sock" --mem-file "$mem" --regions "$regions" --malformed "$kind" \
		>"$tmp/p.out" 2>&1 || prc=$?
	hrc=0
	wait "$hpid" || hrc=$?
	echo "== --malformed $kind, c_handler: $(cat "$tmp/p.out") / $(cat "$tmp/h.err")"
	ok=0
	{ grep -q '"closedByHandler":true' "$tmp/p.out" && [ "$prc" -eq 0 ] && [ "$hrc" -eq 2 ]; } || ok=1
	check "--malformed $kind (c_handler refuses)" "$ok" "peer exit $prc, handler exit $hrc"
done

# A handler that keeps the connection open: the peer gives up after 10 s and says so
sock="$tmp/hold.sock"
python3 "$tmp/listener.py" "$sock" 15 &
lpid=$!
background+=("$lpid")
prc=0
"$tmp/fc_peer" --socket "$sock" --mem-file "$mem" --regions "$regions" --malformed empty \
	>"$tmp/p.out" 2>&1 || prc=$?
echo "== --malformed empty, listener that holds the connection: $(cat "$tmp/p.out")"
ok=0
{ grep -qx '{"malformed":"empty","closedByHandler":false}' "$tmp/p.out" && [ "$prc" -eq 1 ]; } || ok=1
check "--malformed against a handler that never closes" "$ok" "peer exit $prc"

echo
python3 - "$tmp/summary" <<'EOF'
import json, sys
print(f"{'case':40} {'pages/s':>9} {'MB/s':>8} {'p50 us':>8} {'p99 us':>8} {'max us':>8}  handler")
for line in open(sys.argv[1]):
    name, peer, handler = line.rstrip("\n").split("\t")
    try:
        p = json.loads(peer)
    except ValueError:
        print(f"{name:40} (no result)")
        continue
    h = json.loads(handler) if handler else {}
    extra = f"faults {h['faults']} eexist {h['eexist']} removes {h['removes']} avgBatch {h['avgBatch']}" if h else "-"
    print(f"{name:40} {p['pagesPerSec']:>9} {p['mbPerSec']:>8} {p['p50us']:>8} {p['p99us']:>8} {p['maxus']:>8}  {extra}")
EOF
echo
if [ "$failures" -eq 0 ]; then
	echo "selftest: all passed"
else
	echo "selftest: $failures FAILED"
	exit 1
fi
