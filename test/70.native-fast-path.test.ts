// The native fast path (uffd.serveFrom): the addon's own thread serves pages
// from a registered source; JavaScript sees only what the source cannot
// answer. Every fault is real, raised by a worker thread or a peer process.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { BufferPageSource, FilePageSource, Mapping, Memfd, Userfaultfd, type Event, type Fault, type PageSource, type ServeFromOptions } from '../dist/index.js';
import { PAGE, pattern, shuffled, touch, registeredAnonymous } from './helpers';
import { reserveHugePages } from './hugepages';
import { startPeer, type Peer } from './peer';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

function setup(pages: number): { uffd: Userfaultfd; memory: Mapping; image: SharedArrayBuffer } {
  const { uffd, mapping } = registeredAnonymous(pages);
  return { uffd, memory: mapping, image: pattern(pages * PAGE, 7) };
}

/** The ids of this process's threads named `name` (the addon names its own). */
function threadsNamed(name: string): string[] {
  return fs.readdirSync('/proc/self/task').filter((tid) => {
    try {
      return fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() === name;
    } catch {
      return false;
    }
  });
}

function serverThreads(): number {
  return threadsNamed('uffd-pages').length;
}

/** CPU time the native server and fill threads have used, in ns (schedstat). */
function serverCpuNs(): number {
  return [...threadsNamed('uffd-pages'), ...threadsNamed('uffd-fill')]
    .reduce((sum, tid) => sum + Number(fs.readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]), 0);
}

