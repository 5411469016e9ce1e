// The destination's workload: a worker thread that reaches the migrated
// memory by address (the main thread serves its faults, so it must never
// touch that memory itself). It runs the workload, reports, then on request
// hashes the whole memory (every page is there by then).
import fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { attachView } from '../index';
import { hashImage, runWorkload } from './image';

export interface WorkloadData {
  address: bigint;
  length: number;
  seed: number;
}

export type WorkloadMessage =
  | { type: 'result'; result: ReturnType<typeof runWorkload>; ms: number; asleepMs: number | null }
  | { type: 'hash'; hash: string; ms: number }
  | { type: 'error'; message: string };

/**
 * This thread's time on a CPU and waiting for one, in ms, from
 * /proc/thread-self/schedstat; null where the kernel does not keep it.
 */
function schedstat(): { cpuMs: number; queuedMs: number } | null {
  try {
    const [cpu, queued] = fs.readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ').map(Number);
    return { cpuMs: cpu! / 1e6, queuedMs: queued! / 1e6 };
  } catch {
    return null;
  }
}

const { address, length, seed } = workerData as WorkloadData;
const port = parentPort!;
const image = attachView(address, length);
try {
  const before = schedstat();
  const start = performance.now();
  const result = runWorkload(image, seed);
  const ms = performance.now() - start;
  const after = schedstat();
  // The rest of the wall time this thread was asleep: in the kernel, waiting for its page faults.
  const asleepMs = before && after ? Math.max(0, ms - (after.cpuMs - before.cpuMs) - (after.queuedMs - before.queuedMs)) : null;
  port.postMessage({ type: 'result', result, ms, asleepMs } satisfies WorkloadMessage);
} catch (error) {
  port.postMessage({ type: 'error', message: (error as Error).message } satisfies WorkloadMessage);
}
port.once('message', () => {
  const start = performance.now();
  port.postMessage({ type: 'hash', hash: hashImage(image), ms: performance.now() - start } satisfies WorkloadMessage);
  port.close();
});
