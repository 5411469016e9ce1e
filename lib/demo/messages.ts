// What the demo's processes tell the launcher over their IPC channels.
import { performance } from 'node:perf_hooks';
import { PostcopyClient, type PostcopyDestination } from '../index';
import type { Layout, WorkloadResult } from './image';

export interface SourceSpec {
  size: number;
  seed: number;
  bandwidth: number;
  latencyMs: number;
}

export type SourceMessage =
  | { type: 'ready'; port: number; layout: Layout; result: WorkloadResult; hash: string; generateMs: number; workloadMs: number; hashMs: number }
  | { type: 'session'; stats: { requests: number; pagesOnDemand: number; pagesPushed: number; bytesSent: number }; error: string | undefined }
  | { type: 'failed'; message: string };

export interface DestinationSpec {
  port: number;
  mode: 'postcopy' | 'stop-and-copy';
  prefetch: boolean;
  readAhead: number;
  seed: number;
}

export interface Progress {
  pages: number;
  pageSize: number;
  /** Pages in the destination's cache, and (post-copy) in its registered memory. */
  present: number;
  installed: number;
  pagesOnDemand: number;
  pagesPushed: number;
  bytes: number;
  elapsedMs: number;
  faults: number;
  faultP50Us: number;
  faultP99Us: number;
  blockedMs: number;
}

const PROGRESS_INTERVAL_MS = 200;

/**
 * How both demos' destinations begin: the clock and CPU time at the start,
 * the client connected to the source (which pushes every page in
 * stop-and-copy mode, and with --prefetch), and a progress report every
 * 200 ms until `ticker` is cleared. `destination` is read at each report.
 */
export async function connectDestination(
  spec: Pick<DestinationSpec, 'port' | 'mode' | 'prefetch'>,
  send: (message: { type: 'progress'; progress: Progress }) => void,
  destination: () => PostcopyDestination | undefined,
): Promise<{ start: number; cpuAtStart: NodeJS.CpuUsage; client: PostcopyClient; progress: () => Progress; ticker: NodeJS.Timeout }> {
  const start = performance.now();
  const cpuAtStart = process.cpuUsage();
  const client = await PostcopyClient.connect({ port: spec.port, prefetch: spec.prefetch || spec.mode === 'stop-and-copy', verify: false });
  const progress = (): Progress => progressOf(client, destination(), start);
  const ticker = setInterval(() => send({ type: 'progress', progress: progress() }), PROGRESS_INTERVAL_MS);
  return { start, cpuAtStart, client, progress, ticker };
}

/** A destination's progress since startMs (performance.now()), as both demos report it. */
export function progressOf(client: PostcopyClient, destination: PostcopyDestination | undefined, startMs: number): Progress {
  const latency = destination?.stats.latency;
  return {
    pages: client.pageCount, pageSize: client.pageSize, present: client.presentCount, installed: destination?.installedCount ?? client.presentCount,
    pagesOnDemand: client.stats.pagesOnDemand, pagesPushed: client.stats.pagesPushed, bytes: client.stats.bytesReceived,
    elapsedMs: performance.now() - startMs, faults: destination?.stats.faults ?? 0,
    faultP50Us: latency?.percentile(50) ?? 0, faultP99Us: latency?.percentile(99) ?? 0, blockedMs: destination?.stats.blockedMs ?? 0,
  };
}

export interface DestinationReport {
  mode: DestinationSpec['mode'];
  result: WorkloadResult;
  hash: string;
  /** From connecting to the source until the workload is done and every page is in place. */
  totalMs: number;
  /**
   * Post-copy: time the workload's thread spent blocked on faults (asleepMs, or
   * handlerBlockedMs without schedstat). Stop-and-copy: the copy, before the workload could start.
   */
  downtimeMs: number;
  /** Post-copy: for each fault, from its read by the handler to its page being in place, summed. */
  handlerBlockedMs: number;
  /** From connecting until the workload could start (the hello, or the whole copy). */
  switchoverMs: number;
  /** Until every page was in place. */
  transferMs: number;
  workloadMs: number;
  /**
   * The workload thread's wall time neither on a CPU nor waiting for one
   * (/proc/thread-self/schedstat): asleep in the kernel, on page faults.
   * A cross-check of downtimeMs that includes the kernel's side. null without schedstat.
   */
  asleepMs: number | null;
  /** CPU time of the destination process (all threads, user + system) until the workload was done and every page in place. */
  cpuMs: number;
  progress: Progress;
  blockedMsByThread: [number, number][];
  faultsFetched: number;
  faultP50Us: number;
  faultP99Us: number;
  faultMaxUs: number;
}

export type DestinationMessage =
  | { type: 'progress'; progress: Progress }
  | { type: 'done'; report: DestinationReport }
  | { type: 'failed'; code: string; message: string; progress: Progress };

// `npm run demo -- --vm`: the same migration, with a vCPU of the project's
// KVM VMM (test/fixtures/vmm) as the workload.

/** The VMM's result line ({"done":true,...}; see the fixture's README). */
export interface GuestResult {
  /** Chain pages the guest visited (passes x chain length, from boot). */
  pages: number;
  /** The guest's FNV-1a hash over everything it read. */
  hash: string;
  /** The host's computation of that hash from the seed (--verify), and whether they agree. */
  expectedHash: string;
  verified: boolean;
  /** From the VMM's first KVM_RUN to the guest's last report. */
  seconds: number;
  /** The vCPU thread's wall time neither on a CPU nor waiting for one (schedstat): blocked on faults. Absent without schedstat. */
  asleepSeconds?: number;
  exits: number;
}

export interface VmSourceSpec {
  vmm: string;
  dir: string;
  size: number;
  seed: number;
  passes: number;
  snapshotAfter: number;
  bandwidth: number;
  latencyMs: number;
  timeoutS: number;
}

/** The paused vCPU's state as the destination needs it: the snapshot's vcpu.bin and layout.json. */
export interface VcpuState {
  vcpu: string;
  layout: string;
}

export type VmSourceMessage =
  | { type: 'ready'; port: number; reference: GuestResult; referenceWallMs: number; ranMs: number; pausedAt: number; chainPages: number; state: VcpuState }
  | { type: 'failed'; message: string };

export interface VmDestinationSpec {
  vmm: string;
  dir: string;
  port: number;
  mode: DestinationSpec['mode'];
  prefetch: boolean;
  readAhead: number;
  timeoutS: number;
  state: VcpuState;
}

export interface VmDestinationReport {
  mode: DestinationSpec['mode'];
  guest: GuestResult;
  /** From connecting to the source until the guest was done (post-copy: and the last page in place or the VMM gone). */
  totalMs: number;
  /** From connecting until the vCPU could run: the state transfer (post-copy) or the whole copy (stop-and-copy). */
  switchoverMs: number;
  /** Post-copy: the vCPU's time blocked on faults (the VMM's asleepSeconds); stop-and-copy: the copy. */
  downtimeMs: number;
  /** Post-copy: for each fault that needed the network, from its read to its page in place, summed. */
  handlerBlockedMs: number;
  /** Until every page was in guest memory; null if the guest finished first (the pages it never reads are not needed). */
  transferMs: number | null;
  cpuMs: number;
  progress: Progress;
  faultsFetched: number;
  faultP50Us: number;
  faultP99Us: number;
  faultMaxUs: number;
}

export type VmDestinationMessage =
  | { type: 'progress'; progress: Progress }
  | { type: 'done'; report: VmDestinationReport }
  | { type: 'failed'; code: string; message: string; progress: Progress };