describe('serveFrom: the native fast path', () => {
  it('serves every page from the source, byte-identical, with no JavaScript per fault', async () => {
    const pages = 256;
    const { uffd, memory, image } = setup(pages);
    const served = uffd.serveFrom(new BufferPageSource(image));
    const { result } = touch({ address: memory.address, length: memory.length, order: shuffled(pages), expected: image });
    expect(await result).toMatchObject({ ok: true, mismatches: 0 });
    // Closing joins the native thread: its counters are final then.
    uffd.close();
    const stats = uffd.stats();
    expect(stats.nativeFaults).toBe(pages);
    expect(stats.jsFaults).toBe(0);
    expect(stats.pages).toBe(pages);
    expect(stats.bytes).toBe(pages * PAGE);
    expect(stats.serviceP99Us).toBeGreaterThan(0);
    // The histogram holds every fault the native thread resolved, with the same percentiles.
    expect(stats.serviceLatency.count).toBe(pages);
    const p99 = stats.serviceLatency.percentile(99);
    expect(p99).toBeGreaterThan(stats.serviceP99Us * 0.75);
    expect(p99).toBeLessThan(stats.serviceP99Us * 1.25);
    await served;
  });

  it('reads ahead: 16-page chunks, byte-identical, most pages filled before they are touched', async () => {
    const pages = 256;
    const { uffd, memory, image } = setup(pages);
    void uffd.serveFrom(new BufferPageSource(image), { readAhead: 16 });
    const { result } = touch({ address: memory.address, length: memory.length, expected: image });
    expect(await result).toMatchObject({ ok: true });
    uffd.close();
    const stats = uffd.stats();
    // A sequential reader faults at most about once a chunk (once per two
    // when the next chunk is filled before it gets there; a touch that lands
    // on a page while its piece is being copied waits for it and still
    // counts as a fault). Every page is copied once, most of them ahead.
    // How many faults that leaves depends on how far ahead the server
    // stays (a slow build, such as the sanitizer's, falls behind), so only
    // what holds whatever the timing is checked.
    expect(stats.nativeFaults).toBeGreaterThan(0);
    expect(stats.nativeFaults).toBeLessThan(pages);
    expect(stats.pages).toBe(pages);
    expect(stats.readAheadPages).toBeGreaterThan(0);
    expect(stats.readAheadPages).toBeGreaterThanOrEqual(pages - stats.nativeFaults);
  });

  it('serves a long sequential read-ahead stream (deferred spins) byte for byte, and sleeps once it stops', async () => {
    // A reader that works 10 µs on each page faults once per 32 pages, about
    // every 350 µs: a steady pace beyond the spin window, which the thread
    // sleeps through on a timer until shortly before each fault is due.
    const pages = 4096;
    const { uffd, memory, image } = setup(pages);
    void uffd.serveFrom(new BufferPageSource(image), { readAhead: 16 });
    const { result } = touch({ address: memory.address, length: memory.length, expected: image, paceUs: 10 });
    expect(await result).toMatchObject({ ok: true, mismatches: 0 });
    // However it spun while faults came, with none coming it costs nothing:
    // a deferred spin that catches nothing falls back to sleeping in poll.
    const before = serverCpuNs();
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(serverCpuNs() - before).toBeLessThan(25e6);
    uffd.close();
    expect(uffd.stats().pages).toBe(pages);
  });

  it('reads ahead in random order too, skipping pages already there', async () => {
    const pages = 512;
    const { uffd, memory, image } = setup(pages);
    void uffd.serveFrom(new BufferPageSource(image), { readAhead: 16 });
    const { result } = touch({ address: memory.address, length: memory.length, order: shuffled(pages, 3), expected: image });
    expect(await result).toMatchObject({ ok: true });
    uffd.close();
    expect(uffd.stats().pages).toBe(pages);
  });

  it('serves the same bytes with spinning on and off', async () => {
    for (const spin of [true, false]) {
      const pages = 128;
      const { uffd, memory, image } = setup(pages);
      void uffd.serveFrom(new BufferPageSource(image), { spin });
      const { result } = touch({ address: memory.address, length: memory.length, order: shuffled(pages), expected: image });
      expect(await result).toMatchObject({ ok: true });
      uffd.close();
      expect(uffd.stats().nativeFaults).toBe(pages);
      if (!spin) expect(uffd.stats().spin.windows).toBe(0);
    }
  });

  it('maps several ranges to their own offsets in the source', async () => {
    const pages = 64;
    const a = Mapping.anonymous(pages * PAGE);
    const b = Mapping.anonymous(pages * PAGE);
    const uffd = Userfaultfd.open();
    cleanup.push(() => { uffd.close(); a.unmap(); b.unmap(); });
    uffd.register(a);
    uffd.register(b);
    const image = pattern(2 * pages * PAGE, 9);
    // b holds the image's first half and a its second.
    void uffd.serveFrom(new BufferPageSource(image), {
      ranges: [{ address: a.address, length: a.length, offset: pages * PAGE }, { address: b.address, length: b.length, offset: 0 }],
    });
    const first = touch({ address: a.address, length: a.length, expected: image.slice(pages * PAGE) });
    const second = touch({ address: b.address, length: b.length, expected: image.slice(0, pages * PAGE) });
    expect(await first.result).toMatchObject({ ok: true });
    expect(await second.result).toMatchObject({ ok: true });
  });

  it('hands pages not present to JavaScript, which fetches them; the rest stay native', async () => {
    const pages = 128;
    const { uffd, memory, image } = setup(pages);
    const bytes = new Uint8Array(new SharedArrayBuffer(pages * PAGE));
    const present = new Uint8Array(new SharedArrayBuffer(pages));
    const full = new Uint8Array(image);
    for (let p = 0; p < pages; p += 2) {
      bytes.set(full.subarray(p * PAGE, (p + 1) * PAGE), p * PAGE);
      Atomics.store(present, p, 1);
    }
    const fetched: number[] = [];
    const source = new BufferPageSource(bytes, {
      present,
      fetch: async (offset, length) => {
        await new Promise((resolve) => setImmediate(resolve));
        bytes.set(full.subarray(offset, offset + length), offset);
        for (let p = offset / PAGE; p < (offset + length) / PAGE; p++) Atomics.store(present, p, 1);
        fetched.push(offset / PAGE);
      },
    });
    void uffd.serveFrom(source);
    const { result } = touch({ address: memory.address, length: memory.length, order: shuffled(pages), expected: image });
    expect(await result).toMatchObject({ ok: true });
    expect(fetched.sort((x, y) => x - y)).toEqual(Array.from({ length: pages / 2 }, (_, i) => 2 * i + 1));
    uffd.close();
    expect(uffd.stats()).toMatchObject({ nativeFaults: pages / 2, jsFaults: pages / 2 });
  });

  it('timeoutMs: a miss whose fetch never settles is resolved by the failure policy; the present pages stay native', async () => {
    const pages = 4;
    const { uffd, memory, image } = setup(pages);
    const bytes = new Uint8Array(image.slice(0));
    const present = new Uint8Array([1, 0, 1, 1]);
    const errors: unknown[] = [];
    void uffd.serveFrom(new BufferPageSource(bytes, { present, fetch: () => new Promise(() => {}) }), {
      timeoutMs: 100, onError: (error) => errors.push(error),
    });
    const expected = image.slice(0);
    new Uint8Array(expected).fill(0, PAGE, 2 * PAGE);
    const { result } = touch({ address: memory.address, length: memory.length, expected });
    expect(await result).toMatchObject({ ok: true });
    expect(errors).toEqual([expect.objectContaining({ code: 'ERR_UFFD_TIMEOUT' })]);
  });

  it('a fetch that resolves with the page still absent gets the failure policy (ERR_UFFD_UNSERVABLE), never the stale bytes', async () => {
    const pages = 4;
    const { uffd, memory, image } = setup(pages);
    const bytes = new Uint8Array(image.slice(0));
    bytes.fill(0xee, PAGE, 2 * PAGE); // what a cache holds before the page arrives
    const errors: unknown[] = [];
    void uffd.serveFrom(new BufferPageSource(bytes, { present: new Uint8Array([1, 0, 1, 1]), fetch: async () => {} }), {
      onError: (error) => errors.push(error),
    });
    const expected = image.slice(0);
    new Uint8Array(expected).fill(0, PAGE, 2 * PAGE);
    expect(await touch({ address: memory.address, length: memory.length, expected }).result).toMatchObject({ ok: true });
    expect(errors).toEqual([expect.objectContaining({ code: 'ERR_UFFD_UNSERVABLE', message: expect.stringContaining('still not present') })]);
  });

  it('asks a source whose pages are larger than the memory\'s for whole source pages', async () => {
    const pages = 32;
    const { uffd, memory, image } = setup(pages);
    const big = 4 * PAGE;
    const full = new Uint8Array(image);
    const bytes = new Uint8Array(new SharedArrayBuffer(pages * PAGE));
    const present = new Uint8Array(new SharedArrayBuffer(pages / 4));
    const asked: [number, number][] = [];
    // A source that brings in exactly what it is asked for, and flags the pages that holds.
    const fetch = async (offset: number, length: number): Promise<void> => {
      asked.push([offset, length]);
      bytes.set(full.subarray(offset, offset + length), offset);
      for (let p = Math.floor(offset / big); p * big < offset + length; p++) Atomics.store(present, p, 1);
    };
    void uffd.serveFrom(new BufferPageSource(bytes, { pageSize: big, present, fetch }));
    expect(await touch({ address: memory.address, length: memory.length, order: shuffled(pages, 5), expected: image }).result).toMatchObject({ ok: true });
    expect(asked.every(([offset, length]) => offset % big === 0 && length % big === 0)).toBe(true);
  });

  it('says which member of a source of one\'s own is wrong, and that nothing is registered', () => {
    const { uffd } = setup(1);
    const base = { bytes: new Uint8Array(PAGE), pageSize: PAGE, present: null, fetch: async () => {}, close: () => {} };
    expect(() => uffd.serveFrom({ ...base, bytes: new ArrayBuffer(PAGE) } as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringContaining('"source.bytes"') }));
    expect(() => uffd.serveFrom({ ...base, fetch: 5 } as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringContaining('"source.fetch"') }));
    expect(() => uffd.serveFrom({ ...base, failure: 'kill' } as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringContaining('source.failure') }));
    const bare = Userfaultfd.open();
    cleanup.push(() => bare.close());
    expect(() => bare.serveFrom(base)).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringContaining('nothing is registered') }));
    expect(() => bare.serveFrom(base, { ranges: [{ address: 1n << 30n, length: PAGE }] })).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringContaining('nothing is registered') }));
    // Nothing was claimed by the refusals.
    void uffd.serveFrom(base);
  });

  it('gives misses to onMiss with the page\'s offset in the source', async () => {
    const pages = 8;
    const { uffd, memory } = setup(pages);
    const present = new Uint8Array(pages);
    const seen: number[] = [];
    void uffd.serveFrom(new BufferPageSource(new Uint8Array(pages * PAGE), { present }), {
      onMiss: (fault, miss) => {
        seen.push(miss.offset!);
        fault.copy(Buffer.alloc(PAGE, 0x42));
      },
    });
    const expected = new SharedArrayBuffer(pages * PAGE);
    new Uint8Array(expected).fill(0x42);
    const { result } = touch({ address: memory.address, length: memory.length, expected });
    expect(await result).toMatchObject({ ok: true });
    expect(seen).toEqual(Array.from({ length: pages }, (_, i) => i * PAGE));
  });

  it('zero ranges read as zeros (UFFDIO_ZEROPAGE)', async () => {
    const pages = 32;
    const { uffd, memory } = setup(pages);
    void uffd.serveFrom(null, { ranges: [{ address: memory.address, length: memory.length, zero: true }] });
    const { result } = touch({ address: memory.address, length: memory.length, expected: new SharedArrayBuffer(pages * PAGE) });
    expect(await result).toMatchObject({ ok: true });
    uffd.close();
    expect(uffd.stats()).toMatchObject({ nativeFaults: pages, zeroPages: pages });
  });

  it('refuses ranges the source cannot cover, ranges not registered, and a second consumer', () => {
    const { uffd, memory } = setup(4);
    const small = new BufferPageSource(new Uint8Array(2 * PAGE));
    expect(() => uffd.serveFrom(small)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    const whole = new BufferPageSource(new Uint8Array(memory.length + PAGE));
    expect(() => uffd.serveFrom(whole, { ranges: [{ address: memory.address, length: memory.length + PAGE }] }))
      .toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringContaining(`not registered with this userfaultfd from ${'0x' + (memory.address + BigInt(memory.length)).toString(16)}`) }));
    expect(() => uffd.serveFrom(new BufferPageSource(new Uint8Array(memory.length)), { readAhead: 0 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => uffd.serveFrom({} as never)).toThrow(TypeError);
    void uffd.serveFrom(new BufferPageSource(new Uint8Array(memory.length)));
    expect(() => uffd.serve(() => {})).toThrow(expect.objectContaining({ code: 'ERR_UFFD_BUSY' }));
  });
});

