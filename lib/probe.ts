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
/** hugetlb: a hugetlbfs memfd; hugetlb_anonymous: MAP_ANONYMOUS | MAP_HUGETLB. */
export type MemoryType = 'anonymous' | 'shmem' | 'hugetlb' | 'hugetlb_anonymous' | 'guest_memfd';
export type Mode = 'missing' | 'minor' | 'wp' | 'rwp';
export const MEMORY_TYPES: readonly MemoryType[] = ['anonymous', 'shmem', 'hugetlb', 'hugetlb_anonymous', 'guest_memfd'];
export const MODES: readonly Mode[] = ['missing', 'minor', 'wp', 'rwp'];

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
  memory: Record<MemoryType, {
    available: Outcome;
    modes: Record<Mode, (Outcome & { ioctls?: Ioctl[] })>;
    /**
     * UFFDIO_MOVE of an anonymous page into this memory, tried for real: the
     * kernel lists MOVE among a range's ioctls for every memory type but
     * moves only between private anonymous mappings.
     */
    move: Outcome;
    /**
     * UFFDIO_CONTINUE with MODE_WP (Linux 6.3), tried for real on a page-cache
     * page of this memory: no feature bit announces it, and older kernels
     * answer EINVAL.
     */
    continueWp: Outcome;
  }>;
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
    if (type === 'hugetlb' || type === 'hugetlb_anonymous') {
      const usable = huge.find((h) => h.free > 0);
      if (!usable) {
        return { release() {}, error: 'no free huge pages (HugePages_Free is 0; reserve some in /proc/sys/vm/nr_hugepages)' };
      }
      if (type === 'hugetlb_anonymous') {
        const mapping = Mapping.anonymous(usable.size, { hugePages: usable.size });
        return { mapping, release: () => mapping.unmap() };
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

function tryMove(target: Mapping, userModeOnly: boolean): Outcome {
  const source = Mapping.anonymous(target.pageSize);
  try {
    source.view()[0] = 1; // MOVE needs a populated source page.
    return attempt(() => {
      const uffd = Userfaultfd.open({ features: ['MOVE'], userModeOnly });
      try {
        uffd.register(target, { missing: true });
        uffd.move(target.address, source.address, target.pageSize);
      } finally {
        uffd.close();
      }
    });
  } finally {
    source.unmap();
  }
}

// A page put in the page cache through one mapping, continued write-protected
// in another (registered minor + wp).
function tryContinueWp(pageSize: number, huge: boolean, features: Feature[], userModeOnly: boolean): Outcome {
  let memfd: Memfd | undefined;
  const mappings: Mapping[] = [];
  try {
    memfd = Memfd.create(pageSize, { hugePages: huge ? pageSize : false });
    const filler = memfd.map();
    mappings.push(filler);
    filler.view()[0] = 1;
    const target = memfd.map();
    mappings.push(target);
    return attempt(() => {
      const uffd = Userfaultfd.open({ features, userModeOnly });
      try {
        uffd.register(target, { minor: true, wp: true });
        uffd.continue(target.address, pageSize, { writeProtect: true });
      } finally {
        uffd.close();
      }
    });
  } catch (error) {
    return { ok: false, error: describeError(error) };
  } finally {
    for (const mapping of mappings) mapping.unmap();
    memfd?.close();
  }
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
  const wanted = (['PAGEFAULT_FLAG_WP', 'WP_HUGETLBFS_SHMEM', 'MINOR_SHMEM', 'MINOR_HUGETLBFS', 'MISSING_SHMEM', 'MISSING_HUGETLBFS', 'RWP'] as Feature[]).filter((f) => features[f]);
  const memory = {} as ProbeReport['memory'];
  for (const type of MEMORY_TYPES) {
    const made = makeMemory(type, huge);
    const modes = {} as Record<Mode, Outcome & { ioctls?: Ioctl[] }>;
    for (const mode of MODES) {
      if (!made.mapping) {
        modes[mode] = { ok: false, error: made.error! };
        continue;
      }
      if (mode === 'rwp' && !features.RWP) {
        // Without the feature the kernel answers EINVAL, which says less.
        modes[mode] = { ok: false, error: 'this kernel does not offer UFFD_FEATURE_RWP (read-write protection, Linux 7.3)' };
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
    const move = !made.mapping ? { ok: false as const, error: made.error! }
      : !modes.missing.ok ? modes.missing
        : !features.MOVE ? { ok: false as const, error: 'the kernel does not offer UFFD_FEATURE_MOVE' }
          : !modes.missing.ioctls!.includes('MOVE') ? { ok: false as const, error: 'UFFDIO_MOVE is not among the ioctls of a missing-mode range' }
            : tryMove(made.mapping, !syscall.ok);
    const continueWp = !made.mapping ? { ok: false as const, error: made.error! }
      : !modes.minor.ok ? modes.minor
        : !modes.wp.ok ? modes.wp
          : type === 'shmem' || type === 'hugetlb' ? tryContinueWp(made.mapping.pageSize, type === 'hugetlb', wanted, !syscall.ok)
            : { ok: false as const, error: type === 'hugetlb_anonymous' ? 'a private anonymous mapping has no page cache to continue from' : 'not tried on this memory type' };
    made.release();
    memory[type] = { available: made.mapping ? { ok: true } : { ok: false, error: made.error! }, modes, move, continueWp };
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

/** What a use of userfaultfd needs: a memory type registered in some modes, ioctls allowed there, features offered. */
export interface Requirement {
  memory?: MemoryType;
  modes?: Mode[];
  ioctls?: Ioctl[];
  features?: Feature[];
  /** UFFDIO_CONTINUE with MODE_WP, which no feature bit announces. */
  continueWriteProtect?: boolean;
}

/**
 * Why the probed kernel cannot do what `need` asks, in the probe's words, or
 * undefined when the probe found everything it needs. Tests skip with this
 * reason, so a skip and the probe always say the same thing.
 */
export function unavailable(report: ProbeReport, need: Requirement): string | undefined {
  const absent = (need.features ?? []).filter((name) => !report.features[name]);
  if (absent.length) return `the kernel does not offer ${absent.map((name) => `UFFD_FEATURE_${name}`).join(', ')}`;
  if (!need.memory) return undefined;
  const entry = report.memory[need.memory];
  if (!entry.available.ok) return `${need.memory} memory: ${entry.available.error}`;
  const modes = need.modes ?? ['missing'];
  const allowed = new Set<Ioctl>();
  for (const mode of modes) {
    const result = entry.modes[mode];
    if (!result.ok) return `${need.memory} memory cannot be registered in ${mode} mode: ${result.error}`;
    for (const name of result.ioctls!) allowed.add(name);
  }
  // A range registered in several modes allows the ioctls of each.
  const missing = (need.ioctls ?? []).filter((name) => !allowed.has(name));
  if (missing.length) {
    return `${need.memory} memory registered in ${modes.join('+')} mode does not allow ${missing.map((name) => `UFFDIO_${name}`).join(', ')} (allowed: ${[...allowed].sort().join(' ')})`;
  }
  if (need.ioctls?.includes('MOVE') && !entry.move.ok) return `UFFDIO_MOVE into ${need.memory} memory fails: ${entry.move.error}`;
  if (need.continueWriteProtect && !entry.continueWp.ok) return `UFFDIO_CONTINUE with MODE_WP on ${need.memory} memory fails: ${entry.continueWp.error}`;
  return undefined;
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
    'memory            mode     result',
  ];
  for (const [type, entry] of Object.entries(report.memory)) {
    for (const [mode, result] of Object.entries(entry.modes)) {
      lines.push(`  ${type.padEnd(17)} ${mode.padEnd(8)} ${result.ok ? `yes: ${result.ioctls!.join(' ')}` : `no: ${result.error}`}`);
    }
    lines.push(`  ${type.padEnd(17)} ${'move'.padEnd(8)} ${mark(entry.move)}`);
    lines.push(`  ${type.padEnd(17)} ${'cont+wp'.padEnd(8)} ${mark(entry.continueWp)}`);
  }
  return lines.join('\n');
}
