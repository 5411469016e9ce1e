// Runs the KVM VMM fixture (test/fixtures/vmm) as a child process and reads
// its JSON lines. Every wait is bounded: the VMM has its own watchdog
// (--timeout-s) and run() kills it past a deadline as well.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { Memfd, UnixServer, Userfaultfd, type UffdError, type UnixConnection } from '../dist/index.js';

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
    Memfd.createGuestMemfd(4096).close();
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

/** What the snapshot handler did for one VMM. */
export interface PeerServed {
  pid: number;
  faults: number;
  /** Pages copied from the memory file on demand. */
  copies: number;
  /** Faults on ballooned pages, answered with zeros. */
  zeroFills: number;
  /** Pages pushed ahead of any fault (prefetch). */
  pushed: number;
  /** UFFD_EVENT_REMOVE events. */
  removes: number;
  eexist: number;
  /** The first error serving this VMM (ESRCH: it died with a fault in flight). */
  error?: UffdError;
}

export interface SnapshotHandler {
  /** Resolves when the VMM with this pid has hung up and its uffd is closed. */
  served(pid: number): Promise<PeerServed>;
  /** Handshakes that were refused. */
  refused: unknown[];
  /** VMMs connected and not yet hung up. */
  readonly active: number;
  close(): void;
}

interface Region { base: bigint; size: number; offset: number }

/**
 * A Firecracker-protocol page-fault handler built on the library's own API:
 * one Unix socket, one handshake per VMM (a JSON array of regions plus the
 * uffd by SCM_RIGHTS), every fault served with UFFDIO_COPY from memFile,
 * ballooned pages (UFFD_EVENT_REMOVE) answered with zeros afterwards.
 * The tests use it until the library's `serve` command handles these VMMs.
 */
export function serveSnapshot(socketPath: string, memFile: string, options: { prefetch?: boolean } = {}): SnapshotHandler {
  const source = fs.readFileSync(memFile);
  const server = UnixServer.listen(socketPath);
  const refused: unknown[] = [];
  const results = new Map<number, Promise<PeerServed>>();
  const waiting = new Map<number, (result: Promise<PeerServed>) => void>();
  const connections = new Set<UnixConnection>();

  const servePeer = async (connection: UnixConnection): Promise<PeerServed> => {
    const message = await connection.receive({ timeoutMs: 10_000 });
    if (!message || message.fds.length !== 1) throw new Error(`bad handshake: ${message ? `${message.fds.length} descriptors` : 'nothing'}`);
    const regions = (JSON.parse(message.data.toString('utf8')) as { base_host_virt_addr: number; size: number; offset: number; page_size: number }[])
      .map((r): Region => ({ base: BigInt(r.base_host_virt_addr), size: r.size, offset: r.offset }));
    const page = 4096;
    const stats: PeerServed = { pid: connection.peer.pid, faults: 0, copies: 0, zeroFills: 0, pushed: 0, removes: 0, eexist: 0 };
    // Per page: 0 missing, 1 present, 2 removed by the balloon.
    const states = regions.map((r) => new Uint8Array(r.size / page));
    const locate = (address: bigint): [Region, Uint8Array, number] => {
      const i = regions.findIndex((r) => address >= r.base && address < r.base + BigInt(r.size));
      if (i < 0) throw new Error(`fault at 0x${address.toString(16)} outside every region`);
      return [regions[i]!, states[i]!, Number(address - regions[i]!.base) / page];
    };
    const uffd = Userfaultfd.fromFd(message.fds[0]!, {
      features: ['EVENT_REMOVE'],
      ranges: regions.map((r) => ({ address: r.base, length: r.size, pageSize: page })),
    });
    let pushing = false;
    const push = (): void => {
      for (let i = 0; i < regions.length; i++) {
        const index = states[i]!.indexOf(0);
        if (index < 0) continue;
        const region = regions[i]!;
        try {
          uffd.copy(region.base + BigInt(index * page), source.subarray(region.offset + index * page, region.offset + (index + 1) * page), { dontWake: true });
          stats.pushed++;
        } catch (error) {
          if ((error as UffdError).code === 'EEXIST') stats.eexist++;
          else if ((error as UffdError).code !== 'EAGAIN') return void (stats.error ??= error as UffdError);
          else return void setImmediate(push); // an event is pending: read it first
        }
        states[i]![index] = 1;
        return void setImmediate(push);
      }
    };
    const served = uffd.serve((fault) => {
      stats.faults++;
      const [region, state, index] = locate(fault.pageAddress);
      const outcome = state[index] === 2
        ? (stats.zeroFills++, fault.zero())
        : (stats.copies++, fault.copy(source.subarray(region.offset + index * page, region.offset + (index + 1) * page)));
      if (outcome === 'exists') stats.eexist++;
      state[index] = 1;
      if (options.prefetch && !pushing && !uffd.closed) {
        pushing = true;
        setImmediate(push);
      }
    }, {
      onEvent: (event) => {
        if (event.type !== 'remove') return;
        stats.removes++;
        for (let address = event.start; address < event.end; address += BigInt(page)) {
          const [, state, index] = locate(address);
          state[index] = 2;
        }
      },
      onError: (error) => void (stats.error ??= error as UffdError),
    });
    // The VMM keeps the socket open until it exits, killed or not.
    await Promise.race([connection.waitEnd(), served]);
    uffd.close();
    connection.close();
    return stats;
  };

  void (async () => {
    for await (const connection of server.connections()) {
      connections.add(connection);
      const pid = connection.peer.pid;
      const result = servePeer(connection).finally(() => connections.delete(connection));
      result.catch((error: unknown) => refused.push(error));
      results.set(pid, result);
      waiting.get(pid)?.(result);
    }
  })();

  return {
    served: (pid) => new Promise<PeerServed>((resolve, reject) => {
      const known = results.get(pid);
      if (known) return void known.then(resolve, reject);
      waiting.set(pid, (result) => void result.then(resolve, reject));
    }),
    refused,
    get active() {
      return connections.size;
    },
    close() {
      server.close();
      for (const connection of connections) connection.close();
    },
  };
}
