// hugetlb beyond the matrix (test/56 runs every mode on hugetlbfs memfds and
// anonymous hugetlb mappings): alignment checked against the huge page size,
// and a 1 GiB page. Huge pages are reserved for the duration of this file (as
// root) and the old reservation restored; what is skipped says what the probe found.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Mapping, Memfd, Userfaultfd, probe, unavailable, type Fault } from '../dist/index.js';
import { PAGE, touch } from './helpers';
import { reserveHugePages } from './hugepages';

const HUGE = 2 * 1024 * 1024;
const reservation = reserveHugePages(8, HUGE);
afterAll(() => reservation.restore());
const GIG = 1024 * 1024 * 1024;
const gigReservation = reserveHugePages(1, GIG);
afterAll(() => gigReservation.restore());
const report = probe();
const need = unavailable(report, { memory: 'hugetlb_anonymous', modes: ['missing'], ioctls: ['COPY', 'WAKE'] });
if (need) console.warn(`hugetlb tests skipped: ${need}`);
const gig = report.hugePages.find((h) => h.size === GIG);
const needGig = gig && gig.free >= 1 ? undefined
  : `the probe found ${gig ? `${gig.free} free 1 GiB huge pages` : 'no 1 GiB huge page size'}${gigReservation.skipReason ? ` (${gigReservation.skipReason})` : ''}`;
if (needGig) console.warn(`1 GiB hugetlb test skipped: ${needGig}`);

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

describe.skipIf(need !== undefined)(`hugetlb (2 MiB)${need ? ` — skipped: ${need}` : ''}`, () => {
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

describe.skipIf(needGig !== undefined)(`hugetlb (1 GiB)${needGig ? ` — skipped: ${needGig}` : ''}`, () => {
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
