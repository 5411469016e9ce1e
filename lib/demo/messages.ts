// What the demo's processes tell the launcher over their IPC channels.
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
