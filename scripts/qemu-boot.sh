#!/usr/bin/env bash
# qemu-boot.sh - the one place that boots a Linux kernel under qemu (software
# emulation) and runs a command in it: the initramfs and its init, the qemu
# command line, and collecting the command's output and exit status. Used by
# scripts/run-in-qemu.sh (npm run test:gmem), scripts/test-kernels.sh
# (npm run test:kernels) and test/arm64/vm.sh (npm run test:arm64), which
# choose the kernel and what the guest sees.
#
#   qemu-boot.sh initramfs OUT BUSYBOX [MODDIR MODULE...]
#       Writes OUT (a gzipped cpio): BUSYBOX (static, of the guest's
#       architecture), this script's init, and the modules: each MODULE is a
#       module name, found under MODDIR with its dependencies (read from each
#       .ko's depends=, as Debian's sid packages ship no modules.dep; a name
#       not found is taken as built in), or a module file (.ko, .ko.xz,
#       .ko.zst), loaded as given, in order. Prints the modules it put in.
#
#   qemu-boot.sh run [OPTIONS] KERNEL INITRD SCRIPT
#       Boots KERNEL with INITRD and runs SCRIPT (a shell script) as root in
#       the guest's root, chrooted: the first --share, 9p read-only under a
#       tmpfs overlay, so writes are thrown away at power-off; proc, sys,
#       devtmpfs, devpts, /dev/shm and /run are mounted in it. The exit status
#       is SCRIPT's; 124 if it timed out, 125 if no status came back (the
#       console's tail is printed). A boot that dies before SCRIPT starts (rare
#       under multi-threaded TCG) is tried once more; SCRIPT never runs twice.
#     --arch x86_64|aarch64     (default: x86_64)
#     --share TAG=HOSTDIR[:GUESTDIR][,rw]
#                               a 9p share; the first is the root (GUESTDIR /),
#                               the others are mounted at GUESTDIR (default:
#                               HOSTDIR) in it, read-only under an overlay or,
#                               with ,rw, read-write
#     --ports                   SCRIPT's stdout and stderr come back on ours
#                               (virtio serial ports); without it they go to
#                               the console
#     --shell PATH              runs SCRIPT (default /bin/bash)
#     --tmp                     a tmpfs (mode 1777) on /tmp
#     --console FILE            the kernel's console (default: a temp file)
#     --append ARGS             more kernel arguments
#     --cpu MODEL --mem MiB --smp N --timeout SECONDS --tcg-thread multi|single
#                               (defaults: max, 3072, 2, 900, multi)
#
# Needs: qemu-system-x86_64 or qemu-system-aarch64; gzip, xz, and cpio (or a
# busybox that runs on the host) to write the initramfs.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
die() { echo "qemu-boot: $*" >&2; exit 125; }
usage() { sed -n '2,/^set -euo/p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# A newc cpio of the current directory on stdout: with cpio, or a busybox that
# runs here (the guest's own, when it is this machine's architecture).
mkcpio() { # [BUSYBOX]
	if command -v cpio >/dev/null; then find . | cpio -o -H newc --quiet
	elif [ -n "${1:-}" ] && "$1" true 2>/dev/null; then find . | "$1" cpio -o -H newc 2>/dev/null
	elif command -v busybox >/dev/null; then find . | busybox cpio -o -H newc 2>/dev/null
	else die "cpio is missing (apt-get install -y cpio)"; fi
}

unpack() { case "$1" in *.xz) xz -dc "$1" ;; *.zst) zstd -dc "$1" ;; *.gz) gzip -dc "$1" ;; *) cat "$1" ;; esac; }

