// Helpers for the Firecracker-protocol tests: a snapshot memory file, the C
// peer (fixtures/fc_peer.c, which plays Firecracker's side of the protocol in
// its own process), and page sources whose fetches the test controls.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { onTestFinished } from 'vitest';
import { FilePageSource, type FetchOptions, type PageSource } from '../dist/index.js';
import { pattern } from './helpers';
import { fixture } from './native-fixtures';

export interface Scratch {
  dir: string;
  socket: string;
  memFile: string;
  remove(): void;
}

/** A temporary directory with a socket path and a memory file of `bytes` patterned bytes. */
export function scratch(bytes: number, seed = 7): Scratch {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-fc-'));
  const memFile = path.join(dir, 'mem.snap');
  fs.writeFileSync(memFile, new Uint8Array(pattern(bytes, seed)));
  return { dir, socket: path.join(dir, 'uffd.sock'), memFile, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

export interface PeerReport {
  ok: boolean;
  pages: number;
  mismatches: number;
  firstMismatch: number;
  removed: number;
  removedZero: number;
  pageSize: number;
  malformed?: string;
  closedByHandler?: boolean;
  paused?: number;
  churned?: number;
  churnedNonZero?: number;
  /** --remap-pending: the handshake was sent (the peer waits for SIGUSR1), and the faulting page was remapped. */
  handshake?: number;
  remapped?: number;
}

export interface RunningPeer {
  child: ChildProcess;
  /** Every JSON line the peer printed so far. */
  lines: PeerReport[];
  /** Resolves with the first line that satisfies `test` (rejects if the peer exits first). */
  line(test: (report: PeerReport) => boolean): Promise<PeerReport>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; report: PeerReport | undefined; stderr: string }>;
}

/** Starts fc_peer with these arguments (--socket and --mem-file given by the caller). */
export function startFcPeer(args: string[]): RunningPeer {
  const child = spawn(fixture('fc_peer'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  // A peer paused (--pause-after) waits to be killed: never leave one behind, even when the test fails.
  onTestFinished(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const lines: PeerReport[] = [];
  const watchers: { test: (r: PeerReport) => boolean; resolve: (r: PeerReport) => void }[] = [];
  let buffered = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    let at;
    while ((at = buffered.indexOf('\n')) >= 0) {
      const report = JSON.parse(buffered.slice(0, at)) as PeerReport;
      buffered = buffered.slice(at + 1);
      lines.push(report);
      for (const w of watchers.splice(0)) {
        if (w.test(report)) w.resolve(report);
        else watchers.push(w);
      }
    }
  });
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; report: PeerReport | undefined; stderr: string }>((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal, report: lines.at(-1), stderr }));
  });
  return {
    child, lines, exited,
    line: (test) => {
      const found = lines.find(test);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        watchers.push({ test, resolve });
        void exited.then(({ code, signal }) => reject(new Error(`fc_peer exited (${code ?? signal}) before printing the line awaited; stderr: ${stderr}`)));
      });
    },
  };
}

/**
 * The memory file behind `present` flags that start at 0: every fault must
 * fetch first. Urgent fetches complete at once unless their page is held;
 * background (non-urgent) fetches wait until release() unless `background`
 * is 'immediate'. fail(page) makes that page's fetches reject.
 */
export class GatedSource implements PageSource {
  readonly size: number;
  readonly pageSize: number;
  readonly bytes: Uint8Array;
  readonly present: Uint8Array;
  readonly urgentFetches: number[] = [];
  backgroundFetches = 0;
  readonly #file: FilePageSource;
  readonly #held = new Map<number, { promise: Promise<void>; release: () => void }>();
  readonly #failing = new Set<number>();
  #backgroundGate: Promise<void>;
  #openBackground!: () => void;
  #waiting: { page: number; resolve: () => void }[] = [];

  constructor(memFile: string, options: { background?: 'held' | 'immediate' } = {}) {
    this.#file = new FilePageSource(memFile);
    this.size = this.#file.size;
    this.pageSize = this.#file.pageSize;
    this.bytes = this.#file.bytes;
    this.present = new Uint8Array(this.size / this.pageSize);
    this.#backgroundGate = options.background === 'immediate' ? Promise.resolve() : new Promise((resolve) => (this.#openBackground = resolve));
  }

  /** Holds urgent fetches of this page until the returned function is called. */
  hold(page: number): () => void {
    let release!: () => void;
    const promise = new Promise<void>((resolve) => (release = resolve));
    this.#held.set(page, { promise, release });
    return () => {
      this.#held.delete(page);
      release();
    };
  }

  fail(page: number): void {
    this.#failing.add(page);
  }

  releaseBackground(): void {
    this.#openBackground?.();
  }

  /** Resolves once an urgent fetch of this page has begun. */
  requested(page: number): Promise<void> {
    if (this.urgentFetches.includes(page)) return Promise.resolve();
    return new Promise((resolve) => this.#waiting.push({ page, resolve }));
  }

  async fetch(offset: number, length: number, options?: FetchOptions): Promise<void> {
    const first = offset / this.pageSize;
    const end = (offset + length) / this.pageSize;
    if (options?.urgent) {
      this.urgentFetches.push(first);
      for (const w of this.#waiting.filter((w) => w.page === first)) w.resolve();
      this.#waiting = this.#waiting.filter((w) => w.page !== first);
      const held = this.#held.get(first);
      if (held) await held.promise;
    } else {
      this.backgroundFetches++;
      await this.#backgroundGate;
    }
    for (let page = first; page < end; page++) {
      if (this.#failing.has(page)) throw Object.assign(new Error(`the test's source refuses page ${page}`), { code: 'ERR_TEST_SOURCE' });
    }
    // As PageSource requires: each flag with Atomics.store, after the bytes
    // (the native thread reads them with acquire loads while it serves).
    for (let page = first; page < end; page++) Atomics.store(this.present, page, 1);
  }

  close(): void {
    this.#file.close();
  }
}

/** Open descriptors of this process. */
export function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/**
 * A process's memory registered with a userfaultfd in missing mode (VmFlags
 * "um" in /proc/<pid>/smaps), and how much of it is resident, in bytes: what
 * the kernel itself says, whoever holds the uffd.
 */
export function uffdRegistered(pid: number): { size: number; resident: number } {
  const total = { size: 0, resident: 0 };
  for (const vma of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    if (!/^VmFlags:.* um\b/m.test(vma)) continue;
    total.size += Number(/^Size:\s+(\d+) kB/m.exec(vma)![1]) * 1024;
    total.resident += Number(/^Rss:\s+(\d+) kB/m.exec(vma)![1]) * 1024;
  }
  return total;
}
