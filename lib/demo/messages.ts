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
  /** Post-copy: time the workload's thread spent blocked on faults. Stop-and-copy: the copy, before the workload could start. */
  downtimeMs: number;
  /** From connecting until the workload could start (the hello, or the whole copy). */
  switchoverMs: number;
  /** Until every page was in place. */
  transferMs: number;
  workloadMs: number;
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
