// Robustness: handlers that fail in every way, peers that die mid-fault, and
// uffds and mappings that are closed, unregistered, unmapped or collected
// while faults are pending. In every case the faulting threads go on, and
// nothing hangs.
import { execFileSync, spawn } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, UnixServer, Userfaultfd, type Fault } from '../dist/index.js';
import { PAGE, SLOWDOWN, threadsWaitingOnFaults, touch, registeredAnonymous } from './helpers';
import { fixture } from './native-fixtures';
import { startPeer } from './peer';

const gc = (globalThis as { gc?: () => void }).gc;

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

const setup = registeredAnonymous;

function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

describe('handlers that fail', () => {
  it('resolves by policy whatever a handler throws or rejects with, Errors or not, and serves the rest', async () => {
    const pages = 64;
    const { mapping, uffd } = setup(pages);
    const failures: [unknown, number][] = [];
    const pageOf = (fault: Fault): number => Number(fault.pageAddress - mapping.address) / PAGE;
    // Each way to fail, by page number modulo 8; the rest are served with data.
    const ways: ((fault: Fault) => void | Promise<void>)[] = [
      () => { throw new Error('thrown'); },
      async () => { throw new Error('rejected'); },
      () => { throw undefined; },
      () => Promise.reject(null),
      () => { throw 'a string'; },
      () => {}, // returns without resolving
      async () => { await new Promise((resolve) => setImmediate(resolve)); }, // resolves later without resolving
    ];
    void uffd.serve((fault) => {
      const way = ways[pageOf(fault) % 8];
      if (way) return way(fault);
      fault.copy(new Uint8Array(PAGE).fill(1));
    }, { onError: (error, fault) => failures.push([error, pageOf(fault)]) });
    const report = await touch({ address: mapping.address, length: mapping.length }).result;
    expect(report.touched).toBe(pages);
    expect(report.sum).toBe(pages / 8); // failed pages were filled with zeros
    expect(failures).toHaveLength(pages - pages / 8);
    const byWay = (way: number): unknown[] => failures.filter(([, page]) => page % 8 === way).map(([error]) => error);
    expect(byWay(0)[0]).toMatchObject({ message: 'thrown' });
    expect(byWay(1)[0]).toMatchObject({ message: 'rejected' });
    expect(byWay(2)[0]).toBeUndefined();
    expect(byWay(3)[0]).toBeNull();
    expect(byWay(4)[0]).toBe('a string');
    expect(byWay(5)[0]).toMatchObject({ code: 'ERR_UFFD_UNRESOLVED' });
    expect(byWay(6)[0]).toMatchObject({ code: 'ERR_UFFD_UNRESOLVED' });
  });

  it('without onError, reports any thrown value as a process warning and goes on', async () => {
    const { mapping, uffd } = setup(3);
    const warnings: Error[] = [];
    const onWarning = (warning: Error): void => void warnings.push(warning);
    process.on('warning', onWarning);
    cleanup.push(() => process.off('warning', onWarning));
    const thrown: unknown[] = [new Error('plain'), undefined, 42];
    void uffd.serve((fault) => {
      throw thrown[Number(fault.pageAddress - mapping.address) / PAGE];
    });
    expect((await touch({ address: mapping.address, length: mapping.length }).result).sum).toBe(0);
    // Warnings are emitted on the next tick.
    await new Promise((resolve) => setImmediate(resolve));
    const mine = warnings.filter((w) => w.name === 'UffdHandlerWarning' || w.message === 'plain');
    expect(mine.map((w) => w.message)).toEqual(['plain', expect.stringContaining('undefined'), expect.stringContaining('42')]);
  });

  it('serves the rest of a batch when onError throws, and rethrows that error as uncaught', () => {
    // In a child process, whose uncaught exceptions the test can count. The
    // serving starts once every thread waits on its fault, so that the first
    // read returns all of them in one batch.
    const lib = JSON.stringify(path.join(__dirname, '..', 'dist', 'index.js'));
    const script = `
      const fs = require('node:fs');
      const { Worker } = require('node:worker_threads');
      const { Mapping, Userfaultfd, systemPageSize } = require(${lib});
      const page = systemPageSize();
      const threads = 4;
      const mapping = Mapping.anonymous(threads * page);
      const uffd = Userfaultfd.open();
      uffd.register(mapping);
      let uncaught = 0;
      process.on('uncaughtException', (error) => { if (error.message === 'onError bug') uncaught++; });
      const sums = [];
      for (let i = 0; i < threads; i++) {
        const worker = new Worker(
          'const { workerData, parentPort } = require("node:worker_threads");' +
          'parentPort.postMessage(require(workerData.lib).attachView(workerData.address, 1)[0]);',
          { eval: true, workerData: { lib: ${lib}, address: mapping.address + BigInt(i * page) } });
        worker.on('message', (sum) => {
          sums.push(sum);
          if (sums.length === threads) setImmediate(() => { console.log(JSON.stringify({ sums, uncaught })); process.exit(0); });
        });
      }
      const waiting = () => fs.readdirSync('/proc/self/task').filter((t) => {
        try { return fs.readFileSync('/proc/self/task/' + t + '/wchan', 'utf8') === 'handle_userfault'; } catch { return false; }
      }).length;
      const poll = setInterval(() => {
        if (waiting() < threads) return;
        clearInterval(poll);
        void uffd.serve(() => { throw new Error('handler bug'); }, { onError: () => { throw new Error('onError bug'); } });
      }, 5);
      setTimeout(() => { console.log(JSON.stringify({ hung: true, sums, uncaught })); process.exit(1); }, 80000 * SLOWDOWN).unref();
    `;
    const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 100_000 * SLOWDOWN });
    expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({ sums: [0, 0, 0, 0], uncaught: 4 });
  }, 120_000 * SLOWDOWN);
});

