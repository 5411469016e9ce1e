// What this host supports, found by trying: how a uffd can be opened, every
// UFFDIO_API feature, and for each memory type which register modes the
// kernel accepts and which ioctls it then allows. Never by kernel version.
import fs from 'node:fs';
import os from 'node:os';
import { FEATURES, type Feature, type Ioctl, featureNames } from './constants';
import type { UffdError } from './errors';
import { Mapping, Memfd, systemPageSize } from './memory';
import { native } from './binding';
import { Userfaultfd } from './uffd';

export type Outcome = { ok: true } | { ok: false; error: string };
export type MemoryType = 'anonymous' | 'shmem' | 'hugetlb' | 'guest_memfd';
export type Mode = 'missing' | 'minor' | 'wp';

export interface ProbeReport {
  kernel: { release: string; machine: string };
  pageSize: number;
  hugePages: { size: number; total: number; free: number }[];
  open: {
    syscall: Outcome;
    userModeOnly: Outcome;
    device: Outcome & { present: boolean };
    /** vm.unprivileged_userfaultfd, or undefined where the sysctl is absent. */
    unprivilegedSysctl: number | undefined;
    root: boolean;
  };
  /** Every feature this library knows, and whether UFFDIO_API offers it. */
  features: Record<Feature, boolean>;
  /** Feature bits the kernel offers that this library has no name for (a newer kernel). */
  unknownFeatureBits: string;
  memory: Record<MemoryType, { available: Outcome; modes: Record<Mode, (Outcome & { ioctls?: Ioctl[] })> }>;
}

function describeError(error: unknown): string {
  const e = error as UffdError;
  return e.code ? `${e.code} (${e.syscall ?? 'userfaultfd'})` : String(error);
}

function attempt(fn: () => void): Outcome {
  try {
    fn();
    return { ok: true };
  } catch (error) {
    return { ok: false, error: describeError(error) };
  }
}

function readNumber(file: string): number | undefined {
  try {
    return Number(fs.readFileSync(file, 'utf8').trim());
  } catch {
    return undefined;
  }
}

function hugePages(): ProbeReport['hugePages'] {
  const dir = '/sys/kernel/mm/hugepages';
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).map((name) => ({
    size: Number(/(\d+)kB/.exec(name)![1]) * 1024,
    total: readNumber(`${dir}/${name}/nr_hugepages`) ?? 0,
    free: readNumber(`${dir}/${name}/free_hugepages`) ?? 0,
  })).sort((a, b) => a.size - b.size);
}

// Makes one mapping of the type, or says why it cannot.
function makeMemory(type: MemoryType, huge: ProbeReport['hugePages']): { mapping?: Mapping; release(): void; error?: string } {
  try {
    if (type === 'anonymous') {
      const mapping = Mapping.anonymous(systemPageSize());
      return { mapping, release: () => mapping.unmap() };
    }
    if (type === 'hugetlb') {
      const usable = huge.find((h) => h.free > 0);
      if (!usable) {
        return { release() {}, error: 'no free huge pages (HugePages_Free is 0; reserve some in /proc/sys/vm/nr_hugepages)' };
      }
      const memfd = Memfd.create(usable.size, { hugePages: usable.size });
      const mapping = memfd.map();
      return { mapping, release: () => (mapping.unmap(), memfd.close()) };
    }
    const memfd = type === 'shmem' ? Memfd.create(systemPageSize()) : Memfd.createGuestMemfd(systemPageSize());
    let mapping: Mapping;
    try {
      mapping = memfd.map();
    } catch (error) {
      memfd.close();
      throw error;
    }
    return { mapping, release: () => (mapping.unmap(), memfd.close()) };
  } catch (error) {
    return { release() {}, error: type === 'guest_memfd' ? describeGuestMemfdError(error) : describeError(error) };
  }
}

// Which step kept a guest_memfd from being made, in words.
function describeGuestMemfdError(error: unknown): string {
  const e = error as UffdError;
  if (e.syscall === 'open(/dev/kvm)') return e.code === 'ENOENT' ? 'no /dev/kvm on this host (ENOENT)' : `no access to /dev/kvm (${e.code})`;
  if (e.syscall === 'ioctl(KVM_CREATE_GUEST_MEMFD)') return `this kernel's KVM cannot create a guest_memfd (${e.code}, ioctl(KVM_CREATE_GUEST_MEMFD))`;
  if (e.syscall === 'mmap') return `this kernel's guest_memfd cannot be mapped by a process (${e.code}; GUEST_MEMFD_FLAG_MMAP needs Linux 6.18)`;
  return describeError(error);
}