describe('serveFrom reading a source through its file', () => {
  function imageFile(image: SharedArrayBuffer): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-70-'));
    const file = path.join(dir, 'mem.bin');
    fs.writeFileSync(file, new Uint8Array(image));
    cleanup.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    return file;
  }

  // Serves every page of memory from source while a worker touches them in a
  // shuffled order, checking every byte against image; every page copied once.
  async function servesImage(uffd: Userfaultfd, memory: Mapping, image: SharedArrayBuffer, source: PageSource, options: ServeFromOptions): Promise<void> {
    void uffd.serveFrom(source, options);
    const { result } = touch({ address: memory.address, length: memory.length, order: shuffled(image.byteLength / PAGE, 5), expected: image });
    expect(await result).toMatchObject({ ok: true, mismatches: 0 });
    uffd.close();
    expect(uffd.stats().pages).toBe(image.byteLength / PAGE);
  }

  it('a FilePageSource: every page byte-identical, page by page, read ahead and filled in the background', async () => {
    for (const options of [{}, { readAhead: 16 }, { background: 'now' as const, fillThreads: 2 }]) {
      const { uffd, memory, image } = setup(512);
      const source = new FilePageSource(imageFile(image));
      cleanup.push(() => source.close());
      expect(source.file).toEqual({ fd: expect.any(Number), offset: 0 });
      await servesImage(uffd, memory, image, source, options);
    }
  });

  it('the file is what is read, from its offset, through a descriptor of the server\'s own', async () => {
    // bytes and file disagree on purpose: the served pages are the file's,
    // which shows the copies go through pread and not through `bytes`.
    const pages = 64;
    const { uffd, memory, image } = setup(pages);
    const file = imageFile(pattern(PAGE, 1));
    fs.appendFileSync(file, new Uint8Array(image));
    const fd = fs.openSync(file, 'r');
    const source = { size: image.byteLength, pageSize: PAGE, bytes: new Uint8Array(image.byteLength), present: null,
      file: { fd, offset: PAGE }, fetch: () => Promise.resolve(), close: () => {} };
    void uffd.serveFrom(source, { readAhead: 4 });
    // The caller's descriptor may go (and its number be reused) once serveFrom has returned.
    fs.closeSync(fd);
    const { result } = touch({ address: memory.address, length: memory.length, order: shuffled(pages, 9), expected: image });
    expect(await result).toMatchObject({ ok: true, mismatches: 0 });
  });

  it('a BufferPageSource over a Memfd mapping, given the memfd as its file', async () => {
    const { uffd, memory, image } = setup(256);
    const memfd = Memfd.create(image.byteLength);
    const cache = memfd.map();
    cleanup.push(() => {
      cache.unmap();
      memfd.close();
    });
    cache.view().set(new Uint8Array(image));
    const source = new BufferPageSource(cache.view(), { file: { fd: memfd.fd, offset: 0 } });
    expect(source.file).toEqual({ fd: memfd.fd, offset: 0 });
    await servesImage(uffd, memory, image, source, { readAhead: 8, background: true });
  });

  it('a file shorter than the source: the pages past its end come from bytes', async () => {
    const pages = 32;
    const { uffd, memory, image } = setup(pages);
    const half = imageFile(image.slice(0, (pages / 2) * PAGE));
    const fd = fs.openSync(half, 'r');
    cleanup.push(() => fs.closeSync(fd));
    void uffd.serveFrom(new BufferPageSource(image, { file: { fd, offset: 0 } }));
    const { result } = touch({ address: memory.address, length: memory.length, expected: image });
    expect(await result).toMatchObject({ ok: true, mismatches: 0 });
  });

  it('refuses a file that is not { fd, offset }, and a closed descriptor, changing nothing', () => {
    const { uffd, memory } = setup(4);
    const base = new BufferPageSource(new Uint8Array(memory.length));
    const withFile = (file: unknown) => ({ ...base, fetch: base.fetch.bind(base), close: () => {}, file }) as never;
    for (const file of [5, 'x', { fd: -1, offset: 0 }, { fd: 1.5, offset: 0 }, { fd: 0, offset: -PAGE }, { fd: 0 }]) {
      expect(() => uffd.serveFrom(withFile(file))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    }
    const fd = fs.openSync('/dev/null', 'r');
    // Not a regular file.
    expect(() => uffd.serveFrom(withFile({ fd, offset: 0 }))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    fs.closeSync(fd);
    expect(() => uffd.serveFrom(withFile({ fd, offset: 0 }))).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'fstat' }));
    // Open for writing only: every read would fail.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-70-'));
    cleanup.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const writeOnly = fs.openSync(path.join(dir, 'w.bin'), 'w');
    cleanup.push(() => fs.closeSync(writeOnly));
    expect(() => uffd.serveFrom(withFile({ fd: writeOnly, offset: 0 }))).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'serveFrom' }));
    // BufferPageSource checks its own the same way.
    expect(() => new BufferPageSource(new Uint8Array(PAGE), { file: { fd: -1, offset: 0 } })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringContaining('options.file') }));
    const closed = fs.openSync('/dev/null', 'r');
    fs.closeSync(closed);
    expect(() => new BufferPageSource(new Uint8Array(PAGE), { file: { fd: closed, offset: 0 } })).toThrow(expect.objectContaining({ code: 'EBADF' }));
    // Nothing started: the uffd still takes a consumer.
    void uffd.serveFrom(base);
  });
});

