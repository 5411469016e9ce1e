// The destination side of a post-copy migration's network half: a PageSource
// whose pages come from a PageServer over TCP. Pages land in a local memfd
// (`bytes`) as they arrive, demanded or pushed; `present` flags are set with
// Atomics.store after the bytes, so native threads and workers can read them.
// `fetch` asks the server for what is missing (urgent requests jump its
// queue) and resolves once it has landed. If the source is lost, every
// pending and later fetch of a missing page rejects with
// ERR_UFFD_SOURCE_LOST, and `complete` rejects with the same error.
import { createHash } from 'node:crypto';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { argRangeError, argTypeError, UffdError } from '../errors';
import { Memfd, type Mapping } from '../memory';
import type { FetchOptions, PageSource, SourceFile } from '../page-source';
import * as validate from '../validate';
import {
  FRAME, FrameReader, decode, encodeAck, encodeAttach, encodeRequest, encodeStart, endWithError, protocolError, type Geometry, type Hello,
} from './protocol';

export interface ClientOptions {
  host?: string;
  port: number;
  /** Ask the server to push every page in the background (default true). Without it only fetched pages arrive. */
  prefetch?: boolean;
  /** Bound on connecting and receiving the hello, in ms (default 10 000). */
  connectTimeoutMs?: number;
  /** Fail if fetches wait this long with nothing arriving from the source, in ms (default 30 000). */
  stallTimeoutMs?: number;
  /** Check the whole image against the hello's sha256 once every page is present (default true). */
  verify?: boolean;
  /** Open a second connection for demanded pages, so they never wait behind pushed ones in socket buffers (default true). */
  urgentChannel?: boolean;
}

export interface ClientStats {
  /** Pages that arrived answering a request, and pushed by the server unasked. */
  pagesOnDemand: number;
  pagesPushed: number;
  bytesReceived: number;
  requests: number;
}

// Per-page request state: what has been asked for, so nothing is asked twice.
const NOT_REQUESTED = 0;
const REQUESTED = 1;
const REQUESTED_URGENT = 2;

// Received page bytes are acknowledged this often (the server's flow control).
const ACK_EVERY = 128 << 10;

const FROM_SERVER: ReadonlySet<number> = new Set([FRAME.DATA, FRAME.DONE, FRAME.ERROR]);
const URGENT_FROM_SERVER: ReadonlySet<number> = new Set([FRAME.DATA, FRAME.ERROR]);
const HELLO_ONLY: ReadonlySet<number> = new Set([FRAME.HELLO, FRAME.ERROR]);

interface Waiter {
  remaining: number;
  resolve: () => void;
  reject: (error: UffdError) => void;
}

export class PostcopyClient implements PageSource {
  readonly size: number;
  readonly pageSize: number;
  /** The local cache of the image: a memfd mapping (read it through `bytes`, or from a worker through attachView(mapping.address, size)). */
  readonly mapping: Mapping;
  readonly bytes: Uint8Array;
  readonly present: Uint8Array;
  readonly file: SourceFile;
  /** The image's sha256, as the source announced it. */
  readonly checksum: Buffer;
  readonly stats: ClientStats = { pagesOnDemand: 0, pagesPushed: 0, bytesReceived: 0, requests: 0 };
  /** Resolves when every page is present (and verified, with verify); rejects if the source is lost first. */
  readonly complete: Promise<void>;
  readonly #socket: net.Socket;
  /** The urgent channel: demanded pages come on it, never behind pushed ones. */
  #urgent: net.Socket | null = null;
  readonly #geometry: Geometry;
  readonly #pages: number;
  readonly #requested: Uint8Array;
  readonly #waiters = new Map<number, Waiter[]>();
  readonly #verify: boolean;
  readonly #stallTimeoutMs: number;
  #presentCount = 0;
  #ackedAt = 0;
  /** Page bytes received on the main connection: what ACKs count. */
  #mainReceived = 0;
  readonly #landedListeners: ((firstPage: number, endPage: number) => void)[] = [];
  #nextId = 1;
  #highestId = 0;
  #error: UffdError | undefined;
  #lastArrival = performance.now();
  #stallTimer: NodeJS.Timeout;
  #resolveComplete!: () => void;
  #rejectComplete!: (error: UffdError) => void;
  #closed = false;
  readonly #memfd: Memfd;
  #sourceDone = false;