# The guest's /init. It reads the run's settings from /job (a read-only 9p
# share, so a run needs no initramfs of its own): cmd.sh, shell, shares
# ("TAG GUESTDIR ro|rw" a line, the root first), ports (how many virtio serial
# ports to wait for), tmp.
write_init() {
cat <<'INIT'
#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev /mnt
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
con() { echo "qemu-boot: $*" > /dev/console; }
for m in $(cat /modules.list); do insmod "/lib/modules/$m" 2>/dev/console || con "insmod $m failed"; done
# Loopback up: commands may talk TCP to themselves on 127.0.0.1 (the post-copy demo does).
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
mkdir -p /job
mount -t 9p -o trans=virtio,version=9p2000.L,ro qemuboot /job || { con "the run's settings (9p share qemuboot) cannot be mounted"; poweroff -f; }
# virtio_console may have just been loaded: its ports appear a moment later.
want=$(cat /job/ports)
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
	[ "$(ls /sys/class/virtio-ports 2>/dev/null | wc -l)" -ge "$want" ] && break
	sleep 0.1
done
OUT=/dev/console ERR=/dev/console STATUS=
for port in /sys/class/virtio-ports/*; do
	case "$(cat "$port/name" 2>/dev/null)" in
	out) OUT=/dev/${port##*/} ;; err) ERR=/dev/${port##*/} ;; status) STATUS=/dev/${port##*/} ;;
	esac
done
finish() { con "status $1"; [ -n "$STATUS" ] && echo "$1" > "$STATUS"; sync; poweroff -f; }
R=/newroot
share() { # TAG TARGET MODE: a 9p share, read-only under a tmpfs overlay, or read-write
	mkdir -p "$2"
	if [ "$3" = rw ]; then
		mount -t 9p -o trans=virtio,version=9p2000.L,cache=mmap,msize=512000 "$1" "$2"
		return
	fi
	mkdir -p "/mnt/$1/ro" "/mnt/$1/rw"
	mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 "$1" "/mnt/$1/ro" || return 1
	mount -t tmpfs -o mode=755 tmpfs "/mnt/$1/rw"
	mkdir -p "/mnt/$1/rw/upper" "/mnt/$1/rw/work"
	mount -t overlay overlay -o "lowerdir=/mnt/$1/ro,upperdir=/mnt/$1/rw/upper,workdir=/mnt/$1/rw/work" "$2"
}
read -r tag dir mode < /job/shares
share "$tag" $R "$mode" || { con "mounting the root ($tag) failed"; finish 125; }
for fs in proc:proc sysfs:sys devtmpfs:dev tmpfs:run tmpfs:dev/shm; do
	mkdir -p "$R/${fs#*:}"
	mount -t "${fs%%:*}" "${fs%%:*}" "$R/${fs#*:}"
done
mkdir -p $R/dev/pts
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
ln -sf /proc/self/fd $R/dev/fd
[ -e /job/tmp ] && mkdir -p $R/tmp && mount -t tmpfs -o mode=1777 tmpfs $R/tmp
tail -n +2 /job/shares | while read -r tag dir mode; do
	share "$tag" "$R$dir" "$mode" || con "mounting $tag at $dir failed"
done
mkdir -p $R/run/qemu-boot && cp /job/cmd.sh $R/run/qemu-boot/cmd.sh
hostname guest
con "command starts"
chroot $R "$(cat /job/shell)" /run/qemu-boot/cmd.sh < /dev/null > "$OUT" 2> "$ERR"
finish $?
INIT
}

