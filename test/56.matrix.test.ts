// The feature matrix, in the spirit of the kernel's uffd-unit-tests: every
// resolving mode and ioctl on every memory type. Each cell raises real faults
// from another thread (a worker) or, where the faulting thread must die of
// SIGBUS, from another process, and checks the memory byte for byte. A cell
// the running kernel cannot do is skipped with the probe's own reason
// (unavailable(probe(), need)): the probe and the tests never disagree.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  Mapping, Memfd, Userfaultfd, probe, scanWritten, unavailable,
  type Fault, type Feature, type MemoryType, type Requirement,
} from '../dist/index.js';
import { PAGE, asleepInFault, pattern, touch, wchan } from './helpers';
import { reserveHugePages } from './hugepages';
import { startPeer } from './peer';

const HUGE = 2 * 1024 * 1024;
// Huge pages are reserved before probing, so that the probe can try hugetlb.
const reservation = reserveHugePages(8, HUGE);
afterAll(() => reservation.restore());
const report = probe();

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

type Tested = Exclude<MemoryType, 'guest_memfd'>;
const TYPES: Tested[] = ['anonymous', 'shmem', 'hugetlb', 'hugetlb_anonymous'];
const pageSizeOf = (type: Tested): number => (type.startsWith('hugetlb') ? reservation.pageSize : PAGE);
// Enabling the per-memory-type feature bits where they exist keeps a cell's
// needs explicit (the kernel would accept the registration without them).
const WP_FEATURE: Record<Tested, Feature> = {
  anonymous: 'PAGEFAULT_FLAG_WP', shmem: 'WP_HUGETLBFS_SHMEM', hugetlb: 'WP_HUGETLBFS_SHMEM', hugetlb_anonymous: 'WP_HUGETLBFS_SHMEM',
};

/** Registered memory of a type; `fill` writes the page cache through a second mapping (file-backed types only). */
interface Memory {
  mapping: Mapping;
  pageSize: number;
  pages: number;
  fill?: (data: Uint8Array) => void;
}

// One huge page per cell is enough to show the mode works on hugetlb, and keeps
// the matrix fast under software emulation (npm run test:kernels).
function memory(type: Tested, smallPages: number, hugePagesCount = 1): Memory {
  const pageSize = pageSizeOf(type);
  const pages = type.startsWith('hugetlb') ? hugePagesCount : smallPages;
  const length = pages * pageSize;
  const hugePages = type.startsWith('hugetlb') ? pageSize : false;
  if (type === 'anonymous' || type === 'hugetlb_anonymous') {
    const mapping = Mapping.anonymous(length, { hugePages });
    cleanup.push(() => mapping.unmap());
    return { mapping, pageSize, pages };
  }
  const memfd = Memfd.create(length, { hugePages });
  const filler = memfd.map();
  const mapping = memfd.map();
  cleanup.push(() => mapping.unmap(), () => filler.unmap(), () => memfd.close());
  return { mapping, pageSize, pages, fill: (data) => filler.view().set(data) };
}

function open(features: Feature[]): Userfaultfd {
  const uffd = Userfaultfd.open({ features });
  cleanup.push(() => uffd.close());
  return uffd;
}

/** One cell: a test per memory type, skipped with the probe's reason where the kernel cannot do it. */
function cell(name: string, need: (type: Tested) => Requirement, body: (type: Tested) => Promise<void>, types = TYPES): void {
  describe(name, () => {
    for (const type of types) {
      const reason = unavailable(report, { memory: type, ...need(type) });
      if (reason) console.warn(`${name} on ${type} skipped: ${reason}`);
      it.skipIf(reason !== undefined)(`${type}${reason ? ` — skipped: ${reason}` : ''}`, () => body(type));
    }
  });
}

// Minor faults need a page cache filled through another mapping: a private
// anonymous hugetlb mapping registers in minor mode but has none to fill.
const PAGE_CACHE_TYPES: Tested[] = ['anonymous', 'shmem', 'hugetlb'];

/** The memory's bytes, read on this thread once it is unregistered (no access of it can block then). */
function contents(uffd: Userfaultfd, m: Memory): Uint8Array {
  uffd.unregister(m.mapping);
  return m.mapping.view();
}

