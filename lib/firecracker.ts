// A page-fault handler for Firecracker's snapshot restore with a UFFD memory
// backend (Firecracker's docs/snapshotting/handling-page-faults-on-snapshot-resume.md
// and src/firecracker/examples/uffd/): listen on a Unix socket, take one
// handshake per VMM (firecracker-handshake.ts), then serve that VMM's faults
// from a PageSource until it exits. Peers are independent: a bad handshake or
// a failing session closes that connection only.
//
// Each session runs on the native fast path (serveFrom): the addon's thread
// copies every page the source holds, applies REMOVE events (those pages
// read as zeros from then on) and, with prefetch, fills every page nobody
// asked for behind the faults. JavaScript sees only what the native thread
// cannot answer: pages a remote source has not delivered yet (fetched
// urgently here, then copied), faults outside the regions or on
// write-protect, and the events.
//
// Failure policy (docs/firecracker.md): a fault that cannot be served (the
// source fails, the kernel refuses the copy, the address lies outside every
// region) is never answered with made-up data and never left waiting. With
// 'kill' (the default, as Firecracker's own handlers do on panic) the peer is
// killed with SIGKILL through a pidfd and the session ends with the reason;
// with 'sigbus' the page is poisoned (UFFDIO_POISON), the faulting thread gets
// SIGBUS, and the session goes on serving other pages.
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { native, type WatchHandle } from './binding';
import { UffdError, argTypeError, argValueError } from './errors';
import type { Fault } from './events';
import { receiveHandshake, type GuestRegion, type Handshake } from './firecracker-handshake';
import { LatencyHistogram } from './latency';
import { systemPageSize } from './memory';
import { isPresent, type PageSource } from './page-source';
import { readAhead, type Miss } from './serve-from';
import { Userfaultfd } from './uffd';
import { UnixServer, type UnixConnection } from './unix-socket';

export type { GuestRegion, Handshake, HandshakeLimits, ReceiveHandshakeOptions } from './firecracker-handshake';
export { parseHandshake, receiveHandshake } from './firecracker-handshake';

/** What happens when a fault cannot be served. */
export type FailurePolicy = 'kill' | 'sigbus';

export interface SessionOptions {
  /** After the first fault, copy every page nobody asked for yet, in the background; faults always go first. */
  prefetch?: boolean;
  /** Bytes per background copy (default 64 KiB; at least one page). An on-demand fault that arrives during a copy waits for at most that one copy. */
  pushChunkBytes?: number;
  /** Default 'kill'. */
  failure?: FailurePolicy;
  /** Pages resolved per fault, natively: the aligned chunk of this many pages around it (default 1). */
  readAhead?: number;
}

export interface SessionStats {
  /** Page-fault messages handled (each once, however often EAGAIN made it wait). */
  faults: number;
  /** Pages made present for faults, from the source (COPY) or the page cache (CONTINUE). */
  pagesOnDemand: number;
  /** Pages removed by the peer (balloon) and answered with zeros or left to the kernel. */
  zeroPages: number;
  /** Pages copied by the background push. */
  pagesPushed: number;
  /** Bytes copied into the peer, on demand and pushed. */
  bytes: number;
  /** REMOVE events (balloon inflation, hot-unplug). */
  removes: number;
  /** Resolutions that found the page already there (several faults on one page, or the push first). */
  eexist: number;
  /** Resolutions refused with EAGAIN (a REMOVE was queued and unread) and retried. */
  eagain: number;
  /** Per fault: from its message being read to its resolution. */
  readonly latency: LatencyHistogram;
}

/**
 * Why a session ended: 'exited' (the peer process is gone), 'hangup' (its
 * connection closed and its process could not be watched), 'served' (it hung
 * up, every page is present or removed, and its ranges were unregistered: the
 * kernel answers the rest), 'failed' (a fault
 * could not be served; see the failure policy), 'closed' (close() was called).
 */
export type SessionEnd = 'exited' | 'hangup' | 'served' | 'failed' | 'closed';

export interface SessionResult {
  pid: number;
  end: SessionEnd;
  stats: SessionStats;
  /** Pages not yet present or removed when the session ended. */
  pagesMissing: number;
  /** Set when faults were left unserved or failed: the peer died mid-fault (ESRCH), or the failure policy acted. */
  error?: UffdError;
}

