// Stress: many threads faulting at once, hundreds of thousands of faults in
// all, every byte of every page checked. The handler runs on this thread; the
// faulting threads are workers (test/fixtures/stress-toucher.cjs).
import path from 'node:path';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import { Mapping, Userfaultfd } from '../dist/index.js';
import { PAGE, pattern } from './helpers';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { expectedPage } = require('./fixtures/stress-pattern.cjs') as {
  expectedPage: (out: Uint8Array, source: Uint8Array, page: number, round: number) => Uint8Array;
};

const THREADS = 8;
const PAGES_PER_THREAD = 2048; // a power of two: the workers' odd strides visit every page
const ROUNDS = 13; // 8 x 2048 x 13 = 212,992 faults
const SOURCE_PAGES = 61;

interface RoundReport { round: number; mismatches: number; firstMismatch: number; sum: number }

const workers: Worker[] = [];
afterAll(async () => {
  await Promise.all(workers.map((worker) => worker.terminate()));
});

describe('stress', () => {
  it(`serves ${THREADS} faulting threads through ${THREADS * PAGES_PER_THREAD * ROUNDS} faults, every byte checked`, async () => {
    const source = pattern(SOURCE_PAGES * PAGE, 90);
    const sourceBytes = new Uint8Array(source);
    for (let slice = 0; slice < THREADS; slice++) {
      workers.push(new Worker(path.join(__dirname, 'fixtures', 'stress-toucher.cjs'), {
        workerData: { slice, pages: PAGES_PER_THREAD, pageSize: PAGE, source },
      }));
    }
    const uffd = Userfaultfd.open();
    const scratch = new Uint8Array(PAGE);
    let base = 0n;
    let round = 0;
    let faults = 0;
    let outside = 0;
    const served = uffd.serve((fault) => {
      const page = Number((fault.pageAddress - base) / BigInt(PAGE));
      if (fault.pageAddress < base || page >= THREADS * PAGES_PER_THREAD) outside++;
      faults++;
      fault.copy(expectedPage(scratch, sourceBytes, page, round));
    }, { onError: (error) => { throw error; } });

    const length = THREADS * PAGES_PER_THREAD * PAGE;
    for (round = 0; round < ROUNDS; round++) {
      const mapping = Mapping.anonymous(length);
      uffd.register(mapping);
      base = mapping.address;
      const before = faults;
      const reports = workers.map((worker) => once(worker, 'message').then(([report]) => report as RoundReport));
      for (const worker of workers) worker.postMessage({ address: mapping.address, round });
      for (const report of await Promise.all(reports)) {
        expect(report).toMatchObject({ round, mismatches: 0, firstMismatch: -1 });
      }
      // One fault per page: none lost, none repeated.
      expect(faults - before).toBe(THREADS * PAGES_PER_THREAD);
      uffd.unregister(mapping);
      mapping.unmap();
    }
    expect(outside).toBe(0);
    expect(faults).toBe(THREADS * PAGES_PER_THREAD * ROUNDS);
    uffd.close();
    await served;
  }, 120_000);
});
