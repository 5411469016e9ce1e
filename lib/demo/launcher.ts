// What the demo's launcher does for both demos (a process's memory, and a
// VM's): start the source and destination processes, wait for the source,
// draw a destination's progress, and format the summary's numbers.
import { fork, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import cliProgress from 'cli-progress';
import type { Progress } from './messages';

export const MiB = 1 << 20;

const children = new Set<ChildProcess>();
/** Forks lib/demo/<script> with spec as its argument; killed with the launcher. */
export function start(script: string, spec: object): ChildProcess {
  const child = fork(path.join(__dirname, script), [JSON.stringify(spec)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}
export function killAll(): void {
  for (const child of children) child.kill('SIGKILL');
}
process.once('SIGINT', () => {
  killAll();
  process.exit(130);
});

export function ms(value: number): string {
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${value.toFixed(value < 10 ? 2 : 0)} ms`;
}
export function us(value: number): string {
  return value >= 1000 ? `${(value / 1000).toFixed(1)} ms` : `${Math.round(value)} µs`;
}
export function count(value: number): string {
  return value.toLocaleString('en-US');
}

/** Resolves with the source's 'ready' message; rejects if it fails or exits first. */
export function sourceReady<M extends { type: string; message?: string }>(child: ChildProcess): Promise<M & { type: 'ready' }> {
  return new Promise((resolve, reject) => {
    child.on('message', (message: M) => {
      if (message.type === 'ready') resolve(message as M & { type: 'ready' });
      else if (message.type === 'failed') reject(new Error(`the source failed: ${message.message}`));
    });
    child.once('exit', (code, signal) => reject(new Error(`the source exited (${signal ?? code}) before it was ready`)));
  });
}

type DestinationMessage<R> =
  | { type: 'progress'; progress: Progress }
  | { type: 'done'; report: R & { progress: Progress } }
  | { type: 'failed'; code: string; message: string; progress: Progress };

/** Runs one destination (lib/demo/<script>), drawing its progress; resolves with its report. */
export function migrate<R>(label: string, script: string, spec: object, onProgress?: (progress: Progress) => void): Promise<R> {
  const tty = process.stdout.isTTY === true;
  const bar = new cliProgress.SingleBar({
    format: `${label.padEnd(13)} |{bar}| {percentage}% | {mib} MiB | demand {demand} pushed {pushed} pages | {rate} MB/s | fault p50 {p50} p99 {p99}`,
    barsize: 24,
    hideCursor: tty,
    stream: process.stdout,
    // CI logs: a line a second instead of redrawing.
    noTTYOutput: true,
    notTTYSchedule: 1000,
    etaBuffer: 20,
  }, cliProgress.Presets.shades_classic);
  let last: Progress | undefined;
  const payload = (p: Progress): object => {
    const rate = last && p.elapsedMs > last.elapsedMs ? (p.bytes - last.bytes) / (p.elapsedMs - last.elapsedMs) / 1000 : 0;
    last = p;
    return {
      mib: `${(p.installed * p.pageSize / MiB).toFixed(0)}/${(p.pages * p.pageSize / MiB).toFixed(0)}`,
      demand: count(p.pagesOnDemand), pushed: count(p.pagesPushed), rate: rate.toFixed(0),
      p50: p.faults === 0 ? '-' : us(p.faultP50Us), p99: p.faults === 0 ? '-' : us(p.faultP99Us),
    };
  };
  let started = false;
  return new Promise((resolve, reject) => {
    const child = start(script, spec);
    child.on('message', (message: DestinationMessage<R>) => {
      if (message.type === 'progress') {
        onProgress?.(message.progress);
        if (!started) {
          bar.start(message.progress.pages, 0, payload(message.progress));
          started = true;
        } else if (bar.isActive) {
          bar.update(message.progress.installed, payload(message.progress));
          // Every page is in place: the rest (the workload, the hash) needs no bar.
          if (message.progress.installed === message.progress.pages) bar.stop();
        }
      } else if (message.type === 'done') {
        if (bar.isActive) {
          bar.update(message.report.progress.installed, payload(message.report.progress));
          bar.stop();
        }
        resolve(message.report);
      } else {
        if (started) bar.stop();
        reject(Object.assign(new Error(`${label}: the destination failed: ${message.message}`), { code: message.code, progress: message.progress }));
      }
    });
    child.once('exit', (code, signal) => {
      if (started) bar.stop();
      reject(new Error(`${label}: the destination exited (${signal ?? `code ${code}`}) without a report`));
    });
  });
}
