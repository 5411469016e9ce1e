// The destination side of a post-copy migration's memory half: registered
// memory whose faults are served from a PageSource (a PostcopyClient, or any
// other source), and whose pages are installed as they land in the source's
// cache, so that the workload stops faulting on pages pushed in the
// background. The workload runs on other threads (workers with attachView)
// or in another process. The addon's native thread (serveFrom) resolves
// faults on pages in the cache and installs pages as they land (background
// fill from the start, 256 KiB per ioctl); faults that need the network are
// handled on this thread.
//
// Blocked time of the faults that needed the network: for each, from the
// moment its batch was read from the uffd to the moment the page was copied
// in and the thread woken, summed per faulting thread. It leaves out the
// time from the fault to the read, and counts a thread once per fault (a
// thread waits on one fault at a time). The demo measures the whole of it
// from the kernel's side as well (schedstat; docs/postcopy.md).
import { performance } from 'node:perf_hooks';
import { argRangeError, argTypeError, UffdError } from '../errors';
import type { Fault } from '../events';
import { Mapping } from '../memory';
import { fetchPresent, isPresent, type PageSource } from '../page-source';
import type { Userfaultfd } from '../uffd';
import * as validate from '../validate';
import { PostcopyClient } from './client';
import { LatencyHistogram } from '../latency';

export interface DestinationOptions {
  /** Pages after a demanded page to request with it, urgently (default 0). */
  readAhead?: number;
  /**
   * How a fault is resolved when its page cannot be had (the source is lost);
   * either way `complete` rejects with the source's error. 'poison' gives the
   * faulting thread SIGBUS (which ends a Node.js process: for workloads in
   * other processes); 'fill' maps a zero page, so the application can stop
   * its workload. Default: the source's own policy (source.failure: 'poison'
   * for an HttpPageSource, whose zeros would be wrong bytes), else 'fill'.
   */
  failure?: 'fill' | 'poison';
  /**
   * serve()'s timeoutMs: a fault whose page the source has not delivered this
   * long after it was read is resolved by the failure policy (default none:
   * a PostcopyClient bounds its own waits with stallTimeoutMs; a source of
   * your own whose fetch may never settle needs this).
   */
  timeoutMs?: number;
  /** Called once, with the first error (the source lost, an ioctl refused). */
  onError?: (error: UffdError) => void;
}

export interface DestinationStats {
  /** Faults resolved by the native fast path (the page was in the cache) and in JavaScript. */
  readonly faults: number;
  /** Faults handled in JavaScript: the native path found their page missing (or it was not running). */
  jsFaults: number;
  /** Faults whose page was not in the cache yet: they waited for the network. */
  faultsFetched: number;
  /** Pages copied in for faults: by JavaScript (pagesByJsFault) and by the native fast path, its read-ahead included. */
  readonly pagesByFault: number;
  pagesByJsFault: number;
  /** Pages copied in by background fill as they landed, before any fault asked. */
  readonly pagesInstalled: number;
  /**
   * Time faulting threads spent blocked on faults handled in JavaScript (the
   * ones whose page had to come over the network), summed, in ms (see the top
   * of this file). Faults the native path resolved take microseconds each:
   * uffd.stats() has their service times.
   */
  blockedMs: number;
  /** The same, per faulting thread id (with the THREAD_ID feature; otherwise one entry, 0). */
  blockedMsByThread: Map<number, number>;
  /** From fault read to resolution, in µs, for faults handled in JavaScript. */
  latency: LatencyHistogram;
}

// Bytes per background UFFDIO_COPY: the kernel holds the address space's
// lock for reading across one ioctl, and a workload thread that maps memory
// (its heap growing) waits for it. And how often to look whether every page is in.
const INSTALL_SLICE = 256 << 10;
const COMPLETE_POLL_MS = 2;

export class PostcopyDestination {
  readonly stats: DestinationStats;
  /** Resolves when every page is in the registered memory; rejects with the first error. */
  readonly complete: Promise<void>;
  /** Resolves when the uffd is closed (the end of serving). */
  readonly served: Promise<void>;
  readonly #uffd: Userfaultfd;
  readonly #source: PageSource;
  readonly #address: bigint;
  readonly #pageSize: number;
  readonly #pages: number;
  readonly #readAhead: number;
  readonly #onError: ((error: UffdError) => void) | undefined;
  #timer: NodeJS.Timeout | null = null;
  #error: UffdError | undefined;
  #ended = false;
  #resolveComplete!: () => void;
  #rejectComplete!: (error: UffdError) => void;

