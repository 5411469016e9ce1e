// serve(): concurrency, asynchronous handlers, and the failure policy.
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, Memfd, Userfaultfd } from '../dist/index.js';
import { PAGE, pattern, touch, registeredAnonymous } from './helpers';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

const setup = registeredAnonymous;

describe('serve()', () => {
  it('serves faults with an async handler that resolves later', async () => {
    const pages = 32;
    const { mapping, uffd } = setup(pages);
    const source = pattern(pages * PAGE, 31);
    void uffd.serve(async (fault) => {
      await new Promise((resolve) => setImmediate(resolve));
      const offset = Number(fault.pageAddress - mapping.address);
      fault.copy(new Uint8Array(source, offset, PAGE));
    });
    expect(await touch({ address: mapping.address, length: mapping.length, expected: source }).result).toMatchObject({ ok: true });
  });

  it('serves two faulting threads concurrently, holding one fault while the other is served', async () => {
    const { mapping, uffd } = setup(2);
    let holding!: () => void;
    const held = new Promise<void>((resolve) => (holding = resolve));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    void uffd.serve(async (fault) => {
      if (fault.pageAddress === mapping.address) {
        holding();
        await gate; // the first page waits until the second has been served
      }
      fault.copy(new Uint8Array(PAGE).fill(fault.pageAddress === mapping.address ? 1 : 2));
    });
    const a = touch({ address: mapping.address, length: PAGE });
    await held;
    const b = touch({ address: mapping.address + BigInt(PAGE), length: PAGE });
    expect((await b.result).sum).toBe(2);
    release();
    expect((await a.result).sum).toBe(1);
  });

  it('rejects a second consumer', () => {
    const { uffd } = setup(1);
    void uffd.serve(() => {});
    expect(() => uffd.events()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_BUSY' }));
    expect(() => uffd.serve(() => {})).toThrow(expect.objectContaining({ code: 'ERR_UFFD_BUSY' }));
  });
});

describe('failure policy', () => {
  it('fills a missing page with zeros when the handler throws, reports the error, and goes on serving', async () => {
    const pages = 4;
    const { mapping, uffd } = setup(pages);
    const errors: unknown[] = [];
    void uffd.serve(
      (fault) => {
        if (fault.pageAddress === mapping.address + BigInt(PAGE)) throw new Error('no data for page 1');
        fault.copy(new Uint8Array(PAGE).fill(1));
      },
      { onError: (error) => errors.push(error) },
    );
    const report = await touch({ address: mapping.address, length: mapping.length }).result;
    expect(report.sum).toBe(3);
    expect(errors).toEqual([expect.objectContaining({ message: 'no data for page 1' })]);
  });

  it('fills when an async handler rejects, and when a handler returns without resolving', async () => {
    const { mapping, uffd } = setup(2);
    const errors: unknown[] = [];
    void uffd.serve(
      async (fault) => {
        if (fault.pageAddress === mapping.address) throw new Error('rejected');
        // Returns without resolving page 1.
      },
      { onError: (error, fault) => errors.push([error, fault.resolved]) },
    );
    const report = await touch({ address: mapping.address, length: mapping.length }).result;
    expect(report.sum).toBe(0);
    expect(errors).toEqual([
      [expect.objectContaining({ message: 'rejected' }), true],
      [expect.objectContaining({ code: 'ERR_UFFD_UNRESOLVED' }), true],
    ]);
  });

  it('timeoutMs: a fault an async handler holds too long is filled and reported; faults resolved in time are not', async () => {
    const { mapping, uffd } = setup(2);
    const errors: unknown[] = [];
    const late: Promise<string>[] = [];
    const start = performance.now();
    void uffd.serve(
      async (fault) => {
        if (fault.pageAddress === mapping.address) {
          fault.copy(new Uint8Array(PAGE).fill(3)); // in time
          return;
        }
        // Page 1: never settles by itself; its late copy comes after the policy's fill.
        let copied!: (outcome: string) => void;
        late.push(new Promise((resolve) => (copied = resolve)));
        setTimeout(() => copied(fault.copy(new Uint8Array(PAGE).fill(9))), 600);
        await new Promise(() => {});
      },
      { timeoutMs: 150, onError: (error, fault) => errors.push([error, fault.resolved]) },
    );
    const report = await touch({ address: mapping.address, length: mapping.length }).result;
    expect(performance.now() - start).toBeGreaterThanOrEqual(150);
    expect(report.sum).toBe(3); // page 1 reads as zeros
    expect(errors).toEqual([[expect.objectContaining({ code: 'ERR_UFFD_TIMEOUT', message: expect.stringContaining('150 ms') }), true]]);
    expect(await late[0]).toBe('exists');
    expect((await touch({ address: mapping.address + BigInt(PAGE), length: PAGE }).result).sum).toBe(0);
  });

  it('timeoutMs is checked as UnixConnection.receive checks it: a number (ERR_INVALID_ARG_TYPE) of milliseconds setTimeout can wait (ERR_OUT_OF_RANGE)', () => {
    const { uffd } = setup(1);
    for (const timeoutMs of ['100', 100n]) {
      expect(() => uffd.serve(async () => {}, { timeoutMs: timeoutMs as never })).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }));
    }
    for (const timeoutMs of [-1, Number.NaN, 2 ** 31]) {
      expect(() => uffd.serve(async () => {}, { timeoutMs })).toThrow(expect.objectContaining({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }));
    }
    // Nothing was claimed by the refusals.
    void uffd.serve(async () => {}, { timeoutMs: 0 });
  });

  it('maps the page cache page for a failed MINOR fault', async () => {
    const memfd = Memfd.create(PAGE);
    const filler = memfd.map();
    const registered = memfd.map();
    cleanup.push(() => registered.unmap(), () => filler.unmap(), () => memfd.close());
    filler.view().fill(7);
    const uffd = Userfaultfd.open();
    cleanup.push(() => uffd.close());
    uffd.register(registered, { minor: true });
    void uffd.serve(() => {
      throw new Error('handler bug');
    }, { onError: () => {} });
    expect((await touch({ address: registered.address, length: PAGE }).result).sum).toBe(7);
  });
});
