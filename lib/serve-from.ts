// serveFrom(): the native fast path's options, and the JavaScript half of it.
// The addon's thread resolves every fault whose page the source holds
// (native/page_server.h); the faults it cannot answer come here as ordinary
// Fault objects, to `onMiss` (default: fetch the page from the source, then
// resolve it the way the native path would have).
import os from 'node:os';
import { UffdError, argTypeError, argValueError, invalid } from './errors';
import type { Fault } from './events';
import { checkSourceFile, fetchPresent, type PageSource } from './page-source';
import { checkFailure, serveWith, type ServeHost } from './serve';
import { firstUncovered, type Registration } from './registrations';
import type { NonFaultEvent } from './uffd';
import * as validate from './validate';

/** A registered range served from the source: its bytes start at `offset` in the source. */
export interface ServeRange {
  address: bigint;
  length: number | bigint;
  /** Where the range's first byte is in the source (default 0). */
  offset?: number;
  /** Missing faults here read as zeros (UFFDIO_ZEROPAGE); the source is not read. */
  zero?: boolean;
}

/** Where a missed fault's page is: its range, and the page's offset in the source. */
export interface Miss {
  readonly range: Readonly<ServeRange> | undefined;
  /** The faulting page's offset in the source; undefined outside every range. */
  readonly offset: number | undefined;
  readonly source: PageSource | null;
}

export interface ServeFromOptions {
  /** The ranges to serve, each with its offset into the source. Default: every registration, back to back from offset 0. */
  ranges?: ServeRange[];
  /** Pages resolved per fault: the aligned chunk of this many pages around it (default 1, at most 1024). */
  readAhead?: number;
  /** Adaptive spinning in the native thread (default true: it stops by itself when it does not pay). */
  spin?: boolean;
  /**
   * Background fill: the native thread copies every page of the source
   * ranges that nothing has resolved yet, behind the faults and their
   * read-ahead (a fault waits for at most one piece). Pages the source does
   * not hold yet are taken as they arrive. stats().pagesLeft reaches 0 when
   * it is done. true: once the first fault has been read (the faulting side
   * is running: a VMM restoring a snapshot); 'now': from the start (memory
   * whose pages are wanted as soon as they land, as in post-copy). Default false.
   */
  background?: boolean | 'now';
  /** Bytes per background copy (default 64 KiB, rounded down to whole pages, at least one). */
  backgroundPiece?: number;
  /**
   * Helper threads that copy read-ahead and background pieces alongside the
   * native thread (0 to 8). Once read-ahead has taken the wake-ups away, the
   * copy is what a sequential restore waits for, and the faulting thread's
   * CPU is idle meanwhile. Default: 1 with read-ahead or background fill on a
   * machine with more than one CPU, else 0.
   */
  fillThreads?: number;
  /**
   * Faults the native path cannot answer: pages not present in the source yet,
   * write-protect faults, faults outside the ranges. Default: await
   * source.fetch() of the page, then copy it (continue for minor faults).
   */
  onMiss?: (fault: Fault, miss: Miss) => void | Promise<void>;
  onEvent?: (event: NonFaultEvent) => void;
  onError?: (error: unknown, fault: Fault) => void;
  /** serve()'s failure policy; default: the source's own (source.failure: 'poison' for a remote source), else 'fill'. */
  failure?: 'fill' | 'poison';
  /** serve()'s timeoutMs, for onMiss: a miss still unresolved this long after it was read is resolved by the failure policy (default none). */
  timeoutMs?: number;
}

export const FILL = { source: 0n, zero: 1n, none: 2n } as const;

export interface PlannedRange extends ServeRange {
  address: bigint;
  length: number;
  offset: number;
  pageSize: number;
}

const MAX_READ_AHEAD = 1024;

