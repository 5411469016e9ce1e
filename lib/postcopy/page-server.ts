// The source side of a post-copy migration: serves an image's pages over TCP.
// Each connection gets the image's geometry and checksum (HELLO), then the
// pages it asks for (REQUEST, answered at once, ahead of everything else)
// and, unless it declined, every other page in the background, most likely
// needed first: forward from the page last demanded (workloads mostly read
// forward), after any ranges the server was told to send first. A link is
// modelled by pacing: frames leave no faster than `bandwidth` bytes/s, and
// requests and frames each spend `latencyMs` in flight.
import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { argRangeError, argTypeError, UffdError } from '../errors';
import { systemPageSize } from '../memory';
import * as validate from '../validate';
import {
  FRAME, FrameReader, HEADER_SIZE, MAX_DATA, TOKEN_SIZE, decode, encodeDataHeader, encodeDone, encodeHello, endWithError,
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
// Flow control: a push is sent only while fewer than the window's page bytes
// sent on the main connection are unacknowledged. Without it a slow reader's
// socket buffers fill with pushed pages and a demanded page waits behind
// megabytes of them (head-of-line blocking). The window is twice the modelled
// bandwidth-delay product (bandwidth x round trip), within these bounds: the
// cap bounds what one destination can hold in socket buffers, at the cost of
// pushes below the link's bandwidth where 2 x BDP exceeds the cap.
const MIN_WINDOW = 1 << 20;
const MAX_WINDOW = 16 << 20;
// A connection must say what it is (START or ATTACH) within this time.
const FIRST_FRAME_TIMEOUT_MS = 10_000;

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

// One TCP connection of a session: the main one (hello, requests, acks,
// pushed pages) or the urgent one (demanded pages only, so that they never
// wait behind pushed pages in socket buffers). Frames spend latencyMs in a
// delay line before they are written.
class Channel {
  readonly socket: net.Socket;
  readonly #latencyMs: number;
  readonly #inFlight: { due: number; buffers: Uint8Array[] }[] = [];
  #flushTimer: NodeJS.Timeout | null = null;

  constructor(socket: net.Socket, latencyMs: number) {
    this.socket = socket;
    this.#latencyMs = latencyMs;
  }

  send(buffers: Uint8Array[], now: number): void {
    if (this.#latencyMs === 0 && this.#inFlight.length === 0) {
      this.#write(buffers);
      return;
    }
    this.#inFlight.push({ due: now + this.#latencyMs, buffers });
    if (!this.#flushTimer) this.#arm();
  }

  /** Closes the connection at once, unless it is ending with an ERROR (endWithError closes it once that is written). */
  close(): void {
    this.#drop();
    if (!this.socket.writableEnded) this.socket.destroy();
  }

  /** Sends ERROR and closes; frames still in the delay line are dropped. */
  refuse(error: UffdError): void {
    this.#drop();
    endWithError(this.socket, error);
  }

  #drop(): void {
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushTimer = null;
    this.#inFlight.length = 0;
  }

  #arm(): void {
    const head = this.#inFlight[0];
    if (!head) return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = null;
      const now = performance.now();
      while (this.#inFlight.length > 0 && this.#inFlight[0]!.due <= now + 0.5) this.#write(this.#inFlight.shift()!.buffers);
      this.#arm();
    }, Math.max(0, head.due - performance.now()));
  }

  #write(buffers: Uint8Array[]): void {
    if (this.socket.destroyed) return;
    this.socket.cork();
    for (const buffer of buffers) this.socket.write(buffer);
    this.socket.uncork();
  }
}

// Per-page state on the source.
const UNSENT = 0;
const SENT_MAIN = 1;
const SENT_URGENT = 2;

