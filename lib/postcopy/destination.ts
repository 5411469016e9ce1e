// The destination side of a post-copy migration's memory half: registered
// memory whose faults are served from a PageSource (a PostcopyClient, or any
// other source), and whose pages are installed as they land in the source's
// cache, so that the workload stops faulting on pages pushed in the
// background. The workload runs on other threads (workers with attachView)
// or in another process. Faults on pages in the cache are resolved by the
// addon's native thread (serveFrom); faults that need the network are
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
import type { PageSource } from '../page-source';
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
  /** Pages copied in by the installer as they landed, before any fault asked. */
  pagesInstalled: number;
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

// Bytes the installer copies per turn of the event loop, so that faults read
// in between are served promptly; and how often it looks for new pages.
const INSTALL_BURST = 4 << 20;
const INSTALL_SLICE = 256 << 10;
const INSTALL_POLL_MS = 2;

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
  readonly #installed: Uint8Array;
  readonly #readAhead: number;
  readonly #onError: ((error: UffdError) => void) | undefined;
  #installedCount = 0;
  #low = 0;
  /** Runs [first, end) of landed pages to install, as pairs, from #head on. */
  #queue: number[] = [];
  #head = 0;
  /** Whether the source tells which pages land (else it is scanned). */
  readonly #notified: boolean;
  #timer: NodeJS.Timeout | NodeJS.Immediate | null = null;
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
    const targetPageSize = target instanceof Mapping ? target.pageSize : source.pageSize;
    if (targetPageSize !== source.pageSize) throw argRangeError('target.pageSize', `the source's page size (${source.pageSize})`, targetPageSize);
    if (!uffd.registrations.some((r) => r.start <= this.#address && r.end >= this.#address + BigInt(length) && r.modes.missing)) {
      throw new UffdError('ENOENT', 'ENOENT: the target is not registered with this userfaultfd in missing mode: call uffd.register(target, { missing: true }) first', { syscall: 'ioctl(UFFDIO_COPY)' });
    }
    this.#readAhead = validate.size(opts.readAhead ?? 0, 'options.readAhead');
    this.#uffd = uffd;
    this.stats = {
      get faults() {
        return this.jsFaults + uffd.stats().nativeFaults;
      },
      get pagesByFault() {
        return this.pagesByJsFault + uffd.stats().pages;
      },
      jsFaults: 0, faultsFetched: 0, pagesByJsFault: 0, pagesInstalled: 0, blockedMs: 0, blockedMsByThread: new Map(), latency: new LatencyHistogram(),
    };
    this.#source = source;
    this.#pageSize = source.pageSize;
    this.#pages = source.size / source.pageSize;
    this.#installed = new Uint8Array(this.#pages);
    this.#onError = opts.onError;
    this.complete = new Promise<void>((resolve, reject) => {
      this.#resolveComplete = resolve;
      this.#rejectComplete = reject;
    });
    this.complete.catch(() => {});
    this.#notified = source instanceof PostcopyClient;
    if (source instanceof PostcopyClient) {
      source.complete.catch((error: UffdError) => this.#fail(error));
      source.onLanded((first, end) => this.#enqueue(first, end));
    }
    // Faults on pages the source holds are resolved by the addon's native
    // thread (serveFrom), with no JavaScript; the rest come to #onFault.
    // No spinning: the workload needs the CPU more than a fault on a page
    // that has to cross the network needs a few microseconds.
    this.served = uffd.serveFrom(source, {
      ranges: [{ address: this.#address, length, offset: 0 }],
      onMiss: (fault) => this.#onFault(fault),
      spin: false,
      failure: opts.failure ?? source.failure ?? 'fill',
      onError: (error) => this.#fail(error as UffdError),
    });
    // Whatever is present already (all of it, for a source that is entirely local).
    this.#scanPresent();
    this.#installTick();
  }

  /** Pages in the registered memory so far. */
  get installedCount(): number {
    return this.#installedCount;
  }

  get pageCount(): number {
    return this.#pages;
  }

  get error(): UffdError | undefined {
    return this.#error;
  }

  /** Stops installing; faults are still served until the uffd is closed. */
  close(): void {
    this.#ended = true;
    this.#clearTimer();
  }

  #onFault(fault: Fault): void | Promise<void> {
    this.stats.jsFaults++;
    const offset = Number(fault.pageAddress - this.#address);
    const page = offset / this.#pageSize;
    if (offset < 0 || page >= this.#pages) {
      throw new UffdError('ERR_UFFD_NOT_MAPPED', `ERR_UFFD_NOT_MAPPED: a fault at 0x${fault.address.toString(16)} lies outside the migrated memory; a uffd served by a PostcopyDestination must register nothing else`);
    }
    const present = this.#source.present;
    if (present === null || Atomics.load(present, page) !== 0) {
      this.#copy(fault, page, offset);
      return;
    }
    this.stats.faultsFetched++;
    if (this.#readAhead > 0 && page + 1 < this.#pages) {
      const end = Math.min(this.#pages, page + 1 + this.#readAhead);
      // Not awaited: the faulting page is what the thread waits for.
      this.#source.fetch(offset + this.#pageSize, (end - page - 1) * this.#pageSize, { urgent: true }).catch(() => {});
    }
    return this.#source.fetch(offset, this.#pageSize, { urgent: true }).then(() => this.#copy(fault, page, offset));
  }

  #copy(fault: Fault, page: number, offset: number): void {
    const outcome = fault.copy(this.#source.bytes.subarray(offset, offset + this.#pageSize));
    if (outcome === 'done') {
      this.stats.pagesByJsFault++;
      this.#markInstalled(page, page + 1);
    }
    const waitedMs = performance.now() - fault.receivedAt;
    this.stats.latency.record(waitedMs * 1000);
    this.stats.blockedMs += waitedMs;
    const tid = fault.tid ?? 0;
    this.stats.blockedMsByThread.set(tid, (this.stats.blockedMsByThread.get(tid) ?? 0) + waitedMs);
  }

  #markInstalled(first: number, end: number): void {
    for (let page = first; page < end; page++) {
      if (this.#installed[page] !== 0) continue;
      this.#installed[page] = 1;
      this.#installedCount++;
    }
    if (this.#installedCount === this.#pages && !this.#ended) {
      this.#ended = true;
      this.#clearTimer();
      this.#resolveComplete();
    }
  }

  // Copies pages that are present in the source but not yet in the
  // registered memory, a burst per turn of the event loop. A PostcopyClient
  // says which pages landed; other sources are scanned now and then.
  #installTick(): void {
    this.#timer = null;
    if (this.#ended) return;
    if (this.#head === this.#queue.length && !this.#notified) this.#scanPresent();
    let budget = INSTALL_BURST;
    while (budget > 0 && this.#head < this.#queue.length) {
      let first = this.#queue[this.#head]!;
      const end = this.#queue[this.#head + 1]!;
      while (first < end && this.#installed[first] !== 0) first++;
      let stop = first;
      const limit = Math.min(end, first + Math.max(1, Math.floor(budget / this.#pageSize)));
      while (stop < limit && this.#installed[stop] === 0) stop++;
      if (stop >= end) this.#head += 2;
      else this.#queue[this.#head] = stop;
      if (stop === first) continue;
      budget -= (stop - first) * this.#pageSize;
      if (!this.#install(first, stop) || this.#ended) return;
    }
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
      if (!this.#notified) this.#timer = setTimeout(() => this.#installTick(), INSTALL_POLL_MS);
    } else {
      this.#timer = setImmediate(() => this.#installTick());
    }
  }

  #enqueue(first: number, end: number): void {
    this.#queue.push(first, end);
    if (this.#timer === null && !this.#ended) this.#timer = setImmediate(() => this.#installTick());
  }

  // Runs of pages present in the source and not installed.
  #scanPresent(): void {
    const present = this.#source.present;
    let page = this.#low;
    while (page < this.#pages && this.#installed[page] !== 0) page++;
    this.#low = page;
    while (page < this.#pages) {
      if (this.#installed[page] !== 0 || (present !== null && Atomics.load(present, page) === 0)) {
        page++;
        continue;
      }
      const first = page;
      while (page < this.#pages && this.#installed[page] === 0 && (present === null || Atomics.load(present, page) !== 0)) page++;
      this.#queue.push(first, page);
    }
  }

  // UFFDIO_COPY of [first, end), INSTALL_SLICE bytes per ioctl: the kernel
  // holds the address space's lock for reading across one ioctl, and a
  // workload thread that maps memory (its heap growing) waits for it.
  // Pages a fault copied in meanwhile are skipped.
  #install(first: number, end: number): boolean {
    const bytes = this.#source.bytes;
    const slice = Math.max(1, Math.floor(INSTALL_SLICE / this.#pageSize));
    let page = first;
    while (page < end) {
      const offset = page * this.#pageSize;
      const stop = Math.min(end, page + slice);
      try {
        this.#uffd.copy(this.#address + BigInt(offset), bytes.subarray(offset, stop * this.#pageSize));
        this.stats.pagesInstalled += stop - page;
        this.#markInstalled(page, stop);
        page = stop;
      } catch (error) {
        const e = error as UffdError;
        if (e.code !== 'EEXIST') {
          this.#fail(e);
          return false;
        }
        const done = (e.bytesDone ?? 0) / this.#pageSize;
        this.stats.pagesInstalled += done;
        this.#markInstalled(page, page + done + 1); // +1: the page that was there already
        page += done + 1;
      }
    }
    return true;
  }

  #clearTimer(): void {
    if (this.#timer === null) return;
    clearTimeout(this.#timer as NodeJS.Timeout);
    clearImmediate(this.#timer as NodeJS.Immediate);
    this.#timer = null;
  }

  #fail(error: UffdError): void {
    if (this.#error) return;
    this.#error = error;
    this.close();
    this.#rejectComplete(error);
    this.#onError?.(error);
  }
}
