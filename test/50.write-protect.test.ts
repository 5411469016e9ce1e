// Write-protect mode beyond the matrix (test/56 has WP + WRITEPROTECT, COPY and
// CONTINUE with MODE_WP, WP_UNPOPULATED and WP_ASYNC dirty tracking on every
// memory type): UFFDIO_WRITEPROTECT's own DONTWAKE.
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, Userfaultfd, probe, scanWritten, unavailable } from '../dist/index.js';
import { PAGE, asleepInFault, touch, wchan } from './helpers';

const report = probe();
const need = unavailable(report, { memory: 'anonymous', modes: ['missing', 'wp'], ioctls: ['ZEROPAGE', 'WRITEPROTECT'], features: ['THREAD_ID'] });
if (need) console.warn(`write-protect tests skipped: ${need}`);
const needAsync = unavailable(report, { memory: 'anonymous', modes: ['wp'], ioctls: ['WRITEPROTECT'], features: ['WP_ASYNC'] });

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

describe('write-protect (WP mode)', () => {
  it.skipIf(need !== undefined)(`protects and unprotects a range with UFFDIO_WRITEPROTECT; DONTWAKE leaves the writer asleep until WAKE${need ? ` — skipped: ${need}` : ''}`, async () => {
    const mapping = Mapping.anonymous(2 * PAGE);
    const uffd = Userfaultfd.open({ features: ['THREAD_ID'] });
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    uffd.register(mapping, { missing: true, wp: true });
    uffd.zeroPage(mapping.address, mapping.length);
    uffd.writeProtect(mapping.address, mapping.length, true);
    const writer = touch({ address: mapping.address, length: PAGE, write: true });
    const events = uffd.events();
    const { value: fault } = await events.next();
    if (!fault || fault.type !== 'pagefault') throw new Error('expected a fault');
    expect(fault.kind).toBe('wp');
    await asleepInFault(fault.tid!);
    uffd.writeProtect(mapping.address, PAGE, false, { dontWake: true });
    expect(wchan(fault.tid!)).toBe('handle_userfault');
    uffd.wake(mapping.address, PAGE);
    expect((await writer.result).touched).toBe(1);
    uffd.unregister(mapping);
    expect([...mapping.view().subarray(0, 2)]).toEqual([0xa5, 0]);
  });
  it.skipIf(need !== undefined)(`serveBatch resolves wp faults with batch.unprotect(i), as serve() does with fault.unprotect(), and reports nothing${need ? ` — skipped: ${need}` : ''}`, async () => {
    const mapping = Mapping.anonymous(4 * PAGE);
    const uffd = Userfaultfd.open();
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    uffd.register(mapping, { missing: true, wp: true });
    uffd.zeroPage(mapping.address, mapping.length);
    uffd.writeProtect(mapping.address, mapping.length, true);
    const errors: unknown[] = [];
    const outcomes: string[] = [];
    void uffd.serveBatch((batch) => {
      for (let i = 0; i < batch.length; i++) outcomes.push(`${batch.kind(i)} ${batch.unprotect(i)} ${batch.resolved(i)}`);
    }, { onError: (error) => errors.push(error) });
    const writer = touch({ address: mapping.address, length: mapping.length, write: true });
    expect((await writer.result).touched).toBe(4);
    expect(errors).toEqual([]);
    expect(outcomes).toEqual(Array(4).fill('wp done true'));
  });
  it.skipIf(need !== undefined)(`serveBatch copies pages in write-protected with batch.copy(i, data, { writeProtect: true }): the first write then faults again, as wp${need ? ` — skipped: ${need}` : ''}`, async () => {
    const mapping = Mapping.anonymous(4 * PAGE);
    const uffd = Userfaultfd.open();
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    uffd.register(mapping, { missing: true, wp: true });
    const page = new Uint8Array(PAGE).fill(9);
    const protect = { writeProtect: true };
    const kinds: string[] = [];
    void uffd.serveBatch((batch) => {
      for (let i = 0; i < batch.length; i++) {
        kinds.push(batch.kind(i));
        if (batch.kind(i) === 'missing') batch.copy(i, page, protect);
        else batch.unprotect(i);
      }
    });
    const writer = touch({ address: mapping.address, length: mapping.length, write: true });
    expect((await writer.result).touched).toBe(4);
    // Each page: missing (copied in protected), then wp on the write itself.
    expect(kinds.filter((k) => k === 'missing')).toHaveLength(4);
    expect(kinds.filter((k) => k === 'wp')).toHaveLength(4);
  });
  it('refuses a non-boolean writeProtect in FaultBatch.copy and continue, changing nothing', async () => {
    const mapping = Mapping.anonymous(PAGE);
    const uffd = Userfaultfd.open();
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    uffd.register(mapping, { missing: true });
    const refusals: unknown[] = [];
    void uffd.serveBatch((batch) => {
      for (const call of [() => batch.copy(0, new Uint8Array(PAGE), { writeProtect: 'yes' as unknown as boolean }), () => batch.continue(0, null as unknown as {})]) {
        try {
          call();
        } catch (error) {
          refusals.push((error as { code: string }).code);
        }
      }
      refusals.push(batch.resolved(0));
      batch.zero(0);
    });
    expect((await touch({ address: mapping.address, length: PAGE }).result).touched).toBe(1);
    expect(refusals).toEqual(['ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_TYPE', false]);
  });
  it.skipIf(needAsync !== undefined)(`lets the serving thread view and write WP-only memory with WP_ASYNC, where no access ever waits for it${needAsync ? ` — skipped: ${needAsync}` : ''}`, () => {
    const mapping = Mapping.anonymous(4 * PAGE);
    const uffd = Userfaultfd.open({ features: ['WP_ASYNC'] });
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    uffd.register(mapping, { wp: true });
    uffd.writeProtect(mapping.address, mapping.length, true);
    void uffd.events();  // this thread is the uffd's reader
    const view = mapping.view();
    view[PAGE] = 1;      // the kernel records the write itself: no fault message, no wait
    expect(scanWritten(mapping.address, mapping.length)).toEqual([{ start: mapping.address + BigInt(PAGE), end: mapping.address + BigInt(2 * PAGE) }]);
  });
  it.skipIf(needAsync !== undefined)(`still refuses a view of a range that is also registered for missing faults, WP_ASYNC or not${needAsync ? ` — skipped: ${needAsync}` : ''}`, () => {
    const mapping = Mapping.anonymous(PAGE);
    const uffd = Userfaultfd.open({ features: ['WP_ASYNC'] });
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    uffd.register(mapping, { wp: true });
    uffd.register(mapping, { missing: true, wp: true });
    expect(() => mapping.view()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_WOULD_DEADLOCK' }));
  });
});
