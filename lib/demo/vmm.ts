// The project's KVM VMM (test/fixtures/vmm, its README is the reference) as
// a child process: where it is, building it, whether this machine can run
// it, and its JSON lines. Used by `npm run demo -- --vm` and by the VM tests.
// Every wait is bounded: the VMM has its own watchdog (--timeout-s) and
// startVmm() kills it past a deadline as well.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

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

// The repository root, from dist/demo or lib/demo.
const ROOT = path.join(__dirname, '..', '..');
const FIXTURE_SOURCE = path.join(ROOT, 'test', 'fixtures', 'vmm');

/**
 * Why the VMM cannot run here, or undefined if it can: the fixture is an
 * x86-64 KVM VMM, and needs a /dev/kvm this process may open.
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
 * Builds `vmm` and `uffd_mini_handler` into `out` with the fixture's
 * Makefile (which knows what is stale). Warnings fail the build: the fixture
 * is meant to compile cleanly. The fixture's sources live in the repository
 * (test/fixtures/vmm), not in the published package.
 */
export function buildVmm(out: string = path.join(ROOT, 'build', 'fixtures', 'vmm')): { vmm: string; miniHandler: string } {
  if (!fs.existsSync(path.join(FIXTURE_SOURCE, 'vmm.c'))) {
    throw new Error(`the VMM fixture's sources are not here (${FIXTURE_SOURCE}): run this from a clone of the repository`);
  }
  const made = spawnSync('make', ['-s', '-C', FIXTURE_SOURCE, `OUT=${out}`], { encoding: 'utf8' });
  const output = `${made.stdout ?? ''}${made.stderr ?? ''}`.trim();
  if (made.error) throw made.error;
  if (made.status !== 0 || output) throw new Error(`building the VMM fixture (make exit ${made.status}) printed:\n${output}`);
  return { vmm: path.join(out, 'vmm'), miniHandler: path.join(out, 'uffd_mini_handler') };
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

/** Describes a run for an error or assertion message. */
export function describeExit(exit: VmmExit): string {
  return `exit ${exit.code ?? exit.signal}, last line ${JSON.stringify(exit.last)}, stderr ${JSON.stringify(exit.stderr.trim())}`;
}