/** The bytes a toucher that writes 0xa5 to the first byte of every page leaves behind. */
function written(data: SharedArrayBuffer, pageSize: number): Uint8Array {
  const bytes = new Uint8Array(data.slice(0));
  for (let at = 0; at < bytes.length; at += pageSize) bytes[at] = 0xa5;
  return bytes;
}

cell('MISSING + COPY', () => ({ modes: ['missing'], ioctls: ['COPY'] }), async (type) => {
  const m = memory(type, 2);
  const uffd = open([]);
  uffd.register(m.mapping, { missing: true });
  const source = pattern(m.mapping.length, 71);
  const faults: Fault[] = [];
  void uffd.serve((fault) => {
    faults.push(fault);
    fault.copy(new Uint8Array(source, Number(fault.pageAddress - m.mapping.address), fault.pageSize));
  });
  const result = await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, expected: source }).result;
  expect(result).toMatchObject({ ok: true, touched: m.pages });
  expect(faults.map((f) => [f.kind, f.pageSize])).toEqual(Array(m.pages).fill(['missing', m.pageSize]));
});

cell('MISSING + ZEROPAGE', () => ({ modes: ['missing'], ioctls: ['ZEROPAGE'] }), async (type) => {
  const m = memory(type, 2);
  const uffd = open([]);
  uffd.register(m.mapping, { missing: true });
  let faults = 0;
  void uffd.serve((fault) => {
    faults++;
    fault.zero();
  });
  const zeros = new SharedArrayBuffer(m.mapping.length);
  expect(await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, expected: zeros }).result).toMatchObject({ ok: true });
  expect(faults).toBe(m.pages);
});

cell('MINOR + CONTINUE', () => ({ modes: ['minor'], ioctls: ['CONTINUE'] }), async (type) => {
  const m = memory(type, 2);
  const source = pattern(m.mapping.length, 73);
  m.fill!(new Uint8Array(source));
  const uffd = open([]);
  uffd.register(m.mapping, { minor: true });
  const kinds: string[] = [];
  void uffd.serve((fault) => {
    kinds.push(fault.kind);
    fault.continue();
  });
  expect(await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, expected: source }).result).toMatchObject({ ok: true });
  expect(kinds).toEqual(Array(m.pages).fill('minor'));
}, PAGE_CACHE_TYPES);

cell('WP + WRITEPROTECT', (type) => ({ modes: ['missing', 'wp'], ioctls: ['COPY', 'WRITEPROTECT'], features: [WP_FEATURE[type]] }), async (type) => {
  const m = memory(type, 2);
  const uffd = open([WP_FEATURE[type]]);
  uffd.register(m.mapping, { missing: true, wp: true });
  const source = pattern(m.mapping.length, 75);
  uffd.copy(m.mapping.address, new Uint8Array(source));
  uffd.writeProtect(m.mapping.address, m.mapping.length, true);
  const faults: Fault[] = [];
  void uffd.serve((fault) => {
    faults.push(fault);
    fault.unprotect();
  });
  // Reads of write-protected pages do not fault; writes do, once per page.
  await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize }).result;
  expect(faults).toHaveLength(0);
  await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, write: true }).result;
  expect(faults.map((f) => [f.kind, f.write])).toEqual(Array(m.pages).fill(['wp', true]));
  expect(Buffer.compare(contents(uffd, m), written(source, m.pageSize))).toBe(0);
});

cell('COPY with MODE_WP', (type) => ({ modes: ['missing', 'wp'], ioctls: ['COPY', 'WRITEPROTECT'], features: [WP_FEATURE[type]] }), async (type) => {
  const m = memory(type, 2);
  const uffd = open([WP_FEATURE[type]]);
  uffd.register(m.mapping, { missing: true, wp: true });
  const source = pattern(m.mapping.length, 77);
  const kinds: string[] = [];
  void uffd.serve((fault) => {
    kinds.push(fault.kind);
    if (fault.kind === 'missing') fault.copy(new Uint8Array(source, Number(fault.pageAddress - m.mapping.address), fault.pageSize), { writeProtect: true });
    else fault.unprotect();
  });
  // A write to a missing page: the copy maps it write-protected, so the retried write faults again.
  await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, write: true }).result;
  expect(kinds).toEqual(Array(m.pages).fill(['missing', 'wp']).flat());
  expect(Buffer.compare(contents(uffd, m), written(source, m.pageSize))).toBe(0);
});