  /**
   * Serves the faults of target (registered on uffd in missing mode, exactly
   * source.size bytes) from source, and installs pages as they land. It
   * consumes the uffd's events (uffd.serve): register nothing else on it.
   */
  constructor(uffd: Userfaultfd, target: Mapping | { address: bigint; length: number }, source: PageSource, options: DestinationOptions = {}) {
    if (target === null || typeof target !== 'object') throw argTypeError('target', 'a Mapping or { address, length }', target);
    const opts = validate.options<DestinationOptions>(options, 'options');
    this.#address = validate.address(target.address, 'target.address');
    const length = validate.size(target.length, 'target.length');
    if (length !== source.size) throw argRangeError('target.length', `the source's size (${source.size} bytes)`, length);
    const registration = uffd.registrations.find((r) => r.start <= this.#address && r.end >= this.#address + BigInt(length) && r.modes.missing);
    if (!registration) {
      throw new UffdError('ENOENT', 'ENOENT: the target is not registered with this userfaultfd in missing mode: call uffd.register(target, { missing: true }) first', { syscall: 'ioctl(UFFDIO_COPY)' });
    }
    // Pages are counted, fetched and copied in the source's pages: they must be the memory's.
    const targetPageSize = target instanceof Mapping ? target.pageSize : registration.pageSize;
    if (targetPageSize !== source.pageSize) throw argRangeError('target.pageSize', `the source's page size (${source.pageSize})`, targetPageSize);
    this.#readAhead = validate.size(opts.readAhead ?? 0, 'options.readAhead');
    this.#uffd = uffd;
    this.stats = {
      get faults() {
        return this.jsFaults + uffd.stats().nativeFaults;
      },
      get pagesByFault() {
        const native = uffd.stats();
        return this.pagesByJsFault + native.pages - native.backgroundPages;
      },
      get pagesInstalled() {
        return uffd.stats().backgroundPages;
      },
      jsFaults: 0, faultsFetched: 0, pagesByJsFault: 0, blockedMs: 0, blockedMsByThread: new Map(), latency: new LatencyHistogram(),
    };
    this.#source = source;
    this.#pageSize = source.pageSize;
    this.#pages = source.size / source.pageSize;
    this.#onError = opts.onError;
    this.complete = new Promise<void>((resolve, reject) => {
      this.#resolveComplete = resolve;
      this.#rejectComplete = reject;
    });
    this.complete.catch(() => {});
    if (source instanceof PostcopyClient) source.complete.catch((error: UffdError) => this.#fail(error));
    // Faults on pages the source holds are resolved by the addon's native
    // thread (serveFrom), with no JavaScript; the rest come to #onFault. The
    // same thread installs pages as they land. No spinning and no fill
    // threads: the workload needs the CPU more than a fault on a page that
    // has to cross the network needs a few microseconds.
    this.served = uffd.serveFrom(source, {
      ranges: [{ address: this.#address, length, offset: 0 }],
      onMiss: (fault) => this.#onFault(fault),
      spin: false,
      background: 'now',
      backgroundPiece: INSTALL_SLICE,
      fillThreads: 0,
      failure: opts.failure ?? source.failure ?? 'fill',
      timeoutMs: opts.timeoutMs,
      onError: (error) => this.#fail(error as UffdError),
    });
    // The uffd closed before every page was in: complete must not wait on.
    this.served.then(() => {
      this.#checkComplete();
      this.close();
    }, (error: unknown) => this.#fail(error as UffdError));
    this.#timer = setInterval(() => this.#checkComplete(), COMPLETE_POLL_MS);
    this.#timer.unref();
    this.#checkComplete();
  }

  /** Pages in the registered memory so far: copied for faults (natively or here) and installed. */
  get installedCount(): number {
    return this.#uffd.stats().pages + this.stats.pagesByJsFault;
  }

  get pageCount(): number {
    return this.#pages;
  }

  get error(): UffdError | undefined {
    return this.#error;
  }

  /**
   * Stops watching for completion (complete rejects with ERR_UFFD_CLOSED if
   * some page is not in yet); faults are served, and pages installed, until
   * the uffd is closed.
   */
  close(): void {
    this.#settle(new UffdError('ERR_UFFD_CLOSED', `ERR_UFFD_CLOSED: the destination was closed with ${this.installedCount} of ${this.#pages} pages in`));
  }

  #onFault(fault: Fault): void | Promise<void> {
    this.stats.jsFaults++;
    const offset = Number(fault.pageAddress - this.#address);
    const page = offset / this.#pageSize;
    if (offset < 0 || page >= this.#pages) {
      throw new UffdError('ERR_UFFD_NOT_MAPPED', `ERR_UFFD_NOT_MAPPED: a fault at 0x${fault.address.toString(16)} lies outside the migrated memory; a uffd served by a PostcopyDestination must register nothing else`);
    }
    if (isPresent(this.#source, offset, this.#pageSize)) {
      this.#copy(fault, offset);
      return;
    }
    this.stats.faultsFetched++;
    // The faulting page first: a source that serves requests in order serves it before the read-ahead.
    const fetched = fetchPresent(this.#source, offset, this.#pageSize, { urgent: true }).then(() => this.#copy(fault, offset));
    if (this.#readAhead > 0 && page + 1 < this.#pages) {
      const end = Math.min(this.#pages, page + 1 + this.#readAhead);
      // Not awaited: the faulting page is what the thread waits for.
      this.#source.fetch(offset + this.#pageSize, (end - page - 1) * this.#pageSize, { urgent: true }).catch(() => {});
    }
    return fetched;
  }

  #copy(fault: Fault, offset: number): void {
    const outcome = fault.copy(this.#source.bytes.subarray(offset, offset + this.#pageSize));
    if (outcome === 'done') this.stats.pagesByJsFault++;
    const waitedMs = performance.now() - fault.receivedAt;
    this.stats.latency.record(waitedMs * 1000);
    this.stats.blockedMs += waitedMs;
    const tid = fault.tid ?? 0;
    this.stats.blockedMsByThread.set(tid, (this.stats.blockedMsByThread.get(tid) ?? 0) + waitedMs);
  }

  #checkComplete(): void {
    if (!this.#ended && this.installedCount >= this.#pages) this.#settle();
  }

  // complete resolves (no error) or rejects, once; the watch ends.
  #settle(error?: UffdError): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#clearTimer();
    if (error) this.#rejectComplete(error);
    else this.#resolveComplete();
  }

  #clearTimer(): void {
    if (this.#timer === null) return;
    clearInterval(this.#timer);
    this.#timer = null;
  }

  #fail(error: UffdError): void {
    if (this.#error) return;
    this.#error = error;
    this.#settle(error);
    this.#onError?.(error);
  }
}
