// Non-cooperative events (FORK, REMAP, REMOVE, UNMAP) and the event-shaping
// features (EXACT_ADDRESS, THREAD_ID), each caused for real by a peer process.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Mapping, UnixConnection, UnixServer, Userfaultfd, descriptorKind, type Event, type Fault, type PageSource } from '../dist/index.js';
import { PAGE, touch } from './helpers';
import { fixture } from './native-fixtures';
import { startPeer, type Peer } from './peer';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

async function peer(spec: Parameters<typeof startPeer>[0]): Promise<Peer> {
  const started = await startPeer(spec);
  cleanup.push(() => started.close());
  return started;
}

describe('non-cooperative events', () => {
  it('FORK: the child\'s uffd arrives as a new, usable Userfaultfd', async () => {
    const p = await peer({ pages: 2, features: ['EVENT_FORK'], script: [{ read: [0] }, { spawn: true }] });
    const events: Event[] = [];
    void p.uffd.serve((fault) => void fault.copy(Buffer.alloc(fault.pageSize, 4)), {
      onEvent: (event) => {
        events.push(event);
        if (event.type === 'fork') {
          expect(descriptorKind(event.uffd.fd)).toBe('userfaultfd');
          expect(event.uffd.enabledFeatures.has('EVENT_FORK')).toBe(true);
          // The child execs at once; its uffd still works until then.
          event.uffd.wake(p.address, p.pageSize);
          event.uffd.close();
        }
      },
    });
    const { code, report } = await p.go();
    expect(code).toBe(0);
    expect(report?.sums).toEqual([4]);
    expect(events.map((e) => e.type)).toEqual(['fork']);
  });

  it('FORK: the child\'s uffd knows the ranges the kernel registered for it (the parent\'s), with their page size and modes', async () => {
    const p = await peer({ pages: 2, features: ['EVENT_FORK'], modes: { missing: true, wp: true }, script: [{ spawn: true }] });
    const shape = (list: readonly { start: bigint; end: bigint; pageSize: number; modes: object }[]) =>
      list.map(({ start, end, pageSize, modes }) => ({ start, end, pageSize, modes }));
    let child: ReturnType<typeof shape> | undefined;
    void p.uffd.serve((fault) => void fault.zero(), {
      onEvent: (event) => {
        if (event.type !== 'fork') return;
        child = shape(event.uffd.registrations);
        event.uffd.close();
      },
    });
    expect((await p.go()).code).toBe(0);
    expect(child).toEqual(shape(p.uffd.registrations));
    expect(child).toHaveLength(1);
  });

  it('REMOVE: madvise(MADV_DONTNEED) of served pages; faulting on them again is served again', async () => {
    const p = await peer({ pages: 4, features: ['EVENT_REMOVE'], script: [{ read: 'all' }, { discard: [1, 2] }, { read: 'all' }] });
    const events: Event[] = [];
    let served = 0;
    void p.uffd.serve((fault) => {
      served++;
      fault.copy(Buffer.alloc(fault.pageSize, served <= 4 ? 1 : 2));
    }, { onEvent: (event) => events.push(event) });
    const { report } = await p.go();
    const page = (i: number): bigint => p.address + BigInt(i * p.pageSize);
    expect(events).toEqual([{ type: 'remove', start: page(1), end: page(2) }, { type: 'remove', start: page(2), end: page(3) }]);
    expect(report?.sums).toEqual([4, 1 + 2 + 2 + 1]);
  });

  it('REMOVE of a page whose fault JavaScript is still fetching (serveFrom): the late copy puts zeros there, never the source\'s bytes', async () => {
    // A worker of the peer faults on page 0, which the source does not hold
    // yet: the miss comes to JavaScript. Meanwhile the peer removes page 0
    // (madvise returns once the native thread has read the event) and only
    // then does JavaScript copy the page in. The page must read as zeros
    // afterwards, as it would without userfaultfd: the copy finds it removed.
    const p = await peer({
      pages: 2, features: ['EVENT_REMOVE'],
      script: [{ readInWorker: 0 }, { hear: true }, { discard: [0] }, { say: 'discarded' }, { hear: true }, { read: [0] }],
    });
    const bytes = new Uint8Array(p.length).fill(9);
    const present = new Uint8Array(2);
    const source: PageSource = { bytes, size: p.length, present, pageSize: p.pageSize, fetch: async () => {} };
    let missed!: () => void;
    const miss = new Promise<void>((resolve) => (missed = resolve));
    void p.uffd.serveFrom(source, {
      onMiss: async (fault) => {
        missed();
        await p.connection.receive();          // 'discarded': madvise has returned in the peer
        Atomics.store(present, 0, 1);
        expect(fault.copy(bytes.subarray(0, p.pageSize))).toBe('done');
        p.connection.send('read it');
      },
    });
    const going = p.go();
    await miss;
    p.connection.send('discard it');
    const { code, report } = await going;
    expect(code).toBe(0);
    expect(report?.sums).toEqual([0]);
  });

  it('UNMAP: munmap of registered memory', async () => {
    const p = await peer({ pages: 3, features: ['EVENT_UNMAP'], script: [{ unmap: true }] });
    const events: Event[] = [];
    void p.uffd.serve(() => {}, { onEvent: (event) => events.push(event) });
    expect((await p.go()).code).toBe(0);
    expect(events).toEqual([{ type: 'unmap', start: p.address, end: p.address + BigInt(3 * p.pageSize) }]);
  });

  it('UNMAP: the unmapped range leaves uffd.registrations, as the kernel drops its registration', async () => {
    const p = await peer({ pages: 3, features: ['EVENT_UNMAP'], script: [{ unmap: true }] });
    let after: readonly unknown[] | undefined;
    void p.uffd.serve(() => {}, { onEvent: () => (after = [...p.uffd.registrations]) });
    expect((await p.go()).code).toBe(0);
    expect(after).toEqual([]);
  });

  it('closing one adopted copy of a uffd leaves its faults to another copy: the fault its close read is woken and faults again', async () => {
    const p = await peer({ pages: 2, script: [{ read: [0] }] });
    // A second copy of the same uffd, adopted through a socket as another process would.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-copy-'));
    const server = UnixServer.listen(path.join(dir, 's'));
    const client = UnixConnection.connect(path.join(dir, 's'));
    const accepted = (await server.accept())!;
    cleanup.push(() => accepted.close(), () => client.close(), () => server.close(), () => fs.rmSync(dir, { recursive: true, force: true }));
    client.send('uffd', [p.uffd.fd]);
    const second = Userfaultfd.fromFd((await accepted.receive())!.fds[0]!, { ranges: [{ address: p.address, length: p.length, pageSize: p.pageSize }] });
    cleanup.push(() => second.close());
    const going = p.go();
    // The peer's thread sleeps on its fault, whose message is queued: this
    // copy's close reads it (to reach any event behind it) and must not keep it.
    await vi.waitFor(() => {
      const asleep = fs.readdirSync(`/proc/${p.child.pid}/task`).some((t) => {
        try {
          return fs.readFileSync(`/proc/${p.child.pid}/task/${t}/wchan`, 'utf8') === 'handle_userfault';
        } catch {
          return false;
        }
      });
      expect(asleep).toBe(true);
    }, { timeout: 10_000, interval: 5 });
    p.uffd.close();
    void second.serve((fault) => void fault.copy(Buffer.alloc(fault.pageSize, 5)));
    const { code, report } = await going;
    expect(code).toBe(0);
    expect(report?.sums).toEqual([5]);
  });

  // test/fixtures/remap_peer.c: sends its uffd and where its memory is and will be, then on one byte mremaps it and reads at the new address.
  async function remapPeer() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-remap-'));
    const socketPath = path.join(dir, 's');
    const server = UnixServer.listen(socketPath);
    cleanup.push(() => server.close(), () => fs.rmSync(dir, { recursive: true, force: true }));
    const child = spawn(fixture('remap_peer'), [socketPath, '2'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const exited = new Promise((resolve) => child.once('exit', resolve));
    const connection = (await server.accept())!;
    cleanup.push(() => connection.close());
    const message = (await connection.receive())!;
    const info = JSON.parse(message.data.toString()) as { address: string; newAddress: string; length: number };
    return { out: () => out, exited, connection, info, uffdFd: message.fds[0]! };
  }

  it('REMAP: mremap of registered memory, then a fault at the new address', async () => {
    const { out, exited, connection, info, uffdFd } = await remapPeer();
    const uffd = Userfaultfd.fromFd(uffdFd, { features: ['EVENT_REMAP'] });
    cleanup.push(() => uffd.close());
    const events: Event[] = [];
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      fault.copy(Buffer.alloc(fault.pageSize, 9));
    }, { onEvent: (event) => events.push(event) });
    connection.send('g');
    expect(await exited).toBe(0);
    expect(JSON.parse(out())).toEqual({ byte: 9 });
    expect(events).toEqual([{ type: 'remap', from: BigInt(info.address), to: BigInt(info.newAddress), length: info.length }]);
    expect(faults.map((f) => f.pageAddress)).toEqual([BigInt(info.newAddress)]);
  });

  it('REMAP: the registration follows the mapping to its new address, with its page size and modes', async () => {
    const { exited, connection, info, uffdFd } = await remapPeer();
    const modes = { missing: true, minor: false, wp: false, rwp: false };
    const uffd = Userfaultfd.fromFd(uffdFd, { features: ['EVENT_REMAP'], ranges: [{ address: BigInt(info.address), length: info.length, modes }] });
    cleanup.push(() => uffd.close());
    let atFault: { start: bigint; end: bigint; pageSize: number; modes: object }[] = [];
    void uffd.serve((fault) => {
      atFault = uffd.registrations.map(({ start, end, pageSize, modes: m }) => ({ start, end, pageSize, modes: m }));
      fault.copy(Buffer.alloc(fault.pageSize, 9));
    });
    connection.send('g');
    expect(await exited).toBe(0);
    // The kernel keeps the old range registered too under MREMAP_DONTUNMAP,
    // which the event does not tell apart: only the new range is asserted.
    expect(atFault).toContainEqual({ start: BigInt(info.newAddress), end: BigInt(info.newAddress) + BigInt(info.length), pageSize: PAGE, modes });
  });

  it('closing an adopted uffd reads its queue empty: a peer whose madvise raised REMOVE and waits for it to be read goes on', async () => {
    // The peer keeps its own copy of the uffd (as Firecracker does), so
    // closing this one releases nothing; nobody reads here, so its madvise
    // waits until its event is read. (What is queued after the close waits
    // for ever: unregister first, as the Firecracker handler does.)
    const q = await peer({ pages: 4, features: ['EVENT_REMOVE'], keepUffd: true, script: [{ discard: [1] }] });
    const waiting = q.go();
    const wchan = (): string => fs.readFileSync(`/proc/${q.child.pid}/wchan`, 'utf8');
    await vi.waitFor(() => expect(wchan()).toBe('userfaultfd_event_wait_completion'), { timeout: 10_000, interval: 10 });
    q.uffd.close();
    const { code } = await waiting;
    expect(code).toBe(0);
  });
});

