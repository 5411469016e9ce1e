// Adaptive spinning and the worker-thread handler: behaviour only (speed is
// measured by npm run bench). Every fault is real, raised by a worker thread.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, Userfaultfd } from '../dist/index.js';
import { PAGE, pattern, shuffled, touch, registeredAnonymous, uffdFds } from './helpers';

const cleanup: (() => void | Promise<unknown>)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

function setup(pages: number): { uffd: Userfaultfd; memory: Mapping; image: SharedArrayBuffer } {
  const { uffd, mapping } = registeredAnonymous(pages);
  return { uffd, memory: mapping, image: pattern(pages * PAGE, 5) };
}

function copyFrom(image: SharedArrayBuffer, start: bigint) {
  const bytes = new Uint8Array(image);
  return (fault: { pageAddress: bigint; pageSize: number; copy(data: Uint8Array): unknown }): void => {
    const offset = Number(fault.pageAddress - start);
    fault.copy(bytes.subarray(offset, offset + fault.pageSize));
  };
}

function startSyncServer(uffd: Userfaultfd, image: SharedArrayBuffer, spin: boolean, spun?: Float64Array): { worker: Worker; ready: Promise<unknown>; done: Promise<{ served: number; stats: { spin: { cpuMs: number } } }> } {
  const worker = new Worker(path.join(__dirname, 'fixtures', 'sync-server.cjs'), { workerData: { loan: uffd.lend(), image, spin, spun } });
  cleanup.push(() => worker.terminate());
  const messages: unknown[] = [];
  const waiting: ((m: unknown) => void)[] = [];
  worker.on('message', (m) => (waiting.length ? waiting.shift()!(m) : messages.push(m)));
  const next = () => new Promise<unknown>((resolve, reject) => {
    if (messages.length) resolve(messages.shift());
    else waiting.push(resolve);
    worker.once('error', reject);
  });
  const ready = next();
  return { worker, ready, done: ready.then(next) as Promise<{ served: number; stats: { spin: { cpuMs: number } } }> };
}

describe('spinning on the loop thread (serve with spin: true)', () => {
  it('serves the same bytes with spinning on and off', async () => {
    for (const spin of [false, true]) {
      const pages = 256;
      const { uffd, memory, image } = setup(pages);
      void uffd.serve(copyFrom(image, memory.address), { spin });
      const { result } = touch({ address: memory.address, length: memory.length, order: shuffled(pages, 11), expected: image });
      expect(await result).toMatchObject({ ok: true });
      expect(uffd.stats().jsFaults).toBe(pages);
    }
  });

  it('holds the cap: a timer set during a fault storm fires while the storm goes on', async () => {
    // Three faulting threads and a handler that works 100 µs per fault: a
    // fault is always pending when a spin starts, so spinning would hold the
    // loop for the whole storm if nothing capped it.
    const pages = 3 * 1024;
    const { uffd, memory, image } = setup(pages);
    let served = 0;
    const copy = copyFrom(image, memory.address);
    let timerFiredAt = -1;
    let lateMs = -1;
    void uffd.serve((fault) => {
      copy(fault);
      for (const until = performance.now() + 0.1; performance.now() < until;);
      if (++served === pages / 3) {
        const due = performance.now() + 1;
        setTimeout(() => {
          timerFiredAt = served;
          lateMs = performance.now() - due;
        }, 1);
      }
    }, { spin: true });
    const third = (pages / 3) * PAGE;
    const touchers = [0, 1, 2].map((i) => touch({
      address: memory.address + BigInt(i * third), length: third, expected: image.slice(i * third, (i + 1) * third),
    }));
    for (const t of touchers) expect(await t.result).toMatchObject({ ok: true });
    // Spinning did happen, and still the loop ran the timer in the middle of
    // the storm, about a cap (1 ms) late; 50 ms allows for a loaded machine.
    expect(uffd.stats().spin.hits).toBeGreaterThan(0);
    expect(timerFiredAt).toBeGreaterThan(0);
    expect(timerFiredAt).toBeLessThan((2 * pages) / 3);
    expect(lateMs).toBeLessThan(50);
  });
});

