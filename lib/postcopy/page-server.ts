// The source side of a post-copy migration: serves an image's pages over TCP.
// Each connection gets the image's geometry and checksum (HELLO), then the
// pages it asks for (REQUEST, answered at once, ahead of everything else)
// and, unless it declined, every other page in the background, most likely
// needed first: forward from the page last demanded (workloads mostly read
// forward), after any ranges the server was told to send first. A link is
// modelled by pacing: frames leave no faster than `bandwidth` bytes/s, and
// requests and frames each spend `latencyMs` in flight.
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { argRangeError, argTypeError, UffdError } from '../errors';
import { systemPageSize } from '../memory';
import * as validate from '../validate';
import {
  FRAME, FrameReader, HEADER_SIZE, MAX_DATA, decode, encodeDataHeader, encodeDone, encodeError, encodeHello,
  protocolError, type Geometry,
} from './protocol';

export interface PageServerOptions {
  /** The granularity of requests and pushes (default: the system page size). */
  pageSize?: number;
  /** Link bandwidth to model, bytes per second (default: unlimited). */
  bandwidth?: number;
  /** One-way link latency to model, in ms: added to each request on arrival and to each frame on departure (default 0). */
  latencyMs?: number;
  /** Pages per background DATA frame (default 16): a demanded page waits behind at most one such frame. */
  pushChunkPages?: number;
  /** Ranges (byte offset, length) to push first, in this order. */
  priority?: { offset: number; length: number }[];
  /** sha256 of the image, if the caller has it already (computed otherwise). */
  checksum?: Uint8Array;
  /** Called with each new connection's session. */
  onSession?: (session: PageSession) => void;
}

export interface SessionStats {
  requests: number;
  pagesOnDemand: number;
  pagesPushed: number;
  bytesSent: number;
}

// A ready frame may leave this far ahead of the paced clock: timers fire in
// whole milliseconds, so pacing is exact on average, not per frame. A timer
// that fires late is caught up on, up to PACING_CATCH_UP_MS of the link's time.
const PACING_SLACK_MS = 2;
const PACING_CATCH_UP_MS = 20;
// Bytes written per turn of the event loop, so that requests are read between turns.
const BURST_BYTES = 1 << 20;
// User-space bytes queued on the socket before waiting for 'drain'.
const HIGH_WATER = 1 << 20;
// Flow control: pushed pages are sent only while fewer than this many page
// bytes are unacknowledged (at least twice the modelled bandwidth-delay
// product). Without it a slow reader's socket buffers fill with pushed pages
// and a demanded page waits behind megabytes of them (head-of-line blocking).
const MIN_WINDOW = 1 << 20;
const MAX_WINDOW = 16 << 20;

interface SessionConfig {
  bandwidth: number;
  latencyMs: number;
  pushChunkPages: number;
  priority: { offset: number; length: number }[];
}

interface Pending {
  id: number;
  next: number; // next page to consider
  end: number; // one past the last page
  readyAt: number; // when the request has crossed the modelled link
}

/** One destination's connection. Emits 'end' (stats, error?) once. */
export class PageSession extends EventEmitter {
  readonly stats: SessionStats = { requests: 0, pagesOnDemand: 0, pagesPushed: 0, bytesSent: 0 };
  /** Why the session ended early, if it did (the peer vanished or broke the protocol). */
  error: UffdError | undefined;
  readonly #socket: net.Socket;
  readonly #image: Uint8Array;
  readonly #geometry: Geometry;
  readonly #pages: number;
  readonly #sent: Uint8Array;
  readonly #options: SessionConfig;
  readonly #reader = new FrameReader();
  readonly #urgent: Pending[] = [];
  readonly #hinted: Pending[] = [];
  readonly #priority: Pending[];
  readonly #inFlight: { due: number; buffers: Uint8Array[] }[] = [];
  #started = false;
  #prefetch = false;
  #cursor = 0;
  #lowWater = 0;
  #sentCount = 0;
  #doneSent = false;
  #clock = 0;
  #payloadSent = 0;
  #acked = 0;
  readonly #window: number;
  #timer: NodeJS.Timeout | null = null;
  #immediate: NodeJS.Immediate | null = null;
  #flushTimer: NodeJS.Timeout | null = null;
  #waitingDrain = false;
  #ended = false;