const DEFAULT_PUSH_CHUNK = 64 * 1024;
// While the peer has hung up, how often to look whether every page is in.
const SERVED_POLL_MS = 20;
// Bytes per request when prefetch asks a source for what it does not hold yet.
const PREFETCH_FETCH = 4 * 1024 * 1024;
const SIGKILL = os.constants.signals.SIGKILL;

function unservable(reason: string, cause?: unknown): UffdError {
  const error = new UffdError('ERR_UFFD_UNSERVABLE', `ERR_UFFD_UNSERVABLE: ${reason}`, {
    errno: (cause as UffdError | undefined)?.errno,
    syscall: (cause as UffdError | undefined)?.syscall,
  });
  if (cause !== undefined) (error as Error & { cause?: unknown }).cause = cause;
  return error;
}

const codeOf = (error: unknown): string | undefined => (error as UffdError | undefined)?.code;

// What JavaScript resolved itself (the native path counts the rest).
interface JsCounts {
  faults: number;
  pagesOnDemand: number;
  zeroPages: number;
  bytes: number;
  removes: number;
  eexist: number;
  eagain: number;
}

/** One VMM's memory, served from a PageSource until the VMM exits. */
export class FirecrackerSession {
  readonly pid: number;
  readonly regions: readonly GuestRegion[];
  /** Settles once the session has ended and freed its uffd, connection and process handle. Never rejects. */
  readonly done: Promise<SessionResult>;
  readonly #uffd: Userfaultfd;
  readonly #connection: UnixConnection;
  readonly #source: PageSource;
  // Per region and page: 1 once a REMOVE took it (it reads as zeros from then on).
  readonly #removed: Uint8Array[];
  readonly #options: SessionOptions;
  readonly #seen = new WeakSet<Fault>();
  readonly #js: JsCounts = { faults: 0, pagesOnDemand: 0, zeroPages: 0, bytes: 0, removes: 0, eexist: 0, eagain: 0 };
  readonly #latency = new LatencyHistogram();
  #final: SessionStats | undefined;
  #pidfd = -1;
  #pidWatch: WatchHandle | undefined;
  #servedTimer: NodeJS.Timeout | undefined;
  #error: UffdError | undefined;
  #end: SessionEnd | undefined;
  #resolveDone!: (result: SessionResult) => void;
  #pending = 0;
  #hungUp = false;

