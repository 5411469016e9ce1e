// serveFrom({ background: true }): after the first fault, the native thread
// copies every page of the source ranges that nothing has resolved yet,
// behind the faults, so that a restore completes without the workload
// touching each page. Every fault is real, raised by a worker thread.
import { describe, expect, it, vi } from 'vitest';
import { BufferPageSource, type ServeFromOptions, type ServeStats, type Userfaultfd } from '../dist/index.js';
import { PAGE, SLOWDOWN, pattern, registeredAnonymous, shuffled, touch } from './helpers';

function setup(pages: number): ReturnType<typeof registeredAnonymous> & { image: SharedArrayBuffer } {
  return { ...registeredAnonymous(pages), image: pattern(pages * PAGE, 72) };
}

const pagesLeft = (uffd: Userfaultfd): number => uffd.stats().pagesLeft;

// A source's memory that fills over time, as a network would fill it:
// deliver(first, end) puts the image's pages [first, end) there, bytes first,
// then their present flags.
function fillingSource(image: SharedArrayBuffer): { bytes: Uint8Array; present: Uint8Array; deliver: (first: number, end: number) => void } {
  const bytes = new Uint8Array(new SharedArrayBuffer(image.byteLength));
  const present = new Uint8Array(new SharedArrayBuffer(image.byteLength / PAGE));
  const deliver = (first: number, end: number): void => {
    bytes.set(new Uint8Array(image, first * PAGE, (end - first) * PAGE), first * PAGE);
    for (let p = first; p < end; p++) Atomics.store(present, p, 1);
  };
  return { bytes, present, deliver };
}

// Serves `pages` pages while a worker touches every one in a shuffled order,
// checking each byte; waits until nothing is left to fill, then closes (the
// native threads are joined: their counters are final) and returns the stats.
async function restoreShuffled(pages: number, seed: number, options: ServeFromOptions): Promise<ServeStats> {
  const { uffd, mapping, image } = setup(pages);
  void uffd.serveFrom(new BufferPageSource(image), options);
  const { result } = touch({ address: mapping.address, length: mapping.length, order: shuffled(pages, seed), expected: image });
  expect(await result).toMatchObject({ ok: true, mismatches: 0 });
  await vi.waitFor(() => expect(pagesLeft(uffd)).toBe(0), { timeout: 10_000, interval: 5 });
  uffd.close();
  return uffd.stats();
}

