// `npx userfaultfd serve` end to end: the command in its own process, a
// Firecracker peer in another, progress on stdout, and the exit status.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { systemPageSize } from '../dist/index.js';
import { scratch, startFcPeer, uffdRegistered, type Scratch } from './fc-helpers';
import { findCommand } from './support/commands.mjs';

const cli = path.join(__dirname, '..', 'dist', 'cli.js');
const UNSHARE = findCommand('unshare');
if (!UNSHARE) console.warn('skipping the pid-namespace serve test: unshare (util-linux) is not installed');
const MiB = 1024 * 1024;

let s: Scratch;
beforeAll(() => (s = scratch(8 * MiB)));
afterAll(() => s.remove());

interface Command {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the first stdout line matching pattern (rejects if the command exits first). */
  line(pattern: RegExp): Promise<string>;
  exited: Promise<number | null>;
}

const started: ChildProcess[] = [];
afterAll(() => started.splice(0).forEach((child) => child.exitCode === null && child.kill('SIGKILL')));

const command = (args: string[]): Command => spawnCommand(process.execPath, [cli, ...args]);

function spawnCommand(file: string, args: string[]): Command {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(child);
  let out = '';
  let err = '';
  const watchers: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  child.stdout!.on('data', (chunk: Buffer) => {
    out += chunk.toString();
    for (const w of watchers.splice(0)) {
      const found = out.split('\n').find((l) => w.pattern.test(l));
      if (found) w.resolve(found);
      else watchers.push(w);
    }
  });
  child.stderr!.on('data', (chunk: Buffer) => (err += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return {
    child, exited, stdout: () => out, stderr: () => err,
    line: (pattern) => {
      const found = out.split('\n').find((l) => pattern.test(l));
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        watchers.push({ pattern, resolve });
        void exited.then((code) => reject(new Error(`the command exited (${code}) before printing ${pattern}; stdout: ${out}; stderr: ${err}`)));
      });
    },
  };
}

const serveArgs = (...extra: string[]): string[] => ['serve', '--socket', s.socket, '--mem-file', s.memFile, ...extra];
const peerArgs = (...extra: string[]): string[] => ['--socket', s.socket, '--mem-file', s.memFile, ...extra];