  private constructor(socket: net.Socket, reader: FrameReader, hello: Hello, options: ClientOptions) {
    this.#socket = socket;
    this.pageSize = hello.pageSize;
    this.size = hello.imageSize;
    this.checksum = hello.checksum;
    this.#geometry = { pageSize: hello.pageSize, imageSize: hello.imageSize };
    this.#pages = this.size / this.pageSize;
    this.#requested = new Uint8Array(this.#pages);
    this.#verify = options.verify ?? true;
    this.#stallTimeoutMs = options.stallTimeoutMs ?? 30_000;
    this.#memfd = Memfd.create(this.size, { name: 'postcopy-cache' });
    try {
      this.mapping = this.#memfd.map();
    } catch (error) {
      this.#memfd.close();
      throw error;
    }
    this.file = { fd: this.#memfd.fd, offset: 0 };
    this.bytes = this.mapping.view();
    this.present = new Uint8Array(new SharedArrayBuffer(this.#pages));
    this.complete = new Promise<void>((resolve, reject) => {
      this.#resolveComplete = resolve;
      this.#rejectComplete = reject;
    });
    // Nobody may be listening (a caller that only fetches): a rejection here is not unhandled.
    this.complete.catch(() => {});
    this.#stallTimer = setInterval(() => this.#checkStall(), Math.min(1000, this.#stallTimeoutMs)).unref();
    socket.write(encodeStart(options.prefetch ?? true));
    this.#listen(socket, reader, FROM_SERVER);
  }

  #attachUrgent(socket: net.Socket, reader: FrameReader, token: Buffer): void {
    if (this.#error) {
      socket.destroy();
      throw this.#error;
    }
    this.#urgent = socket;
    socket.write(encodeAttach(token));
    this.#listen(socket, reader, URGENT_FROM_SERVER);
  }

  #listen(socket: net.Socket, reader: FrameReader, accept: ReadonlySet<number>): void {
    socket.on('data', (chunk: Buffer) => this.#onData(socket, reader, accept, chunk));
    socket.on('error', (error) => this.#fail(lost(`the connection failed (${error.message})`)));
    socket.on('close', () => this.#fail(lost('the source closed the connection')));
    socket.resume();
    // Frames that arrived with the hello.
    this.#onData(socket, reader, accept, Buffer.alloc(0));
  }

  /**
   * Connects to a PageServer, reads its hello and starts the session; then,
   * unless urgentChannel is false, opens the session's urgent channel.
   */
  static async connect(options: ClientOptions): Promise<PostcopyClient> {
    const opts = validate.options<ClientOptions>(options, 'options');
    const port = validate.size(opts.port, 'options.port');
    if (port === 0 || port > 65535) throw argRangeError('options.port', 'between 1 and 65535', port);
    const host = opts.host ?? '127.0.0.1';
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    const main = await openConnection(host, port, timeoutMs);
    let client: PostcopyClient;
    try {
      client = new PostcopyClient(main.socket, main.reader, main.hello, opts as ClientOptions);
    } catch (error) {
      main.socket.destroy();
      throw error;
    }
    if (opts.urgentChannel === false) return client;
    try {
      const urgent = await openConnection(host, port, timeoutMs);
      const same = urgent.hello.pageSize === main.hello.pageSize && urgent.hello.imageSize === main.hello.imageSize && urgent.hello.checksum.equals(main.hello.checksum);
      if (!same) {
        const error = protocolError('the second connection reached a page server with another image');
        endWithError(urgent.socket, error);
        throw error;
      }
      client.#attachUrgent(urgent.socket, urgent.reader, main.hello.token);
    } catch (error) {
      client.close();
      throw error;
    }
    return client;
  }

  /**
   * Calls listener(firstPage, endPage) synchronously each time pages land, so
   * that a consumer can act on them without scanning `present` (some pages in
   * the range may have been present before).
   */
  onLanded(listener: (firstPage: number, endPage: number) => void): void {
    if (typeof listener !== 'function') throw argTypeError('listener', 'a function', listener);
    this.#landedListeners.push(listener);
  }

  /** Pages present so far. */
  get presentCount(): number {
    return this.#presentCount;
  }

  get pageCount(): number {
    return this.#pages;
  }

  /** Why the source is lost, once it is. */
  get error(): UffdError | undefined {
    return this.#error;
  }

  fetch(offset: number, length: number, options?: FetchOptions): Promise<void> {
    checkFetch(offset, length, this.#geometry);
    const urgent = options?.urgent === true;
    const first = offset / this.pageSize;
    const end = first + length / this.pageSize;
    let missing = 0;
    let runStart = -1;
    const want = urgent ? REQUESTED_URGENT : REQUESTED;
    for (let page = first; page <= end; page++) {
      const needs = page < end && this.present[page] === 0 && this.#requested[page]! < want;
      if (page < end && this.present[page] === 0) missing++;
      if (needs && runStart < 0) runStart = page;
      if (!needs && runStart >= 0) {
        this.#request(runStart, page, urgent);
        runStart = -1;
      }
    }
    if (missing === 0) return Promise.resolve();
    if (this.#error) return Promise.reject(this.#error);
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = { remaining: missing, resolve, reject };
      for (let page = first; page < end; page++) {
        if (this.present[page] !== 0) continue;
        const list = this.#waiters.get(page);
        if (list) list.push(waiter);
        else this.#waiters.set(page, [waiter]);
      }
    });
  }

  /** Closes the connection (telling the source why, if given) and releases the cache. */
  close(reason?: string): void {
    if (this.#closed) return;
    if (reason) endWithError(this.#socket, { code: 'ERR_UFFD_CLOSED', message: reason });
    this.#fail(new UffdError('ERR_UFFD_CLOSED', 'ERR_UFFD_CLOSED: the post-copy client was closed'));
    this.#closed = true;
    this.mapping.unmap();
    this.#memfd.close();
  }

  #request(first: number, end: number, urgent: boolean): void {
    if (this.#error) return;
    this.#requested.fill(urgent ? REQUESTED_URGENT : REQUESTED, first, end);
    this.stats.requests++;
    const id = this.#nextId;
    this.#highestId = Math.max(this.#highestId, id);
    this.#nextId = this.#nextId === 0xffffffff ? 1 : this.#nextId + 1;
    (urgent && this.#urgent ? this.#urgent : this.#socket).write(encodeRequest(id, first * this.pageSize, (end - first) * this.pageSize, urgent));
  }

  #onData(socket: net.Socket, reader: FrameReader, accept: ReadonlySet<number>, chunk: Buffer): void {
    // What still arrives on a connection ending with ERROR is dropped.
    if (this.#error) return;
    this.#lastArrival = performance.now();
    try {
      for (const [type, body] of reader.push(chunk)) this.#onFrame(type, body, accept);
      if (this.#mainReceived - this.#ackedAt >= ACK_EVERY && !this.#socket.destroyed) {
        this.#ackedAt = this.#mainReceived;
        this.#socket.write(encodeAck(this.#ackedAt));
      }
    } catch (error) {
      const e = error as UffdError;
      // The ERROR for a violation goes on the connection it came on; both close.
      if (e.code === 'ERR_UFFD_PROTOCOL') endWithError(socket, e);
      this.#fail(e);
    }
  }

  #onFrame(type: number, body: Buffer, accept: ReadonlySet<number>): void {
    const frame = decode(type, body, accept, this.#geometry);
    if (frame.type === FRAME.DATA) {
      if (frame.id > this.#highestId) throw protocolError(`DATA answers request ${frame.id}, which was never made`);
      this.stats.bytesReceived += frame.payload.length;
      if (accept === FROM_SERVER) this.#mainReceived += frame.payload.length;
      this.#land(frame.offset, frame.payload, frame.id === 0);
    } else if (frame.type === FRAME.DONE) {
      // Demanded pages may still be on their way on the urgent channel.
      this.#sourceDone = true;
    } else if (frame.type === FRAME.ERROR) {
      throw new UffdError('ERR_UFFD_SOURCE_LOST', `ERR_UFFD_SOURCE_LOST: the source gave up (${frame.code}: ${frame.message})`);
    }
  }

  #land(offset: number, payload: Buffer, pushed: boolean): void {
    const pageSize = this.pageSize;
    const first = offset / pageSize;
    const count = payload.length / pageSize;
    // Only pages not present yet are written: a present page keeps its first
    // copy (a page can come twice, pushed and demanded), which the native
    // thread may be copying into the registered memory right now.
    let run = -1;
    for (let page = first; page <= first + count; page++) {
      const absent = page < first + count && this.present[page] === 0;
      if (absent && run < 0) run = page;
      if (!absent && run >= 0) {
        this.bytes.set(payload.subarray((run - first) * pageSize, (page - first) * pageSize), run * pageSize);
        run = -1;
      }
    }
    let fresh = 0;
    for (let page = first; page < first + count; page++) {
      if (this.present[page] !== 0) continue;
      // The flag after the bytes: a reader that sees it set sees the page whole.
      Atomics.store(this.present, page, 1);
      fresh++;
      const waiters = this.#waiters.get(page);
      if (!waiters) continue;
      this.#waiters.delete(page);
      for (const waiter of waiters) if (--waiter.remaining === 0) waiter.resolve();
    }
    this.#presentCount += fresh;
    if (pushed) this.stats.pagesPushed += fresh;
    else this.stats.pagesOnDemand += fresh;
    if (fresh > 0) for (const listener of this.#landedListeners) listener(first, first + count);
    if (fresh > 0 && this.#presentCount === this.#pages) void this.#finish();
  }

  async #finish(): Promise<void> {
    clearInterval(this.#stallTimer);
    if (this.#verify) {
      // In slices, so faults and the network are served between them.
      const hash = createHash('sha256');
      const slice = 8 << 20;
      for (let at = 0; at < this.size; at += slice) {
        hash.update(this.bytes.subarray(at, Math.min(this.size, at + slice)));
        await new Promise((resolve) => setImmediate(resolve));
        if (this.#closed) return;
      }
      const digest = hash.digest();
      if (!digest.equals(this.checksum)) {
        this.#fail(new UffdError('ERR_UFFD_CHECKSUM',
          `ERR_UFFD_CHECKSUM: every page arrived but the image's sha256 is ${digest.toString('hex')}, not the ${this.checksum.toString('hex')} the source announced`));
        return;
      }
    }
    this.#resolveComplete();
    // Nothing more is needed from the source.
    this.#socket.end();
    this.#urgent?.end();
  }

  #checkStall(): void {
    if (this.#waiters.size === 0) return;
    const quiet = performance.now() - this.#lastArrival;
    if (quiet > this.#stallTimeoutMs) {
      this.#fail(new UffdError('ERR_UFFD_TIMEOUT',
        `ERR_UFFD_TIMEOUT: the source sent nothing for ${Math.round(quiet)} ms while ${this.#waiters.size} pages were awaited (stallTimeoutMs ${this.#stallTimeoutMs})`));
      this.#socket.destroy();
      this.#urgent?.destroy();
    }
  }

  #fail(error: UffdError): void {
    if (this.#presentCount === this.#pages && error.code === 'ERR_UFFD_SOURCE_LOST') return; // everything is here: a close is the normal end
    clearInterval(this.#stallTimer);
    if (this.#error) return;
    this.#error = error;
    // A connection ending with an ERROR is left to finish writing it (endWithError closes it).
    for (const socket of [this.#socket, this.#urgent]) if (socket && !socket.writableEnded) socket.destroy();
    for (const waiters of this.#waiters.values()) for (const waiter of waiters) waiter.reject(error);
    this.#waiters.clear();
    this.#rejectComplete(error);
  }

  /** Whether the source said every page has been sent. */
  get sourceDone(): boolean {
    return this.#sourceDone;
  }
}

function lost(why: string): UffdError {
  return new UffdError('ERR_UFFD_SOURCE_LOST', `ERR_UFFD_SOURCE_LOST: ${why} before every page arrived; pages not yet here cannot be fetched`);
}

function checkFetch(offset: number, length: number, geometry: Geometry): void {
  validate.size(offset, 'offset');
  validate.size(length, 'length');
  if (length === 0 || offset % geometry.pageSize !== 0 || length % geometry.pageSize !== 0 || offset + length > geometry.imageSize) {
    throw argRangeError('[offset, offset + length)', `a non-empty range of whole ${geometry.pageSize}-byte pages inside the ${geometry.imageSize}-byte image`, `[${offset}, +${length})`);
  }
}

/** Connects and reads the hello; frames that came after it stay in the reader. */
function openConnection(host: string, port: number, timeoutMs: number): Promise<{ socket: net.Socket; reader: FrameReader; hello: Hello }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    socket.setNoDelay(true);
    const reader = new FrameReader();
    const timer = setTimeout(() => fail(new UffdError('ERR_UFFD_TIMEOUT',
      `ERR_UFFD_TIMEOUT: no hello from the page server at ${host}:${port} within ${timeoutMs} ms`, { syscall: 'connect' })), timeoutMs);
    const fail = (error: UffdError): void => {
      clearTimeout(timer);
      socket.off('data', onData).off('error', onError).off('close', onClose);
      if (error.code === 'ERR_UFFD_PROTOCOL') endWithError(socket, error);
      else socket.destroy();
      reject(error);
    };
    const onError = (error: Error): void => fail(new UffdError('ERR_UFFD_SOURCE_LOST',
      `ERR_UFFD_SOURCE_LOST: cannot reach the page server at ${host}:${port} (${error.message})`, { syscall: 'connect' }));
    const onClose = (): void => fail(lost('the source closed the connection before its hello'));
    const onData = (chunk: Buffer): void => {
      let hello: Hello;
      try {
        const frames = reader.push(chunk);
        if (frames.length === 0) return;
        const [type, body] = frames.shift()!;
        const frame = decode(type, body, HELLO_ONLY, null);
        // The peer's code is its own word, not ours (it could say ERR_UFFD_TIMEOUT).
        if (frame.type === FRAME.ERROR) {
          throw new UffdError('ERR_UFFD_SOURCE_LOST', `ERR_UFFD_SOURCE_LOST: the page server at ${host}:${port} refused the connection before its hello (${frame.code}: ${frame.message})`, { syscall: 'connect' });
        }
        hello = frame as Hello;
        reader.unshift(frames);
      } catch (error) {
        fail(error as UffdError);
        return;
      }
      clearTimeout(timer);
      // Paused until the client listens, so that nothing arriving meanwhile is lost.
      socket.pause();
      socket.off('data', onData).off('error', onError).off('close', onClose);
      resolve({ socket, reader, hello });
    };
    socket.on('data', onData).on('error', onError).on('close', onClose);
  });
}