cell('CONTINUE with MODE_WP', (type) => ({ modes: ['minor', 'wp'], ioctls: ['CONTINUE', 'WRITEPROTECT'], features: [WP_FEATURE[type]], continueWriteProtect: true }), async (type) => {
  const m = memory(type, 2);
  const source = pattern(m.mapping.length, 79);
  m.fill!(new Uint8Array(source));
  const uffd = open([WP_FEATURE[type]]);
  uffd.register(m.mapping, { minor: true, wp: true });
  const kinds: string[] = [];
  void uffd.serve((fault) => {
    kinds.push(fault.kind);
    if (fault.kind === 'minor') fault.continue({ writeProtect: true });
    else fault.unprotect();
  });
  await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, write: true }).result;
  expect(kinds).toEqual(Array(m.pages).fill(['minor', 'wp']).flat());
  expect(Buffer.compare(contents(uffd, m), written(source, m.pageSize))).toBe(0);
}, PAGE_CACHE_TYPES);

cell('DONTWAKE, then WAKE', () => ({ modes: ['missing'], ioctls: ['COPY', 'WAKE'], features: ['THREAD_ID'] }), async (type) => {
  const m = memory(type, 1);
  const uffd = open(['THREAD_ID']);
  uffd.register(m.mapping, { missing: true });
  const source = pattern(m.mapping.length, 81);
  const toucher = touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, expected: source });
  const { value: fault } = await uffd.events().next();
  if (!fault || fault.type !== 'pagefault') throw new Error('expected a page fault');
  await asleepInFault(fault.tid!);
  uffd.copy(fault.pageAddress, new Uint8Array(source), { dontWake: true });
  // The page is in place, but the thread sleeps in the kernel until WAKE.
  expect(wchan(fault.tid!)).toBe('handle_userfault');
  uffd.wake(fault.pageAddress, m.pageSize);
  expect(await toucher.result).toMatchObject({ ok: true });
});

cell('POISON', () => ({ modes: ['missing'], ioctls: ['COPY', 'POISON'], features: ['POISON'] }), async (type) => {
  const pageSize = pageSizeOf(type);
  const peer = await startPeer({
    pages: 2, memory: type === 'shmem' || type === 'hugetlb' ? 'memfd' : 'anon', hugePages: type.startsWith('hugetlb') ? pageSize : undefined,
    features: ['POISON'], script: [{ read: [0] }, { read: [1] }],
  });
  cleanup.push(() => peer.close());
  const served: bigint[] = [];
  void peer.uffd.serve((fault) => {
    served.push(fault.pageAddress);
    if (fault.pageAddress === peer.address) fault.copy(Buffer.alloc(fault.pageSize, 3));
    else fault.poison();
  });
  const { signal } = await peer.go();
  // Page 0 was served; the read of page 1 killed the reader.
  expect(signal).toBe('SIGBUS');
  expect(served).toEqual([peer.address, peer.address + BigInt(pageSize)]);
});

cell('MOVE', () => ({ modes: ['missing'], ioctls: ['MOVE'], features: ['MOVE'] }), async (type) => {
  const m = memory(type, 2);
  const source = Mapping.anonymous(m.mapping.length);
  cleanup.push(() => source.unmap());
  const data = pattern(m.mapping.length, 83);
  source.view().set(new Uint8Array(data));
  const uffd = open(['MOVE']);
  uffd.register(m.mapping, { missing: true });
  void uffd.serve((fault) => void fault.move(source.address + (fault.pageAddress - m.mapping.address)));
  expect(await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, expected: data }).result).toMatchObject({ ok: true });
  // The pages left the source: it reads as fresh zero memory.
  expect(source.view().every((b) => b === 0)).toBe(true);
});

