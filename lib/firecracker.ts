// A page-fault handler for Firecracker's snapshot restore with a UFFD memory
// backend (docs/snapshotting/handling-page-faults-on-snapshot-resume.md in
// Firecracker; ../shared/FIRECRACKER-PROTOCOL.md): listen on a Unix socket,
// receive one message per VM (a JSON array of guest memory regions, and the
// uffd as the only SCM_RIGHTS descriptor), then serve the VM's faults from the
// snapshot's memory file. Everything a peer sends is validated; a bad
// handshake closes that connection and never disturbs other peers.
import { performance } from 'node:perf_hooks';
import { UffdError } from './errors';
import type { Fault } from './events';
import { Mapping, systemPageSize } from './memory';
import { Userfaultfd } from './uffd';
import { UnixServer, descriptorKind, type UnixConnection } from './unix-socket';
import { native } from './binding';

/** One guest memory region as Firecracker describes it. */
export interface GuestRegion {
  /** Start of the region in the VMM's address space. */
  readonly base: bigint;
  readonly size: number;
  /** Where the region's bytes start in the memory file. */
  readonly offset: number;
  readonly pageSize: number;
}

export interface Handshake {
  readonly uffdFd: number;
  readonly regions: GuestRegion[];
}

const MAX_HANDSHAKE = 1 << 20;
// Huge page sizes Firecracker may announce besides the base page size.
const HUGE_PAGE_SIZES = new Set([2 * 1024 * 1024]);
// Addresses above this are not user addresses on any 64-bit Linux (57-bit VA).
const ADDRESS_LIMIT = 1n << 57n;

function bad(reason: string): UffdError {
  return new UffdError('ERR_UFFD_BAD_HANDSHAKE', `ERR_UFFD_BAD_HANDSHAKE: ${reason}`);
}

/**
 * JSON.parse, except that every integer becomes a bigint, so u64 fields above
 * 2^53 keep their exact value (Node 20's JSON.parse rounds them).
 */
export function parseJsonWithBigInts(text: string): unknown {
  const marker = '\u0000int:';
  let out = '';
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (inString) {
      out += ch;
      if (ch === '\\') out += text[++i] ?? '';
      else if (ch === '"') inString = false;
      continue;
    }
    if (ch === '"') {
      inString = true;
      out += ch;
      continue;
    }
    if (ch === '-' || (ch >= '0' && ch <= '9')) {
      let j = i + 1;
      while (j < text.length && /[0-9.eE+-]/.test(text[j]!)) j++;
      const token = text.slice(i, j);
      // Only plain integers are wrapped; anything else is left for JSON.parse to judge.
      out += /^-?(0|[1-9]\d*)$/.test(token) ? `"${marker}${token}"` : token;
      i = j - 1;
      continue;
    }
    out += ch;
  }
  return JSON.parse(out, (_key, value: unknown) =>
    typeof value === 'string' && value.startsWith(marker) ? BigInt(value.slice(marker.length)) : value);
}

function u64Field(entry: Record<string, unknown>, name: string, index: number, required: boolean): bigint | undefined {
  const value = entry[name];
  if (value === undefined) {
    if (required) throw bad(`region ${index} has no "${name}"`);
    return undefined;
  }
  if (typeof value !== 'bigint' || value < 0n || value >= 1n << 64n) {
    throw bad(`region ${index}: "${name}" must be an unsigned 64-bit integer, not ${typeof value === 'bigint' ? value : JSON.stringify(value)}`);
  }
  return value;
}

/**
 * Checks one handshake: the JSON text and the descriptors that came with it.
 * Closes nothing; the caller owns fds either way.
 */
