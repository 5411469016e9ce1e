// Read-write protection (Linux 7.3): UFFDIO_REGISTER_MODE_RWP, UFFDIO_RWPROTECT,
// the RWP_ASYNC feature and UFFDIO_SET_MODE. The kernel meant it for working-set
// tracking in VMMs: protect the guest's pages, learn which ones are touched
// (asynchronously, found later with PAGEMAP_SCAN), then switch to synchronous
// mode to intercept accesses while cold pages are evicted. The basic fault on
// every memory type is in the matrix (test/56); these are the API's own cases.
// Each test is skipped with the probe's reason on kernels without RWP.
import { afterEach, describe, expect, it } from 'vitest';
import { BufferPageSource, Mapping, Userfaultfd, probe, scanAccessed, unavailable, type Fault } from '../dist/index.js';
import { PAGE, asleepInFault, pattern, touch, wchan } from './helpers';

const report = probe();
const needRwp = unavailable(report, { memory: 'anonymous', modes: ['rwp'], ioctls: ['RWPROTECT'], features: ['RWP'] });
const needAsync = needRwp ?? unavailable(report, { features: ['RWP_ASYNC'] });
for (const reason of new Set([needRwp, needAsync])) if (reason) console.warn(`RWP tests skipped: ${reason}`);
const skipped = (reason: string | undefined): string => (reason ? ` — skipped: ${reason}` : '');

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

/** Anonymous memory filled with a pattern (RWP protects present pages only), registered in RWP mode and protected. */
function protectedMemory(pages: number, features: ('RWP' | 'RWP_ASYNC' | 'THREAD_ID')[]): { mapping: Mapping; uffd: Userfaultfd; data: SharedArrayBuffer } {
  const mapping = Mapping.anonymous(pages * PAGE);
  const uffd = Userfaultfd.open({ features });
  cleanup.push(() => mapping.unmap(), () => uffd.close());
  const data = pattern(mapping.length, 91);
  mapping.view().set(new Uint8Array(data));
  expect(uffd.register(mapping, { rwp: true })).toContain('RWPROTECT');
  uffd.rwProtect(mapping.address, mapping.length, true);
  return { mapping, uffd, data };
}

const pagesOf = (mapping: Mapping, ranges: { start: bigint; end: bigint }[]): number[] =>
  ranges.flatMap((r) => Array.from({ length: Number(r.end - r.start) / PAGE }, (_, i) => Number(r.start - mapping.address) / PAGE + i));

describe('read-write protection (RWP)', () => {
  it.skipIf(needRwp !== undefined)(`a write to a protected page is an rwp fault with the write flag; removing protection with DONTWAKE leaves the thread asleep until WAKE${skipped(needRwp)}`, async () => {
    const { mapping, uffd, data } = protectedMemory(1, ['RWP', 'THREAD_ID']);
    const writer = touch({ address: mapping.address, length: PAGE, write: true });
    const { value: fault } = await uffd.events().next();
    if (!fault || fault.type !== 'pagefault') throw new Error('expected a page fault');
    expect([fault.kind, fault.write]).toEqual(['rwp', true]);
    await asleepInFault(fault.tid!);
    uffd.rwProtect(mapping.address, PAGE, false, { dontWake: true });
    expect(wchan(fault.tid!)).toBe('handle_userfault');
    uffd.wake(mapping.address, PAGE);
    await writer.result;
    uffd.unregister(mapping);
    const expected = new Uint8Array(data.slice(0));
    expected[0] = 0xa5;
    expect(Buffer.compare(mapping.view(), expected)).toBe(0);
  });

  it.skipIf(needRwp !== undefined)(`protection can be put back: the next access faults again${skipped(needRwp)}`, async () => {
    const { mapping, uffd, data } = protectedMemory(2, ['RWP']);
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      fault.unprotect();
    });
    expect(await touch({ address: mapping.address, length: mapping.length, expected: data }).result).toMatchObject({ ok: true });
    expect(faults).toHaveLength(2);
    uffd.rwProtect(mapping.address, mapping.length, true);
    // Only page 1 is read again: only it faults.
    const second = new SharedArrayBuffer(PAGE);
    new Uint8Array(second).set(new Uint8Array(data, PAGE, PAGE));
    expect(await touch({ address: mapping.address + BigInt(PAGE), length: PAGE, expected: second }).result).toMatchObject({ ok: true });
    expect(faults.map((f) => f.pageAddress)).toEqual([mapping.address, mapping.address + BigInt(PAGE), mapping.address + BigInt(PAGE)]);
  });
});