initramfs() { # OUT BUSYBOX [MODDIR MODULE...]
	[ $# -ge 2 ] || usage
	local out=$1 busybox=$2 moddir=${3:-} index=
	shift 2; [ $# -gt 0 ] && shift
	[ -f "$busybox" ] || die "no busybox at $busybox"
	stage=$(mktemp -d "${TMPDIR:-/tmp}/qemu-boot-initramfs.XXXXXX")
	trap 'rm -rf "$stage"' EXIT # stage is global: the trap runs after this function
	mkdir -p "$stage/bin" "$stage/lib/modules"
	cp "$busybox" "$stage/bin/busybox"
	write_init > "$stage/init"
	chmod 755 "$stage/init"
	: > "$stage/modules.list"
	declare -A seen=()
	add() { # a module file: loaded after those added before it
		local name
		name=$(basename "$1"); name=${name%.ko*}
		unpack "$1" > "$stage/lib/modules/$name.ko"
		echo "$name.ko" >> "$stage/modules.list"
	}
	load() { # a module by name, after its dependencies
		local name=${1//-/_} file dep
		[ -n "${seen[$name]:-}" ] && return 0
		seen[$name]=1
		file=$(awk -v n="$name" '$1 == n {print $2; exit}' <<<"$index")
		[ -n "$file" ] || return 0 # built in, or absent from this kernel
		for dep in $(unpack "$moddir/$file" | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' '); do load "$dep"; done
		add "$moddir/$file"
	}
	if [ -n "$moddir" ]; then
		index=$(cd "$moddir" && find . -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' \
			| awk '{p=$0; sub(/^\.\//,"",p); n=p; sub(/\.ko(\.xz|\.zst)?$/,"",n); sub(/.*\//,"",n); gsub(/-/,"_",n); print n, p}')
	fi
	local m
	for m in "$@"; do
		case "$m" in
		*/* | *.ko | *.ko.xz | *.ko.zst) [ -f "$m" ] || die "no module file $m"; add "$m" ;;
		*) [ -n "$moddir" ] || die "module $m named without a module directory"; load "$m" ;;
		esac
	done
	(cd "$stage" && mkcpio "$busybox") | gzip -1 > "$out.tmp"
	mv "$out.tmp" "$out"
	tr '\n' ' ' < "$stage/modules.list"; echo
}

run() {
	local arch=x86_64 ports=0 shell=/bin/bash tmp=0 console= append= cpu=max mem=3072 smp=2 timeout=900 thread=multi
	local -a shares=()
	while [ $# -gt 0 ]; do
		case "$1" in
		--arch) arch=$2; shift 2 ;;
		--share) shares+=("$2"); shift 2 ;;
		--ports) ports=1; shift ;;
		--shell) shell=$2; shift 2 ;;
		--tmp) tmp=1; shift ;;
		--console) console=$2; shift 2 ;;
		--append) append=$2; shift 2 ;;
		--cpu) cpu=$2; shift 2 ;;
		--mem) mem=$2; shift 2 ;;
		--smp) smp=$2; shift 2 ;;
		--timeout) timeout=$2; shift 2 ;;
		--tcg-thread) thread=$2; shift 2 ;;
		--) shift; break ;;
		-*) usage ;;
		*) break ;;
		esac
	done
	[ $# = 3 ] && [ ${#shares[@]} -gt 0 ] || usage
	local kernel=$1 initrd=$2 script=$3 machine serial qemu
	[ -f "$kernel" ] || die "no kernel image at $kernel"
	[ -f "$initrd" ] || die "no initramfs at $initrd"
	case "$arch" in
	x86_64) qemu=qemu-system-x86_64 machine=pc serial=ttyS0
		append="mitigations=off nokaslr tsc=reliable no_timer_check${append:+ $append}" ;;
	aarch64) qemu=qemu-system-aarch64 machine=virt serial=ttyAMA0 ;;
	*) die "--arch $arch: x86_64 or aarch64" ;;
	esac
	command -v $qemu >/dev/null || die "$qemu is missing (apt-get install -y qemu-system-${arch/x86_64/x86}; qemu-system-arm for aarch64)"

	RUN=$(mktemp -d "${TMPDIR:-/tmp}/qemu-boot.XXXXXX") # global: the trap runs after this function
	trap 'rm -rf "$RUN"' EXIT
	[ -n "$console" ] || console=$RUN/console.log
	# ---- this run's settings, appended to the initramfs
	local -a virtfs=()
	local spec tag rest host guest mode ro n=0
	mkdir -p "$RUN/job"
	: > "$RUN/job/shares"
	for spec in "${shares[@]}"; do
		tag=${spec%%=*} rest=${spec#*=} mode=ro
		case "$rest" in *,rw) mode=rw rest=${rest%,rw} ;; esac
		host=${rest%%:*} guest=${rest#*:}
		[ "$guest" = "$rest" ] && guest=$host
		[ $n = 0 ] && guest=/
		n=$((n + 1))
		[ -d "$host" ] || die "--share $spec: no directory $host"
		echo "$tag $guest $mode" >> "$RUN/job/shares"
		ro=; [ $mode = ro ] && ro=,readonly=on
		virtfs+=(-virtfs "local,path=$host,mount_tag=$tag,security_model=none$ro,multidevs=remap")
	done
	cp "$script" "$RUN/job/cmd.sh"
	echo "$shell" > "$RUN/job/shell"
	if [ $tmp = 1 ]; then : > "$RUN/job/tmp"; fi
	local -a serial_ports=(-device virtio-serial-pci)
	if [ $ports = 1 ]; then
		echo 3 > "$RUN/job/ports"
		serial_ports+=(-chardev "file,id=out,path=$RUN/out" -device virtserialport,chardev=out,name=out
			-chardev "file,id=err,path=$RUN/err" -device virtserialport,chardev=err,name=err)
	else
		echo 1 > "$RUN/job/ports"
	fi
	serial_ports+=(-chardev "file,id=status,path=$RUN/status" -device virtserialport,chardev=status,name=status)
	virtfs+=(-virtfs "local,path=$RUN/job,mount_tag=qemuboot,security_model=none,readonly=on")

	# ---- boot
	local attempt pid qrc status
	for attempt in 1 2; do
		: > "$RUN/out"; : > "$RUN/err"; : > "$RUN/status"; : > "$console"
		set +e
		timeout -k 10 "$timeout" $qemu -nodefaults -no-user-config -display none -no-reboot \
			-machine $machine -accel "tcg,thread=$thread" -cpu "$cpu" -smp "$smp" -m "$mem" \
			-kernel "$kernel" -initrd "$initrd" \
			-append "console=$serial loglevel=4 panic=-1 rdinit=/init random.trust_cpu=on${append:+ $append}" \
			-serial "file:$console" -monitor none -device virtio-rng-pci \
			"${virtfs[@]}" "${serial_ports[@]}" \
			< /dev/null > "$RUN/qemu.log" 2>&1 &
		pid=$!
		if [ $ports = 1 ]; then # the command's output, while it runs
			tail -n +1 -f --pid=$pid "$RUN/out" &
			tail -n +1 -f --pid=$pid "$RUN/err" >&2 &
		fi
		wait $pid
		qrc=$?
		wait
		set -e
		status=$(tr -dc '0-9' < "$RUN/status")
		[ -n "$status" ] && return "$status"
		if [ $qrc = 124 ] || [ $qrc = 137 ]; then
			echo "qemu-boot: timed out after ${timeout}s; console tail:" >&2
			tail -n 20 "$console" >&2
			return 124
		fi
		grep -q 'qemu-boot: command starts' "$console" && break
		echo "qemu-boot: the kernel died before the command started (attempt $attempt)" >&2
	done
	echo "qemu-boot: no exit status came back (qemu exit $qrc); qemu said: $(cat "$RUN/qemu.log")" >&2
	echo "qemu-boot: console tail:" >&2
	tail -n 30 "$console" >&2
	return 125
}

case "${1:-}" in
initramfs) shift; initramfs "$@" ;;
run) shift; run "$@" ;;
*) usage ;;
esac