/** One destination: its main connection and, once attached, its urgent one. Emits 'end' (stats, error?) once. */
export class PageSession extends EventEmitter {
  readonly stats: SessionStats = { requests: 0, pagesOnDemand: 0, pagesPushed: 0, bytesSent: 0 };
  /** Why the session ended early, if it did (the peer vanished or broke the protocol). */
  error: UffdError | undefined;
  /** @internal The token its hello carried, for an ATTACH. */
  readonly token: Buffer;
  readonly #main: Channel;
  #urgentChannel: Channel | null = null;
  readonly #image: Uint8Array;
  readonly #geometry: Geometry;
  readonly #pages: number;
  readonly #sent: Uint8Array;
  /** For pages sent on the main channel: the payload byte count once they were, to tell whether they have been acknowledged. */
  readonly #sentAt: Float64Array;
  readonly #options: SessionConfig;
  readonly #urgent: Pending[] = [];
  readonly #hinted: Pending[] = [];
  readonly #priority: Pending[];
  #prefetch: boolean;
  #cursor = 0;
  #lowWater = 0;
  #sentCount = 0;
  #doneSent = false;
  #clock = 0;
  /** Page bytes sent on the main connection, and acknowledged of them (urgent ones are not flow-controlled). */
  #payloadSent = 0;
  #acked = 0;
  readonly #window: number;
  #timer: NodeJS.Timeout | null = null;
  #immediate: NodeJS.Immediate | null = null;
  #ended = false;

