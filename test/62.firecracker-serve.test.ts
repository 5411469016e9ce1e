// Serving a separate process's memory over Firecracker's protocol. The peer
// (fixtures/fc_peer.c) creates its own uffd and memory, sends the uffd and its
// region list in Firecracker's exact format, touches every page in random
// order from its own threads, and checks every byte against the memory file.
import fs from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  FilePageSource, FirecrackerServer, systemPageSize, type FirecrackerSession, type PageSource, type SessionOptions,
} from '../dist/index.js';
import { GatedSource, openFds, scratch, startFcPeer, type Scratch } from './fc-helpers';
import { reserveHugePages } from './hugepages';

const PAGE = systemPageSize();
const MiB = 1024 * 1024;

let s: Scratch;
beforeAll(() => (s = scratch(16 * MiB)));
afterAll(() => s.remove());

interface Serving {
  server: FirecrackerServer;
  sessions: FirecrackerSession[];
  nextSession(): Promise<FirecrackerSession>;
  close(): void;
}

const running: Serving[] = [];
afterEach(() => running.splice(0).forEach((r) => r.close()));

function serve(source: PageSource, options: SessionOptions = {}): Serving {
  const sessions: FirecrackerSession[] = [];
  const waiting: ((session: FirecrackerSession) => void)[] = [];
  const server = FirecrackerServer.listen(s.socket, {
    source, ...options,
    onSession: (session) => {
      sessions.push(session);
      waiting.shift()?.(session);
    },
    onRefused: (error) => {
      throw error;
    },
  });
  let taken = 0;
  const serving: Serving = {
    server, sessions,
    nextSession: () => {
      const index = taken++;
      if (sessions[index]) return Promise.resolve(sessions[index]!);
      return new Promise((resolve) => waiting.push(resolve));
    },
    close: () => {
      server.close();
      source.close();
    },
  };
  running.push(serving);
  return serving;
}

const peerArgs = (...extra: string[]): string[] => ['--socket', s.socket, '--mem-file', s.memFile, ...extra];
const pagesIn = (...sizes: number[]): number => sizes.reduce((n, size) => n + size / PAGE, 0);

