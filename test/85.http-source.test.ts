// HttpPageSource: lazy restore straight from an HTTP server, against a real
// nginx on loopback (started here, with its own config), with round-trip
// latency, stalls and resets added by a delaying TCP proxy of our own, and
// real faults from a worker thread or a peer process.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import util from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HttpPageSource, Mapping, PostcopyDestination, Userfaultfd, parseHeaderLines, type HttpRequestInfo } from '../dist/index.js';
import { PAGE, pattern, shuffled, touch } from './helpers';
import { startPeer, type Peer } from './peer';
import { nginxMissing, startNginx } from './support/nginx.mjs';
import { DelayProxy } from './support/delay-proxy.mjs';
import { serveFromSource } from './support/serve-source.mjs';

interface Nginx {
  port: number;
  root: string;
  origin: string;
  accessLog(): string[];
  kill(): Promise<void>;
  stop(): Promise<void>;
}

const missing: string | undefined = nginxMissing();
if (missing) console.warn(`HTTP page source tests skipped: ${missing}`);

const SIZE = 4 * 1024 * 1024;
const image = pattern(SIZE, 85);
const imageBytes = new Uint8Array(image);

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

let nginx: Nginx;
beforeAll(async () => {
  if (missing) return;
  nginx = await startNginx();
  fs.writeFileSync(path.join(nginx.root, 'image.bin'), imageBytes);
});
afterAll(async () => {
  await nginx?.stop();
});

/** The byte ranges nginx answered for `file`, from its access log: [start, end) pairs with their status. */
function served(log: string[], file: string): { start: number; end: number; status: number }[] {
  const out: { start: number; end: number; status: number }[] = [];
  for (const line of log) {
    const match = new RegExp(`^GET /${file} (\\d+) "bytes=(\\d+)-(\\d+)"`).exec(line);
    if (match) out.push({ status: Number(match[1]), start: Number(match[2]), end: Number(match[3]) + 1 });
  }
  return out;
}

/** Fails the test if any byte was requested twice, and returns the bytes requested. */
function expectDisjoint(ranges: { start: number; end: number }[]): number {
  const sorted = ranges.slice().sort((a, b) => a.start - b.start);
  let total = 0;
  for (let i = 0; i < sorted.length; i++) {
    if (i > 0) expect(sorted[i]!.start).toBeGreaterThanOrEqual(sorted[i - 1]!.end);
    total += sorted[i]!.end - sorted[i]!.start;
  }
  return total;
}

async function open(url: string, options: Parameters<typeof HttpPageSource.open>[1] = {}): Promise<HttpPageSource> {
  const source = await HttpPageSource.open(url, options);
  cleanup.push(() => source.close());
  return source;
}

/** Registered anonymous memory of the image's size, served from source by a handler on this thread. */
function restore(source: HttpPageSource, options: { onMiss?: (page: number) => void } = {}) {
  const mapping = Mapping.anonymous(source.present.length * PAGE);
  const uffd = Userfaultfd.open();
  cleanup.push(() => mapping.unmap(), () => uffd.close());
  uffd.register(mapping);
  const served = serveFromSource(uffd, mapping.address, mapping.length, source, { failure: 'fill', ...options });
  return { mapping, uffd, stats: served.stats as { faults: number; misses: number; errors: unknown[] } };
}

async function proxy(rttMs: number): Promise<DelayProxy> {
  const started = await DelayProxy.start(nginx.port, rttMs);
  cleanup.push(() => started.close());
  return started;
}

async function peer(pages: number): Promise<Peer> {
  const started = await startPeer({ pages, features: ['POISON'], script: [{ read: 'all' }] });
  cleanup.push(() => started.close());
  return started;
}