describe('serveFrom with a peer process', () => {
  const peers: Peer[] = [];
  afterEach(() => {
    for (const p of peers.splice(0)) p.close();
  });

  it('MINOR faults on a memfd are resolved natively with UFFDIO_CONTINUE', async () => {
    const p = await startPeer({ pages: 16, memory: 'memfd', fill: 0x33, modes: { minor: true }, features: ['MINOR_SHMEM'], script: [{ read: 'all' }, { check: 0x33 }] });
    peers.push(p);
    void p.uffd.serveFrom(null);
    const { report, code } = await p.go();
    expect(code).toBe(0);
    expect(report).toMatchObject({ sums: [16 * 0x33], checks: [16] });
    p.uffd.close();
    expect(p.uffd.stats()).toMatchObject({ nativeFaults: 16, continuedPages: 16, jsFaults: 0 });
  });

  it('REMOVE: removed pages read as zeros afterwards, and the event reaches onEvent', async () => {
    const p = await startPeer({ pages: 4, features: ['EVENT_REMOVE'], script: [{ read: 'all' }, { discard: [1, 2] }, { read: 'all' }, { check: 0 }] });
    peers.push(p);
    const events: Event[] = [];
    void p.uffd.serveFrom(new BufferPageSource(Buffer.alloc(4 * p.pageSize, 1)), { onEvent: (event) => events.push(event) });
    const { report } = await p.go();
    expect(report?.sums).toEqual([4, 2]);
    expect(report?.checks).toEqual([2]);
    expect(events.map((e) => e.type)).toEqual(['remove', 'remove']);
    p.uffd.close();
    expect(p.uffd.stats()).toMatchObject({ zeroPages: 2, events: 2 });
  });
});