describe('the spin option', () => {
  it('is a boolean in every serving method: anything else is ERR_INVALID_ARG_TYPE and changes nothing', async () => {
    // Its default is off for serve() and serveBatch() and on for serveSync()
    // and serveFrom(), so a stand-in such as 'false' or 0 meant spinning on
    // for some methods and off for others.
    for (const spin of ['false', 'yes', 0, 1, null, {}]) {
      const { uffd, memory, image } = setup(4);
      const calls = [
        () => uffd.serve(() => {}, { spin: spin as never }),
        () => uffd.serveBatch(() => {}, { spin: spin as never }),
        () => uffd.serveSync(() => {}, { spin: spin as never }),
        () => uffd.serveFrom(null, { spin: spin as never }),
      ];
      for (const call of calls) {
        expect(call).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: expect.stringContaining('"options.spin"') }));
      }
      // Nothing claimed the uffd: it is served as usual.
      void uffd.serve(copyFrom(image, memory.address));
      expect(await touch({ address: memory.address, length: memory.length, expected: image }).result).toMatchObject({ ok: true });
    }
  });
});

describe('serveBatch: a JavaScript handler with nothing allocated per fault', () => {
  it('serves the same bytes with spinning on and off, one call per batch', async () => {
    for (const spin of [false, true]) {
      const pages = 256;
      const { uffd, memory, image } = setup(pages);
      const bytes = new Uint8Array(image);
      const base = Number(memory.address);
      let calls = 0;
      void uffd.serveBatch((batch) => {
        calls++;
        for (let i = 0; i < batch.length; i++) {
          expect(batch.kind(i)).toBe('missing');
          const at = batch.pageAddress(i) - base;
          batch.copy(i, bytes.subarray(at, at + batch.pageSize(i)));
        }
      }, { spin });
      const touchers = [0, 1].map((half) => touch({
        address: memory.address + BigInt((half * pages * PAGE) / 2), length: (pages * PAGE) / 2,
        order: shuffled(pages / 2, 5 + half), expected: image.slice((half * pages * PAGE) / 2, ((half + 1) * pages * PAGE) / 2),
      }));
      for (const t of touchers) expect(await t.result).toMatchObject({ ok: true });
      expect(uffd.stats().jsFaults).toBe(pages);
      expect(calls).toBeLessThanOrEqual(pages);
    }
  });

  it('fills what the handler leaves unresolved, and reports what it throws', async () => {
    const pages = 8;
    const { uffd, memory } = setup(pages);
    const errors: unknown[] = [];
    void uffd.serveBatch(() => {
      throw new Error('no answer');
    }, { onError: (error) => errors.push(error) });
    const { result } = touch({ address: memory.address, length: memory.length, expected: new SharedArrayBuffer(pages * PAGE) });
    expect(await result).toMatchObject({ ok: true });
    expect(errors.length).toBeGreaterThan(0);
    expect(() => uffd.serve(() => {})).toThrow(expect.objectContaining({ code: 'ERR_UFFD_BUSY' }));
  });

  it('reports a batch its handler returned from with faults unresolved (ERR_UFFD_UNRESOLVED), as serve() does', async () => {
    const pages = 4;
    const { uffd, memory } = setup(pages);
    const errors: { code?: string; message?: string }[] = [];
    void uffd.serveBatch(() => {}, { onError: (error) => errors.push(error as { code?: string }) });
    const { result } = touch({ address: memory.address, length: memory.length, expected: new SharedArrayBuffer(pages * PAGE) });
    expect(await result).toMatchObject({ ok: true });
    expect(errors.length).toBeGreaterThan(0);
    expect(errors[0]).toMatchObject({ code: 'ERR_UFFD_UNRESOLVED', message: expect.stringMatching(/finished with \d+ of \d+ faults unresolved/) });
  });
});