describe('serving a Firecracker peer', () => {
  it('listen() refuses bad arguments with Node-style errors and creates no socket', () => {
    const path = `${s.dir}/never.sock`;
    expect(() => FirecrackerServer.listen(path, {} as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringMatching(/options.source/) }));
    const source = new FilePageSource(s.memFile);
    expect(() => FirecrackerServer.listen(path, { source, failure: 'ignore' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => FirecrackerServer.listen(42 as never, { source })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    source.close();
    expect(fs.existsSync(path)).toBe(false);
  });

  for (const memory of ['anon', 'memfd']) it(`resolves MISSING faults with COPY on ${memory === 'anon' ? 'anonymous private memory (Firecracker\'s)' : 'memfd-backed (shmem) memory'}: every page of several regions with gaps, touched in random order by two threads, matches the memory file`, async () => {
    const { nextSession } = serve(new FilePageSource(s.memFile));
    const peer = startFcPeer(peerArgs('--regions', '2M,1M,512K', '--memory', memory, '--threads', '2', '--order', 'random', '--seed', '11'));
    const session = await nextSession();
    expect(session.regions.map((r) => r.size)).toEqual([2 * MiB, MiB, MiB / 2]);
    expect(session.pid).toBe(peer.child.pid);
    const { code, report } = await peer.exited;
    expect(report).toMatchObject({ ok: true, mismatches: 0, pages: pagesIn(2 * MiB, MiB, MiB / 2) });
    expect(code).toBe(0);
    const result = await session.done;
    expect(result).toMatchObject({ end: 'exited', pagesMissing: 0 });
    expect(result.error).toBeUndefined();
    expect(result.stats.pagesOnDemand).toBe(report!.pages);
    expect(result.stats.bytes).toBe(3.5 * MiB);
    expect(result.stats.faults).toBeGreaterThanOrEqual(report!.pages);
    expect(result.stats.latency.count).toBe(result.stats.faults);
  });

  it('resolves MINOR faults on shmem with CONTINUE: the pages the peer\'s page cache holds are mapped, byte for byte', async () => {
    const { nextSession } = serve(new FilePageSource(s.memFile));
    const peer = startFcPeer(peerArgs('--regions', '1M,1M', '--memory', 'memfd', '--mode', 'minor', '--threads', '2', '--seed', '5'));
    const session = await nextSession();
    const { code, report } = await peer.exited;
    expect(report).toMatchObject({ ok: true, mismatches: 0 });
    expect(code).toBe(0);
    const result = await session.done;
    expect(result.error).toBeUndefined();
    expect(result.stats.pagesOnDemand).toBe(report!.pages);
    expect(result.stats.bytes).toBe(0); // Nothing copied: the data was in the page cache.
  });

  for (const format of ['v1.1', 'v1.7', 'v1.12']) {
    it(`serves the ${format} message format`, async () => {
      const { nextSession } = serve(new FilePageSource(s.memFile));
      const peer = startFcPeer(peerArgs('--regions', '1M', '--format', format));
      const session = await nextSession();
      expect((await peer.exited).report).toMatchObject({ ok: true });
      expect((await session.done).error).toBeUndefined();
    });
  }

  for (const memory of ['anon', 'memfd']) it(`zero-fills pages the peer removed (balloon: ${memory === 'anon' ? 'MADV_DONTNEED' : 'MADV_REMOVE on shmem'}, REMOVE events) when they are touched again, never the snapshot's bytes`, async () => {
    const { nextSession } = serve(new FilePageSource(s.memFile));
    const peer = startFcPeer(peerArgs('--regions', '1M,1M', '--memory', memory, '--remove', '32'));
    const session = await nextSession();
    const { code, report } = await peer.exited;
    expect(report).toMatchObject({ ok: true, removed: 32, removedZero: 32 });
    expect(code).toBe(0);
    const result = await session.done;
    expect(result.stats.removes).toBe(32);
    expect(result.stats.zeroPages).toBe(32);
  });

  it('stays right while REMOVE events race with faults: resolutions refused with EAGAIN are retried, removed pages always read as zeros', async () => {
    const { nextSession } = serve(new FilePageSource(s.memFile));
    // Two threads touch the first region while a third keeps removing and retouching the second.
    const peer = startFcPeer(peerArgs('--regions', '2M,256K', '--threads', '2', '--churn'));
    const session = await nextSession();
    const { code, report } = await peer.exited;
    expect(report).toMatchObject({ ok: true, mismatches: 0, churnedNonZero: 0 });
    expect(code).toBe(0);
    const result = await session.done;
    expect(result.error).toBeUndefined();
    const churned = report!.churned!;
    expect(churned).toBeGreaterThan(0);
    expect(result.stats.removes).toBe(churned);
    expect(result.stats.zeroPages).toBe(churned);
    expect(result.stats.pagesOnDemand).toBe(pagesIn(2 * MiB));
  });

  it('with prefetch, a REMOVE that races with the background push never lets the source\'s bytes into a removed page', async () => {
    // The push copies 1 MiB pieces while a thread keeps removing and
    // retouching pages of the second region: a piece looked at before a
    // REMOVE was read must not be copied after the madvising thread has
    // zapped its pages (before the fill gate, one run in a few read back the
    // source's bytes there).
    for (let round = 0; round < 6; round++) {
      const { nextSession, close } = serve(new FilePageSource(s.memFile), { prefetch: true, pushChunkBytes: MiB });
      const peer = startFcPeer(peerArgs('--regions', '1M,4M', '--churn', '--seed', String(round + 1)));
      const session = await nextSession();
      const { code, report } = await peer.exited;
      expect(report).toMatchObject({ ok: true, mismatches: 0, churnedNonZero: 0 });
      expect(code).toBe(0);
      expect((await session.done).error).toBeUndefined();
      close();
    }
  });

  const huge = reserveHugePages(4);
  afterAll(() => huge.restore());
  if (huge.skipReason) console.warn(`skipping the 2 MiB hugetlb test: ${huge.skipReason}`);
  it.skipIf(huge.skipReason)('serves 2 MiB hugetlb regions, and a removed huge page comes back as zeros (its range is unregistered)', async () => {
    const { nextSession } = serve(new FilePageSource(s.memFile));
    const peer = startFcPeer(peerArgs('--regions', '2M,4M', '--memory', 'hugetlb', '--remove', '1'));
    const session = await nextSession();
    expect(session.regions.map((r) => r.pageSize)).toEqual([2 * MiB, 2 * MiB]);
    const { code, report, stderr } = await peer.exited;
    expect(stderr).toBe('');
    expect(report).toMatchObject({ ok: true, pages: 3, removed: 1, removedZero: 1, pageSize: 2 * MiB });
    expect(code).toBe(0);
    const result = await session.done;
    expect(result.error).toBeUndefined();
    expect(result.stats.removes).toBe(1);
    expect(result.stats.bytes).toBe(6 * MiB);
  });

  it('keeps serving a peer that closes its socket right after the handshake (Firecracker before v1.12) while pages are missing, until the process exits', async () => {
    const { nextSession } = serve(new FilePageSource(s.memFile));
    // 16 pages: fewer than 1 MiB holds with any page size (64 with 16 KiB pages).
    const peer = startFcPeer(peerArgs('--regions', '1M', '--close-socket', '--pause-after', '16'));
    const session = await nextSession();
    await peer.line((r) => r.paused === 16);
    await vi.waitFor(() => expect(session.peerHungUp).toBe(true), { timeout: 10_000, interval: 5 });
    expect(session.ended).toBe(false);
    peer.child.kill('SIGKILL');
    const result = await session.done;
    expect(result).toMatchObject({ end: 'exited', pagesMissing: pagesIn(MiB) - 16 });
    expect(result.error).toBeUndefined();
  });

  it('ends a hung-up peer\'s session once every page is present, unregistering its ranges so that the kernel answers the rest', async () => {
    const { nextSession } = serve(new FilePageSource(s.memFile), { prefetch: true });
    const peer = startFcPeer(peerArgs('--regions', '1M,1M', '--close-socket', '--pause-after', '16'));
    const session = await nextSession();
    const result = await session.done;
    expect(result).toMatchObject({ end: 'served', pagesMissing: 0 });
    expect(result.error).toBeUndefined();
    expect(result.stats.pagesPushed + result.stats.pagesOnDemand).toBe(pagesIn(2 * MiB));
    expect(peer.child.exitCode).toBeNull(); // The peer runs on, served.
    peer.child.kill('SIGKILL');
  });

  it('after a hung-up peer\'s session has ended served, its pages stay right and removed pages read as zeros (the kernel\'s doing)', async () => {
    const { nextSession } = serve(new FilePageSource(s.memFile), { prefetch: true });
    // --remove runs after every page was touched: by then the ranges may be unregistered.
    const peer = startFcPeer(peerArgs('--regions', '1M', '--close-socket', '--remove', '8'));
    const session = await nextSession();
    const { report } = await peer.exited;
    expect(report).toMatchObject({ ok: true, mismatches: 0, removed: 8, removedZero: 8 });
    expect(['served', 'exited']).toContain((await session.done).end);
  });
});

describe('page sources whose pages are not all present', () => {
  it('a fault on a page not yet present awaits source.fetch(urgent) first, and other faults are served meanwhile', async () => {
    const source = new GatedSource(s.memFile);
    const { nextSession } = serve(source);
    const release = source.hold(3);
    const pages = pagesIn(MiB);
    const peer = startFcPeer(peerArgs('--regions', '1M', '--threads', '2', '--seed', '3'));
    const session = await nextSession();
    await source.requested(3);
    // One thread waits on page 3; the other goes through all of its own pages.
    await vi.waitFor(() => expect(session.stats.pagesOnDemand).toBeGreaterThanOrEqual(pages / 2), { timeout: 20_000, interval: 5 });
    expect(session.pendingFaults).toBe(1);
    release();
    expect((await peer.exited).report).toMatchObject({ ok: true, mismatches: 0 });
    expect((await session.done).error).toBeUndefined();
    expect(new Set(source.urgentFetches).size).toBe(pages);
  });

  it('with prefetch, the background push never holds back on-demand faults: they complete while the push waits on its source', async () => {
    const source = new GatedSource(s.memFile, { background: 'held' });
    const { nextSession } = serve(source, { prefetch: true });
    const peer = startFcPeer(peerArgs('--regions', '1M', '--seed', '8'));
    const session = await nextSession();
    const { report } = await peer.exited;
    expect(report).toMatchObject({ ok: true, mismatches: 0 });
    expect(source.backgroundFetches).toBeGreaterThanOrEqual(1);
    expect(session.stats.pagesPushed).toBe(0);
    expect(session.stats.pagesOnDemand).toBe(pagesIn(MiB));
    source.releaseBackground();
    await session.done;
  });

  it('with prefetch and every page present, pushes the pages nobody asked for and the peer sees every byte right', async () => {
    const { nextSession } = serve(new FilePageSource(s.memFile), { prefetch: true });
    const peer = startFcPeer(peerArgs('--regions', '4M,2M', '--seed', '9'));
    const session = await nextSession();
    const { report } = await peer.exited;
    expect(report).toMatchObject({ ok: true, mismatches: 0 });
    const result = await session.done;
    expect(result.error).toBeUndefined();
    expect(result.stats.pagesPushed).toBeGreaterThan(0);
    expect(result.stats.pagesPushed + result.stats.pagesOnDemand).toBeLessThanOrEqual(pagesIn(6 * MiB));
    expect(result.pagesMissing).toBe(0);
  });
});

describe('faults that cannot be served, and peers that die', () => {
  it('failure policy "kill": when the source cannot deliver a page, the peer is killed (SIGKILL) and the session ends with the reason', async () => {
    const source = new GatedSource(s.memFile);
    source.fail(7);
    const { nextSession } = serve(source);
    const peer = startFcPeer(peerArgs('--regions', '1M'));
    const session = await nextSession();
    const { signal } = await peer.exited;
    expect(signal).toBe('SIGKILL');
    const result = await session.done;
    expect(result.end).toBe('failed');
    expect(result.error).toMatchObject({ code: 'ERR_UFFD_UNSERVABLE', message: expect.stringContaining(`source could not deliver bytes [${7 * PAGE}, ${8 * PAGE})`) });
    expect(String((result.error as Error & { cause?: Error }).cause?.message)).toMatch(/refuses page 7/);
  });

  it('failure policy "sigbus": the faulting thread gets SIGBUS (UFFDIO_POISON) and the session reports why', async () => {
    const source = new GatedSource(s.memFile);
    source.fail(2);
    const { nextSession } = serve(source, { failure: 'sigbus' });
    const peer = startFcPeer(peerArgs('--regions', '1M'));
    const session = await nextSession();
    expect((await peer.exited).signal).toBe('SIGBUS');
    const result = await session.done;
    expect(result.end).toBe('exited');
    expect(result.error?.code).toBe('ERR_UFFD_UNSERVABLE');
  });

  it('a fault whose page stopped being registered while it waited (Firecracker v1.7-v1.10 maps fresh memory over a ballooned range) is woken, not a failure: the peer runs on and reads zeros there', async () => {
    const source = new GatedSource(s.memFile);
    const release = source.hold(0);
    const { nextSession } = serve(source);
    const peer = startFcPeer(peerArgs('--regions', '1M', '--remap-pending'));
    const session = await nextSession();
    await peer.line((r) => r.handshake === 1);
    peer.child.kill('SIGUSR1');
    await source.requested(0);
    await peer.line((r) => r.remapped === 1);
    // The copy now finds nothing registered at the page (ENOENT).
    release();
    const { code, report } = await peer.exited;
    expect(report).toMatchObject({ ok: true, removedZero: 1 });
    expect(code).toBe(0);
    const result = await session.done;
    expect(result.end).toBe('exited');
    expect(result.error).toBeUndefined();
  });

  it('a fault outside every region the peer announced is not served with anything: the peer is killed', async () => {
    const { nextSession } = serve(new FilePageSource(s.memFile));
    const peer = startFcPeer(peerArgs('--regions', '1M,1M', '--announce', '1', '--order', 'seq'));
    const session = await nextSession();
    expect((await peer.exited).signal).toBe('SIGKILL');
    const result = await session.done;
    expect(result.error?.message).toMatch(/lies outside every region the peer announced/);
  });

  it('notices a peer killed mid-run (a fault still waiting), reports it, frees everything, and keeps serving other peers', async () => {
    const source = new GatedSource(s.memFile, { background: 'immediate' });
    const before = openFds();
    const { nextSession, sessions } = serve(source);
    // Peer A's second region starts at file offset 2 MiB, which peer B never touches.
    const held = (2 * MiB) / PAGE;
    const release = source.hold(held);
    const a = startFcPeer(peerArgs('--regions', '2M,1M', '--order', 'seq'));
    const sessionA = await nextSession();
    await source.requested(held);
    const b = startFcPeer(peerArgs('--regions', '1M', '--threads', '2'));
    const sessionB = await nextSession();
    a.child.kill('SIGKILL');
    const resultA = await sessionA.done;
    expect(resultA.end).toBe('exited');
    expect(resultA.error).toMatchObject({ code: 'ESRCH', message: expect.stringMatching(/exited with 1 fault\(s\) still waiting/) });
    release();
    expect((await b.exited).report).toMatchObject({ ok: true, mismatches: 0 });
    expect((await sessionB.done).error).toBeUndefined();
    // And a new peer after both.
    const c = startFcPeer(peerArgs('--regions', '512K'));
    const sessionC = await nextSession();
    expect((await c.exited).report).toMatchObject({ ok: true });
    await sessionC.done;
    expect(sessions).toHaveLength(3);
    // Every session's uffd, connection and pidfd are closed: only the listener is left.
    expect(openFds()).toBe(before + 1);
  });
});
