// EEXIST when two resolutions race on one page, DONTWAKE followed by WAKE,
// and what closing or unregistering does to a thread waiting on a fault.
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, Userfaultfd, type Fault } from '../dist/index.js';
import { PAGE, asleepInFault, pattern, touch, wchan } from './helpers';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

function setup(pages: number, features: Parameters<typeof Userfaultfd.open>[0] = {}) {
  const mapping = Mapping.anonymous(pages * PAGE);
  const uffd = Userfaultfd.open(features);
  cleanup.push(() => mapping.unmap(), () => uffd.close());
  uffd.register(mapping);
  return { mapping, uffd };
}

async function firstFault(uffd: Userfaultfd): Promise<{ fault: Fault; rest: AsyncIterator<unknown> }> {
  const rest = uffd.events();
  const { value } = await rest.next();
  if (!value || value.type !== 'pagefault') throw new Error('expected a page fault');
  return { fault: value, rest };
}

describe('EEXIST', () => {
  it('is thrown by a range copy onto a page that is already there, and nothing is overwritten', async () => {
    const { mapping, uffd } = setup(2);
    const first = new Uint8Array(PAGE).fill(1);
    expect(uffd.copy(mapping.address, first)).toBe(PAGE);
    let error: unknown;
    try {
      uffd.copy(mapping.address, new Uint8Array(2 * PAGE).fill(2));
    } catch (e) {
      error = e;
    }
    expect(error).toMatchObject({ code: 'EEXIST', errno: -17, syscall: 'ioctl(UFFDIO_COPY)', bytesDone: 0 });
    // The second page was not touched either: a worker faults on it, and the
    // first page still holds the first copy.
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      fault.copy(new Uint8Array(PAGE).fill(3));
    });
    const report = await touch({ address: mapping.address, length: mapping.length }).result;
    expect(report.sum).toBe(1 + 3);
    expect(faults).toHaveLength(1);
  });

  it('reports a partial copy: the pages before the existing one are copied', async () => {
    const { mapping, uffd } = setup(4);
    uffd.copy(mapping.address + BigInt(2 * PAGE), new Uint8Array(PAGE).fill(9));
    const error = (() => {
      try {
        uffd.copy(mapping.address, new Uint8Array(4 * PAGE).fill(4));
      } catch (e) {
        return e;
      }
    })();
    expect(error).toMatchObject({ code: 'EEXIST', bytesDone: 2 * PAGE });
    void uffd.serve((fault) => void fault.zero());
    const report = await touch({ address: mapping.address, length: mapping.length }).result;
    expect(report.sum).toBe(4 + 4 + 9 + 0);
  });

  it('is a distinct outcome for a fault whose page another resolution put there first, and the thread is woken', async () => {
    const { mapping, uffd } = setup(1);
    const peer = touch({ address: mapping.address, length: PAGE });
    const { fault } = await firstFault(uffd);
    // Another resolver (a prefetcher, say) wins the race, without waking.
    uffd.copy(fault.pageAddress, new Uint8Array(PAGE).fill(5), { dontWake: true });
    expect(fault.copy(new Uint8Array(PAGE).fill(6))).toBe('exists');
    expect(fault.resolved).toBe(true);
    expect((await peer.result).sum).toBe(5);
  });
});

describe('DONTWAKE and WAKE', () => {
  it('leaves the faulting thread asleep after a DONTWAKE copy until WAKE', async () => {
    const { mapping, uffd } = setup(1, { features: ['THREAD_ID'] });
    const peer = touch({ address: mapping.address, length: PAGE });
    const { fault } = await firstFault(uffd);
    expect(fault.tid).toBeGreaterThan(0);
    await asleepInFault(fault.tid!);
    uffd.copy(fault.pageAddress, new Uint8Array(PAGE).fill(8), { dontWake: true });
    // The page is there, but the thread still sleeps in the kernel's fault handler.
    expect(wchan(fault.tid!)).toBe('handle_userfault');
    uffd.wake(fault.pageAddress, PAGE);
    expect((await peer.result).sum).toBe(8);
  });

  it('resolves many pages with DONTWAKE and wakes them all with one WAKE', async () => {
    const pages = 8;
    const { mapping, uffd } = setup(pages);
    const source = pattern(pages * PAGE, 21);
    const peer = touch({ address: mapping.address, length: mapping.length, expected: source });
    const { fault } = await firstFault(uffd);
    expect(fault.pageAddress).toBe(mapping.address);
    uffd.copy(mapping.address, new Uint8Array(source), { dontWake: true });
    uffd.wake(mapping.address, mapping.length);
    expect(await peer.result).toMatchObject({ ok: true });
  });
});

describe('closing and unregistering with a thread waiting', () => {
  it('close() wakes the waiting thread and ends the iterator cleanly', async () => {
    const { mapping, uffd } = setup(4);
    const peer = touch({ address: mapping.address, length: mapping.length });
    const { fault, rest } = await firstFault(uffd);
    expect(fault.resolved).toBe(false);
    const pending = rest.next();
    uffd.close();
    expect(await pending).toEqual({ value: undefined, done: true });
    expect(await rest.next()).toEqual({ value: undefined, done: true });
    // Unregistered by the close, the anonymous pages read as zeros.
    expect(await peer.result).toMatchObject({ sum: 0, touched: 4 });
  });

  it('close() ends serve(): its promise resolves', async () => {
    const { mapping, uffd } = setup(1);
    let faulted!: (fault: Fault) => void;
    const first = new Promise<Fault>((resolve) => (faulted = resolve));
    const served = uffd.serve((fault) => {
      faulted(fault);
      return new Promise<void>(() => {}); // never resolves by itself
    });
    const peer = touch({ address: mapping.address, length: PAGE });
    expect((await first).resolved).toBe(false);
    uffd.close();
    await expect(served).resolves.toBeUndefined();
    expect((await peer.result).sum).toBe(0);
  });

  it('breaking out of for-await closes the uffd', async () => {
    const { mapping, uffd } = setup(1);
    const peer = touch({ address: mapping.address, length: PAGE });
    for await (const event of uffd) {
      expect(event.type).toBe('pagefault');
      break;
    }
    expect(uffd.closed).toBe(true);
    expect((await peer.result).sum).toBe(0);
  });

  it('unregister() wakes the waiting thread, which then sees ordinary memory', async () => {
    const { mapping, uffd } = setup(1);
    const peer = touch({ address: mapping.address, length: PAGE });
    await firstFault(uffd);
    uffd.unregister(mapping);
    expect(uffd.registrations).toHaveLength(0);
    expect((await peer.result).sum).toBe(0);
  });
});
