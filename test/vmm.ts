// Runs the KVM VMM fixture (test/fixtures/vmm) as a child process and reads
// its JSON lines. Every wait is bounded: the VMM has its own watchdog
// (--timeout-s) and run() kills it past a deadline as well.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Memfd, Userfaultfd } from '../dist/index.js';

/** One JSON line of the VMM's stdout. */
export type VmmLine = Record<string, unknown>;

export interface VmmRun {
  pid: number;
  /** Resolves when the VMM has exited. */
  exited: Promise<VmmExit>;
  kill(signal?: NodeJS.Signals): void;
}

export interface VmmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  lines: VmmLine[];
  /** The last JSON line: the result ({"done":true,...}), a snapshot or an error. */
  last: VmmLine | undefined;
  stderr: string;
}

/**
 * Why the VM tests cannot run here, or undefined if they can: the fixture is
 * an x86-64 KVM VMM, and needs a /dev/kvm this process may open.
 */
export function kvmSkipReason(): string | undefined {
  if (process.arch !== 'x64') return `the VMM fixture is an x86-64 guest; this is ${process.arch}`;
  if (!fs.existsSync('/dev/kvm')) return 'no /dev/kvm on this machine (KVM needs bare metal or nested virtualization)';
  try {
    fs.closeSync(fs.openSync('/dev/kvm', 'r+'));
  } catch (error) {
    return `/dev/kvm cannot be opened: ${(error as Error).message}`;
  }
  return undefined;
}

/**
 * Why a lazy restore cannot run here: the VMM opens its uffd without
 * UFFD_USER_MODE_ONLY, because KVM's accesses to guest memory are
 * kernel-mode faults.
 */
export function kernelFaultUffdSkipReason(): string | undefined {
  try {
    Userfaultfd.open().close();
    return undefined;
  } catch (error) {
    return `a userfaultfd that receives kernel-mode faults cannot be opened: ${(error as Error).message}`;
  }
}

/** Why the VMM cannot back a guest with guest_memfd (MMAP | INIT_SHARED) here. */
export function guestMemfdSkipReason(): string | undefined {
  try {
    const memfd = Memfd.createGuestMemfd(4096);
    try {
      // Refused where the kernel has no GUEST_MEMFD_FLAG_MMAP.
      memfd.map().unmap();
    } finally {
      memfd.close();
    }
    return undefined;
  } catch (error) {
    return `no mappable guest_memfd on this kernel: ${(error as Error).message}`;
  }
}

/**
 * Starts `vmm args...`. onLine sees each JSON line as it arrives (for
 * example to kill the VMM at a point of its run). Past timeoutMs the VMM is
 * killed with SIGKILL; its own --timeout-s should fire long before.
 */
export function startVmm(binary: string, args: string[], options: { onLine?: (line: VmmLine) => void; timeoutMs?: number } = {}): VmmRun {
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: VmmLine[] = [];
  let stderr = '';
  let partial = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    partial += chunk;
    let newline: number;
    while ((newline = partial.indexOf('\n')) >= 0) {
      const text = partial.slice(0, newline);
      partial = partial.slice(newline + 1);
      let line: VmmLine;
      try {
        line = JSON.parse(text) as VmmLine;
      } catch {
        line = { unparsed: text };
      }
      lines.push(line);
      options.onLine?.(line);
    }
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => (stderr += chunk));
  const deadline = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 90_000);
  const exited = new Promise<VmmExit>((resolve, reject) => {
    child.once('error', reject);
    // 'close': the process has exited and its stdout and stderr are drained.
    child.once('close', (code, signal) => {
      clearTimeout(deadline);
      resolve({ code, signal, lines, last: lines.at(-1), stderr });
    });
  });
  return { pid: child.pid!, exited, kill: (signal = 'SIGKILL') => void child.kill(signal) };
}

export function runVmm(binary: string, args: string[], timeoutMs?: number): Promise<VmmExit> {
  return startVmm(binary, args, { timeoutMs }).exited;
}

