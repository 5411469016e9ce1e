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
# Inside each guest: the host's / over 9p (read-only) under a tmpfs overlay,
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
test/53.hugetlb.test.ts test/55.probe-and-constants.test.ts test/56.matrix.test.ts test/57.rwp.test.ts"}

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

# ---------------------------------------------------------------- initramfs: busybox, modules, init
module_file() {   # name -> path of its .ko(.xz|.zst) relative to MODDIR, or nothing
	awk -v n="$1" '{ p = $0; b = p; sub(/.*\//, "", b); sub(/\.ko.*$/, "", b); gsub(/-/, "_", b); if (b == n) { print p; exit } }' "$MODDIR/modules.order" 2>/dev/null \
		| sed 's/\.ko$//' | while read -r p; do ls "$MODDIR/$p".ko* 2>/dev/null | head -1 | sed "s|^$MODDIR/||"; done
}
decompress() {   # file -> stdout
	case "$1" in
	*.xz) xz -dc "$1" ;; *.zst) zstd -dc "$1" ;; *.gz) gzip -dc "$1" ;; *) cat "$1" ;;
	esac
}
resolve_modules() {   # prints module files in load order
	declare -A seen=()
	local order=()
	visit() {
		local n=${1//-/_} f d
		[ -n "${seen[$n]:-}" ] && return 0
		seen[$n]=1
		f=$(module_file "$n")
		[ -n "$f" ] || return 0   # built in, or absent from this kernel
		for d in $(decompress "$MODDIR/$f" | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' '); do visit "$d"; done
		order+=("$f")
	}
	for m in $BASE_MODS; do visit "$m"; done
	[ ${#order[@]} -gt 0 ] && printf '%s\n' "${order[@]}"
	return 0
}
write_init() {
cat <<'INIT'
#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
con() { echo "guest: $*" > /dev/console; }
for m in $(cat /modules.list); do insmod "/lib/modules/$m" 2>/dev/console || con "insmod $m failed"; done
ST=""
for d in /sys/class/virtio-ports/*; do
	[ "$(cat "$d/name" 2>/dev/null)" = status ] && ST=/dev/${d##*/}
done
finish() { con "finish status=$1"; [ -n "$ST" ] && echo "$1" > "$ST"; sync; poweroff -f; }
mkdir -p /mnt/lower /mnt/rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /mnt/lower || { con "9p mount failed"; finish 125; }
mount -t tmpfs -o mode=755 tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot || { con "overlay failed"; finish 125; }
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
ln -sf /proc/self/fd $R/dev/fd
mount -t tmpfs -o mode=755 tmpfs $R/run
rw=$(cat /job/rwdir)
mount -t 9p -o trans=virtio,version=9p2000.L,cache=mmap,msize=512000 results "$R$rw" || con "9p mount of $rw failed"
mkdir -p $R/run/job && cp /job/cmd.sh $R/run/job/cmd.sh
hostname guest
con "command start"
chroot $R /bin/bash /run/job/cmd.sh </dev/null >/dev/console 2>&1
finish $?
INIT
}
ensure_initramfs() {   # -> INITRD
	INITRD=$CACHE/initramfs-$KVER.cpio.gz
	[ -f "$INITRD" ] && [ "$(cat "$INITRD.rev" 2>/dev/null)" = "$INITRAMFS_REV $BASE_MODS" ] && return 0
	local st=$CACHE/initramfs-staging f
	rm -rf "$st"; mkdir -p "$st/bin" "$st/lib/modules"
	cp "$BUSYBOX" "$st/bin/busybox"
	write_init > "$st/init"; chmod 755 "$st/init"
	: > "$st/modules.list"
	while read -r f; do
		decompress "$MODDIR/$f" > "$st/lib/modules/$(basename "${f%.ko*}").ko"
		basename "${f%.ko*}.ko" >> "$st/modules.list"
	done < <(resolve_modules)
	(cd "$st" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -1 > "$INITRD"
	echo "$INITRAMFS_REV $BASE_MODS" > "$INITRD.rev"
	say "initramfs for $KVER: modules $(tr '\n' ' ' < "$st/modules.list")"
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
		mkdir -p "$run/c/job"
		guest_command "$out" > "$run/c/job/cmd.sh"
		echo "$RESULTS" > "$run/c/job/rwdir"
		(cd "$run/c" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -1 > "$run/extra.cpio.gz"
		cat "$INITRD" "$run/extra.cpio.gz" > "$run/initrd.gz"
		: > "$run/status"
		say "$id: booting $KVER ($suite $PKGVER) under qemu, at most ${TIMEOUT}s"
		set +e
		timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
			-machine pc -accel tcg,thread=multi -cpu max -smp "$SMP" -m "$MEM" \
			-kernel "$VMLINUZ" -initrd "$run/initrd.gz" \
			-append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init mitigations=off random.trust_cpu=on nokaslr tsc=reliable no_timer_check 8250.nr_uarts=1" \
			-serial "file:$out/console.log" -monitor none -device virtio-rng-pci \
			-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
			-virtfs "local,path=$RESULTS,mount_tag=results,security_model=none,multidevs=remap" \
			-device virtio-serial-pci -chardev "file,id=st,path=$run/status" -device virtserialport,chardev=st,name=status \
			</dev/null 2>"$out/qemu.err"
		qrc=$?
		set -e
		status=$(tr -dc '0-9' < "$run/status")
		rm -rf "$run"
		[ -n "$status" ] || status=$([ $qrc = 124 ] || [ $qrc = 137 ] && echo 124 || echo 125)
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
