// The destination's workload: a worker thread that reaches the migrated
// memory by address (the main thread serves its faults, so it must never
// touch that memory itself). It runs the workload, reports, then on request
// hashes the whole memory (every page is there by then).
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
  | { type: 'result'; result: ReturnType<typeof runWorkload>; ms: number }
  | { type: 'hash'; hash: string; ms: number }
  | { type: 'error'; message: string };

const { address, length, seed } = workerData as WorkloadData;
const port = parentPort!;
const image = attachView(address, length);
try {
  const start = performance.now();
  const result = runWorkload(image, seed);
  port.postMessage({ type: 'result', result, ms: performance.now() - start } satisfies WorkloadMessage);
} catch (error) {
  port.postMessage({ type: 'error', message: (error as Error).message } satisfies WorkloadMessage);
}
port.once('message', () => {
  const start = performance.now();
  port.postMessage({ type: 'hash', hash: hashImage(image), ms: performance.now() - start } satisfies WorkloadMessage);
  port.close();
});
