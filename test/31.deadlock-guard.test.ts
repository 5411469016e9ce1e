// The serving thread must never touch registered memory that only it can make
// present. The library refuses the obvious ways to do so.
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Mapping, Userfaultfd, attachView } from '../dist/index.js';
import { PAGE, SLOWDOWN, touch, registeredAnonymous } from './helpers';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

const setup = registeredAnonymous;

const refusedBy = (syscall?: string) => expect.objectContaining({ code: 'ERR_UFFD_WOULD_DEADLOCK', message: expect.stringContaining('worker thread'), ...(syscall ? { syscall } : {}) });
const deadlock = refusedBy();

describe('deadlock guard', () => {
  it('refuses a view of registered memory on the thread that serves it', () => {
    const { mapping } = setup(2);
    expect(() => mapping.view()).toThrow(refusedBy('view'));
    expect(() => attachView(mapping.address + BigInt(PAGE), PAGE)).toThrow(refusedBy('attachView'));
  });

  it('lets the serving thread read pages once they are present, and refuses while one is missing', () => {
    const { mapping, uffd } = setup(2);
    uffd.copy(mapping.address, new Uint8Array(PAGE).fill(4));
    expect(mapping.read(0, PAGE)[0]).toBe(4);
    expect(() => mapping.read()).toThrow(deadlock);
  });

  it('refuses a copy whose source is registered memory that is missing and served here', () => {
    const source = Mapping.anonymous(PAGE);
    const target = Mapping.anonymous(PAGE);
    const uffd = Userfaultfd.open();
    cleanup.push(() => source.unmap(), () => target.unmap(), () => uffd.close());
    // A view taken before registration, then used as a copy source: the
    // kernel would fault on it inside the ioctl, on this very thread.
    const view = source.view();
    uffd.register(source);
    uffd.register(target);
    expect(() => uffd.copy(target.address, view)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_WOULD_DEADLOCK', syscall: 'ioctl(UFFDIO_COPY)' }));
    // Once the source page is present, it is an ordinary copy.
    uffd.copy(source.address, new Uint8Array(PAGE).fill(6));
    expect(uffd.copy(target.address, view)).toBe(PAGE);
    expect(target.read()[0]).toBe(6);
  });

  it('refuses discard() and, with EVENT_UNMAP, unmap() of registered memory on the serving thread (each waits for its event to be read), changing nothing', () => {
    const mapping = Mapping.anonymous(2 * PAGE);
    const uffd = Userfaultfd.open({ features: ['EVENT_REMOVE', 'EVENT_UNMAP'] });
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    uffd.register(mapping);
    const waits = expect.stringMatching(/waits until the thread that serves this userfaultfd has read its event/);
    expect(() => mapping.discard()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_WOULD_DEADLOCK', syscall: 'madvise', message: waits }));
    expect(() => mapping.unmap()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_WOULD_DEADLOCK', syscall: 'munmap', message: waits }));
    expect(mapping.mapped).toBe(true);
    uffd.copy(mapping.address, new Uint8Array(PAGE).fill(7));
    expect(mapping.read(0, PAGE)[0]).toBe(7);
    // Without EVENT_REMOVE and EVENT_UNMAP nothing waits: discarding and
    // unmapping served memory here is fine.
    const plain = Mapping.anonymous(2 * PAGE);
    const other = Userfaultfd.open();
    other.register(plain);
    other.copy(plain.address, new Uint8Array(PAGE).fill(8));
    expect(plain.read(0, PAGE)[0]).toBe(8);
    plain.discard(0, PAGE);
    // Gone: reading it here would now fault, and wait.
    expect(() => plain.read(0, PAGE)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_WOULD_DEADLOCK' }));
    plain.unmap();
    expect(plain.mapped).toBe(false);
    other.close();
  });

  it('refuses, with EVENT_REMOVE, discard() of a range whose faults do not wait (WP alone, WP_ASYNC): the madvise still waits for its event', () => {
    const mapping = Mapping.anonymous(2 * PAGE);
    const uffd = Userfaultfd.open({ features: ['WP_ASYNC', 'EVENT_REMOVE'] });
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    uffd.register(mapping, { wp: true });
    expect(mapping.view().length).toBe(2 * PAGE); // its faults do not wait: views are fine
    expect(() => mapping.discard()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_WOULD_DEADLOCK', syscall: 'madvise' }));
  });

  it('forgets a registration when its memory is unmapped: what is mapped there next is not refused on the serving thread', () => {
    const length = 4 * PAGE;
    const held = Mapping.anonymous(length);
    const kept = held.view();  // taken before registering: unmap() leaves it zeros, unregistered
    const freed = Mapping.anonymous(length);
    const uffd = Userfaultfd.open();
    const target = Mapping.anonymous(PAGE);
    cleanup.push(() => target.unmap(), () => uffd.close());
    for (const m of [held, freed, target]) uffd.register(m);
    void uffd.serve((fault) => void fault.zero());
    held.unmap();
    freed.unmap();
    // The memory the old view holds is zeros the kernel maps on first touch:
    // no uffd is involved any more, so copying from it is an ordinary copy.
    expect(uffd.copy(target.address, kept.subarray(0, PAGE))).toBe(PAGE);
    expect(() => attachView(held.address, PAGE)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_NOT_MAPPED' }));
    // The kernel hands a freed address range out again (top-down, to the
    // next mapping of the same size): a new mapping there is not registered.
    const tries: Mapping[] = [];
    let reused: Mapping | undefined;
    while (!reused && tries.length < 16) {
      const next = Mapping.anonymous(length);
      tries.push(next);
      if (next.address === freed.address) reused = next;
    }
    cleanup.push(() => tries.forEach((m) => m.unmap()));
    expect(reused).toBeDefined();
    expect(reused!.read().every((b) => b === 0)).toBe(true);
    expect(reused!.view().length).toBe(length);
    expect(attachView(reused!.address, length).length).toBe(length);
  });

  it('lets the opening thread discard() once another thread reads the events (serveFrom\'s native thread, a worker serving a loan), as its refusal advises', async () => {
    const mapping = Mapping.anonymous(2 * PAGE);
    const uffd = Userfaultfd.open({ features: ['EVENT_REMOVE'] });
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    uffd.register(mapping);
    let refusal: Error | undefined;
    try {
      mapping.discard(0, PAGE);
    } catch (error) {
      refusal = error as Error;
    }
    expect(refusal).toMatchObject({ code: 'ERR_UFFD_WOULD_DEADLOCK', syscall: 'madvise' });
    expect(refusal!.message).toContain('uffd.serveFrom');
    // serveFrom's native thread reads the REMOVE event, so madvise returns;
    // this thread still resolves the misses, so a touch is still refused.
    const events: string[] = [];
    const served = uffd.serveFrom(null, { onEvent: (event) => void events.push(event.type) });
    mapping.discard(0, PAGE);
    await vi.waitFor(() => expect(events).toEqual(['remove']));
    expect(() => mapping.read(0, PAGE)).toThrow(deadlock);
    uffd.close();
    await served;

    // A worker serving a borrowed uffd reads the events in its place.
    const lent = Userfaultfd.open({ features: ['EVENT_REMOVE'] });
    cleanup.push(() => lent.close());
    lent.register(mapping);
    const worker = new Worker(`
      const { workerData, parentPort } = require('node:worker_threads');
      const { Userfaultfd } = require(${JSON.stringify(require.resolve('../dist/index.js'))});
      const uffd = Userfaultfd.borrow(workerData.loan);
      void uffd.serve((fault) => fault.zero(), { onEvent: (event) => parentPort.postMessage(event.type) });
      parentPort.postMessage('ready');
    `, { eval: true, workerData: { loan: lent.lend() } });
    cleanup.push(() => void worker.terminate());
    expect((await once(worker, 'message'))[0]).toBe('ready');
    const removed = once(worker, 'message');
    mapping.discard(0, PAGE);
    expect((await removed)[0]).toBe('remove');
  });

  it('lets the opening thread touch memory a serveSync worker serves, and refuses again once no thread reads the uffd', async () => {
    const { uffd, mapping } = setup(3);
    // Refused at first: nothing but this thread could serve the fault.
    expect(() => mapping.read(0, PAGE)).toThrow(deadlock);
    const worker = new Worker(`
      const { workerData, parentPort } = require('node:worker_threads');
      const { Userfaultfd } = require(${JSON.stringify(require.resolve('../dist/index.js'))});
      const uffd = Userfaultfd.borrow(workerData.loan);
      parentPort.postMessage('borrowed');
      uffd.serveSync((fault) => fault.copy(new Uint8Array(workerData.page).fill(7)));
    `, { eval: true, workerData: { loan: uffd.lend(), page: PAGE } });
    cleanup.push(() => void worker.terminate());
    expect((await once(worker, 'message'))[0]).toBe('borrowed');
    // The guard lets go once the worker waits in serveSync; until then a read
    // is refused (and changes nothing), so ask until it goes through.
    const first = await vi.waitFor(() => mapping.read(0, PAGE), { timeout: 10_000 * SLOWDOWN, interval: 5 });
    expect(first.every((b) => b === 7)).toBe(true);
    expect(mapping.view()[PAGE + 1]).toBe(7);
    // The worker gone, this thread is the one to serve the uffd again.
    await worker.terminate();
    expect(() => mapping.read(2 * PAGE, PAGE)).toThrow(deadlock);
  });

  it('allows views again once the range is unregistered, and a worker may always attach', async () => {
    const { mapping, uffd } = setup(1);
    void uffd.serve((fault) => void fault.copy(new Uint8Array(PAGE).fill(2)));
    expect((await touch({ address: mapping.address, length: PAGE }).result).sum).toBe(2);
    uffd.unregister(mapping);
    expect(mapping.view()[0]).toBe(2);
  });
});