  /** @internal Made by PageServer for each connection. */
  constructor(socket: net.Socket, image: Uint8Array, checksum: Uint8Array, pageSize: number, options: SessionConfig) {
    super();
    this.#socket = socket;
    this.#image = image;
    this.#geometry = { pageSize, imageSize: image.byteLength };
    this.#pages = image.byteLength / pageSize;
    this.#sent = new Uint8Array(this.#pages);
    this.#options = options;
    const bdp = options.bandwidth === Infinity ? (options.latencyMs > 0 ? MAX_WINDOW : 0) : options.bandwidth * options.latencyMs * 2 / 1000;
    this.#window = Math.min(MAX_WINDOW, Math.max(MIN_WINDOW, 2 * bdp));
    this.#priority = options.priority.map((r) => ({
      id: 0, next: Math.floor(r.offset / pageSize), end: Math.ceil((r.offset + r.length) / pageSize), readyAt: 0,
    }));
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('drain', () => {
      this.#waitingDrain = false;
      this.#kick();
    });
    socket.on('error', (error) => this.#end(new UffdError('ERR_UFFD_PEER_LOST', `ERR_UFFD_PEER_LOST: the destination's connection failed (${error.message})`)));
    socket.on('close', () => this.#end(this.#doneSent || this.#sentCount === this.#pages ? undefined
      : new UffdError('ERR_UFFD_PEER_LOST', `ERR_UFFD_PEER_LOST: the destination closed the connection with ${this.#pages - this.#sentCount} of ${this.#pages} pages unsent`)));
    socket.write(encodeHello(pageSize, image.byteLength, checksum));
  }

  get remoteAddress(): string {
    return `${this.#socket.remoteAddress}:${this.#socket.remotePort}`;
  }

  /** Pages sent so far (each page is sent at most once). */
  get pagesSent(): number {
    return this.#sentCount;
  }

  /** Ends the session: the connection is closed at once. */
  close(): void {
    this.#socket.destroy();
    this.#end(undefined);
  }

  #onData(chunk: Buffer): void {
    let frames: [number, Buffer][];
    try {
      frames = this.#reader.push(chunk);
      for (const [type, body] of frames) {
        const accept = this.#started ? REQUESTS : STARTS;
        const frame = decode(type, body, accept, this.#geometry);
        if (frame.type === FRAME.START) {
          this.#started = true;
          this.#prefetch = frame.prefetch;
        } else if (frame.type === FRAME.REQUEST) {
          this.stats.requests++;
          const first = frame.offset / this.#geometry.pageSize;
          const pending: Pending = {
            id: frame.id, next: first, end: first + frame.length / this.#geometry.pageSize,
            readyAt: performance.now() + this.#options.latencyMs,
          };
          (frame.urgent ? this.#urgent : this.#hinted).push(pending);
        } else if (frame.type === FRAME.ACK) {
          if (frame.received > this.#payloadSent || frame.received < this.#acked) {
            throw protocolError(`ACK of ${frame.received} bytes: ${this.#acked} were acknowledged before and ${this.#payloadSent} sent`);
          }
          this.#acked = frame.received;
        } else if (frame.type === FRAME.ERROR) {
          throw new UffdError(frame.code, `${frame.code}: the destination gave up: ${frame.message}`);
        }
      }
    } catch (error) {
      this.#abort(error as UffdError);
      return;
    }
    this.#kick();
  }

  #abort(error: UffdError): void {
    if (this.#ended) return;
    if (error.code === 'ERR_UFFD_PROTOCOL') this.#socket.end(encodeError(error.code, error.message));
    else this.#socket.end();
    this.#end(error);
  }

  #end(error: UffdError | undefined): void {
    if (this.#ended) return;
    this.#ended = true;
    this.error = error;
    for (const handle of [this.#timer, this.#flushTimer]) if (handle) clearTimeout(handle);
    if (this.#immediate) clearImmediate(this.#immediate);
    this.#socket.destroy();
    this.emit('end', this.stats, error);
  }

  #kick(): void {
    if (this.#ended || this.#timer || this.#immediate || this.#waitingDrain) return;
    this.#immediate = setImmediate(() => {
      this.#immediate = null;
      this.#pump();
    });
  }

  #wakeAt(ms: number): void {
    if (this.#immediate) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#pump();
    }, Math.max(1, Math.ceil(ms)));
  }

  #pump(): void {
    if (this.#ended || !this.#started) return;
    const { bandwidth } = this.#options;
    let burst = 0;
    for (;;) {
      if (this.#socket.writableLength > HIGH_WATER) {
        this.#waitingDrain = true;
        return;
      }
      const now = performance.now();
      if (this.#clock > now + PACING_SLACK_MS) {
        this.#wakeAt(this.#clock - now - PACING_SLACK_MS);
        return;
      }
      if (burst >= BURST_BYTES) {
        this.#kick();
        return;
      }
      const run = this.#nextRun(now);
      if (!run) {
        if (this.#sentCount === this.#pages && !this.#doneSent) {
          this.#doneSent = true;
          this.#send([encodeDone()], now);
        }
        const next = this.#nextReady();
        if (next !== undefined) this.#wakeAt(next - now);
        return;
      }
      const { pageSize } = this.#geometry;
      const offset = run.first * pageSize;
      const length = (run.end - run.first) * pageSize;
      this.#payloadSent += length;
      this.#sent.fill(1, run.first, run.end);
      this.#sentCount += run.end - run.first;
      if (run.id === 0) this.stats.pagesPushed += run.end - run.first;
      else this.stats.pagesOnDemand += run.end - run.first;
      const bytes = HEADER_SIZE + 12 + length;
      this.stats.bytesSent += bytes;
      burst += bytes;
      if (bandwidth !== Infinity) this.#clock = Math.max(this.#clock, now - PACING_CATCH_UP_MS) + (bytes / bandwidth) * 1000;
      this.#send([encodeDataHeader(run.id, offset, length), this.#image.subarray(offset, offset + length)], now);
    }
  }

  // Frames spend latencyMs in flight: they are written when they would arrive.
  #send(buffers: Uint8Array[], now: number): void {
    const { latencyMs } = this.#options;
    if (latencyMs === 0 && this.#inFlight.length === 0) {
      this.#write(buffers);
      return;
    }
    this.#inFlight.push({ due: now + latencyMs, buffers });
    if (!this.#flushTimer) this.#armFlush();
  }

  #armFlush(): void {
    const head = this.#inFlight[0];
    if (!head) return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = null;
      const now = performance.now();
      while (this.#inFlight.length > 0 && this.#inFlight[0]!.due <= now + 0.5) this.#write(this.#inFlight.shift()!.buffers);
      this.#armFlush();
    }, Math.max(0, head.due - performance.now()));
  }

  #write(buffers: Uint8Array[]): void {
    if (this.#ended) return;
    this.#socket.cork();
    for (const buffer of buffers) this.#socket.write(buffer);
    this.#socket.uncork();
  }

  /** The earliest time a request not yet across the link will be. */
  #nextReady(): number | undefined {
    let earliest: number | undefined;
    for (const queue of [this.#urgent, this.#hinted]) {
      for (const p of queue) if (earliest === undefined || p.readyAt < earliest) earliest = p.readyAt;
    }
    return earliest;
  }

  // The next run of unsent pages to send: demanded first, then hinted by the
  // destination, then the server's priority ranges, then the background.
  #nextRun(now: number): { id: number; first: number; end: number } | undefined {
    const maxPages = Math.max(1, Math.floor(MAX_DATA / this.#geometry.pageSize));
    for (const queue of [this.#urgent, this.#hinted]) {
      for (let i = 0; i < queue.length; i++) {
        const p = queue[i]!;
        if (p.readyAt > now) continue;
        const run = this.#takeFrom(p, maxPages);
        if (!run) {
          queue.splice(i--, 1);
          continue;
        }
        if (queue === this.#urgent) this.#cursor = run.end; // stream on from where the workload is
        return { id: p.id, ...run };
      }
    }
    if (!this.#prefetch || this.#payloadSent - this.#acked >= this.#window) return undefined;
    const chunk = this.#options.pushChunkPages;
    while (this.#priority.length > 0) {
      const run = this.#takeFrom(this.#priority[0]!, chunk);
      if (run) return { id: 0, ...run };
      this.#priority.shift();
    }
    let first = this.#unsentFrom(this.#cursor);
    if (first === this.#pages) {
      while (this.#lowWater < this.#pages && this.#sent[this.#lowWater]) this.#lowWater++;
      first = this.#unsentFrom(this.#lowWater);
      if (first === this.#pages) return undefined;
    }
    let end = first + 1;
    while (end < this.#pages && end - first < chunk && !this.#sent[end]) end++;
    this.#cursor = end;
    return { id: 0, first, end };
  }

  #unsentFrom(page: number): number {
    while (page < this.#pages && this.#sent[page]) page++;
    return page;
  }

  // The next run of unsent pages of p, at most max pages, advancing p past it.
  #takeFrom(p: Pending, max: number): { first: number; end: number } | undefined {
    while (p.next < p.end && this.#sent[p.next]) p.next++;
    if (p.next >= p.end) return undefined;
    const first = p.next;
    while (p.next < p.end && p.next - first < max && !this.#sent[p.next]) p.next++;
    return { first, end: p.next };
  }
}

const STARTS: ReadonlySet<number> = new Set([FRAME.START, FRAME.ERROR]);
const REQUESTS: ReadonlySet<number> = new Set([FRAME.REQUEST, FRAME.ACK, FRAME.ERROR]);

/** Serves one image to any number of destinations, each on its own TCP connection. */
export class PageServer {
  readonly image: Uint8Array;
  readonly pageSize: number;
  readonly checksum: Buffer;
  readonly #server: net.Server;
  readonly #sessions = new Set<PageSession>();
  readonly #sessionOptions: SessionConfig;
  readonly #onSession: ((session: PageSession) => void) | undefined;

  private constructor(image: Uint8Array, options: PageServerOptions) {
    if (!(image instanceof Uint8Array)) throw argTypeError('image', 'a Uint8Array (for example mapping.view())', image);
    this.pageSize = options.pageSize === undefined ? systemPageSize() : validate.size(options.pageSize, 'options.pageSize');
    if (this.pageSize < 4096 || (this.pageSize & (this.pageSize - 1)) !== 0) throw argRangeError('options.pageSize', 'a power of two of at least 4096', this.pageSize);
    if (image.byteLength === 0 || image.byteLength % this.pageSize !== 0) {
      throw argRangeError('image.byteLength', `a non-zero multiple of the page size (${this.pageSize})`, image.byteLength);
    }
    const bandwidth = options.bandwidth ?? Infinity;
    if (!(bandwidth > 0)) throw argRangeError('options.bandwidth', 'a positive number of bytes per second (or Infinity)', bandwidth);
    const latencyMs = options.latencyMs ?? 0;
    if (!(latencyMs >= 0 && latencyMs < 60_000)) throw argRangeError('options.latencyMs', '>= 0 and < 60000', latencyMs);
    const pushChunkPages = validate.size(options.pushChunkPages ?? 16, 'options.pushChunkPages');
    if (pushChunkPages === 0) throw argRangeError('options.pushChunkPages', '>= 1', 0);
    const priority = (options.priority ?? []).map((r, i) => {
      const offset = validate.size(r.offset, `options.priority[${i}].offset`);
      const length = validate.size(r.length, `options.priority[${i}].length`);
      if (offset + length > image.byteLength) throw argRangeError(`options.priority[${i}]`, `inside the ${image.byteLength}-byte image`, `[${offset}, +${length})`);
      return { offset, length };
    });
    if (options.checksum !== undefined && (!(options.checksum instanceof Uint8Array) || options.checksum.byteLength !== 32)) {
      throw argTypeError('options.checksum', 'a 32-byte sha256 digest', options.checksum);
    }
    this.image = image;
    this.checksum = options.checksum ? Buffer.from(options.checksum) : createHash('sha256').update(image).digest();
    this.#sessionOptions = { bandwidth, latencyMs, pushChunkPages, priority };
    this.#onSession = options.onSession;
    this.#server = net.createServer((socket) => this.#accept(socket));
  }

  /** Listens on host:port (default 127.0.0.1, an ephemeral port); resolves once listening. */
  static async listen(image: Uint8Array, options: PageServerOptions & { host?: string; port?: number } = {}): Promise<PageServer> {
    const server = new PageServer(image, options);
    await new Promise<void>((resolve, reject) => {
      server.#server.once('error', reject);
      server.#server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
        server.#server.off('error', reject);
        resolve();
      });
    });
    return server;
  }

  get port(): number {
    return (this.#server.address() as net.AddressInfo).port;
  }

  get host(): string {
    return (this.#server.address() as net.AddressInfo).address;
  }

  get sessions(): ReadonlySet<PageSession> {
    return this.#sessions;
  }

  /** Serves a connection made elsewhere (a socket accepted or connected by the caller). */
  serveSocket(socket: net.Socket): PageSession {
    return this.#accept(socket);
  }

  #accept(socket: net.Socket): PageSession {
    const session = new PageSession(socket, this.image, this.checksum, this.pageSize, this.#sessionOptions);
    this.#sessions.add(session);
    session.once('end', () => this.#sessions.delete(session));
    this.#onSession?.(session);
    return session;
  }

  /** Stops listening and closes every session. Resolves when the listener is closed. */
  close(): Promise<void> {
    for (const session of this.#sessions) session.close();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