describe('serveFrom background fill', () => {
  it('after the first fault, fills every other page with no further fault, byte for byte', async () => {
    const pages = 1024;
    const { uffd, mapping, image } = setup(pages);
    void uffd.serveFrom(new BufferPageSource(image), { background: true });
    // Nothing is filled before a fault: the peer may not be running yet.
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(uffd.stats()).toMatchObject({ backgroundPages: 0, pagesLeft: pages });
    expect(await touch({ address: mapping.address, length: PAGE, expected: image }).result).toMatchObject({ ok: true });
    await vi.waitFor(() => expect(pagesLeft(uffd)).toBe(0), { timeout: 10_000, interval: 5 });
    const { result } = touch({ address: mapping.address, length: mapping.length, order: shuffled(pages, 5), expected: image });
    expect(await result).toMatchObject({ ok: true, mismatches: 0 });
    uffd.close();
    const stats = uffd.stats();
    expect(stats.nativeFaults).toBe(1);
    expect(stats.backgroundPages).toBe(pages - 1);
    expect(stats.pages).toBe(pages);
    expect(stats.copiedBytes).toBe(pages * PAGE);
  });

  // With no fill thread, the server thread itself must start without a message to wake it.
  it.each([0, 1])("background: 'now' fills every page before any fault, fillThreads %i: the reader then faults on none", async (fillThreads) => {
    const pages = 512;
    const { uffd, mapping, image } = setup(pages);
    void uffd.serveFrom(new BufferPageSource(image), { background: 'now', fillThreads });
    await vi.waitFor(() => expect(pagesLeft(uffd)).toBe(0), { timeout: 10_000, interval: 5 });
    const { result } = touch({ address: mapping.address, length: mapping.length, order: shuffled(pages, 3), expected: image });
    expect(await result).toMatchObject({ ok: true, mismatches: 0 });
    uffd.close();
    expect(uffd.stats()).toMatchObject({ nativeFaults: 0, jsFaults: 0, backgroundPages: pages, pages });
  });

  it('with faults arriving throughout, every page is copied exactly once and reads right', async () => {
    const pages = 2048;
    // Small pieces: many chances for a fault and a background copy to meet on one page.
    const stats = await restoreShuffled(pages, 9, { background: true, backgroundPiece: 2 * PAGE });
    expect(stats.pages).toBe(pages);
    expect(stats.nativeFaults).toBeGreaterThan(0);
    expect(stats.nativeFaults + stats.backgroundPages).toBeGreaterThanOrEqual(pages);
    expect(stats.jsFaults).toBe(0);
  });

  it('takes the pages of a source that fills over time as they arrive; faults on missing ones go to onMiss', async () => {
    const pages = 512;
    const { uffd, mapping, image } = setup(pages);
    const { bytes, present, deliver } = fillingSource(image);
    deliver(0, 64);
    const source = new BufferPageSource(bytes, {
      present,
      fetch: async (offset, length) => deliver(offset / PAGE, (offset + length) / PAGE),
    });
    const misses: number[] = [];
    void uffd.serveFrom(source, {
      background: true,
      onMiss: async (fault, miss) => {
        misses.push(miss.offset! / PAGE);
        await source.fetch(miss.offset!, PAGE);
        fault.copy(bytes.subarray(miss.offset!, miss.offset! + PAGE));
      },
    });
    expect(await touch({ address: mapping.address, length: PAGE, expected: image }).result).toMatchObject({ ok: true });
    await vi.waitFor(() => expect(pagesLeft(uffd)).toBe(pages - 64), { timeout: 10_000, interval: 5 });
    // A fault on a page the source lacks goes to JavaScript; the background leaves it to it.
    const last = pages - 1;
    expect(await touch({ address: mapping.address + BigInt(last * PAGE), length: PAGE, expected: image.slice(last * PAGE) }).result).toMatchObject({ ok: true });
    expect(misses).toEqual([last]);
    // The rest arrives in pieces, as a network would deliver it.
    for (let first = 64; first < last; first += 64) {
      deliver(first, Math.min(last, first + 64));
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    await vi.waitFor(() => expect(pagesLeft(uffd)).toBe(0), { timeout: 10_000, interval: 5 });
    const { result } = touch({ address: mapping.address, length: mapping.length, expected: image });
    expect(await result).toMatchObject({ ok: true, mismatches: 0 });
    uffd.close();
    expect(uffd.stats()).toMatchObject({ nativeFaults: 1, jsFaults: 1, backgroundPages: pages - 2 });
  });

  it('counts a page whose fault went to JavaScript in pagesLeft until JavaScript has resolved it (0 means no thread waits)', async () => {
    const pages = 64;
    const { uffd, mapping, image } = setup(pages);
    const { bytes, present, deliver } = fillingSource(image);
    const lacking = 40;
    deliver(0, lacking);
    deliver(lacking + 1, pages);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const source = new BufferPageSource(bytes, {
      present,
      fetch: async (offset, length) => {
        await released;
        deliver(offset / PAGE, (offset + length) / PAGE);
      },
    });
    void uffd.serveFrom(source, { background: 'now' });
    const { result } = touch({ address: mapping.address + BigInt(lacking * PAGE), length: PAGE, expected: image.slice(lacking * PAGE) });
    // Every other page is filled; the one the source lacks is with JavaScript,
    // whose fetch has not delivered yet: a thread still waits on it.
    // (The toucher is a worker: its start-up takes seconds under emulation.)
    await vi.waitFor(() => expect(uffd.stats()).toMatchObject({ backgroundPages: pages - 1, jsFaults: 1 }), { timeout: 10_000 * SLOWDOWN, interval: 5 });
    expect(pagesLeft(uffd)).toBe(1);
    release();
    expect(await result).toMatchObject({ ok: true, mismatches: 0 });
    await vi.waitFor(() => expect(pagesLeft(uffd)).toBe(0), { timeout: 10_000, interval: 5 });
    uffd.close();
    expect(uffd.stats()).toMatchObject({ nativeFaults: 0, jsFaults: 1, backgroundPages: pages - 1, pagesLeft: 0 });
  });

  it('with several fill threads and read-ahead, faults and fills meet on the same pages: each page is copied once, every byte right', async () => {
    const pages = 4096;
    const stats = await restoreShuffled(pages, 11, { readAhead: 16, background: true, backgroundPiece: 4 * PAGE, fillThreads: 3 });
    expect(stats.pages).toBe(pages);
    expect(stats.copiedBytes).toBe(pages * PAGE);
    expect(stats.nativeFaults + stats.readAheadPages + stats.backgroundPages).toBeGreaterThanOrEqual(pages);
  });

  it('takes out-of-order arrivals too: a run of missing pages ends a pass, the next one resumes there, holes are looked at again', async () => {
    const pages = 8192; // 32 MiB: more than the 16 MiB of missing pages after which a pass stops
    const { uffd, mapping, image } = setup(pages);
    const { bytes, present, deliver } = fillingSource(image);
    // Scattered: the far end first, then every other 64-page chunk, then the rest.
    deliver(0, 1);
    deliver(6000, pages);
    void uffd.serveFrom(new BufferPageSource(bytes, { present }), { background: true });
    expect(await touch({ address: mapping.address, length: PAGE, expected: image }).result).toMatchObject({ ok: true });
    for (let first = 64; first < 6000; first += 128) deliver(first, Math.min(6000, first + 64));
    await new Promise((resolve) => setTimeout(resolve, 20));
    for (let first = 0; first < 6000; first += 128) deliver(first, Math.min(6000, first + 64));
    await vi.waitFor(() => expect(pagesLeft(uffd)).toBe(0), { timeout: 20_000, interval: 5 });
    const { result } = touch({ address: mapping.address, length: mapping.length, expected: image });
    expect(await result).toMatchObject({ ok: true, mismatches: 0 });
    uffd.close();
    expect(uffd.stats()).toMatchObject({ nativeFaults: 1, jsFaults: 0, backgroundPages: pages - 1 });
  });

  it('refuses a bad backgroundPiece, background or fillThreads with a Node-style error', () => {
    const { uffd, image } = setup(4);
    const source = new BufferPageSource(image);
    expect(() => uffd.serveFrom(source, { background: 'yes' as unknown as boolean })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => uffd.serveFrom(source, { background: 1 as unknown as boolean })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => uffd.serveFrom(source, { background: true, backgroundPiece: 0 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => uffd.serveFrom(source, { background: true, backgroundPiece: 1.5 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    for (const fillThreads of [-1, 9, 0.5]) {
      expect(() => uffd.serveFrom(source, { readAhead: 16, fillThreads })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    }
    // Nothing was started: a good call still works.
    void uffd.serveFrom(source, { background: true });
  });
});