  constructor(connection: UnixConnection, handshake: Handshake, source: PageSource, options: SessionOptions = {}) {
    this.#connection = connection;
    this.pid = peerPid(connection);
    this.regions = handshake.regions;
    this.#source = source;
    this.#options = options;
    this.#removed = handshake.regions.map((r) => new Uint8Array(r.size / r.pageSize));
    this.done = new Promise((resolve) => (this.#resolveDone = resolve));
    // Firecracker enables exactly EVENT_REMOVE on the uffd it sends (no
    // THREAD_ID, so messages decode without it).
    this.#uffd = Userfaultfd.fromFd(handshake.uffdFd, {
      features: ['EVENT_REMOVE'],
      ranges: handshake.regions.map((r) => ({ address: r.base, length: r.size, pageSize: r.pageSize })),
    });
    this.#watchProcess();
    void this.#drain();
    void this.#uffd.serveFrom(source, {
      ranges: handshake.regions.map((r) => ({ address: r.base, length: r.size, offset: r.offset })),
      readAhead: options.readAhead,
      background: options.prefetch === true,
      backgroundPiece: options.pushChunkBytes ?? DEFAULT_PUSH_CHUNK,
      onMiss: (fault, miss) => this.#onMiss(fault, miss),
      onEvent: (event) => {
        if (event.type === 'remove') this.#onRemove(event.start, event.end);
        else if (event.type === 'unmap') this.#forget(event.start, event.end);
        else if (event.type === 'remap') this.#forget(event.from, event.from + BigInt(event.length));
        else event.uffd.close();
      },
      // Only reached if this class has a bug: never answer with zeros silently.
      failure: 'poison',
      onError: (error) => this.#fail(unservable('the handler failed', error)),
    }).catch((error: unknown) => this.#finish('failed', error as UffdError));
    // Bringing pages into the source needs no running peer (copying them in does: the native thread waits for the first fault).
    if (options.prefetch) this.#prefetchSource();
  }

  /** What the session has done so far: the native thread's work and this thread's, together. */
  get stats(): SessionStats {
    if (this.#final) return this.#final;
    const n = this.#uffd.stats();
    const js = this.#js;
    const latency = this.#latency.clone();
    latency.add(n.serviceLatency);
    return {
      faults: n.nativeFaults + js.faults,
      // The native path's pages are copies and continues for faults (their read-ahead too), zero pages and background copies.
      pagesOnDemand: n.pages - n.zeroPages - n.backgroundPages + js.pagesOnDemand,
      zeroPages: n.zeroPages + js.zeroPages,
      pagesPushed: n.backgroundPages,
      bytes: n.copiedBytes + js.bytes,
      removes: js.removes,
      eexist: n.eexist + js.eexist,
      eagain: n.eagainRetries + js.eagain,
      latency,
    };
  }

  /** Faults received whose resolution is still waiting for the source. */
  get pendingFaults(): number {
    return this.#pending;
  }

  /** Whether the peer has closed its end of the socket (Firecracker before v1.12 does so right after the handshake). */
  get peerHungUp(): boolean {
    return this.#hungUp;
  }

  get ended(): boolean {
    return this.#end !== undefined;
  }

  /** Ends the session: closes the uffd (the peer's faulting threads stay blocked, as with any handler that goes away) and the connection. */
  close(): void {
    this.#finish('closed');
  }

  /**
   * Ends the session for a handler that is going away, leaving no thread of
   * the peer waiting for a page nobody will serve: a peer with every page in
   * has its ranges unregistered and runs on (end 'served'); any other is
   * killed as the 'kill' failure policy does (end 'failed', with
   * ERR_UFFD_UNSERVABLE), whatever the policy. Returns how the session ended.
   */
  abandon(): SessionEnd {
    this.#letGoIfServed();
    if (this.#end !== undefined) return this.#end;
    this.#error ??= unservable(`the handler stopped with ${this.#uffd.stats().pagesLeft} page(s) not served and ${this.#pending} fault(s) waiting: the peer (pid ${this.pid}) is killed, as nobody would serve its next fault`);
    this.#kill();
    this.#finish('failed');
    return 'failed';
  }

  // The peer's process: its exit ends the session. The connection alone
  // cannot tell, since Firecracker before v1.12 closes it right after the
  // handshake and keeps running.
  #watchProcess(): void {
    try {
      this.#pidfd = this.#connection.openPeerPidfd();
      this.#pidWatch = new native.WatchHandle(this.#pidfd, (status, readable) => {
        if (status < 0 || readable) this.#finish('exited');
      });
      this.#pidWatch.start();
    } catch {
      // No pidfd (before Linux 6.5, a peer in a pid namespace this one cannot see; before 5.3, none at all): the hangup ends the session.
      this.#pidfd = -1;
    }
  }

  // Nothing more comes from Firecracker after the handshake; anything that
  // does is discarded, descriptors closed, so a peer cannot pile them up here.
  async #drain(): Promise<void> {
    for (;;) {
      const message = await this.#connection.receive().catch(() => null);
      if (!message) break;
      for (const fd of message.fds) native.closeFd(fd);
    }
    if (this.#end !== undefined) return;
    if (this.#pidfd < 0) {
      this.#finish('hangup');
      return;
    }
    this.#hungUp = true;
    // The native thread fills pages without telling this one: look now and then.
    this.#servedTimer = setInterval(() => this.#maybeServed(), SERVED_POLL_MS);
    this.#servedTimer.unref();
    this.#maybeServed();
  }

  // The source's pages holding [offset, offset + length): fetch() takes ranges aligned to them.
  #fetch(offset: number, length: number, options?: { urgent: boolean }): Promise<void> {
    const size = this.#source.pageSize;
    const start = Math.floor(offset / size) * size;
    const end = Math.min(this.#source.size, Math.ceil((offset + length) / size) * size);
    return this.#source.fetch(start, end - start, options);
  }

  // A fault the native thread passed on: its page is not in the source yet,
  // or it is one no source can answer.
  #onMiss(fault: Fault, miss: Miss): void | Promise<void> {
    if (this.#end !== undefined) return;
    if (!this.#seen.has(fault)) {
      this.#seen.add(fault);
      this.#js.faults++;
    }
    const index = miss.range ? this.regions.findIndex((r) => r.base === miss.range!.address) : -1;
    if (index < 0 || miss.offset === undefined) {
      this.#unservable(fault, unservable(`a fault at 0x${fault.address.toString(16)} lies outside every region the peer announced`));
      return;
    }
    if (fault.kind === 'wp' || fault.kind === 'rwp') {
      // Firecracker never registers write-protect; waking would only repeat the fault.
      this.#unservable(fault, unservable(`a write-protect fault at 0x${fault.address.toString(16)}: this handler serves MISSING and MINOR faults only`));
      return;
    }
    const region = this.regions[index]!;
    const page = Number(fault.pageAddress - region.base) / region.pageSize;
    return this.#serve(fault, index, page, miss.offset);
  }

  #serve(fault: Fault, index: number, page: number, at: number): void | Promise<void> {
    const { pageSize } = this.regions[index]!;
    const removed = this.#removed[index]![page] !== 0;
    if (!removed && fault.kind !== 'minor' && !isPresent(this.#source, at, pageSize)) {
      this.#pending++;
      return this.#fetch(at, pageSize, { urgent: true }).then(
        () => {
          this.#pending--;
          if (this.#end === undefined) return this.#serve(fault, index, page, at);
        },
        (error: unknown) => {
          this.#pending--;
          if (this.#end === undefined) this.#unservable(fault, unservable(`the source could not deliver bytes [${at}, ${at + pageSize}) for the fault at 0x${fault.address.toString(16)}`, error));
        },
      );
    }
    try {
      let outcome;
      if (removed) {
        outcome = zeroFill(fault, pageSize);
        this.#js.zeroPages++;
      } else if (fault.kind === 'minor') {
        outcome = fault.continue();
        if (outcome === 'done') this.#js.pagesOnDemand++;
      } else {
        outcome = fault.copy(this.#source.bytes.subarray(at, at + pageSize));
        if (outcome === 'done') {
          this.#js.pagesOnDemand++;
          this.#js.bytes += pageSize;
        }
      }
      if (outcome === 'exists') this.#js.eexist++;
      this.#latency.record((performance.now() - fault.receivedAt) * 1000);
    } catch (error) {
      const code = codeOf(error);
      // A REMOVE is queued and unread: serve() reads it, then hands the fault back.
      if (code === 'EAGAIN') {
        this.#js.eagain++;
        throw error;
      }
      if (code === 'ESRCH') {
        this.#peerGone(error);
        return;
      }
      // Not registered there any more (Firecracker v1.7-v1.10 maps fresh
      // memory over a ballooned range, with no event): woken, the thread
      // retries and the kernel answers it.
      if (code === 'ENOENT') {
        fault.release();
        return;
      }
      this.#unservable(fault, unservable(`the kernel refused to resolve the ${fault.kind} fault at 0x${fault.address.toString(16)}`, error));
      return;
    }
    this.#maybeServed();
  }

  #onRemove(start: bigint, end: bigint): void {
    this.#js.removes++;
    this.#forget(start, end, true);
    this.#maybeServed();
  }

  // Marks [start, end) removed (the native thread has done so already).
  // Huge-page ranges are unregistered (as Firecracker's reference handler
  // does since v1.14): the kernel then gives the peer fresh zero pages
  // itself, and nothing stale can be copied there.
  #forget(start: bigint, end: bigint, unregisterHuge = false): void {
    for (let index = 0; index < this.regions.length; index++) {
      const region = this.regions[index]!;
      const regionEnd = region.base + BigInt(region.size);
      if (end <= region.base || start >= regionEnd) continue;
      const page = BigInt(region.pageSize);
      const from = ((start > region.base ? start : region.base) - region.base) / page;
      const to = ((end < regionEnd ? end : regionEnd) - region.base + page - 1n) / page;
      this.#removed[index]!.fill(1, Number(from), Number(to));
      if (unregisterHuge && region.pageSize !== systemPageSize()) {
        try {
          this.#uffd.unregister({ address: region.base + from * page, length: (to - from) * page, pageSize: region.pageSize });
        } catch (error) {
          if (codeOf(error) === 'ESRCH') this.#peerGone(error);
          // Otherwise faults there are still answered with zeros, by copy.
        }
      }
    }
  }

  // Prefetch with a source that fills over time (a remote one): ask it for
  // every region's bytes, a piece at a time, in the background. The native
  // thread copies pages in as they land; faults are fetched urgently, ahead
  // of these requests.
  #prefetchSource(): void {
    if (this.#source.present === null) return;
    void (async () => {
      for (const region of this.regions) {
        for (let at = region.offset; at < region.offset + region.size && this.#end === undefined; at += PREFETCH_FETCH) {
          const length = Math.min(PREFETCH_FETCH, region.offset + region.size - at);
          if (isPresent(this.#source, at, length)) continue;
          try {
            await this.#fetch(at, length);
          } catch {
            return; // Background work only: faults fetch (urgently) what they need.
          }
        }
      }
    })();
  }

  // Firecracker before v1.12 hangs up right after the handshake and runs on.
  // Once it has, and every page is present or removed, nothing is left for
  // this handler to do: unregister every region, so that the kernel answers
  // whatever comes next by itself (a removed page faults in as zeros), and end.
  #maybeServed(): void {
    if (this.#hungUp) this.#letGoIfServed();
  }

  // With every page present or removed and no fault waiting: unregister
  // every region and end 'served'. If the kernel refuses, serving goes on
  // (whatever stayed registered still faults here), and a peer gone
  // meanwhile ends the session.
  #letGoIfServed(): void {
    if (this.#pending > 0 || this.#end !== undefined || this.#uffd.stats().pagesLeft > 0) return;
    try {
      for (const region of this.regions) this.#uffd.unregister({ address: region.base, length: region.size, pageSize: region.pageSize });
    } catch (error) {
      if (codeOf(error) === 'ESRCH') this.#peerGone(error);
      return;
    }
    this.#finish('served');
  }

  #peerGone(cause: unknown): void {
    const e = cause as UffdError;
    this.#error ??= new UffdError('ESRCH', `ESRCH: the peer (pid ${this.pid}) exited while its faults were being served`, { errno: e.errno, syscall: e.syscall });
    this.#finish('exited');
  }

  // The failure policy, for a fault that cannot be served.
  #unservable(fault: Fault, error: UffdError): void {
    this.#error ??= error;
    if (this.#options.failure === 'sigbus') {
      try {
        fault.poison();
        return;
      } catch {
        // No UFFDIO_POISON here (Linux < 6.6, or this memory type): kill instead.
      }
    }
    this.#kill();
    this.#finish('failed');
  }

  #fail(error: UffdError): void {
    this.#error ??= error;
  }

  #kill(): void {
    try {
      if (this.#pidfd >= 0) native.pidfdSignal(this.#pidfd, SIGKILL);
      else if (this.pid > 0) process.kill(this.pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }

  #finish(end: SessionEnd, error?: UffdError): void {
    if (this.#end !== undefined) return;
    this.#end = end;
    if (error) this.#error ??= error;
    this.#uffd.close();
    this.#connection.close();
    if (this.#servedTimer) clearInterval(this.#servedTimer);
    if (this.#pidWatch) this.#pidWatch.close();
    if (this.#pidfd >= 0) native.closeFd(this.#pidfd);
    this.#pidfd = -1;
    if (end === 'exited' && this.#pending > 0) {
      this.#error ??= new UffdError('ESRCH', `ESRCH: the peer (pid ${this.pid}) exited with ${this.#pending} fault(s) still waiting for the source`, { errno: -3 });
    }
    // The uffd is closed: its native counters are final.
    const stats = this.stats;
    this.#final = stats;
    const pagesMissing = this.#uffd.stats().pagesLeft;
    this.#resolveDone({ pid: this.pid, end, stats, pagesMissing, ...(this.#error ? { error: this.#error } : {}) });
  }
}

let zeroBuffer = new Uint8Array(0);

// A page the balloon took back reads as zeros, never as snapshot data.
// Huge-page ranges are unregistered when removed, and the kernel supplies
// their zeros (ENOENT here: wake the thread and let it retry); hugetlb has no
// ZEROPAGE, so a still-registered huge page gets a copy of zeros.
function zeroFill(fault: Fault, pageSize: number): 'done' | 'exists' {
  if (pageSize === systemPageSize()) return fault.zero();
  if (zeroBuffer.length < pageSize) zeroBuffer = new Uint8Array(pageSize);
  try {
    return fault.copy(zeroBuffer.subarray(0, pageSize));
  } catch (error) {
    if (codeOf(error) === 'ENOENT') return fault.release();
    throw error;
  }
}

// SIGKILL to the process at the other end, through a pidfd (never a pid
// that may have been recycled); false if it could not be signalled.
function killPeer(connection: UnixConnection): boolean {
  let pidfd = -1;
  try {
    pidfd = connection.openPeerPidfd();
    native.pidfdSignal(pidfd, SIGKILL);
    return true;
  } catch {
    return false; // gone already, or not ours to signal
  } finally {
    if (pidfd >= 0) native.closeFd(pidfd);
  }
}

function peerPid(connection: UnixConnection): number {
  try {
    return connection.peer.pid;
  } catch {
    return 0; // The peer is gone already.
  }
}

export interface ServerOptions extends SessionOptions {
  /** Where every peer's pages come from (a FilePageSource for a snapshot's memory file). The server does not close it. */
  source: PageSource;
  /** How long a new connection may take to send its handshake (default 10 s). */
  handshakeTimeoutMs?: number;
  onSession?: (session: FirecrackerSession) => void;
  /**
   * A connection whose handshake was refused: it is closed and the server goes
   * on. A peer that sent a malformed handshake (ERR_UFFD_BAD_HANDSHAKE) is
   * killed first (killed: true once SIGKILL was sent); one that sent nothing
   * (ERR_UFFD_TIMEOUT, ERR_UFFD_PEER_LOST) is not.
   */
  onRefused?: (error: UffdError, pid: number, killed: boolean) => void;
}

/** Listens for Firecracker VMMs and serves each one's memory from options.source. */
export class FirecrackerServer {
  readonly path: string;
  readonly #server: UnixServer;
  readonly #sessions = new Set<FirecrackerSession>();
  readonly #handshaking = new Set<UnixConnection>();

  private constructor(path: string, options: ServerOptions) {
    this.path = path;
    this.#server = UnixServer.listen(path);
    void this.#accept(options);
  }

  /** Listens on path, as UnixServer.listen does: a stale socket file there is replaced, a live listener or another file refused. */
  static listen(path: string, options: ServerOptions): FirecrackerServer {
    if (typeof path !== 'string') throw argTypeError('path', 'of type string', path);
    if (options === null || typeof options !== 'object') throw argTypeError('options', 'an object', options);
    const source = options.source as Partial<PageSource> | undefined;
    if (!source || !(source.bytes instanceof Uint8Array) || typeof source.fetch !== 'function' || !Number.isSafeInteger(source.size)) {
      throw argTypeError('options.source', 'a PageSource (new FilePageSource(memFile), for one)', source);
    }
    if (options.failure !== undefined && options.failure !== 'kill' && options.failure !== 'sigbus') {
      throw argValueError('options.failure', `must be 'kill' or 'sigbus'. Received ${String(options.failure)}`);
    }
    // Checked here: a session refusing its options would only fail with its first peer.
    readAhead(options.readAhead);
    return new FirecrackerServer(path, options);
  }

  get sessions(): ReadonlySet<FirecrackerSession> {
    return this.#sessions;
  }

  async #accept(options: ServerOptions): Promise<void> {
    for await (const connection of this.#server.connections()) {
      const pid = peerPid(connection);
      this.#handshaking.add(connection);
      receiveHandshake(connection, { sourceSize: options.source.size, timeoutMs: options.handshakeTimeoutMs }).then(
        (handshake) => {
          this.#handshaking.delete(connection);
          const session = new FirecrackerSession(connection, handshake, options.source, options);
          this.#sessions.add(session);
          void session.done.then(() => this.#sessions.delete(session));
          options.onSession?.(session);
        },
        (error: unknown) => {
          this.#handshaking.delete(connection);
          // A Firecracker whose handshake is refused waits for its faults
          // forever: kill it, as Firecracker's own handlers do when they fail.
          const killed = (error as UffdError).code === 'ERR_UFFD_BAD_HANDSHAKE' && killPeer(connection);
          connection.close();
          options.onRefused?.(error as UffdError, pid, killed);
        },
      );
    }
  }

  /** Stops listening (removing the socket file it made, not one that has replaced it) and ends every session. */
  close(): void {
    this.#server.close();
    for (const connection of this.#handshaking) connection.close();
    for (const session of this.#sessions) session.close();
  }
}