export function probe(): ProbeReport {
  const pageSize = systemPageSize();
  const huge = hugePages();
  const devicePresent = fs.existsSync('/dev/userfaultfd');
  const openWith = (userModeOnly: boolean): Outcome => attempt(() => native.closeFd(native.open(userModeOnly).fd));
  const syscall = openWith(false);
  let offered = 0n;
  try {
    offered = native.queryFeatures(!syscall.ok);
  } catch {
    // Reported through `open`.
  }
  const known = Object.values(FEATURES).reduce((all, bit) => all | bit, 0n);
  const features = Object.fromEntries(Object.keys(FEATURES).map((name) => [name, featureNames(offered).has(name as Feature)])) as Record<Feature, boolean>;
  // Register modes need these features enabled on the uffd where the kernel offers them.
  const wanted = (['PAGEFAULT_FLAG_WP', 'WP_HUGETLBFS_SHMEM', 'MINOR_SHMEM', 'MINOR_HUGETLBFS', 'MISSING_SHMEM', 'MISSING_HUGETLBFS'] as Feature[]).filter((f) => features[f]);
  const memory = {} as ProbeReport['memory'];
  for (const type of ['anonymous', 'shmem', 'hugetlb', 'guest_memfd'] as MemoryType[]) {
    const made = makeMemory(type, huge);
    const modes = {} as Record<Mode, Outcome & { ioctls?: Ioctl[] }>;
    for (const mode of ['missing', 'minor', 'wp'] as Mode[]) {
      if (!made.mapping) {
        modes[mode] = { ok: false, error: made.error! };
        continue;
      }
      try {
        const uffd = Userfaultfd.open({ features: wanted, userModeOnly: !syscall.ok });
        try {
          modes[mode] = { ok: true, ioctls: [...uffd.register(made.mapping, { [mode]: true })].sort() };
        } finally {
          uffd.close();
        }
      } catch (error) {
        const lacking = type === 'guest_memfd' && (error as UffdError).code === 'EINVAL';
        modes[mode] = { ok: false, error: lacking ? 'EINVAL: this kernel lacks userfaultfd support for guest_memfd' : describeError(error) };
      }
    }
    made.release();
    memory[type] = { available: made.mapping ? { ok: true } : { ok: false, error: made.error! }, modes };
  }
  return {
    kernel: { release: os.release(), machine: os.machine() },
    pageSize,
    hugePages: huge,
    open: {
      syscall,
      userModeOnly: openWith(true),
      device: { present: devicePresent, ...attempt(() => fs.closeSync(fs.openSync('/dev/userfaultfd', 'r+'))) },
      unprivilegedSysctl: readNumber('/proc/sys/vm/unprivileged_userfaultfd'),
      root: process.getuid?.() === 0,
    },
    features,
    unknownFeatureBits: `0x${(offered & ~known).toString(16)}`,
    memory,
  };
}

export function formatProbe(report: ProbeReport): string {
  const mark = (o: Outcome): string => (o.ok ? 'yes' : `no: ${o.error}`);
  const lines = [
    `kernel      ${report.kernel.release} (${report.kernel.machine}), page size ${report.pageSize}`,
    `huge pages  ${report.hugePages.map((h) => `${h.size / 1024} kB: ${h.free}/${h.total} free`).join(', ') || 'none'}`,
    '',
    'open',
    `  userfaultfd(2)             ${mark(report.open.syscall)}`,
    `  UFFD_USER_MODE_ONLY        ${mark(report.open.userModeOnly)}`,
    `  /dev/userfaultfd           ${report.open.device.present ? mark(report.open.device) : 'absent'}`,
    `  vm.unprivileged_userfaultfd ${report.open.unprivilegedSysctl ?? 'absent'}${report.open.root ? ' (running as root)' : ''}`,
    '',
    'features',
    ...Object.entries(report.features).map(([name, ok]) => `  ${name.padEnd(26)} ${ok ? 'yes' : 'no'}`),
    ...(report.unknownFeatureBits !== '0x0' ? [`  (unknown to this library: ${report.unknownFeatureBits})`] : []),
    '',
    'memory       mode     result',
  ];
  for (const [type, entry] of Object.entries(report.memory)) {
    for (const [mode, result] of Object.entries(entry.modes)) {
      lines.push(`  ${type.padEnd(12)} ${mode.padEnd(8)} ${result.ok ? `yes: ${result.ioctls!.join(' ')}` : `no: ${result.error}`}`);
    }
  }
  return lines.join('\n');
}
