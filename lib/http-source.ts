// A page source that reads a memory image from HTTP(S) object storage (S3 and
// its compatibles, GCS, a CDN, any server that answers Range requests) into a
// local memfd, a page at most once, as faults ask for it and in the background.
//
// The transport is undici: a pool of keep-alive connections, several requests
// in flight. Which ranges to request, and when, is lib/fetch-scheduler.ts.
// The object is pinned at open: its strong ETag (or else its Last-Modified)
// goes into If-Match (If-Unmodified-Since) on every later request, and every
// answer is checked against it, so an object replaced mid-restore fails the
// source with ERR_UFFD_SOURCE_CHANGED instead of mixing two versions' bytes.
// Transient failures (connection errors, stalls, 5xx) are retried with
// exponential backoff a bounded number of times; then the source fails with
// ERR_UFFD_SOURCE_UNAVAILABLE and every fetch, waiting or later, rejects.
// Credentials (headers, a presigned URL's query, user:password@) are sent and
// never printed: messages name the URL without its query or user part.
// What an answer must be, and the errors, are lib/http-response.ts.
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool, type Dispatcher } from 'undici';
import { UffdError, argTypeError, argValueError, invalid, libraryError } from './errors';
import { FetchScheduler, type Priority, type Transfer } from './fetch-scheduler';
import { Memfd, type Mapping, systemPageSize } from './memory';
import {
  Fatal, IDENTITY, MAX_REDIRECTS, ORIGIN_BOUND_HEADERS, REDIRECTS, Transient, backoff, changed, checkCoding, describeError, discard,
  header, httpError, isTransientStatus, parseContentRange, pinOf, redirectTarget, retryAfterMs, statusHint, unavailable, unsatisfiedTotal,
  type Pin, type Response,
} from './http-response';
import type { FetchOptions, PageSource, SourceFile } from './page-source';
import * as validate from './validate';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Defaults, in one place (docs/remote.md explains each). */
export const HTTP_SOURCE_DEFAULTS = {
  connections: 8,
  backgroundConnections: 4,
  reservedConnections: 2,
  backgroundFill: true,
  backgroundChunk: 4 * MiB,
  readAheadMin: 64 * KiB,
  readAheadMax: 4 * MiB,
  retries: 5,
  retryDelayMs: 100,
  retryDelayMaxMs: 2000,
  stallTimeoutMs: 10_000,
} as const;

// Background requests grow up to this with a high bandwidth-delay product.
const MAX_BACKGROUND_CHUNK = 64 * MiB;

/** The environment variable the CLI reads request headers from ("Name: value", one per line). */
export const HEADERS_ENV = 'USERFAULTFD_MEM_URL_HEADERS';

export interface HttpSourceOptions {
  /** Sent with every request (Authorization, x-amz-security-token, ...); never printed. */
  headers?: Record<string, string>;
  /** Connections to the server at most, hence requests in flight at most. */
  connections?: number;
  /** Connections background fill may use at most. */
  backgroundConnections?: number;
  /** Connections kept for faults: read-ahead and background fill never take them. */
  reservedConnections?: number;
  /** Fetch every page nobody asked for, in large ranges behind the faults (default true). */
  backgroundFill?: boolean;
  /** Bytes per background request. */
  backgroundChunk?: number;
  /** The first read-ahead window of a stream of faults, in bytes; also what a random fault fetches. */
  readAheadMin?: number;
  /** The largest read-ahead window (and request), in bytes. */
  readAheadMax?: number;
  /** Retries of a failed request (so retries + 1 attempts) before the source fails. */
  retries?: number;
  /** The first retry's delay; each further one doubles, up to retryDelayMaxMs. */
  retryDelayMs?: number;
  retryDelayMaxMs?: number;
  /** A request that receives nothing for this long (connect, headers, or between body bytes), or less than a page, is retried; also the longest Retry-After honoured. */
  stallTimeoutMs?: number;
  /** Progress lines: retries, the failure, completion. */
  log?: (line: string) => void;
  /** Called for every HTTP request sent (byte range, end exclusive). */
  onRequest?: (request: HttpRequestInfo) => void;
}

export interface HttpRequestInfo {
  start: number;
  /** Lowered when the transfer is cut short at a page a fault needed sooner (the bytes after it are not used). */
  end: number;
  priority: Priority;
  /** 0 for the first attempt at this range, then 1, 2, ... for retries (which start where the last one stopped). */
  attempt: number;
}