const HUGE = 2 * 1024 * 1024;
const reservation = reserveHugePages(4, HUGE);
if (reservation.skipReason) console.warn(`serveFrom hugetlb test skipped: ${reservation.skipReason}`);
afterAll(() => reservation.restore());

describe.skipIf(reservation.skipReason !== undefined)(`serveFrom on hugetlb (2 MiB)${reservation.skipReason ? ` — skipped: ${reservation.skipReason}` : ''}`, () => {
  it('copies whole huge pages from the source, and zero-fills a zero range by copy', async () => {
    const data = Mapping.anonymous(2 * HUGE, { hugePages: HUGE });
    const zero = Mapping.anonymous(2 * HUGE, { hugePages: HUGE });
    const uffd = Userfaultfd.open();
    cleanup.push(() => { uffd.close(); data.unmap(); zero.unmap(); });
    uffd.register(data);
    uffd.register(zero);
    const image = pattern(2 * HUGE, 13);
    void uffd.serveFrom(new BufferPageSource(image), {
      ranges: [{ address: data.address, length: data.length }, { address: zero.address, length: zero.length, zero: true }],
    });
    expect(await touch({ address: data.address, length: data.length, expected: image }).result).toMatchObject({ ok: true });
    expect(await touch({ address: zero.address, length: zero.length, expected: new SharedArrayBuffer(2 * HUGE) }).result).toMatchObject({ ok: true });
    uffd.close();
    expect(uffd.stats()).toMatchObject({ nativeFaults: 4, pages: 4, bytes: 4 * HUGE, zeroPages: 2 });
  });
});

