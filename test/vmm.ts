// Runs the KVM VMM fixture (test/fixtures/vmm) for the VM tests. Starting
// it and reading its JSON lines is shared with the demo (lib/demo/vmm.ts);
// what is here is for tests only: skip reasons and the snapshot handler.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { Memfd, Userfaultfd } from '../dist/index.js';

export { describeExit, kvmSkipReason, runVmm, startVmm } from '../dist/demo/vmm.js';
export type { VmmExit, VmmLine, VmmRun } from '../dist/demo/vmm.js';

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