export function parseHandshake(text: string, fds: number[], options: { sourceSize: number; hostPageSize?: number }): Handshake {
  const hostPageSize = options.hostPageSize ?? systemPageSize();
  if (fds.length === 0) throw bad('no descriptor came with the message: Firecracker sends the uffd with SCM_RIGHTS');
  if (fds.length > 1) throw bad(`${fds.length} descriptors came with the message: Firecracker sends exactly one, the uffd`);
  const kind = descriptorKind(fds[0]!);
  if (kind !== 'userfaultfd') throw bad(`the descriptor sent is a ${kind}, not a userfaultfd`);
  let parsed: unknown;
  try {
    parsed = parseJsonWithBigInts(text);
  } catch (error) {
    throw bad(`the message is not valid JSON (${(error as Error).message}): ${JSON.stringify(text.slice(0, 80))}`);
  }
  if (!Array.isArray(parsed)) throw bad('the message must be a JSON array of guest memory regions');
  if (parsed.length === 0) throw bad('the message lists no guest memory region');
  const regions: GuestRegion[] = parsed.map((raw, index) => {
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw bad(`region ${index} is not an object`);
    const entry = raw as Record<string, unknown>;
    const base = u64Field(entry, 'base_host_virt_addr', index, true)!;
    const size = u64Field(entry, 'size', index, true)!;
    const offset = u64Field(entry, 'offset', index, true)!;
    // page_size since v1.12; page_size_kib (in bytes, despite its name) v1.7-v1.11; neither before.
    const announced = u64Field(entry, 'page_size', index, false) ?? u64Field(entry, 'page_size_kib', index, false);
    // Firecracker announces 4096 for ordinary memory whatever the host's page size.
    let pageSize = hostPageSize;
    if (announced !== undefined && announced !== 4096n && announced !== BigInt(hostPageSize)) {
      if (!HUGE_PAGE_SIZES.has(Number(announced))) throw bad(`region ${index}: page size ${announced} is neither the host's (${hostPageSize}) nor a huge page size`);
      pageSize = Number(announced);
    }
    const page = BigInt(pageSize);
    if (size === 0n) throw bad(`region ${index} is empty`);
    if (base % page !== 0n || size % page !== 0n || offset % BigInt(hostPageSize) !== 0n) {
      throw bad(`region ${index}: base 0x${base.toString(16)}, size ${size} and offset ${offset} must be multiples of the page size (${pageSize})`);
    }
    if (base + size > ADDRESS_LIMIT) throw bad(`region ${index}: [0x${base.toString(16)}, +${size}) is outside any user address space`);
    if (offset + size > BigInt(options.sourceSize)) {
      throw bad(`region ${index}: bytes [${offset}, ${offset + size}) lie beyond the ${options.sourceSize}-byte memory file`);
    }
    return { base, size: Number(size), offset: Number(offset), pageSize };
  });
  const sorted = [...regions].sort((a, b) => (a.base < b.base ? -1 : 1));
  for (let i = 1; i < sorted.length; i++) {
    const previous = sorted[i - 1]!;
    if (previous.base + BigInt(previous.size) > sorted[i]!.base) {
      throw bad(`regions at 0x${previous.base.toString(16)} and 0x${sorted[i]!.base.toString(16)} overlap`);
    }
  }
  return { uffdFd: fds[0]!, regions };
}

/** Reads one handshake from a new connection; closes received descriptors and throws on a bad one. */
export async function receiveHandshake(connection: UnixConnection, options: { sourceSize: number; timeoutMs?: number; hostPageSize?: number }): Promise<Handshake> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const first = await connection.receive({ timeoutMs }).catch((error: unknown) => {
    throw (error as UffdError).code === 'ERR_UFFD_TIMEOUT' ? bad(`nothing arrived within ${timeoutMs} ms`) : error;
  });
  if (!first) throw bad('the peer closed the connection without sending anything');
  const fds = [...first.fds];
  let text = first.data.toString('utf8');
  const closeAll = (): void => fds.forEach((fd) => native.closeFd(fd));
  try {
    if (first.fdsTruncated) throw bad('more descriptors came than the one Firecracker sends; the kernel dropped the rest');
    // One sendmsg usually arrives in one read, but a stream socket may split
    // it: while the text does not parse, wait briefly for the rest.
    for (;;) {
      try {
        parseJsonWithBigInts(text);
        break;
      } catch {
        if (text.length > MAX_HANDSHAKE) throw bad(`the message exceeds ${MAX_HANDSHAKE} bytes without being valid JSON`);
        const more = await connection.receive({ timeoutMs: 250 }).catch(() => null);
        if (!more) break;
        fds.push(...more.fds);
        text += more.data.toString('utf8');
      }
    }
    return parseHandshake(text, fds, options);
  } catch (error) {
    closeAll();
    throw error;
  }
}

export interface SessionStats {
  faults: number;
  /** Pages written by faults (COPY or CONTINUE) and by the background push. */
  pagesOnDemand: number;
  pagesPushed: number;
  zeroPages: number;
  bytes: number;
  removes: number;
  eexist: number;
  /** Per fault, from its batch being read to its resolution, in microseconds. */
  latenciesUs: number[];
}

export interface SessionResult {
  pid: number;
  stats: SessionStats;
  /** Why the session ended with faults unserved or the peer gone mid-fault, if it did. */
  error?: UffdError;
}

