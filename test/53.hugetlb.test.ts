// hugetlbfs memory (2 MiB pages) in MISSING, MINOR and WP modes, with
// alignment checked against the huge page size. Huge pages are reserved for
// the duration of this file (as root) and the old reservation restored.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Mapping, Memfd, Userfaultfd, type Fault } from '../dist/index.js';
import { PAGE, pattern, touch } from './helpers';
import { reserveHugePages } from './hugepages';

const HUGE = 2 * 1024 * 1024;
const reservation = reserveHugePages(8, HUGE);
if (reservation.skipReason) console.warn(`hugetlb tests skipped: ${reservation.skipReason}`);
afterAll(() => reservation.restore());

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

describe.skipIf(reservation.skipReason !== undefined)(`hugetlb (2 MiB)${reservation.skipReason ? ` — skipped: ${reservation.skipReason}` : ''}`, () => {
  it('MISSING + COPY on a hugetlbfs memfd, every byte checked', async () => {
    const memfd = Memfd.create(2 * HUGE, { hugePages: HUGE });
    const mapping = memfd.map();
    const uffd = Userfaultfd.open();
    cleanup.push(() => uffd.close(), () => mapping.unmap(), () => memfd.close());
    expect(mapping.pageSize).toBe(HUGE);
    const ioctls = uffd.register(mapping);
    expect(ioctls).toContain('COPY');
    expect(ioctls).not.toContain('ZEROPAGE');
    const source = pattern(2 * HUGE, 61);
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      const offset = Number(fault.pageAddress - mapping.address);
      fault.copy(new Uint8Array(source, offset, HUGE));
    });
    // Touch every 4 KiB: only the first touch of each huge page faults.
    const report = await touch({ address: mapping.address, length: mapping.length, expected: source }).result;
    expect(report.ok).toBe(true);
    expect(faults.map((f) => f.pageSize)).toEqual([HUGE, HUGE]);
  });

  it('MISSING + COPY on anonymous hugetlb memory', async () => {
    const mapping = Mapping.anonymous(HUGE, { hugePages: HUGE });
    const uffd = Userfaultfd.open();
    cleanup.push(() => uffd.close(), () => mapping.unmap());
    uffd.register(mapping);
    void uffd.serve((fault) => void fault.copy(Buffer.alloc(HUGE, 8)));
    expect((await touch({ address: mapping.address, length: HUGE }).result).sum).toBe((HUGE / PAGE) * 8);
  });

  it('MINOR + CONTINUE with the page cache filled through a second mapping', async () => {
    const memfd = Memfd.create(2 * HUGE, { hugePages: HUGE });
    const filler = memfd.map();
    const registered = memfd.map();
    const uffd = Userfaultfd.open();
    cleanup.push(() => uffd.close(), () => registered.unmap(), () => filler.unmap(), () => memfd.close());
    const source = pattern(2 * HUGE, 63);
    filler.view().set(new Uint8Array(source));
    expect(uffd.register(registered, { minor: true })).toContain('CONTINUE');
    const kinds: string[] = [];
    void uffd.serve((fault) => {
      kinds.push(fault.kind);
      fault.continue();
    });
    expect(await touch({ address: registered.address, length: registered.length, expected: source }).result).toMatchObject({ ok: true });
    expect(kinds).toEqual(['minor', 'minor']);
  });

  it('WP on a hugetlbfs memfd', async () => {
    const memfd = Memfd.create(HUGE, { hugePages: HUGE });
    const mapping = memfd.map();
    const uffd = Userfaultfd.open({ features: ['WP_HUGETLBFS_SHMEM'] });
    cleanup.push(() => uffd.close(), () => mapping.unmap(), () => memfd.close());
    uffd.register(mapping, { missing: true, wp: true });
    uffd.copy(mapping.address, Buffer.alloc(HUGE, 1), { writeProtect: true });
    const kinds: string[] = [];
    void uffd.serve((fault) => {
      kinds.push(fault.kind);
      fault.unprotect();
    });
    await touch({ address: mapping.address, length: HUGE, write: true }).result;
    expect(kinds).toEqual(['wp']);
  });

  it('checks alignment against the huge page size', () => {
    const mapping = Mapping.anonymous(HUGE, { hugePages: HUGE });
    const uffd = Userfaultfd.open();
    cleanup.push(() => uffd.close(), () => mapping.unmap());
    uffd.register(mapping);
    expect(() => uffd.copy(mapping.address, Buffer.alloc(PAGE))).toThrow(
      expect.objectContaining({ code: 'EINVAL', message: expect.stringContaining(`(${HUGE} bytes)`) }),
    );
    expect(() => uffd.wake(mapping.address + BigInt(PAGE), HUGE)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => Memfd.create(HUGE + PAGE, { hugePages: HUGE }).map()).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });
});

const GIG = 1024 * 1024 * 1024;
const gigReservation = reserveHugePages(1, GIG);
if (gigReservation.skipReason) console.warn(`1 GiB hugetlb test skipped: ${gigReservation.skipReason}`);
afterAll(() => gigReservation.restore());

describe.skipIf(gigReservation.skipReason !== undefined)(`hugetlb (1 GiB)${gigReservation.skipReason ? ` — skipped: ${gigReservation.skipReason}` : ''}`, () => {
  it('MISSING + COPY of one 1 GiB page', async () => {
    const memfd = Memfd.create(GIG, { hugePages: GIG });
    const mapping = memfd.map();
    const uffd = Userfaultfd.open();
    cleanup.push(() => uffd.close(), () => mapping.unmap(), () => memfd.close());
    expect(mapping.pageSize).toBe(GIG);
    uffd.register(mapping);
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      fault.copy(Buffer.alloc(GIG, 2));
    });
    // A handful of pages spread over the gigabyte: one fault serves them all.
    const order = [0, 1000, GIG / PAGE / 2, GIG / PAGE - 1];
    expect((await touch({ address: mapping.address, length: GIG, order }).result).sum).toBe(8);
    expect(faults).toHaveLength(1);
  });
});
