// The kernel's own userfaultfd selftests (tools/testing/selftests/mm/uffd-unit-tests.c) where they
// found this library behaving differently: each test is the selftest's scenario through the API.
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Mapping, Memfd, Userfaultfd, probe, unavailable } from '../dist/index.js';
import { PAGE, SLOWDOWN, wchan } from './helpers';
import { reserveHugePages } from './hugepages';

const reservation = reserveHugePages(1);
afterAll(() => reservation.restore());

const report = probe();
const needRemove = unavailable(report, { memory: 'anonymous', modes: ['missing'], ioctls: ['COPY'], features: ['EVENT_REMOVE'] });
if (needRemove) console.warn(`mmap-changing tests skipped: ${needRemove}`);
const needMove = unavailable(report, { memory: 'anonymous', modes: ['missing'], ioctls: ['MOVE'], features: ['MOVE'] });
if (needMove) console.warn(`move test skipped: ${needMove}`);
const needHugetlb = reservation.skipReason ?? unavailable(report, { memory: 'hugetlb', modes: ['missing'] });
if (needHugetlb) console.warn(`hugetlb zeropage test skipped: ${needHugetlb}`);

const LIBRARY = path.join(__dirname, '..', 'dist', 'index.js');
const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

function untilMessage<T>(worker: Worker): Promise<T> {
  return new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
}

// A worker owning `pages` anonymous pages that, once `go` is set, discards the first one: with
// EVENT_REMOVE its madvise queues a REMOVE and waits until the uffd's reader has read it, and until
// then the kernel refuses every resolving ioctl with EAGAIN (the selftest's mmap-changing).
async function remover(pages: number): Promise<{ address: bigint; tid: number; go: Int32Array; worker: Worker }> {
  const go = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(`
    const { workerData, parentPort } = require('node:worker_threads');
    const fs = require('node:fs');
    const m = require(workerData.library).Mapping.anonymous(workerData.length);
    parentPort.postMessage({ address: m.address, tid: Number(fs.readlinkSync('/proc/thread-self').split('/').pop()) });
    Atomics.wait(workerData.go, 0, 0);
    m.discard(0, ${PAGE});
    parentPort.postMessage('discarded');
  `, { eval: true, workerData: { library: LIBRARY, length: pages * PAGE, go } });
  cleanup.push(() => worker.terminate());
  const { address, tid } = await untilMessage<{ address: bigint; tid: number }>(worker);
  return { address, tid, go, worker };
}

// Blocks this thread (a handler cannot await) until thread tid waits for its event to be read.
function waitUntilInEvent(tid: number): void {
  const deadline = Date.now() + 10_000 * SLOWDOWN;
  const nap = new Int32Array(new SharedArrayBuffer(4));
  while (wchan(tid) !== 'userfaultfd_event_wait_completion') {
    if (Date.now() > deadline) throw new Error(`thread ${tid} never waited for its REMOVE event to be read (wchan ${wchan(tid)})`);
    Atomics.wait(nap, 0, 0, 1);
  }
}

function readByte(address: bigint): Promise<number> {
  const worker = new Worker(`
    const { workerData, parentPort } = require('node:worker_threads');
    parentPort.postMessage(require(workerData.library).attachView(workerData.address, ${PAGE})[0]);
  `, { eval: true, workerData: { library: LIBRARY, address } });
  cleanup.push(() => worker.terminate());
  return untilMessage<number>(worker);
}

// The selftest's setup: the remover's memory registered (missing) on a uffd
// with EVENT_REMOVE, and removeOnce(), for the handler's first call: it lets
// the remover discard and returns once the REMOVE waits to be read, so that
// the handler's resolution is refused with EAGAIN.
async function changing(): Promise<{ memory: Awaited<ReturnType<typeof remover>>; uffd: Userfaultfd; errors: unknown[]; removeOnce: () => void }> {
  const memory = await remover(8);
  const uffd = Userfaultfd.open({ features: ['EVENT_REMOVE'] });
  cleanup.push(() => uffd.close());
  uffd.register({ address: memory.address, length: 8 * PAGE }, { missing: true });
  let first = true;
  const removeOnce = (): void => {
    if (!first) return;
    first = false;
    Atomics.store(memory.go, 0, 1);
    Atomics.notify(memory.go, 0);
    waitUntilInEvent(memory.tid);
  };
  return { memory, uffd, errors: [], removeOnce };
}