/** Describes a run for an assertion message. */
export function describeExit(exit: VmmExit): string {
  return `exit ${exit.code ?? exit.signal}, last line ${JSON.stringify(exit.last)}, stderr ${JSON.stringify(exit.stderr.trim())}`;
}

/** What the snapshot handler did for one VMM (the serve command's summary of it). */
export interface PeerServed {
  pid: number;
  /** How the session ended: 'exited', 'hangup', 'failed' or 'closed'. */
  end: string;
  faults: number;
  /** Pages made present for faults from the memory file. */
  pagesOnDemand: number;
  /** Pages pushed ahead of any fault (--prefetch). */
  pagesPushed: number;
  /** Pages the balloon removed, answered with zeros afterwards. */
  zeroPages: number;
  /** UFFD_EVENT_REMOVE events. */
  removes: number;
  eexist: number;
  /** Why faults were left unserved (ESRCH: the VMM died with a fault in flight). */
  error?: string;
}

export interface SnapshotHandler {
  /** Resolves with the summary the handler printed when this VMM's session ended. */
  served(pid: number): Promise<PeerServed>;
  /** Lines about refused handshakes. */
  refused: unknown[];
  /** VMMs connected and not yet ended. */
  readonly active: number;
  /** Resolves when the command has exited (by itself after `peers` VMMs, or after close()). */
  exited: Promise<ServeExit>;
  /** Stops the command (SIGTERM) if it still runs, and resolves with its exit. */
  close(): Promise<ServeExit>;
}

export interface ServeExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/**
 * `userfaultfd serve --socket PATH --mem-file FILE --json --peers N`, the
 * library's Firecracker-compatible page-fault handler, as a child process:
 * it serves every VMM that connects, and exits by itself once `peers` of them
 * have gone (0, the default: until close()). Resolves once it listens.
 */
export async function serveSnapshot(socketPath: string, memFile: string, options: { prefetch?: boolean; peers?: number } = {}): Promise<SnapshotHandler> {
  const cli = path.join(__dirname, '..', 'dist', 'cli.js');
  const child = spawn(process.execPath, [cli, 'serve', '--socket', socketPath, '--mem-file', memFile, '--json', '--peers', String(options.peers ?? 0),
    ...(options.prefetch ? ['--prefetch'] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  const refused: unknown[] = [];
  const ended = new Map<number, PeerServed>();
  const waiting = new Map<number, (served: PeerServed) => void>();
  const sessions = new Set<number>();
  let stderr = '';
  let partial = '';
  let onListening!: () => void;
  const listening = new Promise<void>((resolve) => (onListening = resolve));
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => (stderr += chunk));
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    partial += chunk;
    let newline: number;
    while ((newline = partial.indexOf('\n')) >= 0) {
      const line = JSON.parse(partial.slice(0, newline)) as Record<string, unknown> & { event: string; pid: number };
      partial = partial.slice(newline + 1);
      if (line.event === 'listening') onListening();
      else if (line.event === 'session') sessions.add(line.pid);
      else if (line.event === 'refused') refused.push(line);
      else if (line.event === 'end') {
        sessions.delete(line.pid);
        const served = line as unknown as PeerServed;
        ended.set(line.pid, served);
        waiting.get(line.pid)?.(served);
      }
    }
  });
  let running = true;
  const exited = new Promise<ServeExit>((resolve) => child.once('close', (code, signal) => {
    running = false;
    resolve({ code, signal, stderr });
  }));
  await Promise.race([listening, exited.then((exit) => {
    throw new Error(`userfaultfd serve exited before listening: ${exit.code ?? exit.signal}: ${exit.stderr}`);
  })]);
  return {
    served: (pid) => new Promise<PeerServed>((resolve) => {
      const known = ended.get(pid);
      if (known) resolve(known);
      else waiting.set(pid, resolve);
    }),
    refused,
    get active() {
      return sessions.size;
    },
    exited,
    close() {
      if (running) child.kill('SIGTERM');
      return exited;
    },
  };
}