describe.skipIf(missing !== undefined)(`HttpPageSource against nginx${missing ? ` — skipped: ${missing}` : ''}`, () => {
  it('restores the image byte for byte, faults in random order, each byte requested once', async () => {
    const requests: HttpRequestInfo[] = [];
    const source = await open(`${nginx.origin}/image.bin`, { backgroundFill: false, readAheadMin: 64 * PAGE, onRequest: (r) => requests.push(r) });
    expect(source.size).toBe(SIZE);
    expect(source.etag).toMatch(/^"/);
    const { mapping, stats } = restore(source);
    const report = await touch({ address: mapping.address, length: mapping.length, order: shuffled(SIZE / PAGE, 7), expected: image }).result;
    expect(report).toMatchObject({ ok: true, mismatches: 0 });
    expect(stats.errors).toEqual([]);
    expect(source.stats.presentPages).toBe(SIZE / PAGE);
    // No page fetched twice: the ranges sent, and those nginx answered, are disjoint and add up to the image.
    expect(source.stats.bytesFetched).toBe(SIZE);
    expect(expectDisjoint(requests)).toBe(SIZE);
    expect(expectDisjoint(served(nginx.accessLog(), 'image.bin').filter((r) => r.status === 206))).toBeGreaterThanOrEqual(SIZE);
  });

  it('restores byte for byte through 4 ms of round-trip time, background fill completing the rest', async () => {
    const link = await proxy(4);
    const requests: HttpRequestInfo[] = [];
    const source = await open(`http://127.0.0.1:${link.port}/image.bin`, { backgroundChunk: 1024 * 1024, onRequest: (r) => requests.push(r) });
    const { mapping, stats } = restore(source);
    // Touch a tenth of the pages; background fill brings the others.
    const order = shuffled(SIZE / PAGE, 3).slice(0, SIZE / PAGE / 10);
    const report = await touch({ address: mapping.address, length: mapping.length, order }).result;
    expect(report.touched).toBe(order.length);
    await source.whenComplete();
    expect(Buffer.compare(Buffer.from(source.bytes.subarray(0, SIZE)), Buffer.from(imageBytes))).toBe(0);
    expect(source.stats.requests.background).toBeGreaterThan(0);
    expect(source.stats.bytesFetched).toBe(SIZE);
    expect(expectDisjoint(requests)).toBe(SIZE);
    // And every page of the registered memory now reads as the image.
    expect((await touch({ address: mapping.address, length: mapping.length, expected: image }).result).ok).toBe(true);
    expect(stats.errors).toEqual([]);
  });

  it('is a source for the post-copy destination: its faults and its installs of landed pages read the image', async () => {
    const link = await proxy(2);
    const source = await open(`http://127.0.0.1:${link.port}/image.bin`, { backgroundChunk: 1024 * 1024 });
    const mapping = Mapping.anonymous(SIZE);
    const uffd = Userfaultfd.open();
    uffd.register(mapping);
    const dest = new PostcopyDestination(uffd, mapping, source);
    cleanup.push(() => mapping.unmap(), () => uffd.close(), () => dest.close());
    const report = await touch({ address: mapping.address, length: mapping.length, order: shuffled(SIZE / PAGE, 9), expected: image }).result;
    expect(report).toMatchObject({ ok: true, mismatches: 0 });
    await dest.complete;
    expect(dest.stats.pagesByFault + dest.stats.pagesInstalled).toBe(SIZE / PAGE);
    expect(source.stats.bytesFetched).toBe(SIZE);
  });

  it('cuts a background transfer short at a page a fault needs sooner, fetching no byte twice', async () => {
    const requests: HttpRequestInfo[] = [];
    // One background transfer for the whole rest of the image, then at once a fault on its last page.
    const source = await open(`${nginx.origin}/image.bin`, { backgroundConnections: 1, backgroundChunk: SIZE, onRequest: (r) => requests.push(r) });
    await source.fetch(SIZE - PAGE, PAGE, { urgent: true });
    await source.whenComplete();
    expect(source.stats.split).toBe(1);
    expect(requests.find((r) => r.priority === 'urgent' && r.start === SIZE - PAGE)).toMatchObject({ end: SIZE });
    expect(source.stats.bytesFetched).toBe(SIZE);
    expect(expectDisjoint(requests)).toBe(SIZE);
    expect(Buffer.compare(Buffer.from(source.bytes.subarray(0, SIZE)), Buffer.from(imageBytes))).toBe(0);
  });

  it('grows read-ahead on sequential faults, from the first window to the largest', async () => {
    const requests: HttpRequestInfo[] = [];
    const min = 4 * PAGE;
    const max = 64 * PAGE;
    const source = await open(`${nginx.origin}/image.bin`, { backgroundFill: false, readAheadMin: min, readAheadMax: max, onRequest: (r) => requests.push(r) });
    const { mapping, stats } = restore(source);
    const report = await touch({ address: mapping.address, length: mapping.length, expected: image }).result;
    expect(report.ok).toBe(true);
    const lengths = requests.map((r) => r.end - r.start);
    expect(lengths[0]).toBe(min);
    expect(Math.max(...lengths)).toBe(max);
    expect(requests.some((r) => r.priority === 'readahead')).toBe(true);
    // Far fewer requests, and faults that waited, than the image has first windows.
    expect(requests.length).toBeLessThan(SIZE / min / 8);
    expect(stats.misses).toBeLessThan(SIZE / min / 8);
    expect(expectDisjoint(requests)).toBe(SIZE);
  });

  it('serves an image whose size is not a multiple of the page size: the last page ends in zeros', async () => {
    const size = 5 * PAGE + 123;
    fs.writeFileSync(path.join(nginx.root, 'odd.bin'), imageBytes.subarray(0, size));
    const source = await open(`${nginx.origin}/odd.bin`, { backgroundFill: false, readAheadMin: PAGE });
    expect(source.size).toBe(size);
    expect(source.present.length).toBe(6);
    await source.fetch(5 * PAGE, PAGE, { urgent: true });
    await source.fetch(0, 6 * PAGE, { urgent: true });
    expect(Buffer.compare(Buffer.from(source.bytes.subarray(0, size)), Buffer.from(imageBytes.subarray(0, size)))).toBe(0);
    expect(source.bytes.subarray(size, 6 * PAGE).every((b) => b === 0)).toBe(true);
    expect(source.stats.bytesFetched).toBe(size);
  });

  it('holds back the present flag of a read-ahead window\'s first page until it is asked for, then reads further ahead without a request for it', async () => {
    const requests: HttpRequestInfo[] = [];
    const window = 16;
    const source = await open(`${nginx.origin}/image.bin`, { backgroundFill: false, readAheadMin: window * PAGE, readAheadMax: window * PAGE, onRequest: (r) => requests.push(r) });
    // Two sequential misses: the second makes a stream, which reads the next window ahead.
    await source.fetch(window * PAGE, PAGE, { urgent: true });
    await source.fetch(2 * window * PAGE, PAGE, { urgent: true });
    const ahead = 3 * window;
    expect(requests.find((r) => r.priority === 'readahead')).toMatchObject({ start: ahead * PAGE, end: (ahead + window) * PAGE });
    // The rest of that window lands and is flagged; its first page (the marker) is not.
    await source.fetch((ahead + 1) * PAGE, (window - 1) * PAGE);
    expect(source.present[ahead]).toBe(0);
    for (let page = ahead + 1; page < ahead + window; page++) expect(source.present[page]).toBe(1);
    // A fault on the marker: no request for it, the flag is set, and the next window is requested.
    const sent = requests.length;
    await source.fetch(ahead * PAGE, PAGE, { urgent: true });
    expect(source.present[ahead]).toBe(1);
    await source.fetch((ahead + window) * PAGE, window * PAGE);
    const after = requests.slice(sent);
    expect(after.some((r) => r.start <= ahead * PAGE && r.end > ahead * PAGE)).toBe(false);
    expect(after.find((r) => r.priority === 'readahead' && r.start === (ahead + window) * PAGE)).toBeDefined();
    expect(Buffer.compare(Buffer.from(source.bytes.subarray(ahead * PAGE, (ahead + 2 * window) * PAGE)), Buffer.from(imageBytes.subarray(ahead * PAGE, (ahead + 2 * window) * PAGE)))).toBe(0);
    expect(expectDisjoint(requests)).toBe(source.stats.bytesFetched);
  });

  it('coalesces neighbouring faults that wait at the same time into one range', async () => {
    const requests: HttpRequestInfo[] = [];
    const source = await open(`${nginx.origin}/image.bin`, { backgroundFill: false, readAheadMin: PAGE, readAheadMax: PAGE, onRequest: (r) => requests.push(r) });
    requests.length = 0;
    // Faults of one batch from the kernel ask in the same tick, as here:
    // pages 100-103 and 105 (one absent page between), and far away 1000.
    await Promise.all([100, 101, 102, 103, 105, 1000].map((page) => source.fetch(page * PAGE, PAGE, { urgent: true })));
    // (Read-ahead may add the page after a run: these faults look sequential.)
    const urgent = requests.filter((r) => r.priority === 'urgent');
    expect(urgent.map((r) => [r.start / PAGE, r.end / PAGE]).sort((a, b) => a[0]! - b[0]!)).toEqual([[100, 106], [1000, 1001]]);
    expectDisjoint(requests);
    expect(source.stats.coalesced).toBe(4);
    for (const page of [100, 101, 102, 103, 104, 105, 1000]) expect(source.present[page]).toBe(1);
    expect(Buffer.compare(Buffer.from(source.bytes.subarray(100 * PAGE, 106 * PAGE)), Buffer.from(imageBytes.subarray(100 * PAGE, 106 * PAGE)))).toBe(0);
  });

  it('retries a transfer reset mid-body and one that stalls, resuming where it stopped, with the same bytes', async () => {
    const link = await proxy(1);
    const lines: string[] = [];
    const source = await open(`http://127.0.0.1:${link.port}/image.bin`, {
      backgroundFill: false, readAheadMin: 16 * PAGE, readAheadMax: 16 * PAGE, stallTimeoutMs: 400, retryDelayMs: 10, log: (line) => lines.push(line),
    });
    let misses = 0;
    const { mapping, stats } = restore(source, {
      onMiss: () => {
        misses++;
        if (misses === 20) link.dropExisting();
        if (misses === 60) link.stallExisting();
      },
    });
    const report = await touch({ address: mapping.address, length: mapping.length, order: shuffled(SIZE / PAGE, 11), expected: image }).result;
    expect(report).toMatchObject({ ok: true, mismatches: 0 });
    expect(stats.errors).toEqual([]);
    expect(source.stats.retries).toBeGreaterThanOrEqual(1);
    expect(lines.some((line) => /failed: .*; retry 1\/5/.test(line))).toBe(true);
  });

  it('answers a fault whose server died with SIGBUS (UFFDIO_POISON) after bounded retries, and says why', async () => {
    const own = await startNginx();
    cleanup.push(() => own.stop());
    fs.writeFileSync(path.join(own.root, 'image.bin'), imageBytes);
    const lines: string[] = [];
    const source = await open(`${own.origin}/image.bin`, {
      backgroundFill: false, readAheadMin: 4 * PAGE, readAheadMax: 4 * PAGE, retries: 3, retryDelayMs: 20, log: (line) => lines.push(line),
    });
    const p = await peer(SIZE / PAGE);
    let misses = 0;
    const served = serveFromSource(p.uffd, p.address, p.length, source, { onMiss: () => void (++misses === 50 && own.kill()) });
    const started = Date.now();
    const { signal } = await p.go();
    expect(signal).toBe('SIGBUS');
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(source.error?.code).toBe('ERR_UFFD_SOURCE_UNAVAILABLE');
    expect(served.stats.errors[0]).toBe(source.error);
    expect(lines.filter((line) => /retry \d\/3/.test(line)).length).toBeGreaterThanOrEqual(3);
    expect(lines.at(-1)).toMatch(/ERR_UFFD_SOURCE_UNAVAILABLE: GET bytes=\d+-\d+ of http:\/\/127\.0\.0\.1:\d+\/image\.bin failed 4 time\(s\), the last with: .*ECONNREFUSED/);
    // Later fetches of absent pages fail at once with the same error.
    const absent = source.present.indexOf(0);
    await expect(source.fetch(absent * PAGE, PAGE, { urgent: true })).rejects.toBe(source.error);
  });

  it('is poisoned, not zero-filled, by default in the post-copy destination when its server dies: SIGBUS in the faulting process, complete rejects', async () => {
    const own = await startNginx();
    cleanup.push(() => own.stop());
    fs.writeFileSync(path.join(own.root, 'image.bin'), imageBytes);
    let requests = 0;
    const source = await open(`${own.origin}/image.bin`, {
      backgroundFill: false, readAheadMin: 4 * PAGE, readAheadMax: 4 * PAGE, retries: 2, retryDelayMs: 20,
      onRequest: () => void (++requests === 20 && own.kill()),
    });
    expect(source.failure).toBe('poison');
    const p = await peer(SIZE / PAGE);
    // No failure option: the destination takes the source's policy.
    const dest = new PostcopyDestination(p.uffd, { address: p.address, length: p.length }, source);
    cleanup.push(() => dest.close());
    const started = Date.now();
    const { signal, report } = await p.go();
    expect(signal).toBe('SIGBUS');
    expect(report).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(10_000);
    await expect(dest.complete).rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_UNAVAILABLE' });
    expect(dest.error).toBe(source.error);
  });

  it('fails with ERR_UFFD_SOURCE_CHANGED when the object is replaced mid-restore, never serving a byte of the new one', async () => {
    fs.writeFileSync(path.join(nginx.root, 'replaced.bin'), imageBytes);
    const source = await open(`${nginx.origin}/replaced.bin`, { backgroundFill: false, readAheadMin: 4 * PAGE, readAheadMax: 4 * PAGE });
    const p = await peer(SIZE / PAGE);
    let misses = 0;
    serveFromSource(p.uffd, p.address, p.length, source, {
      onMiss: () => {
        if (++misses !== 50) return;
        // A new version, same size, a different modification time (hence ETag), swapped in atomically.
        const next = path.join(nginx.root, 'replaced.next');
        fs.writeFileSync(next, new Uint8Array(pattern(SIZE, 86)));
        const later = new Date(Date.now() + 60_000);
        fs.utimesSync(next, later, later);
        fs.renameSync(next, path.join(nginx.root, 'replaced.bin'));
      },
    });
    const { signal } = await p.go();
    expect(signal).toBe('SIGBUS');
    expect(source.error?.code).toBe('ERR_UFFD_SOURCE_CHANGED');
    expect(source.error?.message).toMatch(/412 Precondition Failed/);
    // Every page in the cache is the pinned version's.
    let present = 0;
    for (let page = 0; page < SIZE / PAGE; page++) {
      if (!source.present[page]) continue;
      present++;
      const at = page * PAGE;
      expect(Buffer.compare(Buffer.from(source.bytes.subarray(at, at + PAGE)), Buffer.from(imageBytes.subarray(at, at + PAGE)))).toBe(0);
    }
    expect(present).toBeGreaterThanOrEqual(50);
    expect(present).toBeLessThan(SIZE / PAGE);
  });

  it('pins by Last-Modified where the server sends no ETag, and notices a replacement through If-Unmodified-Since', async () => {
    fs.mkdirSync(path.join(nginx.root, 'no-etag'), { recursive: true });
    const file = path.join(nginx.root, 'no-etag', 'image.bin');
    fs.writeFileSync(file, imageBytes);
    const source = await open(`${nginx.origin}/no-etag/image.bin`, { backgroundFill: false });
    expect(source.etag).toBeUndefined();
    expect(source.lastModified).toMatch(/GMT$/);
    await source.fetch(PAGE * 100, PAGE, { urgent: true });
    const next = `${file}.next`;
    fs.writeFileSync(next, new Uint8Array(pattern(SIZE, 87)));
    const later = new Date(Date.now() + 120_000);
    fs.utimesSync(next, later, later);
    fs.renameSync(next, file);
    await expect(source.fetch(PAGE * 500, PAGE, { urgent: true })).rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_CHANGED' });
    expect(nginx.accessLog().filter((line) => line.startsWith('GET /no-etag/image.bin 412'))).toHaveLength(1);
  });

  it('sends credentials from a header and a presigned query, and never prints them', async () => {
    const secret = 'Bearer tok-5ecret-85';
    const own = await startNginx({ requireHeader: { name: 'Authorization', value: secret } });
    cleanup.push(() => own.stop());
    fs.writeFileSync(path.join(own.root, 'image.bin'), imageBytes);
    const url = `${own.origin}/image.bin?X-Amz-Signature=sig-5ecret-85`;
    // Without the header: refused, and the message names the URL without its query.
    const refused = await HttpPageSource.open(url).then(() => undefined, (e: Error & { code: string }) => e);
    expect(refused?.code).toBe('ERR_UFFD_SOURCE_HTTP');
    expect(refused?.message).toContain('answered 403');
    expect(refused?.message).toContain('/image.bin?<redacted>');
    const lines: string[] = [];
    const headers = parseHeaderLines(`Authorization: ${secret}\n`);
    const source = await open(url, { headers, backgroundFill: false, retries: 1, retryDelayMs: 10, log: (line) => lines.push(line) });
    await source.fetch(0, 64 * PAGE, { urgent: true });
    expect(Buffer.compare(Buffer.from(source.bytes.subarray(0, 64 * PAGE)), Buffer.from(imageBytes.subarray(0, 64 * PAGE)))).toBe(0);
    const granted = own.accessLog().filter((line) => line.includes(' 206 '));
    expect(granted.length).toBeGreaterThan(0);
    expect(granted.every((line) => line.endsWith(`"${secret}"`))).toBe(true);
    await own.kill();
    const failure = await source.fetch(SIZE - PAGE, PAGE, { urgent: true }).then(() => undefined, (e: Error) => e);
    expect(failure).toBeInstanceOf(Error);
    const printed = [...lines, failure!.message, String(failure!.stack), util.inspect(source, { depth: 4 }), source.url].join('\n');
    for (const needle of ['5ecret', 'X-Amz-Signature']) expect(printed).not.toContain(needle);
  });

  it('refuses a server that ignores Range, and bad arguments, with clear errors', async () => {
    const plain = http.createServer((_, res) => {
      res.writeHead(200, { 'content-length': '8192', etag: '"x"' });
      res.end(Buffer.alloc(8192));
    });
    await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve));
    cleanup.push(() => new Promise((resolve) => plain.close(resolve)));
    const { port } = plain.address() as { port: number };
    await expect(HttpPageSource.open(`http://127.0.0.1:${port}/x`)).rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_NO_RANGES' });
    await expect(HttpPageSource.open('ftp://example.com/x')).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' });
    await expect(HttpPageSource.open(`${nginx.origin}/absent.bin`)).rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_HTTP', message: expect.stringContaining('404') });
    const source = await open(`${nginx.origin}/image.bin`, { backgroundFill: false });
    await expect(source.fetch(1, PAGE)).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(source.fetch(SIZE, PAGE)).rejects.toMatchObject({ code: 'EINVAL' });
    source.close();
    await expect(source.fetch(0, PAGE)).rejects.toMatchObject({ code: 'ERR_UFFD_CLOSED' });
  });
});