describe('mmap-changing (a non-cooperative event queued and not yet read)', () => {
  it.skipIf(needRemove !== undefined)(`serve: a handler that catches the EAGAIN of its copy and returns has not failed; its fault is handed to it again and gets its bytes${needRemove ? ` — skipped: ${needRemove}` : ''}`, async () => {
    const { memory, uffd, errors, removeOnce } = await changing();
    const refused: string[] = [];
    void uffd.serve((fault) => {
      removeOnce();
      try {
        fault.copy(Buffer.alloc(PAGE, 7));
      } catch (error) {
        refused.push((error as { code: string }).code);
      }
    }, { onError: (error) => errors.push(error), onEvent: () => {} });
    expect(await readByte(memory.address + BigInt(4 * PAGE))).toBe(7);
    expect(await untilMessage(memory.worker)).toBe('discarded');
    expect(refused[0]).toBe('EAGAIN');
    expect(errors).toEqual([]);
  });
  it.skipIf(needRemove !== undefined)(`serveBatch: a copy refused with EAGAIN is not a handler failure; the fault is served with the handler's bytes once the event is read${needRemove ? ` — skipped: ${needRemove}` : ''}`, async () => {
    const { memory, uffd, errors, removeOnce } = await changing();
    const events: string[] = [];
    const refused: string[] = [];
    void uffd.serveBatch((batch) => {
      removeOnce();
      for (let i = 0; i < batch.length; i++) {
        try {
          batch.copy(i, Buffer.alloc(PAGE, 7));
        } catch (error) {
          refused.push((error as { code: string }).code);
          throw error;
        }
      }
    }, { onError: (error) => errors.push(error), onEvent: (event) => events.push(event.type) });
    expect(await readByte(memory.address + BigInt(4 * PAGE))).toBe(7);
    expect(await untilMessage(memory.worker)).toBe('discarded');
    expect(refused[0]).toBe('EAGAIN');
    expect(events).toEqual(['remove']);
    expect(errors).toEqual([]);
  });
});

describe('the errors of move and zeropage say what the kernel wants', () => {
  it.skipIf(needMove !== undefined)(`move into shmem: the kernel's EINVAL, and a message that says MOVE needs private anonymous memory${needMove ? ` — skipped: ${needMove}` : ''}`, () => {
    const source = Mapping.anonymous(PAGE);
    const memfd = Memfd.create(PAGE);
    const target = memfd.map();
    const uffd = Userfaultfd.open({ features: ['MOVE'] });
    cleanup.push(() => source.unmap(), () => target.unmap(), () => memfd.close(), () => uffd.close());
    source.view().fill(1);
    uffd.register(target, { missing: true });
    let error: unknown;
    try {
      uffd.move(target.address, source.address, PAGE);
    } catch (caught) {
      error = caught;
    }
    expect(error).toMatchObject({ code: 'EINVAL', errno: -22, syscall: 'ioctl(UFFDIO_MOVE)', bytesDone: 0 });
    expect((error as Error).message).toMatch(/private anonymous mappings/);
  });
  it.skipIf(needHugetlb !== undefined)(`zeroPage on hugetlb: the kernel's EINVAL, and a message that says hugetlb has no ZEROPAGE${needHugetlb ? ` — skipped: ${needHugetlb}` : ''}`, () => {
    const memfd = Memfd.create(reservation.pageSize, { hugePages: reservation.pageSize });
    const target = memfd.map();
    const uffd = Userfaultfd.open({ features: ['MISSING_HUGETLBFS'] });
    cleanup.push(() => target.unmap(), () => memfd.close(), () => uffd.close());
    expect(uffd.register(target, { missing: true }).has('ZEROPAGE')).toBe(false);
    let error: unknown;
    try {
      uffd.zeroPage(target.address, target.pageSize);
    } catch (caught) {
      error = caught;
    }
    expect(error).toMatchObject({ code: 'EINVAL', errno: -22, syscall: 'ioctl(UFFDIO_ZEROPAGE)' });
    expect((error as Error).message).toMatch(/hugetlb memory has no UFFDIO_ZEROPAGE/);
  });
});
