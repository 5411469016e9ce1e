// UFFDIO_POISON, UFFDIO_MOVE and the SIGBUS feature beyond the matrix (test/56
// poisons and moves real faults on every memory type). A thread that gets
// SIGBUS takes its process down, so those faults come from a peer process.
import { spawnSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, Userfaultfd, probe, unavailable, type UffdError } from '../dist/index.js';
import { PAGE } from './helpers';
import { startPeer, type Peer } from './peer';

const report = probe();
const needPoison = unavailable(report, { memory: 'anonymous', ioctls: ['POISON'], features: ['POISON'] });
const needMove = unavailable(report, { memory: 'anonymous', ioctls: ['MOVE'], features: ['MOVE'] });
for (const reason of [needPoison, needMove]) if (reason) console.warn(`skipped: ${reason}`);

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

async function peer(spec: Parameters<typeof startPeer>[0]): Promise<Peer> {
  const started = await startPeer(spec);
  cleanup.push(() => started.close());
  return started;
}

describe('UFFDIO_POISON', () => {
  it.skipIf(needPoison !== undefined)(`is the serve() failure policy on request: a failed fault poisons instead of filling${needPoison ? ` — skipped: ${needPoison}` : ''}`, async () => {
    const p = await peer({ pages: 2, features: ['POISON'], script: [{ read: [0] }] });
    void p.uffd.serve(() => {
      throw new Error('no data');
    }, { failure: 'poison', onError: () => {} });
    expect((await p.go()).signal).toBe('SIGBUS');
  });
  it.skipIf(needPoison !== undefined)(`poisons a fault its handler held past timeoutMs; the handler's late copy does nothing${needPoison ? ` — skipped: ${needPoison}` : ''}`, async () => {
    const p = await peer({ pages: 2, features: ['POISON'], script: [{ read: [0] }] });
    const errors: unknown[] = [];
    let late!: Promise<unknown>;
    void p.uffd.serve(async (fault) => {
      // Copies long after the policy poisoned the page (and the peer died of it): an ioctl
      // would fail (ESRCH) or, were the peer alive, overwrite the poison marker.
      late = new Promise((resolve) => setTimeout(() => {
        try {
          resolve(fault.copy(new Uint8Array(fault.pageSize).fill(1)));
        } catch (error) {
          resolve(error);
        }
      }, 400));
      await new Promise(() => {});
    }, { failure: 'poison', timeoutMs: 100, onError: (error) => errors.push(error) });
    expect((await p.go()).signal).toBe('SIGBUS');
    expect(await late).toBe('exists');
    expect(errors).toEqual([expect.objectContaining({ code: 'ERR_UFFD_TIMEOUT' })]);
  });
});

describe('SIGBUS feature', () => {
  it('turns missing faults into SIGBUS with no event at all', async () => {
    const p = await peer({ pages: 2, features: ['SIGBUS'], script: [{ read: [0] }] });
    let events = 0;
    void p.uffd.serve(() => void events++);
    expect((await p.go()).signal).toBe('SIGBUS');
    expect(events).toBe(0);
  });
});

describe('UFFDIO_MOVE', () => {
  it.skipIf(needMove !== undefined)(`refuses holes in the source unless ALLOW_SRC_HOLES${needMove ? ` — skipped: ${needMove}` : ''}`, async () => {
    const source = Mapping.anonymous(4 * PAGE);
    const target = Mapping.anonymous(4 * PAGE);
    const uffd = Userfaultfd.open({ features: ['MOVE'] });
    cleanup.push(() => source.unmap(), () => target.unmap(), () => uffd.close());
    source.view().fill(7, 0, PAGE); // only page 0 is populated
    uffd.register(target);
    expect(() => uffd.move(target.address, source.address, 4 * PAGE)).toThrow(
      expect.objectContaining({ syscall: 'ioctl(UFFDIO_MOVE)', code: 'ENOENT', bytesDone: PAGE, message: expect.stringContaining('allowSrcHoles') }),
    );
    expect(uffd.move(target.address + BigInt(PAGE), source.address + BigInt(PAGE), 3 * PAGE, { allowSrcHoles: true })).toBe(3 * PAGE);
  });
  it.skipIf(needMove !== undefined)(`refuses a source page a fork shares with EBUSY, saying so (not a registration conflict)${needMove ? ` — skipped: ${needMove}` : ''}`, () => {
    const source = Mapping.anonymous(PAGE);
    const target = Mapping.anonymous(PAGE);
    const uffd = Userfaultfd.open({ features: ['MOVE'] });
    cleanup.push(() => source.unmap(), () => target.unmap(), () => uffd.close());
    source.view().fill(7);
    // libuv forks to spawn: the page is no longer exclusive to this process
    // until it is written again, and the kernel refuses to move it.
    spawnSync('/bin/true');
    uffd.register(target);
    let error: UffdError | undefined;
    try {
      uffd.move(target.address, source.address, PAGE);
    } catch (caught) {
      error = caught as UffdError;
    }
    expect(error).toMatchObject({ code: 'EBUSY', errno: -16, syscall: 'ioctl(UFFDIO_MOVE)', bytesDone: 0 });
    expect(error!.message).toMatch(/shared/);
    expect(error!.message).not.toMatch(/registered with another userfaultfd/);
    source.view()[0] = 7; // written: exclusive again, and now it moves
    expect(uffd.move(target.address, source.address, PAGE)).toBe(PAGE);
  });
});
