// Where the bytes of a memory image come from when faults ask for them: a
// local file (a snapshot's memory file), a cache filled from the network (an
// HTTP object, a post-copy source), or anything else that can put an image's
// bytes into local memory. Every handler in this library (the Firecracker
// `serve`, the post-copy client, the native fast path) reads pages through
// this one interface, so any source works with any of them.
//
// The contract: `bytes` is the image in local memory, valid where `present`
// says so. A handler serves a page straight from `bytes` when it is present,
// and otherwise awaits `fetch` first. `present` holds one byte per `pageSize`
// page of the image (non-zero: there); a source writes it with Atomics.store
// after the page's bytes, so a native thread that reads the flag and then the
// bytes never sees a torn page. A source with everything local from the start
// has `present === null`. docs/performance.md says when handlers call fetch.
import fs from 'node:fs';
import os from 'node:os';
import { UffdError, argTypeError, argValueError, libraryError, systemError } from './errors';
import { Mapping, systemPageSize } from './memory';

export interface FetchOptions {
  /** A thread is blocked on this range: fetch it ahead of any background work. */
  urgent?: boolean;
}

/** A file holding a source's bytes too: `bytes` is a shared mapping of it from `offset` on. */
export interface SourceFile {
  readonly fd: number;
  readonly offset: number;
}

export interface PageSource {
  /** The image's length in bytes. */
  readonly size: number;
  /** The granularity of `present` (the system page size for every source here). */
  readonly pageSize: number;
  /** The image in local memory; bytes of pages not yet present are unspecified. */
  readonly bytes: Uint8Array;
  /** One flag per page, non-zero once the page's bytes are in `bytes`; null when all are. */
  readonly present: Uint8Array | null;
  /**
   * The file `bytes` is a shared mapping of, open while the source is (every
   * source here has one: the memory file, or the memfd a remote source fills).
   * serveFrom's native thread reads pages from it with pread into a buffer
   * of its own and copies from there: the kernel then never faults on a
   * source page inside UFFDIO_COPY, which on a VM halves what a copied page
   * costs. Without it, pages are copied from `bytes`. It must hold the same
   * bytes: nothing compares the two.
   */
  readonly file?: SourceFile | null;
  /**
   * How a fault is resolved when this source cannot deliver its page and the
   * handler's options do not say (serveFrom, PostcopyDestination): 'poison'
   * (UFFDIO_POISON: SIGBUS for the faulting thread) for a source whose pages
   * have no stand-in, since zeros would be wrong bytes; default 'fill'.
   */
  readonly failure?: 'fill' | 'poison';
  /**
   * Makes [offset, offset + length) present (offset and length multiples of
   * this source's pageSize, inside the image). Resolves once every page of it
   * is; rejects with a UffdError when the source cannot deliver (after its
   * own retries). May be called again for a range already asked for.
   */
  fetch(offset: number, length: number, options?: FetchOptions): Promise<void>;
  /** Releases the source's memory and connections. */
  close(): void;
}

/** Checks a source's file (null or undefined: none): { fd, offset }, fd a regular file that is open. */
export function checkSourceFile(file: unknown, name: string): SourceFile | null {
  if (file == null) return null;
  const f = file as SourceFile;
  if (typeof f !== 'object' || !Number.isSafeInteger(f.fd) || f.fd < 0 || !Number.isSafeInteger(f.offset) || f.offset < 0) {
    throw argTypeError(name, 'null or { fd, offset } with a descriptor and a byte offset', file);
  }
  // fstat throws Node's own EBADF for a closed descriptor.
  if (!fs.fstatSync(f.fd).isFile()) {
    throw argValueError(`${name}.fd`, `must be a regular file (the file the source's bytes map: a memory file, a memfd). Received descriptor ${f.fd}`);
  }
  return f;
}

/**
 * Makes [offset, offset + length) of the source present: fetch, asked for in
 * whole source pages (a source's pages may be larger than the memory's, and
 * a range's offset need not fall on one), then checked. A fetch that resolves
 * with a page still absent would have its stale bytes served as if right:
 * rejects with ERR_UFFD_UNSERVABLE instead, so the failure policy applies.
 */