describe('rwp faults through every serving style', () => {
  // An rwp fault has its page: filling it (COPY or ZEROPAGE) finds it there,
  // and a thread woken on EEXIST faults again, for ever. Each style must lift
  // the protection instead.
  it.skipIf(needRwp !== undefined)(`serveBatch: kind() says rwp and a fault left unresolved gets its protection removed${skipped(needRwp)}`, async () => {
    const { mapping, uffd, data } = protectedMemory(4, ['RWP']);
    const kinds: string[] = [];
    void uffd.serveBatch((batch) => {
      for (let i = 0; i < batch.length; i++) kinds.push(batch.kind(i));
    });
    expect(await touch({ address: mapping.address, length: mapping.length, expected: data }).result).toMatchObject({ ok: true });
    expect(kinds.length).toBeGreaterThanOrEqual(4);
    expect(new Set(kinds)).toEqual(new Set(['rwp']));
  });

  it.skipIf(needRwp !== undefined)(`serveFrom: the native thread passes rwp faults on and the default onMiss removes the protection${skipped(needRwp)}`, async () => {
    const { mapping, uffd, data } = protectedMemory(4, ['RWP']);
    // A source with other bytes: a copy would be refused (EEXIST) and, were
    // it not, would change what the pages hold.
    void uffd.serveFrom(new BufferPageSource(new Uint8Array(mapping.length).fill(0xee)), { readAhead: 4 });
    expect(await touch({ address: mapping.address, length: mapping.length, expected: data }).result).toMatchObject({ ok: true });
    const stats = uffd.stats();
    expect(stats.nativeFaults).toBe(0);
    expect(stats.jsFaults).toBe(4);
  });
});

describe('RWP_ASYNC and UFFDIO_SET_MODE', () => {
  it.skipIf(needAsync !== undefined)(`in async mode the kernel restores access itself, and PAGEMAP_SCAN reports exactly the pages accessed${skipped(needAsync)}`, async () => {
    const pages = 32;
    const { mapping, uffd, data } = protectedMemory(pages, ['RWP', 'RWP_ASYNC']);
    let events = 0;
    void uffd.serve(() => void events++);
    expect(scanAccessed(mapping.address, mapping.length)).toEqual([]);
    const accessed = [2, 3, 9, 30];
    await touch({ address: mapping.address, length: mapping.length, order: [2, 9] }).result;
    await touch({ address: mapping.address, length: mapping.length, order: [3, 30], write: true }).result;
    expect(pagesOf(mapping, scanAccessed(mapping.address, mapping.length))).toEqual(accessed);
    expect(events).toBe(0);
    // Re-armed: nothing is accessed until the next touch.
    uffd.rwProtect(mapping.address, mapping.length, true);
    expect(scanAccessed(mapping.address, mapping.length)).toEqual([]);
    uffd.unregister(mapping);
    const expected = new Uint8Array(data.slice(0));
    for (const page of [3, 30]) expected[page * PAGE] = 0xa5;
    expect(Buffer.compare(mapping.view(), expected)).toBe(0);
  });

  it.skipIf(needAsync !== undefined)(`switching to async wakes a thread waiting on a sync rwp fault, which the kernel then resolves; switching back makes faults synchronous again${skipped(needAsync)}`, async () => {
    const { mapping, uffd, data } = protectedMemory(2, ['RWP']);
    const faults: Fault[] = [];
    let release: (() => void) | undefined;
    void uffd.serve((fault) => {
      faults.push(fault);
      // The first fault is left waiting: SET_MODE must free it.
      if (faults.length === 1) return new Promise<void>((resolve) => (release = resolve));
      fault.unprotect();
    }, { onError: () => {} });
    const reader = touch({ address: mapping.address, length: PAGE, expected: data });
    while (faults.length === 0) await new Promise((resolve) => setImmediate(resolve));
    uffd.setMode({ enable: ['RWP_ASYNC'] });
    expect(uffd.enabledFeatures.has('RWP_ASYNC')).toBe(true);
    expect(await reader.result).toMatchObject({ ok: true });
    release!();
    uffd.setMode({ disable: ['RWP_ASYNC'] });
    expect(uffd.enabledFeatures.has('RWP_ASYNC')).toBe(false);
    uffd.rwProtect(mapping.address, mapping.length, true);
    await touch({ address: mapping.address + BigInt(PAGE), length: PAGE }).result;
    expect(faults.map((f) => [f.kind, f.pageAddress])).toEqual([['rwp', mapping.address], ['rwp', mapping.address + BigInt(PAGE)]]);
  });

  it.skipIf(needAsync !== undefined)(`the kernel refuses RWP_ASYNC on a uffd opened without RWP${skipped(needAsync)}`, () => {
    const uffd = Userfaultfd.open();
    cleanup.push(() => uffd.close());
    expect(() => uffd.setMode({ enable: ['RWP_ASYNC'] })).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'ioctl(UFFDIO_SET_MODE)' }));
    expect(uffd.enabledFeatures.has('RWP_ASYNC')).toBe(false);
  });
});

describe('RWP argument checks (no kernel needed)', () => {
  it('refuses wp together with rwp, dontWake when installing, and features that cannot change at run time', () => {
    const mapping = Mapping.anonymous(PAGE);
    const uffd = Userfaultfd.open();
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    expect(() => uffd.register(mapping, { wp: true, rwp: true })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringContaining('cannot combine wp and rwp') }));
    expect(uffd.registrations).toHaveLength(0);
    expect(() => uffd.rwProtect(mapping.address, PAGE, true, { dontWake: true })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => uffd.setMode({ enable: ['MOVE'] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => uffd.setMode({ enable: ['RWP_ASYNC'], disable: ['RWP_ASYNC'] })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });
});