describe('a faulting peer that dies mid-fault', () => {
  it('is killed (SIGKILL) with a fault pending: resolving it fails with ESRCH, the stream goes on', async () => {
    const p = await startPeer({ pages: 2, script: [{ read: 'all' }] });
    cleanup.push(() => p.close());
    const faulted = deferred<Fault>();
    const gate = deferred();
    const errors: unknown[] = [];
    const served = p.uffd.serve(async (fault) => {
      faulted.resolve(fault);
      await gate.promise;
      fault.copy(Buffer.alloc(fault.pageSize, 1));
    }, { onError: (error) => errors.push(error) });
    const exited = p.go();
    const fault = await faulted.promise;
    p.child.kill('SIGKILL');
    expect(await exited).toMatchObject({ signal: 'SIGKILL', report: undefined });
    gate.resolve();
    await new Promise((resolve) => setImmediate(resolve));
    expect(errors).toEqual([expect.objectContaining({ code: 'ESRCH', syscall: 'ioctl(UFFDIO_COPY)', message: expect.stringContaining('has exited') })]);
    expect(fault.resolved).toBe(false);
    expect(() => fault.zero()).toThrow(expect.objectContaining({ code: 'ESRCH' }));
    expect(p.uffd.closed).toBe(false);
    p.uffd.close();
    await expect(served).resolves.toBeUndefined();
  });

  it('exits with threads blocked on faults: the process ends, and their faults answer ESRCH', async () => {
    const threads = 4;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-exit-'));
    cleanup.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const server = UnixServer.listen(path.join(dir, 'peer.sock'));
    cleanup.push(() => server.close());
    const child = spawn(fixture('exit_peer'), [path.join(dir, 'peer.sock'), String(threads)], { stdio: ['ignore', 'pipe', 'inherit'] });
    cleanup.push(() => child.kill('SIGKILL'));
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    const exited = new Promise<[number | null, string | null]>((resolve) => child.once('exit', (code, signal) => resolve([code, signal])));
    const connection = (await server.accept())!;
    cleanup.push(() => connection.close());
    const message = (await connection.receive({ timeoutMs: 10_000 }))!;
    const info = JSON.parse(message.data.toString()) as { address: string; length: number };
    const uffd = Userfaultfd.fromFd(message.fds[0]!, { ranges: [{ address: BigInt(info.address), length: info.length }] });
    cleanup.push(() => uffd.close());
    const pending: Fault[] = [];
    const all = deferred();
    void uffd.serve((fault) => {
      pending.push(fault);
      if (pending.length === threads) all.resolve();
      return new Promise<void>(() => {}); // held until the peer is gone
    });
    await all.promise;
    connection.send('x');
    expect(await exited).toEqual([0, null]);
    expect(stdout).toBe(''); // no thread got past its fault
    for (const fault of pending) {
      expect(() => fault.copy(Buffer.alloc(PAGE, 1))).toThrow(expect.objectContaining({ code: 'ESRCH' }));
    }
  });
});

