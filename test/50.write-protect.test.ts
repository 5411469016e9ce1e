// Write-protect mode, in the spirit of the kernel's uffd-unit-tests: each test
// makes a real fault or a real write happen and checks the memory.
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, Memfd, Userfaultfd, scanWritten, type Fault } from '../dist/index.js';
import { PAGE, pattern, settledWchan, touch } from './helpers';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

function open(options: Parameters<typeof Userfaultfd.open>[0] = {}): Userfaultfd {
  const uffd = Userfaultfd.open(options);
  cleanup.push(() => uffd.close());
  return uffd;
}
function anonymous(pages: number): Mapping {
  const mapping = Mapping.anonymous(pages * PAGE);
  cleanup.push(() => mapping.unmap());
  return mapping;
}

describe('write-protect (WP mode)', () => {
  it('raises a wp fault on a write to a protected page; unprotecting lets the write through', async () => {
    const pages = 8;
    const mapping = anonymous(pages);
    const uffd = open({ features: ['PAGEFAULT_FLAG_WP'] });
    const ioctls = uffd.register(mapping, { missing: true, wp: true });
    expect(ioctls).toContain('WRITEPROTECT');
    const source = pattern(pages * PAGE, 41);
    uffd.copy(mapping.address, new Uint8Array(source), { writeProtect: true });
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      fault.unprotect();
    });
    // Reads of protected pages do not fault.
    expect((await touch({ address: mapping.address, length: mapping.length }).result).touched).toBe(pages);
    expect(faults).toHaveLength(0);
    await touch({ address: mapping.address, length: mapping.length, write: true }).result;
    expect(faults).toHaveLength(pages);
    expect(faults.every((f) => f.kind === 'wp' && f.write)).toBe(true);
    const expected = new Uint8Array(source.slice(0));
    for (let i = 0; i < pages; i++) expected[i * PAGE] = 0xa5;
    uffd.unregister(mapping);
    expect(Buffer.compare(mapping.view(), expected)).toBe(0);
  });

  it('protects and unprotects a range with UFFDIO_WRITEPROTECT; DONTWAKE leaves the writer asleep until WAKE', async () => {
    const mapping = anonymous(2);
    const uffd = open({ features: ['THREAD_ID'] });
    uffd.register(mapping, { missing: true, wp: true });
    uffd.zeroPage(mapping.address, mapping.length);
    uffd.writeProtect(mapping.address, mapping.length, true);
    const writer = touch({ address: mapping.address, length: PAGE, write: true });
    const events = uffd.events();
    const { value: fault } = await events.next();
    if (!fault || fault.type !== 'pagefault') throw new Error('expected a fault');
    expect(fault.kind).toBe('wp');
    uffd.writeProtect(mapping.address, PAGE, false, { dontWake: true });
    expect(await settledWchan(fault.tid!, 'handle_userfault')).toBe('handle_userfault');
    uffd.wake(mapping.address, PAGE);
    expect((await writer.result).touched).toBe(1);
  });

  it('maps shmem page-cache pages write-protected with CONTINUE + WP', async () => {
    const memfd = Memfd.create(2 * PAGE);
    const filler = memfd.map();
    const registered = memfd.map();
    cleanup.push(() => registered.unmap(), () => filler.unmap(), () => memfd.close());
    filler.view().fill(3);
    const uffd = open();
    expect(uffd.register(registered, { minor: true, wp: true })).toContain('CONTINUE');
    const kinds: string[] = [];
    void uffd.serve((fault) => {
      kinds.push(fault.kind);
      if (fault.kind === 'minor') fault.continue({ writeProtect: true });
      else fault.unprotect();
    });
    await touch({ address: registered.address, length: registered.length, write: true }).result;
    // Each page: a minor fault (mapped protected), then a wp fault for the write.
    expect(kinds).toEqual(['minor', 'wp', 'minor', 'wp']);
    expect(filler.view()[0]).toBe(0xa5);
    expect(filler.view()[1]).toBe(3);
  });

  it('with WP_UNPOPULATED, protects pages that were never touched', async () => {
    const mapping = anonymous(4);
    const uffd = open({ features: ['WP_UNPOPULATED'] });
    uffd.register(mapping, { wp: true });
    uffd.writeProtect(mapping.address, mapping.length, true);
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      fault.unprotect();
    });
    await touch({ address: mapping.address, length: mapping.length, write: true }).result;
    expect(faults.map((f) => f.kind)).toEqual(['wp', 'wp', 'wp', 'wp']);
  });
});

describe('dirty tracking: WP_ASYNC + PAGEMAP_SCAN', () => {
  it('reports exactly the pages written, and only later writes after re-arming', async () => {
    const pages = 64;
    const mapping = anonymous(pages);
    const uffd = open({ features: ['WP_ASYNC', 'WP_UNPOPULATED'] });
    uffd.register(mapping, { wp: true });
    uffd.writeProtect(mapping.address, mapping.length, true);
    let events = 0;
    void uffd.serve(() => void events++);
    const written = [3, 4, 5, 17, 40, 63];
    await touch({ address: mapping.address, length: mapping.length, order: written, write: true }).result;
    const toPages = (ranges: { start: bigint; end: bigint }[]): number[] =>
      ranges.flatMap((r) => Array.from({ length: Number(r.end - r.start) / PAGE }, (_, i) => Number(r.start - mapping.address) / PAGE + i));
    expect(toPages(scanWritten(mapping.address, mapping.length))).toEqual(written);
    // Re-armed by the scan: nothing is dirty until the next writes.
    expect(scanWritten(mapping.address, mapping.length)).toEqual([]);
    await touch({ address: mapping.address, length: mapping.length, order: [0, 5], write: true }).result;
    expect(toPages(scanWritten(mapping.address, mapping.length, { rearm: false }))).toEqual([0, 5]);
    expect(toPages(scanWritten(mapping.address, mapping.length))).toEqual([0, 5]);
    // Asynchronous mode resolves write faults in the kernel: no event reached the handler.
    expect(events).toBe(0);
  });
});
