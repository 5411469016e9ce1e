// Test helpers: faulting peers and page patterns. Every fault in the tests is
// a real fault, raised by a worker thread or a child process on real memory.
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';

import { onTestFinished } from 'vitest';
import { Mapping, Userfaultfd, systemPageSize } from '../dist/index.js';

export const PAGE = systemPageSize();

/**
 * How much slower than a real machine this one runs: bounds on waits are
 * multiplied by it (test/arm64/run.sh sets USERFAULTFD_TEST_SLOWDOWN under
 * full-system emulation). Tests never measure speed; this only keeps a bound
 * from firing before the awaited thing could have happened.
 */
export const SLOWDOWN = Math.max(1, Number(process.env.USERFAULTFD_TEST_SLOWDOWN) || 1);

export interface TouchResult {
  ok: boolean;
  mismatches: number;
  firstMismatch: number;
  sum: number;
  touched: number;
}

export interface TouchOptions {
  address: bigint;
  length: number;
  pageSize?: number;
  order?: number[];
  write?: boolean;
  expected?: SharedArrayBuffer;
  /** Busy work after each page, in µs (a reader that computes as it goes). */
  paceUs?: number;
}

/** Starts a worker that touches the range (see fixtures/toucher.cjs) and resolves with its report. */
export function touch(options: TouchOptions): { worker: Worker; result: Promise<TouchResult> } {
  const worker = new Worker(path.join(__dirname, 'fixtures', 'toucher.cjs'), {
    workerData: { pageSize: PAGE, ...options },
  });
  const result = new Promise<TouchResult>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`toucher exited with ${code} before reporting`)));
  });
  return { worker, result };
}

/** A SharedArrayBuffer whose every byte depends on its offset and the seed, so misplaced pages show. */
export function pattern(length: number, seed = 1): SharedArrayBuffer {
  const shared = new SharedArrayBuffer(length);
  const bytes = new Uint8Array(shared);
  const words = new Uint32Array(shared, 0, length >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = Math.imul(i + 1, 2654435761) ^ seed;
  for (let i = words.length * 4; i < length; i++) bytes[i] = i ^ seed;
  return shared;
}

/** Fisher-Yates with a seeded generator, so failures reproduce. */
export function shuffled(count: number, seed = 42): number[] {
  const order = Array.from({ length: count }, (_, i) => i);
  let state = seed >>> 0;
  for (let i = count - 1; i > 0; i--) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const j = state % (i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

/** Where the kernel has a thread waiting (as root: the function name; '0' while it runs). */
export function wchan(tid: number): string {
  return fs.readFileSync(`/proc/self/task/${tid}/wchan`, 'utf8');
}

/** Resolves once `count` threads of this process sleep in handle_userfault; throws after timeoutMs. */
export async function threadsWaitingOnFaults(count: number, timeoutMs = 10_000 * SLOWDOWN): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let waiting = 0;
    for (const tid of fs.readdirSync('/proc/self/task')) {
      try {
        if (wchan(Number(tid)) === 'handle_userfault') waiting++;
      } catch {
        // The thread exited meanwhile.
      }
    }
    if (waiting >= count) return;
    if (Date.now() > deadline) throw new Error(`only ${waiting} of ${count} threads reached handle_userfault in ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/**
 * Resolves once thread `tid` sleeps in the kernel's userfault handler. A fault
 * message is queued before its thread goes to sleep, so a resolution that
 * must find it asleep (DONTWAKE tests) waits for this first. Bounded: 10 s (times SLOWDOWN).
 */
export async function asleepInFault(tid: number): Promise<void> {
  const deadline = Date.now() + 10_000 * SLOWDOWN;
  while (wchan(tid) !== 'handle_userfault') {
    if (Date.now() > deadline) throw new Error(`thread ${tid} never slept in handle_userfault (wchan ${wchan(tid)})`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

export function pageOf(shared: SharedArrayBuffer, offset: number, length = PAGE): Uint8Array {
  return new Uint8Array(shared, offset, length);
}

/**
 * A fresh uffd with an anonymous mapping of `pages` pages registered MISSING.
 * Both are released after the current test (the uffd first, so that no
 * handler thread outlives the memory it serves).
 */
export function registeredAnonymous(pages: number): { uffd: Userfaultfd; mapping: Mapping } {
  const mapping = Mapping.anonymous(pages * PAGE);
  const uffd = Userfaultfd.open();
  onTestFinished(() => {
    uffd.close();
    mapping.unmap();
  });
  uffd.register(mapping, { missing: true });
  return { uffd, mapping };
}

/** How many userfaultfd descriptors this process holds open now. */
export function uffdFds(): number {
  return fs.readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[userfaultfd]';
    } catch {
      return false; // the directory's own descriptor, closed by now
    }
  }).length;
}