/** Userfaultfd.serveFrom(). */
export function serveFrom(host: ServeHost, source: PageSource | null, options?: ServeFromOptions): Promise<void> {
  const src = checkSource(source);
  const opts = validate.options<ServeFromOptions>(options, 'options');
  host.checkOpen('serveFrom');
  const known = host.uffd.registrations;
  // An adopted or borrowed uffd may not say what is registered; one opened here knows.
  const openedHere = host.uffd.openedWith === 'syscall' || host.uffd.openedWith === 'device';
  if (known.length === 0 && (opts.ranges === undefined || openedHere)) {
    throw invalid('serveFrom', 'nothing is registered with this userfaultfd: register memory first (uffd.register), or, for a uffd adopted from another process, give fromFd its ranges or serveFrom options.ranges');
  }
  const ranges = planRanges(opts.ranges ?? defaultRanges(known), src, (address) => host.pageSizeAt(address));
  // A range the registrations do not cover would never fault there, and its fill would only be refused.
  if (known.length > 0) {
    for (const r of ranges) {
      const end = r.address + BigInt(r.length);
      const at = firstUncovered(known, r.address, end);
      if (at !== undefined) {
        throw invalid('serveFrom', `the range [${validate.hex(r.address)}, ${validate.hex(end)}) is not registered with this userfaultfd from ${validate.hex(at)}: register it first (or give fromFd its ranges)`);
      }
    }
  }
  const pages = readAhead(opts.readAhead);
  const piece = backgroundPiece(opts);
  const fillers = fillThreads(opts.fillThreads, pages > 1 || piece > 0);
  const onMiss = opts.onMiss ?? fetchAndResolve;
  if (typeof onMiss !== 'function') throw argTypeError('options.onMiss', 'a function', onMiss);
  const table = rangeTable(ranges, src);
  // The source may say what a fault on a page it failed to deliver gets (a remote source: SIGBUS, never zeros).
  const { served } = serveWith(host, (fault) => onMiss(fault, locate(ranges, src, fault)), { ...opts, failure: opts.failure ?? src?.failure }, false);
  const bytes = src ? src.bytes : new Uint8Array(0);
  const file = src?.file ?? null;
  try {
    host.handle.serveNative(bytes, src ? src.present : null, src ? src.pageSize : 0, table, pages, opts.spin !== false, piece, fillers,
      opts.background === 'now', file ? file.fd : -1, file ? file.offset : 0);
  } catch (error) {
    host.stream.release();  // nothing started: bad input changes nothing
    if (file && (error as UffdError).code === 'EBADF') {
      throw new UffdError('EBADF', `EBADF: bad file descriptor, serveFrom — source.file.fd ${file.fd} must be open for reading (O_RDONLY or O_RDWR)`, { errno: (error as UffdError).errno, syscall: 'serveFrom' });
    }
    throw error;
  }
  return served;
}

// The default ranges: every registration, back to back in address order from source offset 0.
function defaultRanges(registrations: readonly Registration[]): ServeRange[] {
  let offset = 0;
  return [...registrations].sort((a, b) => (a.start < b.start ? -1 : 1)).map((r) => {
    const range = { address: r.start, length: Number(r.end - r.start), offset };
    offset += range.length;
    return range;
  });
}

export function checkSource(source: unknown): PageSource | null {
  if (source === null) return null;
  const s = source as PageSource;
  if (s === undefined || typeof s !== 'object') throw argTypeError('source', 'a PageSource ({ bytes, pageSize, present, fetch }) or null', source);
  // Which member is wrong, by name: a source of one's own is easy to get almost right.
  if (!(s.bytes instanceof Uint8Array)) throw argTypeError('source.bytes', 'a Uint8Array (a Buffer, or a view of a SharedArrayBuffer or a mapping)', s.bytes);
  if (typeof s.pageSize !== 'number') throw argTypeError('source.pageSize', 'a number', s.pageSize);
  if (!(s.present === null || s.present instanceof Uint8Array)) throw argTypeError('source.present', 'a Uint8Array or null', s.present);
  if (typeof s.fetch !== 'function') throw argTypeError('source.fetch', 'a function', s.fetch);
  checkFailure(s.failure, 'source.failure');
  if (!Number.isInteger(s.pageSize) || s.pageSize <= 0 || (s.pageSize & (s.pageSize - 1)) !== 0) {
    throw argValueError('source.pageSize', `must be a power of two. Received ${s.pageSize}`);
  }
  if (s.present && s.present.length * s.pageSize < s.bytes.length) {
    throw argValueError('source.present', `has ${s.present.length} flags; the source's ${s.bytes.length} bytes need one per ${s.pageSize}-byte page`);
  }
  checkSourceFile(s.file, 'source.file');
  return s;
}

const DEFAULT_BACKGROUND_PIECE = 64 * 1024;

// Bytes per background ioctl, 0 for none.
function backgroundPiece(opts: ServeFromOptions): number {
  if (opts.background !== undefined && typeof opts.background !== 'boolean' && opts.background !== 'now') {
    throw argTypeError('options.background', "a boolean or 'now'", opts.background);
  }
  const piece = opts.backgroundPiece ?? DEFAULT_BACKGROUND_PIECE;
  if (!Number.isSafeInteger(piece) || piece < 1) {
    throw argValueError('options.backgroundPiece', `must be a positive integer (bytes). Received ${String(piece)}`);
  }
  return opts.background ? piece : 0;
}

