#!/usr/bin/env bash
# test-kernels.sh - runs the capability probe and the kernel-facing test files
# under several Linux kernels, each booted under qemu (software emulation)
# with this machine's own userland, and writes the results as a matrix into
# README.md (between the kernel-matrix markers). `npm run test:kernels`.
#
#   scripts/test-kernels.sh [KERNEL_ID...]     default: every kernel in KERNELS below;
#                                              ids from OPTIONAL_KERNELS run when named
#   scripts/test-kernels.sh --prepare          only download and unpack the kernels
#
# Kernels are Debian's packages, fetched into a cache outside the repository
# with a private apt configuration whose archive address is read at run time
# from this machine's apt sources (the system's apt state is not touched).
# "host" runs on this machine's kernel directly, without qemu.
#
# Inside each guest (booted by scripts/qemu-boot.sh): the host's / over 9p (read-only) under a tmpfs overlay,
# so node, the built addon and vitest run unchanged; test/kernels/results is
# shared read-write so results come back. Each kernel's run is bounded by
# UFFD_KERNEL_TIMEOUT seconds. Results: test/kernels/results/<id>/
# {probe.json, vitest.json, run.json, console.log}.
#
# Environment:
#   UFFD_KERNELS_CACHE   downloads, unpacked kernels, initramfs (default ~/.cache/userfaultfd-kernels)
#   UFFD_KERNEL_TIMEOUT  seconds per kernel, boot included (default 1800; a run takes
#                        10-15 minutes on 2 busy cores)
#   UFFD_KERNEL_MEM      guest RAM in MiB (default 3072)
#   UFFD_KERNEL_SMP      guest vCPUs (default 2)
#   UFFD_KERNEL_NO_README=1  do not rewrite README.md
#
# Needs: qemu-system-x86_64 (apt-get install -y qemu-system-x86), apt-get,
# dpkg-deb, cpio-capable busybox (downloaded: busybox-static), xz, gzip.
set -euo pipefail

# id:suite. The kernel is the suite's linux-image-<arch> meta package's image.
# The default run; more kernels can be named on the command line.
KERNELS="debian-6.1:bookworm host debian-7.2:sid debian-7.3:experimental"
# Named only: 6.12 (Debian 13) takes another 15-25 minutes under emulation.
OPTIONAL_KERNELS="debian-6.12:trixie"
# Test files that exercise the kernel's userfaultfd features (the rest check
# argument handling and library logic, or serve many pages, which is slow under
# emulation and changes with no kernel).
TEST_FILES=${UFFD_KERNEL_TESTS:-"test/01.open.test.ts \
test/50.write-protect.test.ts test/51.poison-move-sigbus.test.ts test/52.events.test.ts \
test/53.hugetlb.test.ts test/55.probe-and-constants.test.ts test/56.matrix.test.ts test/57.rwp.test.ts \
test/58.selftests-parity.test.ts"}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${UFFD_KERNELS_CACHE:-$HOME/.cache/userfaultfd-kernels}
TIMEOUT=${UFFD_KERNEL_TIMEOUT:-1800}
MEM=${UFFD_KERNEL_MEM:-3072}
SMP=${UFFD_KERNEL_SMP:-2}
RESULTS=$ROOT/test/kernels/results
ARCH=$(dpkg --print-architecture)
INITRAMFS_REV=1
# Modules the guest needs: virtio transport, 9p for the host's root, overlay.
# Built-in ones are skipped; the dependencies come from each module's depends=.
BASE_MODS="virtio_pci virtio_console virtio_rng netfs fscache 9pnet 9pnet_virtio 9p overlay"

say() { echo "[test-kernels] $*" >&2; }
die() { echo "[test-kernels] error: $*" >&2; exit 2; }

mkdir -p "$CACHE" "$RESULTS"
exec 9>"$CACHE/.lock"
flock -n 9 || die "another test-kernels run holds $CACHE/.lock"