export interface HttpSourceStats {
  size: number;
  pages: number;
  presentPages: number;
  /** HTTP requests sent, by priority (retries included). */
  requests: Record<Priority, number>;
  retries: number;
  /** Body bytes received. */
  bytesFetched: number;
  inFlight: number;
  /** Urgent ranges that went out joined to a neighbour. */
  coalesced: number;
  /** Read-ahead and background transfers cut short at a page a fault needed sooner. */
  split: number;
}

type ResolvedOptions = Required<Omit<HttpSourceOptions, 'headers' | 'log' | 'onRequest'>>;

// How far a transfer got, and how fast: for the split advice.
interface Timing {
  pos: number;
  sentAt: number;
  firstByteAt: number | undefined;
  firstBytePos: number;
  /** What onRequest was given for the current attempt. */
  info: HttpRequestInfo | undefined;
}

/** The URL as it may be printed: no user:password, no query (a presigned URL's signature lives there). */
export function redactUrl(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}${url.search ? '?<redacted>' : ''}`;
}

/** Parses "Name: value" lines (the HEADERS_ENV format) into headers; a malformed line throws, naming `name` (where the text came from). */
export function parseHeaderLines(text: string, name = HEADERS_ENV): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const line of text.split(/\r?\n/)) {
    if (line.trim() === '') continue;
    const colon = line.indexOf(':');
    const header = colon > 0 ? line.slice(0, colon).trim() : '';
    // The value is a secret: the message quotes nothing of the line.
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(header)) {
      throw argValueError(name, 'must hold headers in the form "Name: value", one per line; a line has no valid header name before its colon');
    }
    headers[header.toLowerCase()] = line.slice(colon + 1).trim();
  }
  return headers;
}

function positive(value: unknown, name: string, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  const n = validate.size(value, name);
  if (n < min) throw argValueError(name, `must be at least ${min}. Received ${n}`);
  return n;
}

export class HttpPageSource implements PageSource {
  readonly size: number;
  readonly pageSize: number;
  /** The local cache: size rounded up to a page; pages not present read as zeros. */
  readonly bytes: Uint8Array;
  /** One flag per page; shared memory, so workers and native threads can read it. */
  readonly present: Uint8Array;
  readonly file: SourceFile;
  /** The URL as printed: without credentials. */
  readonly url: string;
  /** The pinned identity of the object: its ETag and Last-Modified as the server sent them at open. */
  readonly etag: string | undefined;
  readonly lastModified: string | undefined;
  /** A page that cannot be fetched has no stand-in: zeros would be wrong bytes, so handlers that take their default from the source poison it (SIGBUS). */
  readonly failure = 'poison' as const;

  readonly #target: URL;
  readonly #headers: Record<string, string>;
  readonly #pin: Pin;
  readonly #pool: Pool;
  readonly #memfd: Memfd;
  readonly #mapping: Mapping;
  readonly #scheduler: FetchScheduler;
  readonly #abort = new AbortController();
  readonly #options: ResolvedOptions;
  readonly #log: (line: string) => void;
  readonly #onRequest: ((request: HttpRequestInfo) => void) | undefined;
  #first: { response: Response; end: number; sentAt: number } | undefined;
  readonly #timings = new Map<Transfer, Timing>();
  #rttMs: number | undefined;
  #rate: number | undefined;
  #closed = false;
  #retries = 0;
  #bytesFetched = 0;
  #requests: Record<Priority, number> = { urgent: 0, readahead: 0, background: 0 };

  private constructor(init: {
    target: URL; headers: Record<string, string>; pool: Pool; size: number; pin: Pin;
    options: ResolvedOptions; log: (line: string) => void; onRequest: HttpSourceOptions['onRequest'];
    first: { response: Response; end: number; sentAt: number };
  }) {
    this.#target = init.target;
    this.#headers = init.headers;
    this.#pool = init.pool;
    this.#pin = init.pin;
    this.#options = init.options;
    this.#log = init.log;
    this.#onRequest = init.onRequest;
    this.url = redactUrl(init.target);
    this.etag = init.pin.etag;
    this.lastModified = init.pin.lastModified;
    this.size = init.size;
    this.pageSize = systemPageSize();
    const pages = Math.ceil(init.size / this.pageSize);
    this.#memfd = Memfd.create(pages * this.pageSize, { name: 'userfaultfd-http-cache' });
    try {
      this.#mapping = this.#memfd.map();
    } catch (error) {
      this.#memfd.close();
      throw error;
    }
    this.bytes = this.#mapping.view();
    this.file = { fd: this.#memfd.fd, offset: 0 };
    this.present = new Uint8Array(new SharedArrayBuffer(pages));
    const o = init.options;
    const page = (bytes: number): number => Math.max(1, Math.floor(bytes / this.pageSize));
    const slots = o.connections;
    this.#scheduler = new FetchScheduler(pages, this.present, {
      slots,
      reserve: Math.min(o.reservedConnections, slots - 1),
      backgroundSlots: Math.min(o.backgroundConnections, slots),
      background: o.backgroundFill,
      minWindow: page(o.readAheadMin),
      maxWindow: Math.max(page(o.readAheadMin), page(o.readAheadMax)),
      backgroundChunk: () => page(this.#backgroundChunk()),
      maxRequest: Math.max(page(o.readAheadMin), page(o.readAheadMax), page(o.backgroundChunk)),
      gap: page(o.readAheadMin),
    }, (transfer) => this.#transfer(transfer), (transfer, page) => this.#advise(transfer, page));
    this.#scheduler.whenComplete().then(
      () => this.#log(`${this.url}: all ${(this.size / MiB).toFixed(1)} MiB present (${this.#describeRequests()})`),
      () => {},
    );
    // The opening request's body is the image's first pages: stream it in
    // like any other request (the scheduler counts it as urgent work).
    this.#first = init.first;
    this.#scheduler.claim(0, Math.ceil(init.first.end / this.pageSize), 'urgent');
  }

  /**
   * Opens the object at url: one ranged GET learns its size and pins its
   * identity (ETag / Last-Modified), and its body is the first pages of the
   * cache. Background fill, when on, starts at once.
   */
  static async open(url: string | URL, options?: HttpSourceOptions): Promise<HttpPageSource> {
    const opts = validate.options<HttpSourceOptions>(options, 'options');
    let target: URL;
    try {
      target = new URL(url);
    } catch {
      throw argValueError('url', 'must be an absolute http: or https: URL');
    }
    if (target.protocol !== 'http:' && target.protocol !== 'https:') throw argValueError('url', `must be an http: or https: URL, not ${target.protocol}`);
    const headers: Record<string, string> = {};
    if (opts.headers !== undefined) {
      if (opts.headers === null || typeof opts.headers !== 'object') throw argTypeError('options.headers', 'an object of strings', opts.headers);
      for (const [name, value] of Object.entries(opts.headers)) {
        if (typeof value !== 'string') throw argValueError('options.headers', `holds a non-string value for ${name}`);
        headers[name.toLowerCase()] = value;
      }
    }
    // user:password@ becomes Basic authorization, and leaves the URL.
    if (target.username || target.password) {
      const credentials = `${decodeURIComponent(target.username)}:${decodeURIComponent(target.password)}`;
      headers.authorization ??= `Basic ${Buffer.from(credentials).toString('base64')}`;
      target.username = '';
      target.password = '';
    }
    const d = HTTP_SOURCE_DEFAULTS;
    const resolved = {
      connections: positive(opts.connections, 'options.connections', d.connections),
      backgroundConnections: positive(opts.backgroundConnections, 'options.backgroundConnections', d.backgroundConnections),
      reservedConnections: positive(opts.reservedConnections, 'options.reservedConnections', d.reservedConnections, 0),
      backgroundFill: opts.backgroundFill ?? d.backgroundFill,
      backgroundChunk: positive(opts.backgroundChunk, 'options.backgroundChunk', d.backgroundChunk),
      readAheadMin: positive(opts.readAheadMin, 'options.readAheadMin', d.readAheadMin),
      readAheadMax: positive(opts.readAheadMax, 'options.readAheadMax', d.readAheadMax),
      retries: positive(opts.retries, 'options.retries', d.retries, 0),
      retryDelayMs: positive(opts.retryDelayMs, 'options.retryDelayMs', d.retryDelayMs, 0),
      retryDelayMaxMs: positive(opts.retryDelayMaxMs, 'options.retryDelayMaxMs', d.retryDelayMaxMs, 0),
      stallTimeoutMs: positive(opts.stallTimeoutMs, 'options.stallTimeoutMs', d.stallTimeoutMs),
    };
    if (typeof resolved.backgroundFill !== 'boolean') throw argTypeError('options.backgroundFill', 'a boolean', resolved.backgroundFill);
    if (opts.log !== undefined && typeof opts.log !== 'function') throw argTypeError('options.log', 'a function', opts.log);
    if (opts.onRequest !== undefined && typeof opts.onRequest !== 'function') throw argTypeError('options.onRequest', 'a function', opts.onRequest);
    const log = opts.log ?? (() => {});
    const firstEnd = Math.max(systemPageSize(), resolved.readAheadMin);
    // Redirects are followed here, and the final URL is the object's for
    // the rest of the restore (its pin is that server's validators).
    for (let redirects = 0; ; redirects++) {
      const pool = new Pool(target.origin, {
        connections: resolved.connections,
        pipelining: 1,
        connectTimeout: resolved.stallTimeoutMs,
        keepAliveTimeout: 60_000,
      });
      const shown = redactUrl(target);
      try {
        const sentAt = performance.now();
        const probed = await HttpPageSource.#probe(pool, target, headers, firstEnd, resolved, log, shown);
        if ('location' in probed) {
          void pool.destroy().catch(() => {});
          if (redirects >= MAX_REDIRECTS) throw httpError(shown, `redirected more than ${MAX_REDIRECTS} times`);
          const next = redirectTarget(probed.location, target, shown);
          if (next.origin !== target.origin) for (const name of ORIGIN_BOUND_HEADERS) delete headers[name];
          log(`${shown}: redirected (${probed.status}) to ${redactUrl(next)}`);
          target = next;
          continue;
        }
        const { response, size, pin, end } = probed;
        try {
          return new HttpPageSource({
            target, headers, pool, size, pin, options: resolved, log, onRequest: opts.onRequest,
            first: { response, end, sentAt },
          });
        } catch (error) {
          discard(response);
          throw error;
        }
      } catch (error) {
        void pool.destroy().catch(() => {});
        throw error instanceof Fatal ? error.error : error;
      }
    }
  }

  // The opening GET of bytes [0, firstEnd), with the same retries as any
  // other: the object's size, pin and first bytes (up to `end`), or where it redirects.
  static async #probe(
    pool: Pool, target: URL, headers: Record<string, string>, firstEnd: number,
    options: ResolvedOptions, log: (line: string) => void, shown: string,
  ): Promise<{ response: Response; size: number; pin: Pin; end: number } | { location: string | undefined; status: number }> {
    for (let attempt = 0; ; attempt++) {
      let response: Response | undefined;
      try {
        response = await pool.request({
          path: target.pathname + target.search, method: 'GET',
          headers: { ...headers, range: `bytes=0-${firstEnd - 1}`, ...IDENTITY },
          headersTimeout: options.stallTimeoutMs, bodyTimeout: options.stallTimeoutMs,
        }) as Response;
        const status = response.statusCode;
        if (status === 206) {
          const range = parseContentRange(header(response.headers, 'content-range'));
          if (!range || range.start !== 0 || range.total === undefined) {
            throw new Fatal(httpError(shown, `answered 206 with an unusable Content-Range (${header(response.headers, 'content-range') ?? 'none'})`));
          }
          const size = range.total;
          // A server may send less than the range (RFC 9110 §15.3.7): the rest is asked for later.
          if (range.end > Math.min(size, firstEnd) - 1 || range.end < range.start) {
            throw new Fatal(httpError(shown, `answered bytes ${range.start}-${range.end} when asked for 0-${Math.min(size, firstEnd) - 1}`));
          }
          checkCoding(response.headers, shown);
          return { response, size, pin: pinOf(response, shown), end: range.end + 1 };
        }
        if (REDIRECTS.has(status)) {
          discard(response);
          return { location: header(response.headers, 'location'), status };
        }
        if (status === 200) {
          throw new Fatal(new UffdError('ERR_UFFD_SOURCE_NO_RANGES',
            `ERR_UFFD_SOURCE_NO_RANGES: ${shown} answered a Range request with the whole object (200): the server does not serve byte ranges, so pages cannot be fetched on demand; serve it from a server that does (any object store, nginx, a CDN), or download it and use --mem-file`,
            { syscall: 'HTTP GET' }));
        }
        if (status === 416) {
          const total = unsatisfiedTotal(header(response.headers, 'content-range'));
          throw new Fatal(httpError(shown, total === undefined || total === 0
            ? 'answered 416: the object is empty, and an empty memory image has no pages to serve'
            : `answered 416 to bytes=0-${firstEnd - 1} although it says the object holds ${total} bytes`));
        }
        if (isTransientStatus(status)) throw new Transient(status, retryAfterMs(response.headers));
        throw new Fatal(httpError(shown, `answered ${status}${statusHint(status)}`));
      } catch (error) {
        if (response) discard(response);
        if (error instanceof Fatal) throw error;
        if (attempt >= options.retries) throw unavailable(shown, 'bytes=0-', attempt + 1, error);
        const delay = backoff(attempt, options, error);
        log(`${shown}: opening GET failed (${describeError(error)}); retry ${attempt + 1}/${options.retries} in ${delay} ms`);
        await sleep(delay);
      }
    }
  }

  /** Makes [offset, offset + length) present; urgent work goes ahead of read-ahead and background fill. */
  fetch(offset: number, length: number, options?: FetchOptions): Promise<void> {
    let start: number;
    let end: number;
    try {
      const at = validate.size(offset, 'offset');
      const bytes = validate.size(length, 'length');
      const limit = this.present.length * this.pageSize;
      if (!validate.isAligned(at, this.pageSize) || !validate.isAligned(bytes, this.pageSize) || at + bytes > limit) {
        throw invalid('HTTP GET', `[${at}, ${at + bytes}) must be page-aligned (${this.pageSize} bytes) and inside the ${this.size}-byte image`);
      }
      if (this.#closed) throw libraryError('ERR_UFFD_CLOSED', 'HTTP GET', `this page source (${this.url}) is closed`);
      start = at / this.pageSize;
      end = start + bytes / this.pageSize;
    } catch (error) {
      return Promise.reject(error);
    }
    const opts = validate.options<FetchOptions>(options, 'options');
    return this.#scheduler.want(start, end, opts.urgent === true);
  }

  /** Resolves once every page is present (with background fill, or after everything was asked for); rejects if the source fails. */
  whenComplete(): Promise<void> {
    return this.#scheduler.whenComplete();
  }

  /** Why the source failed (ERR_UFFD_SOURCE_CHANGED, ERR_UFFD_SOURCE_UNAVAILABLE, ...), or undefined. */
  get error(): UffdError | undefined {
    const failure = this.#scheduler.failure;
    return failure instanceof UffdError && failure.code !== 'ERR_UFFD_CLOSED' ? failure : undefined;
  }

  get stats(): HttpSourceStats {
    return {
      size: this.size,
      pages: this.#scheduler.pages,
      presentPages: this.#scheduler.presentPages,
      requests: { ...this.#requests },
      retries: this.#retries,
      bytesFetched: this.#bytesFetched,
      inFlight: this.#scheduler.inFlight,
      coalesced: this.#scheduler.counters.coalesced,
      split: this.#scheduler.counters.split,
    };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#scheduler.stop(libraryError('ERR_UFFD_CLOSED', 'HTTP GET', `this page source (${this.url}) is closed`));
    this.#abort.abort();
    if (this.#first) discard(this.#first.response);
    this.#first = undefined;
    void this.#pool.destroy().catch(() => {});
    this.#mapping.unmap();
    this.#memfd.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // Fetches the transfer's pages into the cache, resuming where an attempt
  // stopped, until every page up to its end (which a fault may lower) has
  // landed, or the retries are spent.
  async #transfer(transfer: Transfer): Promise<void> {
    const { priority } = transfer;
    const end = (): number => Math.min(this.size, transfer.end * this.pageSize);
    const timing: Timing = { pos: transfer.start * this.pageSize, sentAt: performance.now(), firstByteAt: undefined, firstBytePos: 0, info: undefined };
    this.#timings.set(transfer, timing);
    let first = this.#first && timing.pos === 0 ? this.#first : undefined;
    if (first) {
      this.#first = undefined;
      timing.sentAt = first.sentAt;
    }
    try {
      for (let attempt = 0; timing.pos < end(); attempt++) {
        const from = timing.pos;
        const asked = end();
        const range = `bytes=${from}-${asked - 1}`;
        let info: HttpRequestInfo | undefined;
        timing.info = undefined;
        try {
          this.#requests[priority]++;
          if (this.#onRequest) {
            info = { start: from, end: asked, priority, attempt };
            timing.info = info;
            this.#onRequest(info);
          }
          let sent: number;
          if (first) {
            const { response, end: firstEnd } = first;
            first = undefined;
            this.#noteRoundTrip(performance.now() - timing.sentAt);
            sent = firstEnd;
            await this.#consume(response, transfer, timing, firstEnd, end);
          } else {
            timing.sentAt = performance.now();
            timing.firstByteAt = undefined;
            sent = await this.#get(range, transfer, timing, from, asked, end);
          }
          if (timing.pos < end()) {
            // A whole 206 of less than the range (RFC 9110 §15.3.7; servers that
            // cap a response's length): the rest is the next request, no retry.
            if (timing.pos === sent && sent > from && sent < asked) {
              if (info) info.end = sent;
              attempt--;
              continue;
            }
            throw new Error(`the response ended at byte ${timing.pos} of ${range}`);
          }
          if (info) info.end = end();
        } catch (error) {
          if (info) info.end = Math.min(info.end, timing.pos);
          // Closed, or failed by another transfer (which aborted this one).
          if (this.#scheduler.failure !== undefined) throw this.#scheduler.failure;
          if (error instanceof Fatal) throw this.#fail(error.error);
          if (attempt >= this.#options.retries) throw this.#fail(unavailable(this.url, range, attempt + 1, error));
          this.#retries++;
          const delay = backoff(attempt, this.#options, error);
          this.#log(`${this.url}: GET ${range} (${priority}) failed: ${describeError(error)}; retry ${attempt + 1}/${this.#options.retries} in ${delay} ms from byte ${timing.pos}`);
          try {
            await sleep(delay, undefined, { signal: this.#abort.signal });
          } catch {
            throw this.#scheduler.failure;
          }
        }
      }
    } finally {
      this.#timings.delete(transfer);
      if (timing.firstByteAt !== undefined) this.#noteRate(timing.pos - timing.firstBytePos, performance.now() - timing.firstByteAt);
    }
  }

  // The opening request's body (a stream: open() returned before it
  // arrived), into the cache like any other.
  async #consume(response: Response, transfer: Transfer, timing: Timing, asked: number, end: () => number): Promise<void> {
    const unwatch = this.#watch(timing, asked, (error) => response.body.destroy(error));
    try {
      for await (const chunk of response.body as AsyncIterable<Buffer>) {
        if (this.#closed || !this.#take(chunk, transfer, timing, asked, end)) return;
      }
    } finally {
      unwatch();
      discard(response);
    }
  }

  // undici's timeouts see only silence; a server that trickles a few bytes
  // a second would hold a fault for hours. Less than a page (or the rest of
  // the response) per stallTimeoutMs is a stall too, and is retried.
  #watch(timing: Timing, asked: number, abort: (error: Error) => void): () => void {
    const every = this.#options.stallTimeoutMs;
    let mark = timing.pos;
    const timer = setInterval(() => {
      const needed = Math.min(this.pageSize, asked - mark);
      if (timing.pos - mark < needed) abort(new Error(`${timing.pos - mark} bytes arrived in ${every} ms (stallTimeoutMs), under a page: too slow`));
      mark = timing.pos;
    }, every).unref();
    return () => clearInterval(timer);
  }

  // One ranged GET through undici's dispatch API: each chunk of the body is
  // written to the cache as the socket delivers it, with no stream, async
  // iterator or promise per chunk (request()'s Readable body costs a few
  // times the CPU per byte, which at a few hundred MB/s is the bottleneck).
  // Resolves, with the end of what the server said it sends, when the body
  // ended or was cut short for a fault; rejects on a failure (a Fatal one
  // when retrying cannot help).
  #get(range: string, transfer: Transfer, timing: Timing, from: number, asked: number, end: () => number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      let settled = false;
      let cut = false;
      let sent = asked;
      let stop: (() => void) | undefined;
      let unwatch: (() => void) | undefined;
      const settle = (error?: unknown): void => {
        if (settled) return;
        settled = true;
        if (stop) this.#abort.signal.removeEventListener('abort', stop);
        unwatch?.();
        if (error === undefined || cut) resolve(sent);
        else reject(error);
      };
      const handler: Dispatcher.DispatchHandler = {
        onRequestStart: (controller) => {
          stop = () => controller.abort(new Error('the page source was closed or failed'));
          if (this.#abort.signal.aborted) stop();
          else this.#abort.signal.addEventListener('abort', stop, { once: true });
          unwatch = this.#watch(timing, asked, (error) => controller.abort(error));
        },
        onResponseStart: (controller, statusCode, headers) => {
          // Interim answers (103 Early Hints) come before the real one (RFC 9110 §15.2).
          if (statusCode < 200) return;
          try {
            sent = this.#check({ statusCode, headers }, from, asked);
            this.#noteRoundTrip(performance.now() - timing.sentAt);
          } catch (error) {
            controller.abort(error as Error);
          }
        },
        onResponseData: (controller, chunk) => {
          try {
            if (this.#closed) controller.abort(new Error('the page source was closed'));
            else if (!this.#take(chunk, transfer, timing, sent, end)) {
              // Cut short for a fault: closing a response before its end
              // costs its connection (HTTP/1.1 cannot cancel one), so only now.
              cut = true;
              controller.abort(new Error('cut short for a fault'));
            }
          } catch (error) {
            controller.abort(error as Error);
          }
        },
        onResponseEnd: () => settle(),
        onResponseError: (_controller, error) => settle(error),
      };
      this.#pool.dispatch({
        path: this.#target.pathname + this.#target.search, method: 'GET',
        headers: { ...this.#headers, ...this.#pin.condition, range, ...IDENTITY },
        headersTimeout: this.#options.stallTimeoutMs, bodyTimeout: this.#options.stallTimeoutMs,
      }, handler);
    });
  }

  // Writes a chunk of a response into the cache, landing each page once all
  // its bytes are in. Returns false once the transfer's end, lowered by a
  // fault, is reached: the rest of the response is not wanted.
  #take(chunk: Buffer, transfer: Transfer, timing: Timing, asked: number, end: () => number): boolean {
    if (timing.pos + chunk.length > asked) throw new Fatal(httpError(this.url, `sent more bytes than the range asked for (${asked - timing.pos} more expected, ${chunk.length} received)`));
    if (timing.firstByteAt === undefined) {
      timing.firstByteAt = performance.now();
      timing.firstBytePos = timing.pos;
    }
    const length = Math.min(chunk.length, end() - timing.pos);
    // Before the pages land (and wake whoever waits on them).
    if (timing.info && end() < timing.info.end) timing.info.end = end();
    if (length > 0) {
      // pwrite into the memfd rather than a copy through the mapping: the
      // kernel fills each new shmem page straight from the chunk, without
      // a page fault and without zeroing it first.
      fs.writeSync(this.#memfd.fd, chunk, 0, length, timing.pos);
      timing.pos += length;
      this.#bytesFetched += length;
      this.#scheduler.landed(transfer, timing.pos === this.size ? this.present.length : Math.floor(timing.pos / this.pageSize));
    }
    return !(timing.pos >= end() && end() < asked);
  }

  // Whether a fault on `page` is better served by a new request (about one
  // round trip) than by waiting for this transfer's bytes to reach it: when
  // the wait is over two round trips, since cutting the transfer costs its
  // connection (a reconnect, unless the pool has an idle one) and a request.
  #advise(transfer: Transfer, page: number): boolean {
    const timing = this.#timings.get(transfer);
    if (!timing || this.#rttMs === undefined) return true;
    const now = performance.now();
    let rate = this.#rate;
    if (timing.firstByteAt !== undefined && now - timing.firstByteAt > 1) rate = (timing.pos - timing.firstBytePos) / (now - timing.firstByteAt);
    if (rate === undefined || rate <= 0) return true;
    const untilFirstByte = timing.firstByteAt === undefined ? Math.max(0, timing.sentAt + this.#rttMs - now) : 0;
    return untilFirstByte + (page * this.pageSize - timing.pos) / rate > 2 * this.#rttMs;
  }

  // Background requests at least `backgroundChunk` long; long enough that
  // the image takes about two rounds of requests on the background
  // connections; and long enough that a connection spends at most a fifth of
  // its time waiting for a first byte (four bandwidth-delay products, once
  // they are known). Each round trip between requests is time the link idles.
  #backgroundChunk(): number {
    const { backgroundChunk, backgroundConnections } = this.#options;
    const base = Math.max(backgroundChunk, Math.min(MAX_BACKGROUND_CHUNK, this.size / (2 * backgroundConnections)));
    if (this.#rttMs === undefined || this.#rate === undefined) return base;
    return Math.max(base, Math.min(MAX_BACKGROUND_CHUNK, this.#rate * this.#rttMs * 4));
  }

  // The round trip as requests see it: the fastest time to headers lately.
  #noteRoundTrip(ms: number): void {
    this.#rttMs = this.#rttMs === undefined ? ms : Math.min(ms, this.#rttMs * 1.1);
  }

  // Bytes per millisecond one connection delivers, smoothed.
  #noteRate(bytes: number, ms: number): void {
    if (ms <= 1 || bytes <= 0) return;
    const rate = bytes / ms;
    this.#rate = this.#rate === undefined ? rate : 0.7 * this.#rate + 0.3 * rate;
  }

  // Every answer after the first must be the pinned object's bytes from
  // `from`, up to `end` or fewer. Returns where the answer's bytes end.
  #check(response: Pick<Response, 'statusCode' | 'headers'>, from: number, end: number): number {
    const status = response.statusCode;
    if (status === 412 || status === 200) {
      throw new Fatal(changed(this.url, status === 412
        ? 'the server answered 412 Precondition Failed to a request conditional on the identity pinned at open'
        : 'the server answered 200 with a whole object instead of 206 with the range (the object changed, or the server stopped honouring Range)'));
    }
    if (status === 416) {
      const total = unsatisfiedTotal(header(response.headers, 'content-range'));
      if (total !== undefined && total !== this.size) throw new Fatal(changed(this.url, `its size changed from ${this.size} to ${total} bytes (416)`));
      throw new Fatal(httpError(this.url, `answered 416 (Range Not Satisfiable) to bytes ${from}-${end - 1} of the ${this.size}-byte object pinned at open`));
    }
    if (REDIRECTS.has(status)) {
      const location = header(response.headers, 'location');
      throw new Fatal(httpError(this.url, `answered ${status} redirecting to ${location ? redactUrl(redirectTarget(location, this.#target, this.url)) : 'nowhere'} after open: the object's URL is fixed once it is pinned; open the final URL`));
    }
    if (status !== 206) {
      if (isTransientStatus(status)) throw new Transient(status, retryAfterMs(response.headers));
      throw new Fatal(httpError(this.url, `answered ${status}${statusHint(status)}`));
    }
    const etag = header(response.headers, 'etag');
    const lastModified = header(response.headers, 'last-modified');
    if ((this.#pin.etag !== undefined && etag !== this.#pin.etag) || (this.#pin.lastModified !== undefined && lastModified !== this.#pin.lastModified)) {
      throw new Fatal(changed(this.url, `its identity changed from ETag ${this.#pin.etag ?? '-'} / Last-Modified ${this.#pin.lastModified ?? '-'} to ETag ${etag ?? '-'} / Last-Modified ${lastModified ?? '-'}`));
    }
    const range = parseContentRange(header(response.headers, 'content-range'));
    if (range?.total !== undefined && range.total !== this.size) {
      throw new Fatal(changed(this.url, `its size changed from ${this.size} to ${range.total} bytes`));
    }
    if (!range || range.start !== from || range.end > end - 1 || range.end < range.start) {
      throw new Fatal(httpError(this.url, `answered ${header(response.headers, 'content-range') ?? 'no Content-Range'} when asked for bytes ${from}-${end - 1}`));
    }
    checkCoding(response.headers, this.url);
    return range.end + 1;
  }

  #fail(error: UffdError): UffdError {
    if (this.#scheduler.failure === undefined) {
      this.#log(`${this.url}: ${error.message}`);
      this.#scheduler.fail(error);
      // Nothing more will be used: stop the other transfers.
      this.#abort.abort();
    }
    return this.#scheduler.failure as UffdError;
  }

  #describeRequests(): string {
    const r = this.#requests;
    return `${r.urgent} urgent, ${r.readahead} read-ahead, ${r.background} background requests, ${this.#retries} retries, ${(this.#bytesFetched / MiB).toFixed(1)} MiB received`;
  }
}