export async function fetchPresent(source: PageSource, offset: number, length: number, options: FetchOptions): Promise<void> {
  if (isPresent(source, offset, length)) return;
  const size = source.pageSize;
  const start = Math.floor(offset / size) * size;
  const end = Math.min(Math.ceil((offset + length) / size) * size, (source.present?.length ?? 0) * size);
  await source.fetch(start, end - start, options);
  if (!isPresent(source, offset, length)) {
    throw new UffdError('ERR_UFFD_UNSERVABLE',
      `ERR_UFFD_UNSERVABLE: source.fetch(${start}, ${end - start}) resolved with the page at offset ${offset} still not present; a source's fetch must resolve only once the present flags of its pages are set (Atomics.store after the bytes), and reject when it cannot deliver`);
  }
}

/** Whether every page of the source holding [offset, offset + length) is present (read with Atomics, as sources write it). */
export function isPresent(source: PageSource, offset: number, length: number): boolean {
  const present = source.present;
  if (!present) return true;
  for (let p = Math.floor(offset / source.pageSize); p * source.pageSize < offset + length; p++) {
    if (Atomics.load(present, p) === 0) return false;
  }
  return true;
}

/** A memory file mapped read-only: every page is present from the start (the page cache supplies it). */
export class FilePageSource implements PageSource {
  readonly size: number;
  readonly pageSize = systemPageSize();
  readonly bytes: Uint8Array;
  readonly present = null;
  readonly file: SourceFile;
  readonly #mapping: Mapping;
  #closed = false;

  constructor(path: string) {
    if (typeof path !== 'string') throw argTypeError('path', 'a string', path);
    const fd = fs.openSync(path, 'r');
    try {
      // mmap() of a directory fails with ENODEV, which names no cause.
      if (fs.fstatSync(fd).isDirectory()) throw systemError(-os.constants.errno.EISDIR, 'mmap');
      this.#mapping = Mapping.fileDescriptor(fd, {});
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
    this.file = { fd, offset: 0 };
    this.size = this.#mapping.length;
    this.bytes = this.#mapping.view();
  }

  fetch(): Promise<void> {
    return Promise.resolve();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#mapping.unmap();
    fs.closeSync(this.file.fd);
  }
}

export interface BufferPageSourceOptions {
  /** One flag per page (see PageSource.present), e.g. over a SharedArrayBuffer another thread fills; default: all present. */
  present?: Uint8Array;
  /** Brings pages in when present says they are not there; default: rejects. */
  fetch?: (offset: number, length: number, options?: FetchOptions) => Promise<void>;
  /** The granularity of present (default: the system page size). */
  pageSize?: number;
  /** The file bytes is a shared mapping of (e.g. a Memfd's map()), for serveFrom to read with pread (see PageSource.file). */
  file?: SourceFile;
}

/**
 * An image held in memory: an ArrayBuffer, a SharedArrayBuffer (readable by
 * workers too), a Buffer, or a view of any of them (a buffer at an offset).
 */
export class BufferPageSource implements PageSource {
  readonly size: number;
  readonly pageSize: number;
  readonly bytes: Uint8Array;
  readonly present: Uint8Array | null;
  readonly file: SourceFile | null;
  readonly #fetch: BufferPageSourceOptions['fetch'];

  constructor(bytes: ArrayBuffer | SharedArrayBuffer | ArrayBufferView, options: BufferPageSourceOptions = {}) {
    if (ArrayBuffer.isView(bytes)) this.bytes = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    else if (bytes instanceof ArrayBuffer || bytes instanceof SharedArrayBuffer) this.bytes = new Uint8Array(bytes);
    else throw argTypeError('bytes', 'an ArrayBuffer, a SharedArrayBuffer or a view of one', bytes);
    this.size = this.bytes.byteLength;
    this.pageSize = options.pageSize ?? systemPageSize();
    this.present = options.present ?? null;
    if (this.present && this.present.length * this.pageSize < this.size) {
      throw argValueError('options.present', `needs one flag per ${this.pageSize}-byte page: ${Math.ceil(this.size / this.pageSize)}, has ${this.present.length}`);
    }
    this.file = checkSourceFile(options.file, 'options.file');
    this.#fetch = options.fetch;
  }

  fetch(offset: number, length: number, options?: FetchOptions): Promise<void> {
    if (this.#fetch) return this.#fetch(offset, length, options);
    return Promise.reject(libraryError('ERR_UFFD_UNRESOLVED', 'fetch', `this BufferPageSource has no fetch, and bytes ${offset}..${offset + length} are not present`));
  }

  close(): void {}
}