# ---------------------------------------------------------------- apt, one private configuration per suite
archive() {   # the Debian archive address and keyring this machine's apt uses
	local f uri="" key=""
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		uri=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' "$f")
		key=$(awk '/^Signed-By:/ {print $2; exit}' "$f")
		[ -n "$uri" ] && break
	done
	if [ -z "$uri" ]; then
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
			[ -r "$f" ] || continue
			uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*debian\/?$/) { print $i; exit } }' "$f")
			[ -n "$uri" ] && break
		done
	fi
	[ -n "$uri" ] || die "no Debian archive address in /etc/apt/sources.list(.d)"
	echo "$uri ${key:-/usr/share/keyrings/debian-archive-keyring.gpg}"
}
apt_opts() {   # suite
	local d=$CACHE/apt/$1
	echo "-o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts=$d/sources.d -o Dir::State::Lists=$d/lists" \
	     "-o Dir::Cache=$d/cache -o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root" \
	     "-o APT::Architecture=$ARCH -o APT::Architectures=$ARCH"
}
ensure_suite() {   # suite
	local d=$CACHE/apt/$1 uri key
	ls "$d/lists/"*_Packages* >/dev/null 2>&1 && return 0
	read -r uri key < <(archive)
	mkdir -p "$d/sources.d" "$d/lists/partial" "$d/cache/archives/partial"
	printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' "$uri" "$1" "$key" > "$d/sources.d/suite.sources"
	say "apt-get update for $1 ($uri)"
	# shellcheck disable=SC2046
	apt-get $(apt_opts "$1") -q update > "$d/update.log" 2>&1 || die "apt-get update for $1 failed, see $d/update.log"
}
depends_of() {   # suite package -> dependency names, one a line
	# shellcheck disable=SC2046
	apt-cache $(apt_opts "$1") show "$2" | awk '/^Depends:/ { sub(/^Depends: */, ""); print; exit }' \
		| tr ',|' '\n\n' | sed -e 's/(.*//' -e 's/^ *//' -e 's/ *$//' | grep -v '^$' || true
}
download() {   # suite package... (into the current directory)
	# shellcheck disable=SC2046
	apt-get $(apt_opts "$1") -q download "${@:2}" >> "$CACHE/download.log" 2>&1 || die "apt-get download ${*:2} failed, see $CACHE/download.log"
}

