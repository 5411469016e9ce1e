// The faulting side of bench/remote.mjs: a worker thread that attaches to
// registered memory, reports that it is ready, waits for the go (a flag in
// shared memory, so that its start-up is not timed), touches one byte of each
// page in the given order, notes the (absolute) time it finished, then checks
// the pages against the image.
const { parentPort, workerData } = require('node:worker_threads');
const { attachView } = require('../dist/index.js');

const { address, length, pageSize, order, expected, go } = workerData;
const view = attachView(address, length);
const flag = new Int32Array(go);
parentPort.postMessage('ready');
// Bounded: the bench gives the go within seconds of 'ready'.
if (Atomics.wait(flag, 0, 0, 60_000) === 'timed-out') throw new Error('no go within 60 s');
const startedAt = performance.timeOrigin + performance.now();
let sum = 0;
for (let i = 0; i < order.length; i++) sum += view[order[i] * pageSize];
const finishedAt = performance.timeOrigin + performance.now();
let ok = true;
if (expected) {
  // Only the pages touched are certain to be there (without background fill).
  const image = new Uint8Array(expected);
  for (let i = 0; i < order.length && ok; i++) {
    const at = order[i] * pageSize;
    ok = Buffer.compare(view.subarray(at, at + pageSize), image.subarray(at, at + pageSize)) === 0;
  }
}
parentPort.postMessage({ startedAt, finishedAt, ok, sum });
