// HttpPageSource against servers that do what HTTP allows (RFC 9110) or what
// object stores do, beyond nginx's well-behaved answers: content codings,
// trickling bodies, interim responses, Retry-After, short 206s, range units
// in other cases, 416 for a shrunk object, redirects. Each server is a real
// one on loopback (node:http), scripted per request.
import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { HttpPageSource } from '../dist/index.js';
import { PAGE, pattern } from './helpers';

const SIZE = 64 * PAGE;
const image = new Uint8Array(pattern(SIZE, 86));
const ETAG = '"v1"';

interface Asked { n: number; start: number; end: number; headers: http.IncomingHttpHeaders }
/** Returns true when it answered the request itself; otherwise the server sends the exact 206. */
type Behaviour = (asked: Asked, res: http.ServerResponse) => boolean | void;

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

function answer(res: http.ServerResponse, start: number, end: number, extra: http.OutgoingHttpHeaders = {}): void {
  res.writeHead(206, {
    'content-range': `bytes ${start}-${end - 1}/${SIZE}`, 'content-length': String(end - start), etag: ETAG, ...extra,
  });
  res.end(Buffer.from(image.subarray(start, end)));
}

async function server(behave: Behaviour = () => {}): Promise<{ url: string; origin: string; asked: Asked[] }> {
  const asked: Asked[] = [];
  const s = http.createServer((req, res) => {
    const match = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    const start = match ? Number(match[1]) : 0;
    const end = match ? Math.min(SIZE, Number(match[2]) + 1) : SIZE;
    const a = { n: asked.length, start, end, headers: req.headers };
    asked.push(a);
    if (!behave(a, res)) answer(res, start, end);
  });
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  cleanup.push(() => new Promise((resolve) => {
    s.closeAllConnections();
    s.close(resolve);
  }));
  const origin = `http://127.0.0.1:${(s.address() as { port: number }).port}`;
  return { url: `${origin}/image.bin`, origin, asked };
}

async function open(url: string, options: Parameters<typeof HttpPageSource.open>[1] = {}): Promise<HttpPageSource> {
  const source = await HttpPageSource.open(url, { backgroundFill: false, readAheadMin: 4 * PAGE, readAheadMax: 4 * PAGE, ...options });
  cleanup.push(() => source.close());
  return source;
}

/** Every page the source says is present holds the image's bytes. */
function expectOnlyRightPages(source: HttpPageSource): number {
  let present = 0;
  for (let page = 0; page < SIZE / PAGE; page++) {
    if (!source.present[page]) continue;
    present++;
    expect(Buffer.compare(Buffer.from(source.bytes.subarray(page * PAGE, (page + 1) * PAGE)), Buffer.from(image.subarray(page * PAGE, (page + 1) * PAGE)))).toBe(0);
  }
  return present;
}

/** The page asked for is present, and every present page is right (how many read-ahead brought in depends on the page size). */
function expectServed(source: HttpPageSource, page: number): void {
  expect(source.present[page]).toBe(1);
  expect(expectOnlyRightPages(source)).toBeGreaterThan(1);
}