cell('WP_UNPOPULATED', (type) => ({ modes: ['wp'], ioctls: ['WRITEPROTECT'], features: ['WP_UNPOPULATED', WP_FEATURE[type]] }), async (type) => {
  const m = memory(type, 2);
  const uffd = open(['WP_UNPOPULATED', WP_FEATURE[type]]);
  uffd.register(m.mapping, { wp: true });
  // Nothing was ever touched: the protection still applies to every page.
  uffd.writeProtect(m.mapping.address, m.mapping.length, true);
  const kinds: string[] = [];
  void uffd.serve((fault) => {
    kinds.push(fault.kind);
    fault.unprotect();
  });
  await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, write: true }).result;
  expect(kinds).toEqual(Array(m.pages).fill('wp'));
  expect(Buffer.compare(contents(uffd, m), written(new SharedArrayBuffer(m.mapping.length), m.pageSize))).toBe(0);
});

cell('WP_ASYNC dirty tracking (PAGEMAP_SCAN)', (type) => ({ modes: ['wp'], ioctls: ['WRITEPROTECT'], features: ['WP_ASYNC', 'WP_UNPOPULATED', WP_FEATURE[type]] }), async (type) => {
  const pages = type.startsWith('hugetlb') ? 4 : 64;
  const m = memory(type, pages, pages);
  const uffd = open(['WP_ASYNC', 'WP_UNPOPULATED', WP_FEATURE[type]]);
  uffd.register(m.mapping, { wp: true });
  uffd.writeProtect(m.mapping.address, m.mapping.length, true);
  let events = 0;
  void uffd.serve(() => void events++);
  const toPages = (ranges: { start: bigint; end: bigint }[]): number[] =>
    ranges.flatMap((r) => Array.from({ length: Number(r.end - r.start) / m.pageSize }, (_, i) => Number(r.start - m.mapping.address) / m.pageSize + i));
  const first = type.startsWith('hugetlb') ? [1, 3] : [3, 4, 5, 17, 40, 63];
  await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, order: first, write: true }).result;
  expect(toPages(scanWritten(m.mapping.address, m.mapping.length))).toEqual(first);
  // The scan re-armed the protection: only later writes show.
  expect(scanWritten(m.mapping.address, m.mapping.length)).toEqual([]);
  await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, order: [0, 3], write: true }).result;
  expect(toPages(scanWritten(m.mapping.address, m.mapping.length, { rearm: false }))).toEqual([0, 3]);
  expect(toPages(scanWritten(m.mapping.address, m.mapping.length))).toEqual([0, 3]);
  // The kernel resolved every write itself: no event reached the handler, and the writes landed.
  expect(events).toBe(0);
  const view = contents(uffd, m);
  for (let page = 0; page < pages; page++) expect(view[page * m.pageSize], `page ${page}`).toBe([...first, 0].includes(page) ? 0xa5 : 0);
});

cell('RWP + RWPROTECT', () => ({ modes: ['rwp'], ioctls: ['RWPROTECT'], features: ['RWP'] }), async (type) => {
  const m = memory(type, 2);
  const source = pattern(m.mapping.length, 85);
  // RWP protects present pages only: populate them first, through the mapping itself.
  m.mapping.view().set(new Uint8Array(source));
  const uffd = open(['RWP']);
  uffd.register(m.mapping, { rwp: true });
  uffd.rwProtect(m.mapping.address, m.mapping.length, true);
  const faults: Fault[] = [];
  void uffd.serve((fault) => {
    faults.push(fault);
    fault.unprotect();
  });
  // Reads fault too (unlike WP): once per page, and the data is intact.
  expect(await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, expected: source }).result).toMatchObject({ ok: true });
  expect(faults.map((f) => [f.kind, f.write])).toEqual(Array(m.pages).fill(['rwp', false]));
  // Unprotected now: a second pass raises nothing.
  await touch({ address: m.mapping.address, length: m.mapping.length, pageSize: m.pageSize, write: true }).result;
  expect(faults).toHaveLength(m.pages);
  expect(Buffer.compare(contents(uffd, m), written(source, m.pageSize))).toBe(0);
});

describe('the matrix and the probe agree', () => {
  it('every memory type the probe can make is one the matrix covers, guest_memfd aside (test/20 and the VMM tests)', () => {
    expect(Object.keys(report.memory).sort()).toEqual([...TYPES, 'guest_memfd'].sort());
  });
});