describe('event-shaping features', () => {
  it('EXACT_ADDRESS reports the faulting byte, not the page', async () => {
    const mapping = Mapping.anonymous(2 * PAGE);
    const uffd = Userfaultfd.open({ features: ['EXACT_ADDRESS'] });
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    uffd.register(mapping);
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      fault.zero();
    });
    // The toucher reads byte 0 of each page: use a view that starts mid-page.
    await touch({ address: mapping.address + 100n, length: PAGE, pageSize: PAGE }).result;
    expect(faults[0]!.address).toBe(mapping.address + 100n);
    expect(faults[0]!.pageAddress).toBe(mapping.address);
  });

  it('THREAD_ID reports the faulting thread; without it there is none', async () => {
    for (const features of [['THREAD_ID'], []] as const) {
      const mapping = Mapping.anonymous(PAGE);
      const uffd = Userfaultfd.open({ features: [...features] });
      uffd.register(mapping);
      let tid: number | undefined = -1;
      void uffd.serve((fault) => {
        tid = fault.tid;
        fault.zero();
      });
      await touch({ address: mapping.address, length: PAGE }).result;
      if (features.length) {
        expect(tid).toBeGreaterThan(process.pid);
      } else {
        expect(tid).toBeUndefined();
      }
      uffd.close();
      mapping.unmap();
    }
  });
});