describe('the native thread\'s lifetime', () => {
  it('close() stops and joins the thread', async () => {
    const before = serverThreads();
    const { uffd, memory, image } = setup(4);
    void uffd.serveFrom(new BufferPageSource(image));
    expect(serverThreads()).toBe(before + 1);
    const { result } = touch({ address: memory.address, length: memory.length, expected: image });
    expect(await result).toMatchObject({ ok: true });
    uffd.close();
    expect(serverThreads()).toBe(before);
  });

  it('a worker that exits with a native server running takes the thread with it', async () => {
    const { Worker } = await import('node:worker_threads');
    const before = serverThreads();
    const worker = new Worker(`
      const { parentPort } = require('node:worker_threads');
      const { Userfaultfd, Mapping, BufferPageSource } = require(${JSON.stringify(require.resolve('../dist/index.js'))});
      const memory = Mapping.anonymous(4 * 4096 * 16);
      const uffd = Userfaultfd.open();
      uffd.register(memory);
      uffd.serveFrom(new BufferPageSource(new Uint8Array(memory.length)));
      globalThis.keep = { uffd, memory };
      parentPort.postMessage('serving');
    `, { eval: true });
    await new Promise((resolve) => worker.once('message', resolve));
    expect(serverThreads()).toBe(before + 1);
    await worker.terminate();
    expect(serverThreads()).toBe(before);
  });

  it('an unresolvable miss still never hangs the faulting thread (failure policy)', async () => {
    const pages = 4;
    const { uffd, memory } = setup(pages);
    const errors: unknown[] = [];
    void uffd.serveFrom(new BufferPageSource(new Uint8Array(pages * PAGE), { present: new Uint8Array(pages) }), {
      onError: (error) => errors.push(error),
    });
    const { result } = touch({ address: memory.address, length: memory.length, expected: new SharedArrayBuffer(pages * PAGE) });
    expect(await result).toMatchObject({ ok: true });
    expect(errors).toHaveLength(pages);
    expect(errors[0]).toMatchObject({ code: 'ERR_UFFD_UNRESOLVED' });
  });
});

export type { Fault };

describe('process exit', () => {
  it('a process that exits while its native server runs exits promptly and cleanly', async () => {
    const { spawnSync } = await import('node:child_process');
    const script = `
      const { Userfaultfd, Mapping, BufferPageSource } = require(${JSON.stringify(require.resolve('../dist/index.js'))});
      const memory = Mapping.anonymous(64 * 4096);
      const uffd = Userfaultfd.open();
      uffd.register(memory);
      uffd.serveFrom(new BufferPageSource(new Uint8Array(memory.length)), { spin: true });
      setImmediate(() => process.exit(7));
    `;
    const child = spawnSync(process.execPath, ['-e', script], { timeout: 20_000, encoding: 'utf8' });
    expect(child.error).toBeUndefined();
    expect(child.signal).toBeNull();
    expect(child.status).toBe(7);
  });
});
