// The demo's destination process. Post-copy: connect to the source, register
// empty memory, start the workload on it at once (a worker thread), serve its
// faults from the source and install pushed pages as they land. Stop-and-copy:
// receive every page first, then start the same workload on them. Either way,
// hash the memory at the end and report to the launcher.
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { Mapping, PostcopyDestination, Userfaultfd, type UffdError } from '../index';
import { connectDestination, type DestinationMessage, type DestinationReport, type DestinationSpec } from './messages';
import type { WorkloadData, WorkloadMessage } from './workload-worker';

const spec = JSON.parse(process.argv[2]!) as DestinationSpec;
const send = (message: DestinationMessage): void => void process.send!(message);

/** Starts the workload on [address, address + length) and returns its two answers. */
function startWorkload(address: bigint, length: number): { worker: Worker; result: Promise<WorkloadMessage & { type: 'result' }>; hash: () => Promise<WorkloadMessage & { type: 'hash' }> } {
  const worker = new Worker(path.join(__dirname, 'workload-worker.js'), { workerData: { address, length, seed: spec.seed } satisfies WorkloadData });
  const messages: WorkloadMessage[] = [];
  const waiting: ((message: WorkloadMessage) => void)[] = [];
  let failure: Error | undefined;
  const rejecters: ((error: Error) => void)[] = [];
  worker.on('message', (message: WorkloadMessage) => {
    const next = waiting.shift();
    if (next) next(message);
    else messages.push(message);
  });
  const fail = (error: Error): void => {
    failure ??= error;
    for (const reject of rejecters.splice(0)) reject(error);
  };
  worker.on('error', fail);
  worker.on('exit', (code) => fail(new Error(`the workload's thread exited (code ${code}) before answering`)));
  const nextMessage = (): Promise<WorkloadMessage> => new Promise((resolve, reject) => {
    const ready = messages.shift();
    if (ready) return resolve(ready);
    if (failure) return reject(failure);
    waiting.push(resolve);
    rejecters.push(reject);
  });
  const expect = async <T extends WorkloadMessage['type']>(type: T): Promise<WorkloadMessage & { type: T }> => {
    const message = await nextMessage();
    if (message.type === 'error') throw new Error(`the workload failed: ${message.message}`);
    if (message.type !== type) throw new Error(`the workload answered ${message.type}, not ${type}`);
    return message as WorkloadMessage & { type: T };
  };
  return {
    worker,
    result: expect('result'),
    hash: () => {
      worker.postMessage('hash');
      return expect('hash');
    },
  };
}

async function main(): Promise<void> {
  let destination: PostcopyDestination | undefined;
  let uffd: Userfaultfd | undefined;
  const { start, cpuAtStart, client, progress, ticker } = await connectDestination(spec, send, () => destination);
  let workload: ReturnType<typeof startWorkload> | undefined;
  const stop = (error: UffdError): never => {
    clearInterval(ticker);
    send({ type: 'failed', code: error.code, message: error.message, progress: progress() });
    // The pages that never came were filled with zeros so nobody waits for them;
    // closing the uffd wakes anything still waiting, and the workload is stopped.
    uffd?.close();
    void workload?.worker.terminate();
    client.close();
    process.exitCode = 2;
    throw error;
  };

  let switchoverMs: number;
  let transferMs: number;
  let workloadDone: number;
  let result: WorkloadMessage & { type: 'result' };
  if (spec.mode === 'postcopy') {
    const memory = Mapping.anonymous(client.size);
    uffd = Userfaultfd.open({ features: ['THREAD_ID'] });
    uffd.register(memory, { missing: true });
    destination = new PostcopyDestination(uffd, memory, client, { readAhead: spec.readAhead });
    switchoverMs = performance.now() - start;
    workload = startWorkload(memory.address, memory.length);
    const failed = destination.complete.then(() => new Promise<never>(() => {}), (error: UffdError) => stop(error));
    result = await Promise.race([workload.result, failed]);
    workloadDone = performance.now();
    // Without prefetch nothing was pushed while the workload ran: the pages it
    // never touched are fetched now, in one request, so the memory can be compared.
    if (!spec.prefetch) client.fetch(0, client.size).catch(() => {});
    await Promise.race([destination.complete, failed]);
    transferMs = performance.now() - start;
  } else {
    await client.complete.catch((error: UffdError) => stop(error));
    transferMs = switchoverMs = performance.now() - start;
    workload = startWorkload(client.mapping.address, client.size);
    result = await workload.result;
    workloadDone = performance.now();
  }
  const totalMs = Math.max(workloadDone, start + transferMs) - start;
  const cpu = process.cpuUsage(cpuAtStart);
  clearInterval(ticker);
  const hashed = await workload.hash();
  const latency = destination?.stats.latency;
  const report: DestinationReport = {
    mode: spec.mode, result: result.result, hash: hashed.hash, totalMs, switchoverMs, transferMs, workloadMs: result.ms, asleepMs: result.asleepMs,
    cpuMs: (cpu.user + cpu.system) / 1000,
    // Post-copy: the workload thread's time asleep in the kernel, i.e. blocked on
    // its faults, from schedstat; the fault handler's own measure where there is none.
    downtimeMs: destination ? (result.asleepMs ?? destination.stats.blockedMs) : switchoverMs,
    handlerBlockedMs: destination?.stats.blockedMs ?? 0,
    progress: progress(),
    blockedMsByThread: [...(destination?.stats.blockedMsByThread ?? [])],
    faultsFetched: destination?.stats.faultsFetched ?? 0,
    faultP50Us: latency?.percentile(50) ?? 0, faultP99Us: latency?.percentile(99) ?? 0, faultMaxUs: latency?.maxUs ?? 0,
  };
  send({ type: 'done', report });
  await workload.worker.terminate();
  destination?.close();
  uffd?.close();
  client.close();
  process.disconnect();
}

main().catch((error: Error & { code?: string }) => {
  if (process.exitCode !== 2) {
    send({ type: 'failed', code: error.code ?? 'ERR_DEMO', message: error.message, progress: { pages: 0, pageSize: 0, present: 0, installed: 0, pagesOnDemand: 0, pagesPushed: 0, bytes: 0, elapsedMs: 0, faults: 0, faultP50Us: 0, faultP99Us: 0, blockedMs: 0 } });
    process.exitCode = 1;
  }
  process.disconnect();
});