  /** @internal Made by PageServer when a connection sends START. */
  constructor(socket: net.Socket, reader: FrameReader, token: Buffer, prefetch: boolean, image: Uint8Array, pageSize: number, options: SessionConfig) {
    super();
    this.token = token;
    this.#main = new Channel(socket, options.latencyMs);
    this.#prefetch = prefetch;
    this.#image = image;
    this.#geometry = { pageSize, imageSize: image.byteLength };
    this.#pages = image.byteLength / pageSize;
    this.#sent = new Uint8Array(this.#pages);
    this.#sentAt = new Float64Array(this.#pages);
    this.#options = options;
    const bdp = options.bandwidth === Infinity ? (options.latencyMs > 0 ? MAX_WINDOW : 0) : options.bandwidth * options.latencyMs * 2 / 1000;
    this.#window = Math.min(MAX_WINDOW, Math.max(MIN_WINDOW, 2 * bdp));
    this.#priority = options.priority.map((r) => ({
      id: 0, next: Math.floor(r.offset / pageSize), end: Math.ceil((r.offset + r.length) / pageSize), readyAt: 0,
    }));
    this.#listen(this.#main, reader, 'main');
    this.#kick();
  }

  get remoteAddress(): string {
    return `${this.#main.socket.remoteAddress}:${this.#main.socket.remotePort}`;
  }

  /** Pages sent so far (each page counts once, even if it was sent again on the urgent channel). */
  get pagesSent(): number {
    return this.#sentCount;
  }

  /** Whether the destination opened an urgent channel. */
  get hasUrgentChannel(): boolean {
    return this.#urgentChannel !== null;
  }

  /** Ends the session: its connections are closed at once. */
  close(): void {
    this.#end(undefined);
  }

  /** @internal A second connection that sent ATTACH with this session's token. */
  attach(socket: net.Socket, reader: FrameReader): void {
    if (this.#urgentChannel || this.#ended) {
      endWithError(socket, protocolError('this session has an urgent channel already'));
      return;
    }
    this.#urgentChannel = new Channel(socket, this.#options.latencyMs);
    this.#listen(this.#urgentChannel, reader, 'urgent');
  }

  #listen(channel: Channel, reader: FrameReader, which: 'main' | 'urgent'): void {
    const { socket } = channel;
    const accept = which === 'main' ? REQUESTS : URGENT_REQUESTS;
    socket.on('data', (chunk: Buffer) => this.#onData(channel, reader, accept, chunk));
    socket.resume();
    socket.on('drain', () => this.#kick());
    socket.on('error', (error) => this.#end(new UffdError('ERR_UFFD_PEER_LOST', `ERR_UFFD_PEER_LOST: the destination's ${which} connection failed (${error.message})`)));
    socket.on('close', () => this.#end(this.#doneSent || this.#sentCount === this.#pages ? undefined
      : new UffdError('ERR_UFFD_PEER_LOST', `ERR_UFFD_PEER_LOST: the destination closed its ${which} connection with ${this.#pages - this.#sentCount} of ${this.#pages} pages unsent`)));
    // Frames that came with the one that made this connection what it is.
    this.#onData(channel, reader, accept, Buffer.alloc(0));
  }

  #onData(channel: Channel, reader: FrameReader, accept: ReadonlySet<number>, chunk: Buffer): void {
    // What still arrives on a connection ending with ERROR is dropped.
    if (this.#ended) return;
    try {
      for (const [type, body] of reader.push(chunk)) {
        const frame = decode(type, body, accept, this.#geometry);
        if (frame.type === FRAME.REQUEST) {
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
          // The peer's code is its own word, not ours: a session that ends early is ERR_UFFD_PEER_LOST.
          throw new UffdError('ERR_UFFD_PEER_LOST', `ERR_UFFD_PEER_LOST: the destination gave up (${frame.code}: ${frame.message})`);
        }
      }
    } catch (error) {
      this.#abort(error as UffdError, channel);
      return;
    }
    this.#kick();
  }

  // The ERROR for a violation goes on the connection it came on; both close.
  #abort(error: UffdError, from: Channel): void {
    if (this.#ended) return;
    if (error.code === 'ERR_UFFD_PROTOCOL') from.refuse(error);
    this.#end(error);
  }

  #end(error: UffdError | undefined): void {
    if (this.#ended) return;
    this.#ended = true;
    this.error = error;
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#immediate) clearImmediate(this.#immediate);
    this.#main.close();
    this.#urgentChannel?.close();
    this.emit('end', this.stats, error);
  }

  #kick(): void {
    if (this.#ended || this.#timer || this.#immediate) return;
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
    if (this.#ended) return;
    const { bandwidth } = this.#options;
    let burst = 0;
    for (;;) {
      const now = performance.now();
      if (this.#clock > now + PACING_SLACK_MS) {
        this.#wakeAt(this.#clock - now - PACING_SLACK_MS);
        return;
      }
      if (burst >= BURST_BYTES) {
        this.#kick();
        return;
      }
      // A full main socket holds back everything but what the urgent channel carries ('drain' kicks again).
      const mainOpen = this.#main.socket.writableLength <= HIGH_WATER;
      const run = this.#nextRun(now, mainOpen);
      if (!run) {
        if (mainOpen && this.#sentCount === this.#pages && !this.#doneSent) {
          this.#doneSent = true;
          this.#main.send([encodeDone()], now);
        }
        const next = this.#nextReady();
        if (next !== undefined && next > now) this.#wakeAt(next - now);
        return;
      }
      const { pageSize } = this.#geometry;
      const offset = run.first * pageSize;
      const length = (run.end - run.first) * pageSize;
      const channel = run.urgent && this.#urgentChannel ? this.#urgentChannel : this.#main;
      if (channel === this.#main) this.#payloadSent += length;
      let fresh = 0;
      for (let page = run.first; page < run.end; page++) {
        if (this.#sent[page] === UNSENT) fresh++;
        this.#sent[page] = channel === this.#main ? SENT_MAIN : SENT_URGENT;
        this.#sentAt[page] = this.#payloadSent;
      }
      this.#sentCount += fresh;
      if (run.id === 0) this.stats.pagesPushed += run.end - run.first;
      else this.stats.pagesOnDemand += run.end - run.first;
      const bytes = HEADER_SIZE + 12 + length;
      this.stats.bytesSent += bytes;
      burst += bytes;
      if (bandwidth !== Infinity) this.#clock = Math.max(this.#clock, now - PACING_CATCH_UP_MS) + (bytes / bandwidth) * 1000;
      channel.send([encodeDataHeader(run.id, offset, length), this.#image.subarray(offset, offset + length)], now);
    }
  }

  /** The earliest time a request not yet across the link will be. */
  #nextReady(): number | undefined {
    let earliest: number | undefined;
    for (const queue of [this.#urgent, this.#hinted]) {
      for (const p of queue) if (earliest === undefined || p.readyAt < earliest) earliest = p.readyAt;
    }
    return earliest;
  }

  // Whether an urgent request needs this page sent: never sent, or sent on
  // the main channel and possibly still queued behind pushed pages there
  // (not acknowledged yet), when there is an urgent channel to send it on.
  #urgentNeeds(page: number): boolean {
    const state = this.#sent[page];
    return state === UNSENT || (state === SENT_MAIN && this.#urgentChannel !== null && this.#sentAt[page]! > this.#acked);
  }

  #unsent(page: number): boolean {
    return this.#sent[page] === UNSENT;
  }

  // The next run of pages to send: demanded first, then hinted by the
  // destination, then the server's priority ranges, then the background.
  #nextRun(now: number, mainOpen: boolean): { id: number; urgent: boolean; first: number; end: number } | undefined {
    const maxPages = Math.max(1, Math.floor(MAX_DATA / this.#geometry.pageSize));
    const urgentOpen = mainOpen || this.#urgentChannel !== null;
    for (const [queue, urgent] of [[this.#urgent, true], [this.#hinted, false]] as const) {
      if (!(urgent ? urgentOpen : mainOpen)) continue;
      const needs = urgent ? (page: number) => this.#urgentNeeds(page) : (page: number) => this.#unsent(page);
      for (let i = 0; i < queue.length; i++) {
        const p = queue[i]!;
        if (p.readyAt > now) continue;
        const run = this.#takeFrom(p, maxPages, needs);
        if (!run) {
          queue.splice(i--, 1);
          continue;
        }
        if (urgent) this.#cursor = run.end; // stream on from where the workload is
        return { id: p.id, urgent, ...run };
      }
    }
    if (!mainOpen || !this.#prefetch || this.#payloadSent - this.#acked >= this.#window) return undefined;
    const chunk = this.#options.pushChunkPages;
    const unsent = (page: number): boolean => this.#unsent(page);
    while (this.#priority.length > 0) {
      const run = this.#takeFrom(this.#priority[0]!, chunk, unsent);
      if (run) return { id: 0, urgent: false, ...run };
      this.#priority.shift();
    }
    let first = this.#unsentFrom(this.#cursor);
    if (first === this.#pages) {
      while (this.#lowWater < this.#pages && this.#sent[this.#lowWater] !== UNSENT) this.#lowWater++;
      first = this.#unsentFrom(this.#lowWater);
      if (first === this.#pages) return undefined;
    }
    let end = first + 1;
    while (end < this.#pages && end - first < chunk && this.#sent[end] === UNSENT) end++;
    this.#cursor = end;
    return { id: 0, urgent: false, first, end };
  }

  #unsentFrom(page: number): number {
    while (page < this.#pages && this.#sent[page] !== UNSENT) page++;
    return page;
  }

  // The next run of pages of p that need sending, at most max pages, advancing p past it.
  #takeFrom(p: Pending, max: number, needs: (page: number) => boolean): { first: number; end: number } | undefined {
    while (p.next < p.end && !needs(p.next)) p.next++;
    if (p.next >= p.end) return undefined;
    const first = p.next;
    while (p.next < p.end && p.next - first < max && needs(p.next)) p.next++;
    return { first, end: p.next };
  }
}

const FIRST: ReadonlySet<number> = new Set([FRAME.START, FRAME.ATTACH, FRAME.ERROR]);
const REQUESTS: ReadonlySet<number> = new Set([FRAME.REQUEST, FRAME.ACK, FRAME.ERROR]);
const URGENT_REQUESTS: ReadonlySet<number> = new Set([FRAME.REQUEST, FRAME.ERROR]);

/** Serves one image to any number of destinations, each on its own TCP connection. */
export class PageServer {
  readonly image: Uint8Array;
  readonly pageSize: number;
  readonly checksum: Buffer;
  readonly #server: net.Server;
  readonly #sessions = new Set<PageSession>();
  /** Connections that have had their hello and not yet said what they are, by token. */
  readonly #pending = new Map<string, net.Socket>();
  /**
   * ATTACHed connections waiting for the START of the pending connection they
   * name, by its token: one each at most, and none longer than that
   * connection stays pending (its first-frame timeout bounds it).
   */
  readonly #parked = new Map<string, { socket: net.Socket; reader: FrameReader }>();
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

  /** Serves a connection made elsewhere (a socket accepted or connected by the caller); sessions are reported to onSession. */
  serveSocket(socket: net.Socket): void {
    this.#accept(socket);
  }

  // Every connection gets a hello; its first frame then makes it a new
  // session (START) or the urgent channel of one (ATTACH with its token).
  #accept(socket: net.Socket): void {
    socket.setNoDelay(true);
    const token = randomBytes(TOKEN_SIZE);
    const reader = new FrameReader();
    const geometry = { pageSize: this.pageSize, imageSize: this.image.byteLength };
    const key = token.toString('hex');
    const timer = setTimeout(() => socket.destroy(), FIRST_FRAME_TIMEOUT_MS);
    this.#pending.set(key, socket);
    const done = (): void => {
      clearTimeout(timer);
      this.#pending.delete(key);
      socket.off('data', onData).off('error', drop).off('close', drop);
    };
    // An ATTACH naming this connection that came before its START (the two
    // connections race) waits for it; if this connection ends first or turns
    // out to be something else, that ATTACH is refused: nothing else would
    // ever answer it.
    const settle = (session: PageSession | null): void => {
      const parked = this.#parked.get(key);
      if (!parked) return;
      this.#parked.delete(key);
      if (session) session.attach(parked.socket, parked.reader);
      else endWithError(parked.socket, protocolError('ATTACH names a connection that did not start a session (it closed, broke the protocol or sent something other than START)'));
    };
    const drop = (): void => {
      done();
      settle(null);
      socket.destroy();
    };
    const onData = (chunk: Buffer): void => {
      let frames: [number, Buffer][];
      try {
        frames = reader.push(chunk);
        if (frames.length === 0) return;
        const [type, body] = frames.shift()!;
        const frame = decode(type, body, FIRST, geometry);
        done();
        // What followed the first frame is handed back to the reader for the session to read.
        reader.unshift(frames);
        if (frame.type === FRAME.START) {
          const session = new PageSession(socket, reader, token, frame.prefetch, this.image, this.pageSize, this.#sessionOptions);
          this.#sessions.add(session);
          session.once('end', () => this.#sessions.delete(session));
          this.#onSession?.(session);
          settle(session);
          return;
        }
        settle(null);
        if (frame.type === FRAME.ATTACH) {
          const session = [...this.#sessions].find((s) => s.token.equals(frame.token));
          const wanted = frame.token.toString('hex');
          if (session) session.attach(socket, reader);
          else if (this.#pending.has(wanted) && !this.#parked.has(wanted)) {
            // Held, unread, until the named connection's START, or refused when it ends without one (settle).
            socket.pause();
            const parked = { socket, reader };
            this.#parked.set(wanted, parked);
            socket.once('close', () => {
              if (this.#parked.get(wanted) === parked) this.#parked.delete(wanted);
            });
            // An error closes it (and the close unparks it); unhandled, it would end the process.
            socket.on('error', () => {});
          } else throw protocolError('ATTACH names no session of this server');
        } else if (frame.type === FRAME.ERROR) {
          socket.destroy();
        }
      } catch (error) {
        done();
        settle(null);
        endWithError(socket, error as UffdError);
      }
    };
    socket.on('data', onData).on('error', drop).on('close', drop);
    socket.write(encodeHello(this.pageSize, this.image.byteLength, this.checksum, token));
  }

  /** Stops listening and closes every session. Resolves when the listener is closed. */
  close(): Promise<void> {
    for (const session of this.#sessions) session.close();
    for (const socket of this.#pending.values()) socket.destroy();
    for (const { socket } of this.#parked.values()) socket.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