describe('teardown while faults are pending', () => {
  // A worker blocked on a fault cannot be joined until its uffd is closed,
  // and Node joins workers before the addon's environment cleanup runs.
  for (const [how, end, code] of [['process.exit(3)', 'process.exit(3)', 3], ['an uncaught exception', 'throw new Error("bye")', 1]] as const) {
    it(`exits at ${how} while a worker is blocked on a fault of a uffd this thread serves`, () => {
      const lib = JSON.stringify(path.join(__dirname, '..', 'dist', 'index.js'));
      const script = `
        const fs = require('node:fs');
        const { Worker } = require('node:worker_threads');
        const { Userfaultfd, Mapping, systemPageSize } = require(${lib});
        const mapping = Mapping.anonymous(systemPageSize());
        const uffd = Userfaultfd.open();
        uffd.register(mapping);
        new Worker('const { workerData } = require("node:worker_threads"); require(workerData.lib).attachView(workerData.address, 1)[0];',
          { eval: true, workerData: { lib: ${lib}, address: mapping.address } });
        const poll = setInterval(() => {
          const asleep = fs.readdirSync('/proc/self/task').some((t) => {
            try { return fs.readFileSync('/proc/self/task/' + t + '/wchan', 'utf8') === 'handle_userfault'; } catch { return false; }
          });
          if (!asleep) return;
          clearInterval(poll);
          ${end};
        }, 5);
      `;
      const started = Date.now();
      let status: number | null = null;
      try {
        execFileSync(process.execPath, ['-e', script], { stdio: 'ignore', timeout: 30_000 * SLOWDOWN, killSignal: 'SIGKILL' });
        status = 0;
      } catch (error) {
        status = (error as { status: number | null }).status;
      }
      expect(status).toBe(code);
      expect(Date.now() - started).toBeLessThan(30_000 * SLOWDOWN);
    });
  }

  it('a worker terminated while its serveSync handler holds a fault: the fault goes back to the owner', async () => {
    const { mapping, uffd } = setup(1);
    const holding = new SharedArrayBuffer(4);
    const worker = new Worker(`
      const { workerData } = require('node:worker_threads');
      const flag = new Int32Array(workerData.holding);
      require(workerData.lib).Userfaultfd.borrow(workerData.loan).serveSync(() => {
        Atomics.store(flag, 0, 1);
        Atomics.wait(flag, 0, 1); // holds the fault until terminated
      });
    `, { eval: true, workerData: { lib: path.join(__dirname, '..', 'dist', 'index.js'), loan: uffd.lend(), holding } });
    const touched = touch({ address: mapping.address, length: PAGE });
    const flag = new Int32Array(holding);
    while (Atomics.load(flag, 0) === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    await worker.terminate();
    // The worker read the fault and is gone without resolving it: its
    // thread was woken, faulted again, and this thread now serves it.
    void uffd.serve((fault) => void fault.copy(Buffer.alloc(PAGE, 6)));
    expect((await touched.result).sum).toBe(6);
  });

  it('close() with many threads waiting wakes them all', async () => {
    const threads = 8;
    const { mapping, uffd } = setup(threads);
    const seen = deferred();
    let count = 0;
    void uffd.serve(() => {
      if (++count === threads) seen.resolve();
      return new Promise<void>(() => {});
    });
    const peers = Array.from({ length: threads }, (_, i) => touch({ address: mapping.address + BigInt(i * PAGE), length: PAGE }));
    await seen.promise;
    uffd.close();
    for (const peer of peers) expect(await peer.result).toMatchObject({ sum: 0, touched: 1 });
  });

  it('unregistering part of a range wakes the threads waiting there; the rest are still served', async () => {
    const { mapping, uffd } = setup(4);
    const held: Fault[] = [];
    const both = deferred();
    void uffd.serve((fault) => {
      held.push(fault);
      if (held.length === 2) both.resolve();
      return new Promise<void>(() => {});
    });
    const first = touch({ address: mapping.address, length: PAGE });
    const last = touch({ address: mapping.address + BigInt(3 * PAGE), length: PAGE });
    await both.promise;
    uffd.unregister({ address: mapping.address, length: 2 * PAGE });
    expect((await first.result).sum).toBe(0);
    const waiting = held.find((fault) => fault.pageAddress === mapping.address + BigInt(3 * PAGE))!;
    expect(waiting.copy(new Uint8Array(PAGE).fill(3))).toBe('done');
    expect((await last.result).sum).toBe(3);
  });

  it('unmap() with a fault pending: resolving it fails with ENOENT, and the thread is woken onto zeros', async () => {
    const { mapping, uffd } = setup(2);
    const peer = touch({ address: mapping.address, length: PAGE });
    const events = uffd.events();
    const { value } = await events.next();
    const fault = value as Fault;
    mapping.unmap();
    expect(() => fault.copy(new Uint8Array(PAGE).fill(1))).toThrow(expect.objectContaining({ code: 'ENOENT', syscall: 'ioctl(UFFDIO_COPY)' }));
    // The worker's view keeps the (now zero) memory until it is collected.
    expect(await peer.result).toMatchObject({ sum: 0, touched: 1 });
  });
});

describe.skipIf(!gc)('garbage collection with work in flight', () => {
  async function collect(): Promise<void> {
    for (let i = 0; i < 5; i++) {
      gc!();
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  it('keeps serving a Userfaultfd nobody references while its stream runs', async () => {
    const mapping = Mapping.anonymous(8 * PAGE);
    cleanup.push(() => mapping.unmap());
    let close!: () => void;
    (() => {
      const uffd = Userfaultfd.open();
      uffd.register(mapping);
      void uffd.serve((fault) => void fault.copy(new Uint8Array(PAGE).fill(5)));
      close = () => uffd.close();
    })();
    await collect();
    expect((await touch({ address: mapping.address, length: mapping.length }).result).sum).toBe(8 * 5);
    close();
  });

  it('closes a collected Userfaultfd that has a thread waiting and no reader: the thread wakes', async () => {
    const mapping = Mapping.anonymous(PAGE);
    cleanup.push(() => mapping.unmap());
    // Held until the thread waits: a collection before its fault (likely where
    // the worker starts slowly, as under emulation) would close the uffd first,
    // and the worker would touch unregistered memory instead.
    const held: Userfaultfd[] = [];
    (() => {
      const uffd = Userfaultfd.open();
      uffd.register(mapping);
      held.push(uffd);
    })();
    const peer = touch({ address: mapping.address, length: PAGE });
    await threadsWaitingOnFaults(1);
    held.length = 0;
    await collect();
    expect(await peer.result).toMatchObject({ sum: 0, touched: 1 });
  });

  it('keeps a collected Mapping alive for a worker whose fault on it is pending', async () => {
    const uffd = Userfaultfd.open();
    cleanup.push(() => uffd.close());
    const faulted = deferred<Fault>();
    void uffd.serve((fault) => {
      faulted.resolve(fault);
      return new Promise<void>(() => {});
    });
    let address = 0n;
    (() => {
      const mapping = Mapping.anonymous(PAGE);
      uffd.register(mapping);
      address = mapping.address;
    })();
    const peer = touch({ address, length: PAGE });
    const fault = await faulted.promise;
    await collect();
    expect(fs.readFileSync('/proc/self/maps', 'utf8')).toContain(address.toString(16));
    expect(fault.copy(new Uint8Array(PAGE).fill(6))).toBe('done');
    expect((await peer.result).sum).toBe(6);
  });
});
