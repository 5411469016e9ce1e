// Each way to resolve a fault, on the memory types the core supports, with a
// worker thread as the faulting peer and every byte checked.
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, Memfd, Userfaultfd, type Fault } from '../dist/index.js';
import { PAGE, pattern, shuffled, touch } from './helpers';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

function open(...args: Parameters<typeof Userfaultfd.open>): Userfaultfd {
  const uffd = Userfaultfd.open(...args);
  cleanup.push(() => uffd.close());
  return uffd;
}

function track<T extends { unmap?: () => void; close?: () => void }>(resource: T): T {
  cleanup.push(() => (resource.unmap ? resource.unmap() : resource.close?.()));
  return resource;
}

function serveFrom(uffd: Userfaultfd, base: bigint, source: SharedArrayBuffer, seen: Fault[] = []): Fault[] {
  void uffd.serve((fault) => {
    seen.push(fault);
    const offset = Number(fault.pageAddress - base);
    fault.copy(new Uint8Array(source, offset, fault.pageSize));
  });
  return seen;
}

describe('MISSING + COPY', () => {
  it('serves an anonymous private mapping', async () => {
    const pages = 64;
    const mapping = track(Mapping.anonymous(pages * PAGE));
    const uffd = open();
    expect(uffd.register(mapping, { missing: true })).toContain('COPY');
    const source = pattern(pages * PAGE, 3);
    const faults = serveFrom(uffd, mapping.address, source);
    const report = await touch({ address: mapping.address, length: mapping.length, expected: source }).result;
    expect(report).toMatchObject({ ok: true, touched: pages });
    expect(faults).toHaveLength(pages);
    expect(faults.every((f) => f.kind === 'missing' && !f.write && f.resolved)).toBe(true);
  });

  it('serves a shared memfd mapping, and the data lands in the file', async () => {
    const pages = 32;
    const memfd = track(Memfd.create(pages * PAGE));
    const registered = track(memfd.map());
    const other = track(memfd.map());
    const uffd = open();
    expect(uffd.register(registered)).toContain('COPY');
    const source = pattern(pages * PAGE, 5);
    const faults = serveFrom(uffd, registered.address, source);
    const report = await touch({ address: registered.address, length: registered.length, write: true }).result;
    expect(report.touched).toBe(pages);
    expect(faults.every((f) => f.write)).toBe(true);
    // The other mapping is not registered: the main thread may read it.
    const file = other.view();
    const expected = new Uint8Array(source);
    for (let page = 0; page < pages; page++) expected[page * PAGE] = 0xa5;
    expect(Buffer.compare(file, expected)).toBe(0);
  });

  it('serves a worker touching 10,000 pages in random order, every byte checked', async () => {
    const pages = 10_000;
    const mapping = track(Mapping.anonymous(pages * PAGE));
    const uffd = open();
    uffd.register(mapping);
    const source = pattern(pages * PAGE, 11);
    const faults = serveFrom(uffd, mapping.address, source);
    const order = shuffled(pages, 7);
    const report = await touch({ address: mapping.address, length: mapping.length, order, expected: source }).result;
    expect(report).toMatchObject({ ok: true, mismatches: 0, touched: pages });
    expect(faults).toHaveLength(pages);
    // The faults arrived in the worker's order: the stream is not reordered.
    expect(faults.slice(0, 50).map((f) => Number(f.pageAddress - mapping.address) / PAGE)).toEqual(order.slice(0, 50));
  });

  it('copies several pages at once from one fault (read-ahead)', async () => {
    const pages = 16;
    const mapping = track(Mapping.anonymous(pages * PAGE));
    const uffd = open();
    uffd.register(mapping);
    const source = pattern(pages * PAGE, 13);
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      const offset = Number(fault.pageAddress - mapping.address);
      const chunk = Math.min(4 * PAGE, mapping.length - offset);
      fault.copy(new Uint8Array(source, offset, chunk));
    });
    const report = await touch({ address: mapping.address, length: mapping.length, expected: source }).result;
    expect(report.ok).toBe(true);
    expect(faults).toHaveLength(pages / 4);
  });
});

describe('MINOR + CONTINUE', () => {
  it('maps pages already in the page cache, filled through a second mapping', async () => {
    const pages = 32;
    const memfd = track(Memfd.create(pages * PAGE));
    const filler = track(memfd.map());
    const registered = track(memfd.map());
    const source = pattern(pages * PAGE, 17);
    filler.view().set(new Uint8Array(source));
    const uffd = open();
    const ioctls = uffd.register(registered, { minor: true });
    expect(ioctls).toContain('CONTINUE');
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      fault.continue();
    });
    const report = await touch({ address: registered.address, length: registered.length, expected: source }).result;
    expect(report).toMatchObject({ ok: true, touched: pages });
    expect(faults).toHaveLength(pages);
    expect(faults.every((f) => f.kind === 'minor')).toBe(true);
  });

  it('reports EFAULT with a hint when the page cache has no page to continue', async () => {
    const memfd = track(Memfd.create(2 * PAGE));
    const registered = track(memfd.map());
    const uffd = open();
    uffd.register(registered, { minor: true });
    // No page is in the page cache, so there is no MINOR fault to wait for:
    // the range ioctl is refused by the kernel.
    expect(() => uffd.continue(registered.address, PAGE)).toThrow(
      expect.objectContaining({ code: 'EFAULT', syscall: 'ioctl(UFFDIO_CONTINUE)', message: expect.stringContaining('page cache') }),
    );
  });
});

describe('ZEROPAGE', () => {
  it('resolves missing faults with zero pages', async () => {
    const pages = 16;
    const mapping = track(Mapping.anonymous(pages * PAGE));
    const uffd = open();
    expect(uffd.register(mapping)).toContain('ZEROPAGE');
    let count = 0;
    void uffd.serve((fault) => {
      count++;
      fault.zero();
    });
    const report = await touch({ address: mapping.address, length: mapping.length, expected: new SharedArrayBuffer(pages * PAGE) }).result;
    expect(report).toMatchObject({ ok: true, sum: 0 });
    expect(count).toBe(pages);
  });

  it('zero-fills a range nobody faulted on (prefetch), so no fault arrives', async () => {
    const pages = 8;
    const mapping = track(Mapping.anonymous(pages * PAGE));
    const uffd = open();
    uffd.register(mapping);
    expect(uffd.zeroPage(mapping.address, mapping.length)).toBe(mapping.length);
    let count = 0;
    void uffd.serve(() => {
      count++;
    });
    const report = await touch({ address: mapping.address, length: mapping.length }).result;
    expect(report.sum).toBe(0);
    expect(count).toBe(0);
  });
});