describe('the worker-thread handler (lend, borrow, serveSync)', () => {
  it('serves faults while the main thread is blocked', async () => {
    const pages = 512;
    const { uffd, memory, image } = setup(pages);
    const server = startSyncServer(uffd, image, true);
    await server.ready;
    // A faulting worker that signals through shared memory, since the main
    // thread will not run its event loop meanwhile.
    const flag = new Int32Array(new SharedArrayBuffer(8));
    const toucher = new Worker(`
      const { workerData } = require('node:worker_threads');
      const { attachView } = require(${JSON.stringify(require.resolve('../dist/index.js'))});
      const view = attachView(workerData.address, workerData.length);
      const image = new Uint8Array(workerData.image);
      let ok = 1;
      for (let p = 0; p < workerData.length; p += workerData.page) if (view[p] !== image[p]) ok = 0;
      if (Buffer.compare(view, image) !== 0) ok = 0;
      Atomics.store(workerData.flag, 1, ok);
      Atomics.store(workerData.flag, 0, 1);
      Atomics.notify(workerData.flag, 0);
    `, { eval: true, workerData: { address: memory.address, length: memory.length, page: PAGE, image, flag } });
    cleanup.push(() => toucher.terminate());
    // Blocks this thread (no event loop, no JavaScript) until every page was served, or 20 s.
    const outcome = Atomics.wait(flag, 0, 0, 20_000);
    expect(outcome === 'ok' || Atomics.load(flag, 0) === 1).toBe(true);
    expect(Atomics.load(flag, 1)).toBe(1);
    uffd.close();
    const done = await server.done;
    expect(done.served).toBe(pages);
  });

  it('serves the same bytes with spinning on and off, and returns when the owner closes', async () => {
    for (const spin of [false, true]) {
      const pages = 128;
      const { uffd, memory, image } = setup(pages);
      const server = startSyncServer(uffd, image, spin);
      await server.ready;
      const { result } = touch({ address: memory.address, length: memory.length, order: shuffled(pages, 2), expected: image });
      expect(await result).toMatchObject({ ok: true });
      uffd.close();
      expect((await server.done).served).toBe(pages);
    }
  });

  it('serves a reader that works between faults (deferred spins) byte for byte, and stops spinning once it stops', async () => {
    // 200 µs of work per page: faults at a steady pace beyond the spin window,
    // which the worker sleeps through on a timer until shortly before each.
    const pages = 1024;
    const { uffd, memory, image } = setup(pages);
    const spun = new Float64Array(new SharedArrayBuffer(8));
    const server = startSyncServer(uffd, image, true, spun);
    await server.ready;
    const { result } = touch({ address: memory.address, length: memory.length, expected: image, paceUs: 200 });
    expect(await result).toMatchObject({ ok: true, mismatches: 0 });
    // With no faults coming, a deferred spin that catches nothing backs off
    // to sleeping: over the next 500 ms the worker spins for moments at most.
    const before = spun[0]!;
    await new Promise((resolve) => setTimeout(resolve, 500));
    uffd.close();
    const done = await server.done;
    expect(done.served).toBe(pages);
    expect(done.stats.spin.cpuMs - before).toBeLessThan(10);
  });

  it('refuses, in a serveSync handler, a view of the memory the worker serves (it would wait for itself for ever), and only while it serves', async () => {
    const { uffd, memory } = setup(2);
    const worker = new Worker(`
      const { workerData, parentPort } = require('node:worker_threads');
      const { Userfaultfd, attachView } = require(${JSON.stringify(require.resolve('../dist/index.js'))});
      const codeOf = (call) => { try { call(); return 'allowed'; } catch (error) { return error.code; } };
      const second = workerData.address + BigInt(workerData.page);
      const uffd = Userfaultfd.borrow(workerData.loan);
      const before = codeOf(() => attachView(second, workerData.page));
      let during;
      parentPort.postMessage('serving');
      uffd.serveSync((fault) => {
        // Only asks: touching the view here would hang this thread for good.
        during = codeOf(() => attachView(second, workerData.page));
        fault.zero();
      });
      parentPort.postMessage({ before, during, after: codeOf(() => attachView(second, workerData.page)) });
    `, { eval: true, workerData: { loan: uffd.lend(), address: memory.address, page: PAGE } });
    cleanup.push(() => worker.terminate());
    const next = () => new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    expect(await next()).toBe('serving');
    const reported = next();
    expect(await touch({ address: memory.address, length: PAGE }).result).toMatchObject({ sum: 0 });
    uffd.close();
    expect(await reported).toEqual({ before: 'allowed', during: 'ERR_UFFD_WOULD_DEADLOCK', after: 'allowed' });
  });

  it('a borrower that is not in serveSync lets go when the owner closes: its serve() ends, and the descriptor closes at once', async () => {
    // Otherwise the borrower's share kept the uffd open after the owner's
    // close(): its registrations stayed, and a thread touching the memory
    // then waited with nobody left to serve it.
    const before = uffdFds();
    const { uffd, memory, image } = setup(4);
    const worker = new Worker(`
      const { workerData, parentPort } = require('node:worker_threads');
      const { Userfaultfd } = require(${JSON.stringify(require.resolve('../dist/index.js'))});
      const idle = Userfaultfd.borrow(workerData.loan);       // borrowed, never served
      const serving = Userfaultfd.borrow(workerData.loan);    // served on this worker's loop
      const image = new Uint8Array(workerData.image);
      const start = serving.registrations[0].start;
      serving.serve((fault) => {
        const at = Number(fault.pageAddress - start);
        fault.copy(image.subarray(at, at + fault.pageSize));
      }).then(() => setImmediate(() => parentPort.postMessage({ ended: true, idleClosed: idle.closed, servingClosed: serving.closed })));
      parentPort.postMessage('serving');
    `, { eval: true, workerData: { loan: uffd.lend(), image } });
    cleanup.push(() => worker.terminate());
    const next = () => new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    expect(await next()).toBe('serving');
    expect(await touch({ address: memory.address, length: memory.length, expected: image }).result).toMatchObject({ ok: true });
    const ended = next();
    uffd.close();
    expect(await Promise.race([ended, new Promise((resolve) => setTimeout(() => resolve('still serving'), 5000))]))
      .toEqual({ ended: true, idleClosed: true, servingClosed: true });
    expect(uffdFds()).toBe(before);
  });

  it('a worker terminated while it serves, as its owner closes, ends cleanly (no abort in the addon)', () => {
    // In a child process (test/fixtures/terminate-serving.cjs): the failure it guards against is an abort.
    const child = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'terminate-serving.cjs')], { encoding: 'utf8', timeout: 60_000 });
    expect({ status: child.status, signal: child.signal, stderr: child.stderr, stdout: child.stdout.trim() })
      .toEqual({ status: 0, signal: null, stderr: '', stdout: 'clean' });
  });

  it('borrow() checks the whole loan before it shares the uffd: a refusal names the member, and the owner\'s close() still lets the memory go', () => {
    const before = uffdFds();
    const { uffd } = setup(1);
    const loan = uffd.lend();
    const refusals: [object, object][] = [
      [{ ...loan, features: ['NOPE'] }, { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE', message: expect.stringContaining("'loan.features'") }],
      [{ ...loan, features: 7 }, { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: expect.stringContaining('"loan.features"') }],
      [{ ...loan, ranges: 5 }, { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: expect.stringContaining('"loan.ranges"') }],
      [{ ...loan, ranges: [{ address: -1n, length: PAGE }] }, { name: 'RangeError', code: 'ERR_OUT_OF_RANGE', message: expect.stringContaining('"loan.ranges[0].address"') }],
    ];
    for (const [bad, error] of refusals) expect(() => Userfaultfd.borrow(bad as never)).toThrow(expect.objectContaining(error));
    // No refused borrow holds a share of the descriptor: closing the owner
    // closes it now (the kernel then drops the registrations), not at the
    // next garbage collection.
    uffd.close();
    expect(uffdFds()).toBe(before);
  });

  it('a loan cannot be borrowed once its uffd is closed', () => {
    const { uffd } = setup(1);
    const loan = uffd.lend();
    expect(Userfaultfd.borrow(loan).openedWith).toBe('borrowed');
    uffd.close();
    expect(() => Userfaultfd.borrow(loan)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED', message: expect.stringContaining('ask its owner for a new loan') }));
    expect(() => Userfaultfd.borrow({ id: -1 } as never)).toThrow(TypeError);
  });

  it('lends one uffd under one id however often it is lent (the lend table does not grow with lend() calls), each loan with the ranges of its time', () => {
    const { uffd, memory } = setup(2);
    const first = uffd.lend();
    const extra = Mapping.anonymous(PAGE);
    cleanup.push(() => extra.unmap());
    uffd.register(extra);
    const ids = new Set(Array.from({ length: 1000 }, () => uffd.lend().id));
    expect([...ids]).toEqual([first.id]);
    const later = uffd.lend();
    expect(later.ranges.map((r) => r.address)).toEqual([memory.address, extra.address]);
    expect(first.ranges.map((r) => r.address)).toEqual([memory.address]);
    const borrowed = Userfaultfd.borrow(later);
    expect(borrowed.registrations.length).toBe(2);
    borrowed.close();
  });
});