const MAX_FILL_THREADS = 8;

function fillThreads(value: unknown, filling: boolean): number {
  if (value === undefined) return filling && os.availableParallelism() > 1 ? 1 : 0;
  if (!Number.isInteger(value) || (value as number) < 0 || (value as number) > MAX_FILL_THREADS) {
    throw argValueError('options.fillThreads', `must be an integer from 0 to ${MAX_FILL_THREADS}. Received ${String(value)}`);
  }
  return value as number;
}

export function readAhead(value: unknown): number {
  if (value === undefined) return 1;
  if (!Number.isInteger(value) || (value as number) < 1 || (value as number) > MAX_READ_AHEAD) {
    throw argValueError('options.readAhead', `must be an integer from 1 to ${MAX_READ_AHEAD}. Received ${String(value)}`);
  }
  return value as number;
}

/** Checks the ranges against the source and the registrations; returns them with page sizes. */
export function planRanges(ranges: ServeRange[], source: PageSource | null, pageSizeAt: (address: bigint) => number): PlannedRange[] {
  if (!Array.isArray(ranges) || ranges.length === 0) throw argTypeError('options.ranges', 'a non-empty array of { address, length, offset?, zero? }', ranges);
  const planned = ranges.map((r, i): PlannedRange => {
    const name = `options.ranges[${i}]`;
    if (r === null || typeof r !== 'object') throw argTypeError(name, 'an object', r);
    const address = validate.address(r.address, `${name}.address`);
    const length = validate.size(r.length, `${name}.length`);
    const offset = validate.size(r.offset ?? 0, `${name}.offset`);
    const pageSize = pageSizeAt(address);
    validate.range('serveFrom', address, length, pageSize);
    if (!r.zero && source !== null && offset + length > source.bytes.length) {
      throw invalid('serveFrom', `${name} needs source bytes ${offset}..${offset + length}, but the source holds ${source.bytes.length}`);
    }
    return { address, length, offset, pageSize, zero: r.zero === true };
  });
  const sorted = [...planned].sort((a, b) => (a.address < b.address ? -1 : 1));
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i - 1]!.address + BigInt(sorted[i - 1]!.length) > sorted[i]!.address) {
      throw invalid('serveFrom', `ranges at ${validate.hex(sorted[i - 1]!.address)} and ${validate.hex(sorted[i]!.address)} overlap`);
    }
  }
  return planned;
}

/** The table the addon reads: [start, length, pageSize, sourceOffset, fill] per range. */
export function rangeTable(ranges: PlannedRange[], source: PageSource | null): BigUint64Array {
  const table = new BigUint64Array(ranges.length * 5);
  ranges.forEach((r, i) => {
    table.set([r.address, BigInt(r.length), BigInt(r.pageSize), BigInt(r.offset), r.zero ? FILL.zero : source ? FILL.source : FILL.none], i * 5);
  });
  return table;
}

export function locate(ranges: PlannedRange[], source: PageSource | null, fault: Fault): Miss {
  for (const range of ranges) {
    const delta = fault.pageAddress - range.address;
    if (delta >= 0n && delta < BigInt(range.length)) return { range, offset: range.offset + Number(delta), source };
  }
  return { range: undefined, offset: undefined, source };
}

/** The default onMiss: what the native path would do, after fetching what is missing. */
export async function fetchAndResolve(fault: Fault, miss: Miss): Promise<void> {
  if (fault.kind === 'wp' || fault.kind === 'rwp') {
    fault.unprotect();
    return;
  }
  const { range, offset, source } = miss;
  if (!range || offset === undefined) {
    throw new UffdError('ERR_UFFD_UNRESOLVED',
      `ERR_UFFD_UNRESOLVED: the fault at ${validate.hex(fault.address)} is outside every range given to serveFrom(); add its range, or give onMiss`);
  }
  if (range.zero) {
    fault.zero();
    return;
  }
  if (source) {
    await fetchPresent(source, offset, fault.pageSize, { urgent: true });
    if (fault.resolved) return;
  }
  if (fault.kind === 'minor') fault.continue();
  else if (source) fault.copy(source.bytes.subarray(offset, offset + fault.pageSize));
  else fault.zero();
}