export interface SessionOptions {
  /** Push every page nobody asked for yet in the background, after the first fault. */
  prefetch?: boolean;
  /** Pages per background copy (default 64). */
  pushChunkPages?: number;
}

// Page states within a region.
const MISSING = 0;
const PRESENT = 1;
const REMOVED = 2;

/** One VMM's memory, served from the snapshot file until the VMM hangs up. */
export class FirecrackerSession {
  readonly pid: number;
  readonly regions: GuestRegion[];
  readonly stats: SessionStats = { faults: 0, pagesOnDemand: 0, pagesPushed: 0, zeroPages: 0, bytes: 0, removes: 0, eexist: 0, latenciesUs: [] };
  readonly done: Promise<SessionResult>;
  readonly #uffd: Userfaultfd;
  readonly #connection: UnixConnection;
  readonly #source: Uint8Array;
  readonly #states: Uint8Array[];
  readonly #options: SessionOptions;
  #error: UffdError | undefined;
  #pushing = false;
  #ended = false;

  constructor(connection: UnixConnection, handshake: Handshake, source: Uint8Array, options: SessionOptions = {}) {
    this.#connection = connection;
    this.pid = peerPid(connection) ?? 0;
    this.regions = handshake.regions;
    this.#source = source;
    this.#options = options;
    this.#states = handshake.regions.map((r) => new Uint8Array(r.size / r.pageSize));
    // Firecracker enables exactly EVENT_REMOVE on the uffd it sends.
    this.#uffd = Userfaultfd.fromFd(handshake.uffdFd, {
      features: ['EVENT_REMOVE'],
      ranges: handshake.regions.map((r) => ({ address: r.base, length: r.size, pageSize: r.pageSize })),
    });
    const served = this.#uffd.serve((fault) => this.#onFault(fault), {
      onEvent: (event) => {
        if (event.type === 'remove') this.#onRemove(event.start, event.end);
      },
      onError: (error) => this.#fail(error),
    });
    this.done = Promise.race([connection.waitEnd(), served]).then(() => this.#finish());
  }

  #region(address: bigint): { region: GuestRegion; index: number; page: number } | undefined {
    for (let index = 0; index < this.regions.length; index++) {
      const region = this.regions[index]!;
      if (address >= region.base && address < region.base + BigInt(region.size)) {
        return { region, index, page: Number(address - region.base) / region.pageSize };
      }
    }
    return undefined;
  }

  #onFault(fault: Fault): void {
    const found = this.#region(fault.pageAddress);
    if (!found) throw new UffdError('ERR_UFFD_BAD_HANDSHAKE', `ERR_UFFD_BAD_HANDSHAKE: a fault at 0x${fault.address.toString(16)} lies outside every region the peer announced`);
    const { region, index, page } = found;
    const state = this.#states[index]!;
    this.stats.faults++;
    let outcome;
    if (state[page] === REMOVED) {
      // A page the balloon took back reads as zeros, never as snapshot data.
      outcome = region.pageSize === systemPageSize() ? fault.zero() : fault.copy(zeros(region.pageSize));
      this.stats.zeroPages++;
    } else if (fault.kind === 'minor') {
      outcome = fault.continue();
    } else {
      const at = region.offset + page * region.pageSize;
      outcome = fault.copy(this.#source.subarray(at, at + region.pageSize));
    }
    if (outcome === 'exists') this.stats.eexist++;
    else if (state[page] !== REMOVED) {
      this.stats.pagesOnDemand++;
      this.stats.bytes += region.pageSize;
    }
    state[page] = PRESENT;
    this.stats.latenciesUs.push((performance.now() - fault.receivedAt) * 1000);
    if (this.#options.prefetch && !this.#pushing) this.#startPush();
  }

  #onRemove(start: bigint, end: bigint): void {
    this.stats.removes++;
    for (let index = 0; index < this.regions.length; index++) {
      const region = this.regions[index]!;
      const regionEnd = region.base + BigInt(region.size);
      if (end <= region.base || start >= regionEnd) continue;
      const from = Number((start > region.base ? start : region.base) - region.base) / region.pageSize;
      const to = Math.ceil(Number((end < regionEnd ? end : regionEnd) - region.base) / region.pageSize);
      this.#states[index]!.fill(REMOVED, from, to);
    }
  }

  // Copies every page still missing, a chunk at a time, yielding to the event
  // loop between chunks so that faults are never queued behind the push.
  #startPush(): void {
    this.#pushing = true;
    const chunk = this.#options.pushChunkPages ?? 64;
    let index = 0;
    let page = 0;
    const step = (): void => {
      if (this.#ended) return;
      while (index < this.regions.length) {
        const region = this.regions[index]!;
        const state = this.#states[index]!;
        const pages = state.length;
        while (page < pages && state[page] !== MISSING) page++;
        if (page >= pages) {
          index++;
          page = 0;
          continue;
        }
        let last = page;
        while (last < pages && last - page < chunk && state[last] === MISSING) last++;
        const at = region.offset + page * region.pageSize;
        const address = region.base + BigInt(page * region.pageSize);
        try {
          this.#uffd.copy(address, this.#source.subarray(at, at + (last - page) * region.pageSize), { dontWake: true });
          this.#pushed(index, page, last);
          page = last;
        } catch (error) {
          const e = error as UffdError;
          const done = (e.bytesDone ?? 0) / region.pageSize;
          this.#pushed(index, page, page + done);
          page += done;
          if (e.code === 'EEXIST') {
            state[page] = PRESENT; // a fault got there first
            this.stats.eexist++;
          } else if (e.code === 'EAGAIN') {
            setImmediate(step); // an event is queued: let the loop read it first
            return;
          } else {
            this.#fail(error);
            return;
          }
        }
        setImmediate(step);
        return;
      }
    };
    setImmediate(step);
  }

  #pushed(index: number, from: number, to: number): void {
    if (to <= from) return;
    this.#states[index]!.fill(PRESENT, from, to);
    this.stats.pagesPushed += to - from;
    this.stats.bytes += (to - from) * this.regions[index]!.pageSize;
  }

  #fail(error: unknown): void {
    const e = error as UffdError;
    // ESRCH: the VMM's address space is gone (it exited mid-run).
    this.#error ??= e.code === 'ESRCH'
      ? new UffdError('ESRCH', `ESRCH: the VMM (pid ${this.pid}) exited while its faults were being served`, { errno: e.errno, syscall: e.syscall })
      : e;
    this.#connection.close();
  }

  #finish(): SessionResult {
    this.#ended = true;
    this.#uffd.close();
    this.#connection.close();
    return { pid: this.pid, stats: this.stats, ...(this.#error ? { error: this.#error } : {}) };
  }

  /** Ends the session: closes the uffd (waking the VMM's faulting threads) and the connection. */
  close(): void {
    this.#connection.close();
  }
}