# ---------------------------------------------------------------- a suite's kernel, unpacked
ensure_kernel() {   # suite -> sets KVER KROOT VMLINUZ MODDIR PKGVER
	local suite=$1 image pkgs p
	ensure_suite "$suite"
	image=$(depends_of "$suite" "linux-image-$ARCH" | grep -E '^linux-image-[0-9]' | head -1)
	[ -n "$image" ] || die "linux-image-$ARCH in $suite names no kernel image"
	KVER=${image#linux-image-}
	# shellcheck disable=SC2046
	PKGVER=$(apt-cache $(apt_opts "$suite") show "$image" | awk '/^Version:/ {print $2; exit}')
	KROOT=$CACHE/k/$KVER
	if [ ! -f "$KROOT/.unpacked" ]; then
		pkgs=("$image")
		for p in $(depends_of "$suite" "$image"); do
			[[ $p =~ ^linux-(binary|modules|base)-${KVER//+/\\+}$ ]] && pkgs+=("$p")
		done
		say "downloading ${pkgs[*]} ($suite, $PKGVER)"
		rm -rf "$CACHE/debs/$KVER" "$KROOT"; mkdir -p "$CACHE/debs/$KVER" "$KROOT"
		(cd "$CACHE/debs/$KVER" && download "$suite" "${pkgs[@]}")
		for p in "$CACHE/debs/$KVER"/*.deb; do dpkg-deb -x "$p" "$KROOT"; done
		touch "$KROOT/.unpacked"
	fi
	MODDIR=$(ls -d "$KROOT"/usr/lib/modules/"$KVER" "$KROOT"/lib/modules/"$KVER" 2>/dev/null | head -1 || true)
	VMLINUZ=$(ls "$KROOT/boot/vmlinuz-$KVER" "$MODDIR/vmlinuz" 2>/dev/null | head -1 || true)
	[ -n "$MODDIR" ] && [ -f "$VMLINUZ" ] || die "no kernel image or modules in $KROOT"
}

# ---------------------------------------------------------------- busybox (static), for the initramfs
ensure_busybox() {
	BUSYBOX=$CACHE/busybox/bin/busybox
	[ -x "$BUSYBOX" ] && return 0
	local suite
	suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
	ensure_suite "$suite"
	mkdir -p "$CACHE/debs/busybox" "$CACHE/busybox"
	(cd "$CACHE/debs/busybox" && download "$suite" busybox-static)
	dpkg-deb -x "$(ls "$CACHE/debs/busybox/"busybox-static_*.deb | head -1)" "$CACHE/busybox"
}

# ---------------------------------------------------------------- initramfs: busybox, modules, init (scripts/qemu-boot.sh's)
BOOT=$ROOT/scripts/qemu-boot.sh
ensure_initramfs() {   # -> INITRD
	INITRD=$CACHE/initramfs-$KVER.cpio.gz
	local rev; rev="$INITRAMFS_REV $BASE_MODS $(cksum < "$BOOT")"
	[ -f "$INITRD" ] && [ "$(cat "$INITRD.rev" 2>/dev/null)" = "$rev" ] && return 0
	local modules
	# shellcheck disable=SC2086 # BASE_MODS is a list of names
	modules=$("$BOOT" initramfs "$INITRD" "$BUSYBOX" "$MODDIR" $BASE_MODS)
	echo "$rev" > "$INITRD.rev"
	say "initramfs for $KVER: modules $modules"
}

# ---------------------------------------------------------------- the newest uapi header
# The constants test compiles against it (test/55): Linux 7.3's userfaultfd.h
# from the newest suite's linux-libc-dev.
UAPI_SUITE=experimental
ensure_uapi() {   # -> UAPI_INCLUDE
	local d=$CACHE/uapi/$UAPI_SUITE
	UAPI_INCLUDE=$d/usr/include
	[ -f "$UAPI_INCLUDE/linux/userfaultfd.h" ] && return 0
	ensure_suite "$UAPI_SUITE"
	rm -rf "$d" "$CACHE/debs/uapi"; mkdir -p "$d" "$CACHE/debs/uapi"
	(cd "$CACHE/debs/uapi" && download "$UAPI_SUITE" linux-libc-dev)
	dpkg-deb -x "$(ls "$CACHE/debs/uapi/"linux-libc-dev_*.deb | head -1)" "$d"
}

# ---------------------------------------------------------------- one kernel
# What runs inside the guest (and on the host for "host"): the probe, then the
# kernel-facing test files, results into $1.
guest_command() {   # outdir -> a bash script on stdout
	cat <<CMD
#!/bin/bash
export PATH=$(printf %q "$PATH") HOME=/root LANG=C.UTF-8 CI=1 UFFD_UAPI_INCLUDE=$(printf %q "$UAPI_INCLUDE")
cd $(printf %q "$SNAPSHOT") || exit 126
uname -r > $(printf %q "$1")/uname.txt
getconf PAGESIZE > $(printf %q "$1")/pagesize.txt
node dist/cli.js probe --json > $(printf %q "$1")/probe.json 2> $(printf %q "$1")/probe.err
node_modules/.bin/vitest run --reporter=json --outputFile=$(printf %q "$1")/vitest.json --reporter=verbose \
	--testTimeout=180000 --hookTimeout=180000 $TEST_FILES > $(printf %q "$1")/vitest.log 2>&1
CMD
}

run_kernel() {   # id suite
	local id=$1 suite=$2 out=$RESULTS/$1 start end status qrc
	rm -rf "$out"; mkdir -p "$out"
	start=$(date +%s)
	if [ "$id" = host ]; then
		say "host: $(uname -r), no qemu"
		guest_command "$out" > "$out/cmd.sh"
		set +e; timeout -k 10 "$TIMEOUT" bash "$out/cmd.sh"; status=$?; set -e
		rm -f "$out/cmd.sh"
		PKG="" PKGVER="" suite=""
	else
		ensure_kernel "$suite"
		ensure_busybox
		ensure_initramfs
		PKG=linux-image-$KVER
		local run; run=$(mktemp -d "$CACHE/run.XXXXXX")
		guest_command "$out" > "$run/cmd.sh"
		say "$id: booting $KVER ($suite $PKGVER) under qemu, at most ${TIMEOUT}s"
		# The command's output goes to the console, kept as console.log.
		set +e
		"$BOOT" run --arch x86_64 --share hostroot=/ --share "results=$RESULTS,rw" --console "$out/console.log" \
			--append "8250.nr_uarts=1" --timeout "$TIMEOUT" --mem "$MEM" --smp "$SMP" \
			"$VMLINUZ" "$INITRD" "$run/cmd.sh" 2> "$out/qemu.err"
		status=$?
		set -e
		rm -rf "$run"
	fi
	end=$(date +%s)
	node -e 'require("fs").writeFileSync(process.argv[1], JSON.stringify({ id: process.argv[2], suite: process.argv[3] || null, package: process.argv[4] || null, packageVersion: process.argv[5] || null, qemu: process.argv[2] !== "host", exitStatus: Number(process.argv[6]), timedOut: process.argv[6] === "124", seconds: Number(process.argv[7]), timeoutSeconds: Number(process.argv[8]), command: process.argv[9], date: new Date().toISOString() }, null, 2) + "\n")' \
		"$out/run.json" "$id" "$suite" "$PKG" "$PKGVER" "$status" "$((end - start))" "$TIMEOUT" "$COMMAND"
	say "$id: exit $status after $((end - start))s"
}

# ---------------------------------------------------------------- main
cd "$ROOT"
if [ "${1:-}" = --prepare ]; then   # download and unpack every kernel, build the initramfs images; run nothing
	ensure_busybox
	ensure_uapi
	for spec in $KERNELS $OPTIONAL_KERNELS; do
		[ "${spec#*:}" = "$spec" ] && continue
		ensure_kernel "${spec#*:}"; ensure_initramfs; say "${spec%%:*}: $KVER ($PKGVER) ready"
	done
	exit 0
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: apt-get install -y qemu-system-x86"
say "building (dist/ and the test fixtures) on the host; the guests only read them"
npm run -s build
mkdir -p build/fixtures
for c in test/fixtures/*.c; do
	n=$(basename "$c" .c)
	[ build/fixtures/"$n" -nt "$c" ] || cc -O2 -Wall -Wextra -pthread -o build/fixtures/"$n" "$c"
done
ensure_uapi
# The guests read a snapshot of what they run, so that work on the tree
# (a rebuild, say) cannot change what a run half-way through sees.
SNAPSHOT=$CACHE/snapshot
rm -rf "$SNAPSHOT"; mkdir -p "$SNAPSHOT"
cp -a dist build test package.json vitest.config.mts tsconfig.json "$SNAPSHOT/"
rm -rf "$SNAPSHOT/test/kernels"
ln -s "$ROOT/node_modules" "$SNAPSHOT/node_modules"
COMMAND="npm run test:kernels${*:+ -- $*}"
wanted=("$@")
for spec in $KERNELS $OPTIONAL_KERNELS; do
	id=${spec%%:*} suite=${spec#*:}
	[ "$suite" = "$id" ] && suite=""
	if [ ${#wanted[@]} -gt 0 ]; then
		[[ " ${wanted[*]} " =~ " $id " ]] || continue
	elif [[ " $OPTIONAL_KERNELS " =~ " $spec " ]]; then
		continue
	fi
	run_kernel "$id" "$suite"
done
[ "${UFFD_KERNEL_NO_README:-0}" = 1 ] || node scripts/kernel-matrix.mjs --write README.md