describe('userfaultfd serve', () => {
  it('serves a peer, prints a summary, and exits 0 once the peer has gone with every fault served', async () => {
    const serve = command(serveArgs());
    await serve.line(/^listening on /);
    const peer = startFcPeer(peerArgs('--regions', '2M,1M', '--threads', '2'));
    expect((await peer.exited).report).toMatchObject({ ok: true, mismatches: 0 });
    expect(await serve.exited).toBe(0);
    expect(serve.stdout()).toMatch(new RegExp(`^peer ${peer.child.pid}: 2 region\\(s\\), 3\\.1 MB, page size 4096$`, 'm'));
    expect(serve.stdout()).toMatch(new RegExp(`^peer ${peer.child.pid} exited: faults \\d+, pages on demand 768, pushed 0, zero 0, 3\\.1 MB, removes 0, latency p50 [\\d.]+ µs p99 [\\d.]+ µs$`, 'm'));
    expect(serve.stderr()).toBe('');
  });

  it('--read-ahead 16: a sequential peer faults about once per chunk, every byte right', async () => {
    const serve = command(serveArgs('--read-ahead', '16', '--json'));
    await serve.line(/"event":"listening"/);
    const peer = startFcPeer(peerArgs('--regions', '2M,1M', '--order', 'seq'));
    expect((await peer.exited).report).toMatchObject({ ok: true, mismatches: 0 });
    expect(await serve.exited).toBe(0);
    const end = JSON.parse(serve.stdout().split('\n').find((l) => l.includes('"event":"end"'))!) as Record<string, number>;
    expect(end.pagesOnDemand).toBe(768);
    expect(end.bytes).toBe(3 * 1024 * 1024);
    // One fault per 16-page chunk at most (a touch that lands while its piece is copied still faults).
    expect(end.faults).toBeLessThanOrEqual(768 / 4);
  });

  it('prints a progress line every second: faults served, pages pushed, bytes, latency percentiles', async () => {
    const serve = command(serveArgs());
    await serve.line(/^listening on /);
    // The peer stops after 100 pages and waits: the command reports progress meanwhile.
    const peer = startFcPeer(peerArgs('--regions', '1M', '--pause-after', '100'));
    await peer.line((r) => r.paused === 100);
    const progress = await serve.line(/^\[\d+s\] peers 1, faults served 1\d\d /);
    expect(progress).toMatch(/^\[\d+s\] peers 1, faults served 1\d\d \(\+\d+\/s\), pages pushed 0 \(\+0\/s\), 0\.4 MB \(\+[\d.]+ MB\/s\), latency p50 [\d.]+ µs p90 [\d.]+ µs p99 [\d.]+ µs$/);
    peer.child.kill('SIGKILL');
    // Killed between faults: everything it asked for was served.
    expect(await serve.exited).toBe(0);
  });

  it('--prefetch pushes the pages nobody asked for (--json: machine-readable lines)', async () => {
    const serve = command(serveArgs('--prefetch', '--json'));
    await serve.line(/"event":"listening"/);
    const peer = startFcPeer(peerArgs('--regions', '4M', '--seed', '4'));
    expect((await peer.exited).report).toMatchObject({ ok: true });
    expect(await serve.exited).toBe(0);
    const end = JSON.parse(serve.stdout().split('\n').find((l) => l.includes('"event":"end"'))!) as Record<string, number>;
    expect(end.pagesPushed).toBeGreaterThan(0);
    expect(end.pagesMissing).toBe(0);
    expect(end.pagesPushed + end.pagesOnDemand).toBeLessThanOrEqual(1024);
  });

  it('--json: every event and field it prints is documented in docs/firecracker.md', async () => {
    const serve = command(serveArgs('--json'));
    await serve.line(/"event":"listening"/);
    await startFcPeer(peerArgs('--malformed', 'overlap')).exited;
    const peer = startFcPeer(peerArgs('--regions', '1M', '--pause-after', '16'));
    await peer.line((r) => r.paused === 16);
    await serve.line(/"event":"progress"/);
    peer.child.kill('SIGKILL');
    expect(await serve.exited).toBe(0);
    const docs = fs.readFileSync(path.join(__dirname, '..', 'docs', 'firecracker.md'), 'utf8');
    const section = /^### `--json` lines\n([\s\S]*?)(?=\n##)/m.exec(docs)?.[1] ?? '';
    const printed = serve.stdout().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(new Set(printed.map((line) => line.event))).toEqual(new Set(['listening', 'refused', 'session', 'progress', 'end']));
    for (const line of printed) {
      const row = section.split('\n').find((l) => l.startsWith(`| \`${String(line.event)}\` |`));
      expect(row, `the row of event ${String(line.event)}`).toBeDefined();
      for (const key of Object.keys(line).filter((k) => k !== 'event')) expect(row, `${String(line.event)}.${key}`).toContain(`\`${key}\``);
    }
  });

  it('--quiet prints nothing on stdout, and what goes wrong still on stderr', async () => {
    const serve = command(serveArgs('--quiet'));
    await vi.waitFor(() => expect(fs.lstatSync(s.socket).isSocket()).toBe(true), { timeout: 10_000, interval: 10 });
    const malformed = startFcPeer(peerArgs('--malformed', 'overlap'));
    await malformed.exited;
    expect((await startFcPeer(peerArgs('--regions', '1M')).exited).report).toMatchObject({ ok: true });
    expect(await serve.exited).toBe(0);
    expect(serve.stdout()).toBe('');
    expect(serve.stderr()).toMatch(new RegExp(`^userfaultfd serve: refused a connection from pid ${malformed.child.pid} and killed it: ERR_UFFD_BAD_HANDSHAKE`, 'm'));
  });

  it('exits 0 once a peer that hung up (Firecracker before v1.12) has every page, while it runs on', async () => {
    const serve = command(serveArgs('--prefetch'));
    await serve.line(/^listening on /);
    const peer = startFcPeer(peerArgs('--regions', '2M', '--close-socket', '--pause-after', '16'));
    expect(await serve.exited).toBe(0);
    expect(serve.stdout()).toMatch(new RegExp(`^peer ${peer.child.pid} served: faults \\d+`, 'm'));
    expect(peer.child.exitCode).toBeNull();
    peer.child.kill('SIGKILL');
  });

  it('refuses a malformed handshake with a message on stderr, then serves the next peer and exits 0', async () => {
    const serve = command(serveArgs());
    await serve.line(/^listening on /);
    const malformed = startFcPeer(peerArgs('--malformed', 'overlap'));
    expect((await malformed.exited).signal).toBe('SIGKILL');
    expect((await startFcPeer(peerArgs('--regions', '1M')).exited).report).toMatchObject({ ok: true });
    expect(await serve.exited).toBe(0);
    expect(serve.stderr()).toMatch(new RegExp(`^userfaultfd serve: refused a connection from pid ${malformed.child.pid} and killed it: ERR_UFFD_BAD_HANDSHAKE: regions 0 .* overlap`, 'm'));
  });

  it('exits 1 and says why when a peer\'s faults could not all be served', async () => {
    const serve = command(serveArgs());
    await serve.line(/^listening on /);
    // The peer announces one region but faults in a second: the handler kills it.
    const peer = startFcPeer(peerArgs('--regions', '1M,1M', '--announce', '1', '--order', 'seq'));
    expect((await peer.exited).signal).toBe('SIGKILL');
    expect(await serve.exited).toBe(1);
    expect(serve.stderr()).toMatch(/ERR_UFFD_UNSERVABLE: a fault at 0x[0-9a-f]+ lies outside every region/);
  });

  // Nobody serves a peer's faults once the command has gone: a peer left
  // registered with pages missing would wait for them forever.
  it('wakes a fault whose page stopped being registered while it waited (Firecracker v1.7-v1.10 maps fresh memory over a ballooned range, with no event): the VM is not left hanging, the page reads as zeros', async () => {
    const serve = command(serveArgs());
    await serve.line(/^listening on /);
    const peer = startFcPeer(peerArgs('--regions', '1M', '--remap-pending'));
    await peer.line((r) => r.handshake === 1);
    // Stopped, the handler reads the fault only after its page was remapped: its copy finds nothing registered there (ENOENT).
    serve.child.kill('SIGSTOP');
    try {
      peer.child.kill('SIGUSR1');
      await peer.line((r) => r.remapped === 1);
    } finally {
      serve.child.kill('SIGCONT');
    }
    // Left waiting, the peer would never exit.
    const hung = setTimeout(() => peer.child.kill('SIGKILL'), 10_000);
    const { code, report } = await peer.exited;
    clearTimeout(hung);
    expect(report).toMatchObject({ ok: true, removedZero: 1 });
    expect(code).toBe(0);
    expect(await serve.exited).toBe(0);
  });

  it('SIGTERM kills a peer whose memory is not all served, and exits 1', async () => {
    const serve = command(serveArgs());
    await serve.line(/^listening on /);
    const peer = startFcPeer(peerArgs('--regions', '1M', '--pause-after', '16'));
    await peer.line((r) => r.paused === 16);
    serve.child.kill('SIGTERM');
    expect(await serve.exited).toBe(1);
    await vi.waitFor(() => expect(peer.child.signalCode).toBe('SIGKILL'), { timeout: 5_000, interval: 10 });
    expect(serve.stderr()).toMatch(/^userfaultfd serve: SIGTERM: stopped: 1 peer\(s\) killed \(memory not all served\), 0 let go\b/m);
    expect(serve.stderr()).toMatch(new RegExp(`^userfaultfd serve: peer ${peer.child.pid}: ERR_UFFD_UNSERVABLE: the handler stopped with \\d+ page\\(s\\) not served`, 'm'));
  });

  it('SIGINT lets a peer with every page in run on, its ranges unregistered, and exits 0', async () => {
    const serve = command(serveArgs('--prefetch'));
    await serve.line(/^listening on /);
    // Connected (Firecracker since v1.12 keeps its socket open) and paused: only the handler can let it go.
    const peer = startFcPeer(peerArgs('--regions', '1M', '--pause-after', '16'));
    await peer.line((r) => r.paused === 16);
    const pid = peer.child.pid!;
    await vi.waitFor(() => expect(uffdRegistered(pid)).toEqual({ size: MiB, resident: MiB }), { timeout: 10_000, interval: 10 });
    serve.child.kill('SIGINT');
    expect(await serve.exited).toBe(0); // nothing left unserved
    expect(serve.stdout()).toMatch(new RegExp(`^peer ${pid} served: `, 'm'));
    expect(serve.stderr()).toMatch(/^userfaultfd serve: SIGINT: stopped: 0 peer\(s\) killed \(memory not all served\), 1 let go\b/m);
    // The peer keeps its own copy of the uffd: only an unregister lets its next fault reach the kernel.
    expect(uffdRegistered(pid).size).toBe(0);
    expect(peer.child.exitCode).toBeNull();
    expect(peer.child.signalCode).toBeNull();
  });

  it('--connect-timeout: exits 1 when no peer connects in time (60 s unless given); 0 waits', async () => {
    const serve = command(serveArgs('--connect-timeout', '0.2'));
    // Side by side: each on a socket of its own.
    const waiting = command(['serve', '--socket', path.join(s.dir, 'waiting.sock'), '--mem-file', s.memFile, '--connect-timeout', '0']);
    expect(await serve.exited).toBe(1);
    expect(serve.stderr()).toMatch(/no peer connected within 0.2 s/);
    await waiting.line(/^listening on /);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(waiting.child.exitCode).toBeNull();
    waiting.child.kill('SIGTERM');
    expect(await waiting.exited).toBe(0); // stopped with no VM to kill: a clean exit
  });

  it('--connect-timeout 0 waits however it is spelled: 0.0 and 00 as 0', async () => {
    const waiting = ['0.0', '00'].map((zero) => command(['serve', '--socket', path.join(s.dir, `zero-${zero}.sock`), '--mem-file', s.memFile, '--connect-timeout', zero]));
    for (const w of waiting) await w.line(/^listening on /);
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const w of waiting) {
      expect(w.child.exitCode).toBeNull();
      w.child.kill('SIGTERM');
      expect(await w.exited).toBe(0);
    }
  });

  it('refuses a --socket another process listens on (EADDRINUSE), and that listener goes on serving', async () => {
    const first = command(serveArgs());
    await first.line(/^listening on /);
    const second = command(serveArgs('--connect-timeout', '1'));
    expect(await second.exited).toBe(2);
    expect(second.stderr()).toMatch(new RegExp(`^userfaultfd serve: cannot listen on --socket ${s.socket}: EADDRINUSE: .* another process is listening on this path: pick another path, or stop that process`, 'm'));
    expect((await startFcPeer(peerArgs('--regions', '1M')).exited).report).toMatchObject({ ok: true });
    expect(await first.exited).toBe(0);
  });

  it('replaces a stale socket file (nobody listens), and refuses a path that is not a socket (EEXIST), leaving it there', async () => {
    // A socket file left by a process that exited without removing it.
    execFileSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(s.socket)}, () => process.exit(0))`]);
    expect(fs.lstatSync(s.socket).isSocket()).toBe(true);
    const serve = command(serveArgs());
    await serve.line(/^listening on /);
    expect((await startFcPeer(peerArgs('--regions', '1M')).exited).report).toMatchObject({ ok: true });
    expect(await serve.exited).toBe(0);
    const file = path.join(s.dir, 'not-a-socket');
    fs.writeFileSync(file, 'keep me');
    const refused = command(['serve', '--socket', file, '--mem-file', s.memFile, '--connect-timeout', '1']);
    expect(await refused.exited).toBe(2);
    expect(refused.stderr()).toMatch(new RegExp(`^userfaultfd serve: cannot listen on --socket ${file}: EEXIST: .* a file that is not a socket is at this path: pick another path`, 'm'));
    expect(fs.readFileSync(file, 'utf8')).toBe('keep me');
  });

  // Before v1.12 Firecracker hangs up right after its handshake and runs on:
  // only its process tells when it is gone. A handler in a pid namespace of
  // its own cannot name the peer by pid (SO_PEERCRED says 0); SO_PEERPIDFD
  // (Linux 6.5) still gives a pidfd, so the session lives as long as the VM.
  it.skipIf(!UNSHARE)('a peer outside the handler\'s pid namespace that hangs up early is served until it exits', async () => {
    const serve = spawnCommand(UNSHARE!, ['--pid', '--fork', '--mount-proc', process.execPath, cli, ...serveArgs()]);
    await serve.line(/^listening on /);
    const peer = startFcPeer(peerArgs('--regions', '1M,1M', '--close-socket', '--order', 'seq'));
    expect((await peer.exited).report).toMatchObject({ ok: true, mismatches: 0 });
    expect(await serve.exited).toBe(0);
    // 'served' when every page was in before the hangup was seen; never 'hangup' (the session ended, the peer left frozen).
    expect(serve.stdout()).toMatch(new RegExp(`^peer 0 (exited|served): faults \\d+, pages on demand ${(2 * MiB) / systemPageSize()},`, 'm'));
  });

});

// Each runs its own short-lived command; they run side by side.
describe.concurrent('userfaultfd serve with bad arguments', () => {
  for (const [args, message] of [
    [['serve', '--mem-file', '/nonexistent'], /--socket PATH is required/],
    [['serve', '--socket', '/tmp/x.sock'], /--mem-file FILE is required/],
    [['serve', '--socket', '/tmp/x.sock', '--mem-file', '/nonexistent/mem'], /cannot map --mem-file \/nonexistent\/mem: ENOENT/],
    [['serve', '--bogus'], /Unknown option '--bogus'/],
    ...['-1', '1.5', 'two'].map((value) => [
      ['serve', '--socket', '/tmp/x.sock', '--mem-file', '/dev/null', '--peers', value],
      new RegExp(`^userfaultfd serve: --peers must be a positive integer, or 0 to serve until killed, not '${value}'$`, 'm'),
    ]),
    [['serve', '--socket', '/tmp/x.sock', '--mem-file', '/dev/null', '--connect-timeout', '-1'], /^userfaultfd serve: --connect-timeout must be a number of seconds \(0: wait\), not '-1'$/m],
    [['serve', '--socket', '/tmp/x.sock', '--mem-file', '/dev/null', '--read-ahead', '-4'], /^userfaultfd serve: --read-ahead must be a number of pages from 1 to 1024, not '-4'$/m],
    [['serve', '--socket', '/tmp/x.sock', '--mem-file', '/dev/null', '--on-failure', 'ignore'], /--on-failure must be kill or sigbus/],
    // Seconds are decimal: 0e0 is refused as 1e1 is, in the words every spelling of a bad value gets.
    ...['0e0', 'soon'].map((value) => [
      ['serve', '--socket', '/tmp/x.sock', '--mem-file', '/dev/null', '--connect-timeout', value],
      new RegExp(`^userfaultfd serve: --connect-timeout must be a number of seconds \\(0: wait\\), not '${value}'$`, 'm'),
    ]),
    [['serve', '--socket', '/tmp/x.sock', '--mem-file', '/dev/null', '--read-ahead', '0'], /--read-ahead must be a number of pages from 1 to 1024, not '0'/],
    [['serve', '--socket', '/tmp/x.sock', '--mem-file', '/dev/null', '--read-ahead', '16k'], /--read-ahead must be a number of pages from 1 to 1024, not '16k'/],
    [['serve', '--socket', '/tmp/x.sock', '--mem-file', '/tmp'], /^userfaultfd serve: cannot map --mem-file \/tmp: EISDIR: .*, mmap — a directory cannot be mapped: name the memory file in it$/m],
    [['serve', '--socket', '/nonexistent/dir/x.sock', '--mem-file', '__MEM__'], /cannot listen on --socket \/nonexistent\/dir\/x.sock: ENOENT/],
    ...['no-colon', ': empty name', 'Bad Name: spaces', 'B@d: at sign'].map((header) => [
      ['serve', '--socket', '/tmp/x.sock', '--mem-url', 'http://127.0.0.1:1/x', '--mem-url-header', header],
      /^userfaultfd serve: The argument '--mem-url-header' must hold headers in the form "Name: value", one per line; a line has no valid header name before its colon$/m,
    ]),
  ] as [string[], RegExp][]) {
    it(`exits 2 with a clear message: ${args.slice(1).join(' ')}`, async () => {
      const serve = command(args.map((a) => (a === '__MEM__' ? s.memFile : a)));
      expect(await serve.exited).toBe(2);
      expect(serve.stderr()).toMatch(message);
      expect(serve.stdout()).toBe('');
    });
  }
});

describe.concurrent('userfaultfd and its usage', () => {
  for (const flag of ['--help', '-h']) {
    it(`${flag}: the usage on stdout, exit 0`, async () => {
      const help = command([flag]);
      expect(await help.exited).toBe(0);
      expect(help.stdout()).toMatch(/^usage: userfaultfd probe \[--json\]\n {7}userfaultfd serve --socket PATH/);
      expect(help.stderr()).toBe('');
    });
  }

  for (const [args, message] of [
    [['frob'], /^userfaultfd: unknown command 'frob'\nusage: userfaultfd probe/],
    [[], /^userfaultfd: no command given\nusage: userfaultfd probe/],
  ] as [string[], RegExp][]) {
    it(`${args.length ? `an unknown command (${args[0]})` : 'no command'}: the reason and the usage on stderr, exit 2`, async () => {
      const usage = command(args);
      expect(await usage.exited).toBe(2);
      expect(usage.stderr()).toMatch(message);
      expect(usage.stdout()).toBe('');
    });
  }
});