describe('HttpPageSource and HTTP semantics', () => {
  it('asks for the identity coding, and refuses coded answers before a byte of them lands', async () => {
    // An S3 object stored with Content-Encoding metadata: every answer carries it.
    const stored = await server((a, res) => (answer(res, a.start, a.end, { 'content-encoding': 'gzip' }), true));
    await expect(HttpPageSource.open(stored.url)).rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_HTTP', message: expect.stringContaining('Content-Encoding: gzip') });
    expect(stored.asked[0]!.headers['accept-encoding']).toBe('identity');
    // A server that starts compressing mid-restore (and one that codes the transfer).
    for (const coding of [{ 'content-encoding': 'gzip' }, { 'transfer-encoding': 'gzip, chunked' }]) {
      const later = await server((a, res) => {
        if (a.n === 0) return false;
        res.writeHead(206, { 'content-range': `bytes ${a.start}-${a.end - 1}/${SIZE}`, etag: ETAG, ...coding });
        res.end(Buffer.from(image.subarray(a.start, a.end)));
        return true;
      });
      const source = await open(later.url);
      await expect(source.fetch(32 * PAGE, PAGE, { urgent: true })).rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_HTTP', message: expect.stringMatching(/(Content|Transfer)-Encoding: .*gzip/) });
      expect(source.present[32]).toBe(0);
      expect(expectOnlyRightPages(source)).toBe(4);
      expect(later.asked.every((a) => a.headers['accept-encoding'] === 'identity')).toBe(true);
    }
  });

  it('retries a body that trickles in at under a page per stallTimeoutMs, and fails in bounded time if every attempt does', async () => {
    const trickle = (a: Asked, res: http.ServerResponse): void => {
      res.writeHead(206, { 'content-range': `bytes ${a.start}-${a.end - 1}/${SIZE}`, 'content-length': String(a.end - a.start), etag: ETAG });
      let at = a.start;
      const timer = setInterval(() => {
        if (res.destroyed || at >= a.end) return clearInterval(timer);
        res.write(Buffer.from(image.subarray(at, at + 16)));
        at += 16;
      }, 50);
      res.on('close', () => clearInterval(timer));
    };
    // Only the first attempt at the range trickles: the retry gets the bytes.
    const once = await server((a, res) => a.n === 1 && (trickle(a, res), true));
    const lines: string[] = [];
    const source = await open(once.url, { stallTimeoutMs: 300, retryDelayMs: 10, log: (line) => lines.push(line) });
    await source.fetch(32 * PAGE, PAGE, { urgent: true });
    expectServed(source, 32);
    expect(lines.some((line) => /under a page: too slow; retry 1\/5/.test(line))).toBe(true);
    // Every attempt trickles: the source fails within (retries + 1) x stallTimeoutMs and the backoff.
    const always = await server((a, res) => a.n >= 1 && (trickle(a, res), true));
    const failing = await open(always.url, { stallTimeoutMs: 300, retries: 2, retryDelayMs: 10 });
    const started = performance.now();
    await expect(failing.fetch(32 * PAGE, PAGE, { urgent: true })).rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_UNAVAILABLE', message: expect.stringContaining('too slow') });
    expect(performance.now() - started).toBeLessThan(3 * 300 + 30 + 1500);
  });

  it('reads past interim answers (103 Early Hints) to the real one', async () => {
    const hints = await server((a, res) => {
      if (a.n === 0) return false;
      res.writeEarlyHints({ link: '</other>; rel=preload' });
      answer(res, a.start, a.end);
      return true;
    });
    const source = await open(hints.url, { retries: 0 });
    await source.fetch(40 * PAGE, PAGE, { urgent: true });
    expectServed(source, 40);
  });

  it('waits as long as a 503 or 429 asks (Retry-After), up to stallTimeoutMs', async () => {
    const busy = (status: number, after: string) => (a: Asked, res: http.ServerResponse): boolean => {
      if (a.n !== 1) return false;
      res.writeHead(status, { 'retry-after': after, 'content-length': '0' });
      res.end();
      return true;
    };
    for (const [status, after, stall, expected] of [[503, '1', 10_000, 1000], [429, '3600', 500, 500]] as const) {
      const s = await server(busy(status, after));
      const lines: string[] = [];
      const source = await open(s.url, { stallTimeoutMs: stall, retryDelayMs: 10, log: (line) => lines.push(line) });
      const started = performance.now();
      await source.fetch(32 * PAGE, PAGE, { urgent: true });
      expect(performance.now() - started).toBeGreaterThanOrEqual(expected - 50);
      expect(lines).toEqual([expect.stringMatching(new RegExp(`HTTP ${status} .*retry 1/5 in ${expected} ms`))]);
    }
    // An HTTP date works too.
    const dated = await server(busy(503, new Date(Date.now() + 1500).toUTCString()));
    const lines: string[] = [];
    const source = await open(dated.url, { retryDelayMs: 10, log: (line) => lines.push(line) });
    await source.fetch(32 * PAGE, PAGE, { urgent: true });
    expect(Number(/in (\d+) ms/.exec(lines[0] ?? '')?.[1])).toBeGreaterThan(100);
  });

  it('takes a 206 that carries less than the range, and asks for the rest without counting a retry', async () => {
    // A server that caps every answer at 3 pages (and says so in Content-Range).
    const capped = await server((a, res) => (answer(res, a.start, Math.min(a.end, a.start + 3 * PAGE)), true));
    const source = await open(capped.url, { readAheadMin: 16 * PAGE, readAheadMax: 16 * PAGE, retries: 0 });
    await source.fetch(0, SIZE, { urgent: true });
    expect(expectOnlyRightPages(source)).toBe(SIZE / PAGE);
    expect(source.stats.retries).toBe(0);
    expect(capped.asked.length).toBeGreaterThanOrEqual(SIZE / (3 * PAGE));
  });

  it('reads the range unit in any case (RFC 9110 §14.1)', async () => {
    const shouting = await server((a, res) => (answer(res, a.start, a.end, { 'content-range': `BYTES ${a.start}-${a.end - 1}/${SIZE}` }), true));
    const source = await open(shouting.url);
    await source.fetch(48 * PAGE, PAGE, { urgent: true });
    expectServed(source, 48);
  });

  it('fails with ERR_UFFD_SOURCE_CHANGED when a 416 says the object shrank', async () => {
    const shrunk = await server((a, res) => {
      if (a.n === 0) return false;
      res.writeHead(416, { 'content-range': `bytes */${SIZE / 2}`, 'content-length': '0' });
      res.end();
      return true;
    });
    const source = await open(shrunk.url);
    await expect(source.fetch(48 * PAGE, PAGE, { urgent: true })).rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_CHANGED', message: expect.stringContaining(`from ${SIZE} to ${SIZE / 2} bytes`) });
  });

  it('follows redirects at open, without the credentials on another origin; refuses one mid-restore, naming where it led', async () => {
    const final = await server();
    const first = await server((a, res) => {
      res.writeHead(a.n === 0 ? 307 : 302, { location: `${final.url}?X-Amz-Signature=5ecret` });
      res.end();
      return true;
    });
    const lines: string[] = [];
    const source = await open(first.url, { headers: { authorization: 'Bearer tok' }, log: (line) => lines.push(line) });
    expect(source.url).toBe(`${final.url}?<redacted>`);
    expect(lines).toEqual([`${first.url}: redirected (307) to ${final.url}?<redacted>`]);
    expect(first.asked[0]!.headers.authorization).toBe('Bearer tok');
    expect(final.asked[0]!.headers.authorization).toBeUndefined();
    await source.fetch(32 * PAGE, PAGE, { urgent: true });
    expectServed(source, 32);
    // Same origin: the credentials go along.
    const same = await server((a, res) => {
      if (a.n > 0 || !a.headers.authorization) return false;
      res.writeHead(301, { location: '/moved.bin' });
      res.end();
      return true;
    });
    await open(same.url, { headers: { authorization: 'Bearer tok' } });
    expect(same.asked.map((a) => a.headers.authorization)).toEqual(['Bearer tok', 'Bearer tok']);
    // A loop ends.
    const loop = await server((_, res) => {
      res.writeHead(302, { location: '/again' });
      res.end();
      return true;
    });
    await expect(HttpPageSource.open(loop.url)).rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_HTTP', message: expect.stringContaining('redirected more than 5 times') });
    // After open, the URL is fixed.
    const moving = await server((a, res) => {
      if (a.n === 0) return false;
      res.writeHead(302, { location: `${final.url}?X-Amz-Signature=5ecret` });
      res.end();
      return true;
    });
    const pinned = await open(moving.url, { retries: 0 });
    const error = await pinned.fetch(32 * PAGE, PAGE, { urgent: true }).then(() => undefined, (e: Error) => e);
    expect(error).toMatchObject({ code: 'ERR_UFFD_SOURCE_HTTP', message: expect.stringContaining(`redirecting to ${final.url}?<redacted>`) });
    expect(error!.message).not.toContain('5ecret');
  });
});