function peerPid(connection: UnixConnection): number | undefined {
  try {
    return connection.peer.pid;
  } catch {
    return undefined; // the peer is gone already
  }
}

let zeroBuffer = new Uint8Array(0);
function zeros(length: number): Uint8Array {
  if (zeroBuffer.length < length) zeroBuffer = new Uint8Array(length);
  return zeroBuffer.subarray(0, length);
}

export interface ServerOptions extends SessionOptions {
  /** The snapshot's memory file: regions are served from it at their offsets. */
  memFile: string;
  /** How long a new connection may take to send its handshake (default 10 s). */
  handshakeTimeoutMs?: number;
  onSession?: (session: FirecrackerSession) => void;
  /** A connection whose handshake was refused (the connection is closed; the server goes on). */
  onRefused?: (error: unknown, pid: number | undefined) => void;
}

/** Listens for Firecracker VMMs and serves each one's memory from memFile. */
export class FirecrackerServer {
  readonly path: string;
  readonly #server: UnixServer;
  readonly #source: Mapping;
  readonly #sessions = new Set<FirecrackerSession>();

  private constructor(path: string, options: ServerOptions) {
    this.path = path;
    this.#source = Mapping.file(options.memFile);
    this.#server = UnixServer.listen(path);
    void this.#accept(options);
  }

  static listen(path: string, options: ServerOptions): FirecrackerServer {
    return new FirecrackerServer(path, options);
  }

  get sessions(): ReadonlySet<FirecrackerSession> {
    return this.#sessions;
  }

  async #accept(options: ServerOptions): Promise<void> {
    const source = this.#source.view();
    for await (const connection of this.#server.connections()) {
      const pid = peerPid(connection);
      receiveHandshake(connection, { sourceSize: this.#source.length, timeoutMs: options.handshakeTimeoutMs }).then(
        (handshake) => {
          const session = new FirecrackerSession(connection, handshake, source, options);
          this.#sessions.add(session);
          void session.done.then(() => this.#sessions.delete(session));
          options.onSession?.(session);
        },
        (error: unknown) => {
          connection.close();
          options.onRefused?.(error, pid);
        },
      );
    }
  }

  close(): void {
    this.#server.close();
    for (const session of this.#sessions) session.close();
    this.#source.unmap();
  }
}
