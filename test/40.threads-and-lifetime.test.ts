// Which thread serves, and what happens when threads, uffds and mappings go away.
import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { Mapping, Userfaultfd, attachView } from '../dist/index.js';
import { PAGE } from './helpers';

const gc = (globalThis as { gc?: () => void }).gc;

function startServer(workerData: object): Worker {
  return new Worker(path.join(__dirname, 'fixtures', 'worker-server.cjs'), { workerData });
}

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

async function collect(): Promise<void> {
  for (let i = 0; i < 5; i++) {
    gc!();
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe('threads', () => {
  it('serves from a worker thread the faults of the main thread', async () => {
    const mapping = Mapping.anonymous(8 * PAGE);
    const server = startServer({ address: mapping.address, length: mapping.length, fill: 9 });
    expect((await once(server, 'message'))[0]).toBe('ready');
    // The main thread faults; the worker's loop serves it.
    const view = mapping.view();
    let sum = 0;
    for (let i = 0; i < view.length; i += PAGE) sum += view[i]!;
    expect(sum).toBe(8 * 9);
    server.postMessage('report');
    expect((await once(server, 'message'))[0]).toEqual({ served: 8 });
    await once(server, 'exit');
    mapping.unmap();
  });

  it('closes a uffd whose worker exits without closing it, so its memory never hangs', async () => {
    const mapping = Mapping.anonymous(2 * PAGE);
    const server = startServer({ address: mapping.address, length: mapping.length, fill: 1, exitWithoutClose: true });
    expect((await once(server, 'message'))[0]).toBe('ready');
    await once(server, 'exit');
    // Unregistered by the close: ordinary zero-filled anonymous memory.
    expect(attachView(mapping.address, mapping.length).every((b) => b === 0)).toBe(true);
    mapping.unmap();
  });
});

describe('registrations of mappings that go away', () => {
  it('leaves out of uffd.registrations (and lend()) a range whose Mapping was unmapped', () => {
    const uffd = Userfaultfd.open();
    const gone = Mapping.anonymous(PAGE);
    const kept = Mapping.anonymous(2 * PAGE);
    uffd.register(gone);
    uffd.register(kept);
    gone.unmap();
    expect(uffd.registrations.map((r) => r.start)).toEqual([kept.address]);
    expect(uffd.lend().ranges.map((r) => r.address)).toEqual([kept.address]);
    uffd.close();
    kept.unmap();
  });
});

describe.skipIf(!gc)('garbage collection', () => {
  it('keeps a registered Mapping nobody else references mapped while its uffd holds the registration', async () => {
    const maps = (): string => fs.readFileSync('/proc/self/maps', 'utf8');
    const uffd = Userfaultfd.open();
    let address = 0n;
    (() => {
      const mapping = Mapping.anonymous(PAGE);
      address = mapping.address;
      uffd.register(mapping);
    })();
    await collect();
    expect(maps()).toContain(address.toString(16));
    expect(uffd.copy(address, new Uint8Array(PAGE).fill(3))).toBe(PAGE);
    uffd.close();
  });

  it('closes the descriptor of a Userfaultfd that is collected without close()', async () => {
    const before = openFds();
    (() => {
      for (let i = 0; i < 10; i++) Userfaultfd.open().register(Mapping.anonymous(PAGE));
    })();
    expect(openFds()).toBeGreaterThanOrEqual(before + 10);
    await collect();
    expect(openFds()).toBeLessThanOrEqual(before);
  });

  it('unmaps a collected Mapping, and not before the last view of it is collected', async () => {
    const maps = (): string => fs.readFileSync('/proc/self/maps', 'utf8');
    const hex = (a: bigint): string => a.toString(16);
    let address = 0n;
    let view: Uint8Array | undefined;
    (() => {
      const mapping = Mapping.anonymous(3 * PAGE);
      address = mapping.address;
      view = attachView(mapping.address, PAGE);
      view[0] = 42;
    })();
    await collect();
    expect(maps()).toContain(hex(address));
    expect(view![0]).toBe(42);
    view = undefined;
    await collect();
    expect(maps()).not.toContain(`${hex(address)}-${hex(address + BigInt(3 * PAGE))}`);
  });
});
