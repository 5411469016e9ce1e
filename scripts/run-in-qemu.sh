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

TIMEOUT=${QEMU_TIMEOUT:-900}
RUN=$(mktemp -d /tmp/run-in-qemu.XXXXXX)
CONSOLE=${QEMU_CONSOLE_LOG:-$RUN/console.log}
trap 'rm -rf "$RUN"' EXIT

# ---- initramfs: busybox and an init that mounts the host's / and runs the command
mkdir -p "$RUN/root/bin" "$RUN/root/run" "$RUN/root/modules"
cp "$BUSYBOX" "$RUN/root/bin/busybox"
n=0
for module in ${QEMU_MODULES:-}; do
	[ -f "$module" ] || die "QEMU_MODULES: no file $module"
	n=$((n + 1))
	case "$module" in
	*.xz) xz -dc "$module" > "$RUN/root/modules/$(printf %02d $n).ko" ;;
	*) cp "$module" "$RUN/root/modules/$(printf %02d $n).ko" ;;
	esac
done
{
	echo '#!/bin/bash'
	for v in PATH HOME LANG; do
		if [ -n "${!v+x}" ]; then printf 'export %s=%q\n' "$v" "${!v}"; fi
	done
	printf 'cd -- %q || exit 126\n' "$PWD"
	printf 'exec'
	printf ' %q' "$@"
	printf '\n'
} > "$RUN/root/run/cmd.sh"
cat > "$RUN/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /lower /rw /new
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "run-in-qemu: $*" > /dev/console; }
for module in /modules/*.ko; do
	[ -e "$module" ] && { insmod "$module" || say "insmod $module failed"; }
done
finish() { say "status $1"; [ -n "$STATUS" ] && echo "$1" > "$STATUS"; sync; poweroff -f; }
OUT=/dev/console ERR=/dev/console STATUS=
for port in /sys/class/virtio-ports/*; do
	case "$(cat "$port/name" 2>/dev/null)" in
	out) OUT=/dev/${port##*/} ;; err) ERR=/dev/${port##*/} ;; status) STATUS=/dev/${port##*/} ;;
	esac
done
# Loopback up: commands may talk TCP to themselves on 127.0.0.1 (the post-copy demo does).
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower || finish 125
mount -t tmpfs -o mode=755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /new || finish 125
for fs in proc:proc sysfs:sys devtmpfs:dev tmpfs:run tmpfs:dev/shm; do
	mkdir -p "/new/${fs#*:}"
	mount -t "${fs%%:*}" "${fs%%:*}" "/new/${fs#*:}"
done
mkdir -p /new/dev/pts /new/run/qemu
mount -t devpts -o newinstance,ptmxmode=0666 devpts /new/dev/pts
ln -sf /proc/self/fd /new/dev/fd
cp /run/cmd.sh /new/run/qemu/cmd.sh
say "command starts"
chroot /new /bin/bash /run/qemu/cmd.sh < /dev/null > "$OUT" 2> "$ERR"
finish $?
INIT
chmod 755 "$RUN/root/init"
(cd "$RUN/root" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -1 > "$RUN/initrd.gz"

# ---- boot; a boot that dies before the command starts (rare under multi-threaded TCG) is retried once
for attempt in 1 2; do
	: > "$RUN/out"; : > "$RUN/err"; : > "$RUN/status"; : > "$CONSOLE"
	set +e
	timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
		-machine pc -accel tcg,thread=multi -cpu max -smp "${QEMU_SMP:-2}" -m "${QEMU_MEM:-3072}" \
		-kernel "$KERNEL" -initrd "$RUN/initrd.gz" \
		-append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init mitigations=off nokaslr tsc=reliable no_timer_check" \
		-serial "file:$CONSOLE" -monitor none -device virtio-rng-pci \
		-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
		-device virtio-serial-pci \
		-chardev "file,id=out,path=$RUN/out" -device virtserialport,chardev=out,name=out \
		-chardev "file,id=err,path=$RUN/err" -device virtserialport,chardev=err,name=err \
		-chardev "file,id=status,path=$RUN/status" -device virtserialport,chardev=status,name=status \
		< /dev/null > "$RUN/qemu.log" 2>&1 &
	qemu=$!
	# Stream the command's output while it runs.
	tail -n +1 -f --pid=$qemu "$RUN/out" &
	tail -n +1 -f --pid=$qemu "$RUN/err" >&2 &
	wait $qemu
	qrc=$?
	wait
	set -e
	status=$(tr -dc '0-9' < "$RUN/status")
	[ -n "$status" ] && exit "$status"
	[ $qrc = 124 ] && { echo "run-in-qemu: timed out after ${TIMEOUT}s; console tail:" >&2; tail -n 20 "$CONSOLE" >&2; exit 124; }
	grep -q 'run-in-qemu: command starts' "$CONSOLE" && break
	echo "run-in-qemu: the kernel died before the command started (attempt $attempt)" >&2
done
echo "run-in-qemu: no exit status came back (qemu exit $qrc); qemu said: $(cat "$RUN/qemu.log")" >&2
echo "run-in-qemu: console tail:" >&2
tail -n 30 "$CONSOLE" >&2
exit 125
