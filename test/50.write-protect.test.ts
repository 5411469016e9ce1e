// Write-protect mode beyond the matrix (test/56 has WP + WRITEPROTECT, COPY and
// CONTINUE with MODE_WP, WP_UNPOPULATED and WP_ASYNC dirty tracking on every
// memory type): UFFDIO_WRITEPROTECT's own DONTWAKE.
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, Userfaultfd, probe, unavailable } from '../dist/index.js';
import { PAGE, asleepInFault, touch, wchan } from './helpers';

const need = unavailable(probe(), { memory: 'anonymous', modes: ['missing', 'wp'], ioctls: ['ZEROPAGE', 'WRITEPROTECT'], features: ['THREAD_ID'] });
if (need) console.warn(`write-protect tests skipped: ${need}`);

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
});
