// UFFDIO_POISON, UFFDIO_MOVE and the SIGBUS feature. A thread that gets
// SIGBUS takes its process down, so those faults come from a peer process.
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, Userfaultfd, type Fault } from '../dist/index.js';
import { PAGE, touch } from './helpers';
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

describe('UFFDIO_POISON', () => {
  it('kills the faulting thread with SIGBUS, and only on the poisoned page', async () => {
    const p = await peer({ pages: 4, features: ['POISON'], script: [{ read: [0, 1] }, { read: [2] }] });
    const served: bigint[] = [];
    void p.uffd.serve((fault) => {
      served.push(fault.pageAddress);
      if (fault.pageAddress === p.address + BigInt(2 * p.pageSize)) fault.poison();
      else fault.copy(Buffer.alloc(fault.pageSize, 1));
    });
    const { signal, report } = await p.go();
    expect(signal).toBe('SIGBUS');
    expect(report).toBeUndefined();
    expect(served).toHaveLength(3);
  });

  it('is the serve() failure policy on request: a failed fault poisons instead of filling', async () => {
    const p = await peer({ pages: 2, features: ['POISON'], script: [{ read: [0] }] });
    void p.uffd.serve(() => {
      throw new Error('no data');
    }, { failure: 'poison', onError: () => {} });
    expect((await p.go()).signal).toBe('SIGBUS');
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
  it('moves anonymous pages into the faulting range without copying them', async () => {
    const pages = 4;
    const source = Mapping.anonymous(pages * PAGE);
    const target = Mapping.anonymous(pages * PAGE);
    const uffd = Userfaultfd.open({ features: ['MOVE'] });
    cleanup.push(() => source.unmap(), () => target.unmap(), () => uffd.close());
    const bytes = source.view();
    for (let i = 0; i < pages; i++) bytes.fill(10 + i, i * PAGE, (i + 1) * PAGE);
    expect(uffd.register(target)).toContain('MOVE');
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      const offset = fault.pageAddress - target.address;
      fault.move(source.address + offset);
    });
    const report = await touch({ address: target.address, length: target.length }).result;
    expect(report.sum).toBe(10 + 11 + 12 + 13);
    expect(faults).toHaveLength(pages);
    // The pages left the source: it reads as fresh zero memory.
    expect(source.view().every((b) => b === 0)).toBe(true);
  });

  it('refuses holes in the source unless ALLOW_SRC_HOLES', async () => {
    const source = Mapping.anonymous(4 * PAGE);
    const target = Mapping.anonymous(4 * PAGE);
    const uffd = Userfaultfd.open({ features: ['MOVE'] });
    cleanup.push(() => source.unmap(), () => target.unmap(), () => uffd.close());
    source.view().fill(7, 0, PAGE); // only page 0 is populated
    uffd.register(target);
    expect(() => uffd.move(target.address, source.address, 4 * PAGE)).toThrow(
      expect.objectContaining({ syscall: 'ioctl(UFFDIO_MOVE)', code: 'ENOENT', bytesDone: PAGE }),
    );
    expect(uffd.move(target.address + BigInt(PAGE), source.address + BigInt(PAGE), 3 * PAGE, { allowSrcHoles: true })).toBe(3 * PAGE);
  });
});
