// Which pages of a remote image to fetch next, and in what ranges: the policy
// half of a remote page source (the transport half is lib/http-source.ts).
//
// Three kinds of work share a fixed number of connections:
//   urgent     - a thread is blocked on these pages. Neighbouring urgent
//                ranges that are waiting at the same time are coalesced into
//                one request; they are always dispatched before anything else.
//   readahead  - pages a sequential reader will touch next. Each stream of
//                faults that keeps hitting the end of what was fetched doubles
//                its window, from `minWindow` up to `maxWindow` (CRIU grows its
//                chunks the same way, 64 KiB to 4 MiB), and keeps two windows
//                in flight ahead of the reader.
//   background - everything nobody asked for yet, in large chunks, in image
//                order, on at most `backgroundSlots` connections and never on
//                the `reserve` connections kept free for urgent work.
//
// Pages move absent -> in flight -> present, once: a page is in at most one
// request, and a present page is never requested again. The runner streams
// each response into the cache and calls landed() as whole pages arrive, so
// a waiter at the front of a large range is released as soon as its page is
// there, not when the range completes. A fault on a page that a read-ahead or
// background response will only reach much later than a new request would
// bring it (the runner's estimate) cuts that request short at the page: the page
// and what follows are requested again, urgently, and nothing is fetched twice.
//
// A reader that keeps up with read-ahead never misses, so it never says where
// it is. As Linux's page cache does (PG_readahead), the first page of each
// read-ahead window is a marker: its bytes land like any other page's, but
// its `present` flag is held back until somebody asks for it. The reader's
// fault on it reaches fetch() at once (no network wait: the bytes are there),
// which releases the flag and moves the stream's read-ahead forward, so the
// windows ahead of a sequential reader are requested before it reaches them.
// Markers are released when every page has landed, and when the source fails.

export type Priority = 'urgent' | 'readahead' | 'background';

export interface SchedulerOptions {
  /** Requests in flight at most (the connection count). */
  slots: number;
  /** Connections that only urgent work may take. */
  reserve: number;
  /** Background requests in flight at most. */
  backgroundSlots: number;
  /** Whether to fetch, in the background, every page nobody asked for. */
  background: boolean;
  /** Read-ahead window, in pages: the first window of a stream, and the largest. */
  minWindow: number;
  maxWindow: number;
  /** Pages for the next background request (the runner may grow it with the link's bandwidth-delay product). */
  backgroundChunk: () => number;
  /** Largest request, in pages; longer ranges are split. */
  maxRequest: number;
  /** Absent pages between two waiting urgent ranges that are fetched to join them into one request. */
  gap: number;
}

/** One request in flight: pages [start, end), of which [start, landed) are present. `end` may be lowered while it runs. */
export interface Transfer {
  readonly start: number;
  end: number;
  landed: number;
  readonly priority: Priority;
}

/** Runs one transfer, calling landed() as pages arrive and stopping at its (possibly lowered) end; rejects when it finally fails. */
export type Runner = (transfer: Transfer) => Promise<void>;

/** Whether a fault on `page`, inside this non-urgent transfer, is served sooner by a new request than by waiting. */
export type SplitAdvisor = (transfer: Transfer, page: number) => boolean;

interface Waiter {
  start: number;
  end: number;
  missing: number;
  resolve: () => void;
  reject: (error: unknown) => void;
}

interface Stream {
  /** The page that last extended this stream. */
  at: number;
  /** One past the last page this stream has requested. */
  next: number;
  window: number;
}

const ABSENT = 0;
const IN_FLIGHT = 1;
const PRESENT = 2;
// Sequential streams tracked at once (one per faulting thread that scans memory, say).
const MAX_STREAMS = 8;

export interface SchedulerCounters {
  requests: Record<Priority, number>;
  pages: Record<Priority, number>;
  /** Urgent ranges asked for that went out merged with others. */
  coalesced: number;
  /** Read-ahead and background transfers cut short for a fault. */
  split: number;
}

export class FetchScheduler {
  readonly pages: number;
  readonly #present: Uint8Array;
  readonly #state: Uint8Array;
  /** Read-ahead markers: pages whose present flag is held back until they are asked for. */
  readonly #marker: Uint8Array;
  #markers = 0;
  readonly #options: SchedulerOptions;
  readonly #run: Runner;
  readonly #split: SplitAdvisor;
  #transfers = new Set<Transfer>();
  #presentCount = 0;
  #waiters = new Set<Waiter>();
  #urgent: [number, number][] = [];
  #readahead: [number, number][] = [];
  #streams: Stream[] = [];
  #inFlight: Record<Priority, number> = { urgent: 0, readahead: 0, background: 0 };
  #backgroundCursor = 0;
  #pumpQueued = false;
  #failure: unknown;
  #stopped = false;
  #complete: { promise: Promise<void>; resolve: () => void; reject: (error: unknown) => void };
  readonly counters: SchedulerCounters = {
    requests: { urgent: 0, readahead: 0, background: 0 },
    pages: { urgent: 0, readahead: 0, background: 0 },
    coalesced: 0,
    split: 0,
  };

  constructor(pages: number, present: Uint8Array, options: SchedulerOptions, run: Runner, split: SplitAdvisor = () => false) {
    this.pages = pages;
    this.#present = present;
    this.#state = new Uint8Array(pages);
    this.#marker = new Uint8Array(pages);
    this.#options = options;
    this.#run = run;
    this.#split = split;
    let resolve!: () => void;
    let reject!: (error: unknown) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // Nobody may ever ask: a failure is reported through fetch() as well.
    promise.catch(() => {});
    this.#complete = { promise, resolve, reject };
  }

  get presentPages(): number {
    return this.#presentCount;
  }

  get inFlight(): number {
    return this.#inFlight.urgent + this.#inFlight.readahead + this.#inFlight.background;
  }

  get failure(): unknown {
    return this.#failure;
  }

  /** Resolves when every page is present; rejects when the source fails first. */
  whenComplete(): Promise<void> {
    return this.#complete.promise;
  }

  /** Resolves when pages [start, end) are all present. */
  want(start: number, end: number, urgent: boolean): Promise<void> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    let missing = 0;
    let marked = false;
    for (let page = start; page < end; page++) {
      if (this.#marker[page] !== 0) {
        marked = true;
        this.#unmark(page);
      }
      if (this.#state[page] !== PRESENT) missing++;
    }
    if (missing === 0) {
      // A sequential reader reached a read-ahead marker: request further ahead.
      if (marked && urgent) {
        this.#demand(start, end);
        this.#schedulePump();
      }
      return Promise.resolve();
    }
    const promise = new Promise<void>((resolve, reject) => this.#waiters.add({ start, end, missing, resolve, reject }));
    if (urgent) this.#demand(start, end);
    else this.#readahead.push([start, end]);
    this.#schedulePump();
    return promise;
  }

  /** Starts a request for pages [start, end) now (they must all be absent): the source's opening request. */
  claim(start: number, end: number, priority: Priority): void {
    for (let page = start; page < end; page++) this.#state[page] = IN_FLIGHT;
    this.#dispatch(start, end, priority);
    // Background fill starts alongside.
    this.#schedulePump();
  }

  /** The runner's report: the transfer's pages up to `upTo` are in the cache now. */
  landed(transfer: Transfer, upTo: number): void {
    const start = transfer.landed;
    const end = Math.min(upTo, transfer.end);
    if (end <= start) return;
    transfer.landed = end;
    for (let page = start; page < end; page++) {
      this.#state[page] = PRESENT;
      // The flag is stored after the bytes, for readers on other threads.
      if (this.#marker[page] === 0) Atomics.store(this.#present, page, 1);
    }
    this.#presentCount += end - start;
    if (this.#presentCount === this.pages) this.#unmarkAll();
    for (const waiter of this.#waiters) {
      const overlap = Math.min(end, waiter.end) - Math.max(start, waiter.start);
      if (overlap <= 0) continue;
      waiter.missing -= overlap;
      if (waiter.missing <= 0) {
        this.#waiters.delete(waiter);
        waiter.resolve();
      }
    }
    if (this.#presentCount === this.pages) this.#complete.resolve();
  }

  /** The source cannot deliver: every waiter, now and later, gets this error. */
  fail(error: unknown): void {
    if (this.#failure !== undefined) return;
    this.#failure = error;
    // Pages that did land stay usable without asking (fetch now rejects).
    this.#unmarkAll();
    this.#urgent = [];
    this.#readahead = [];
    for (const waiter of this.#waiters) waiter.reject(error);
    this.#waiters.clear();
    this.#complete.reject(error);
  }

  /** Stops dispatching; requests in flight are the runner's to abort. */
  stop(error: unknown): void {
    this.#stopped = true;
    this.fail(error);
  }

  // An urgent miss: the page range itself, grown by the read-ahead window of
  // the stream it continues (or a new stream's first window), plus the next
  // window as read-ahead when the stream is sequential.
  #demand(start: number, end: number): void {
    const { minWindow, maxWindow } = this.#options;
    if (this.#state[start] === IN_FLIGHT) this.#maybeSplit(start);
    let stream = this.#streams.find((s) => start >= s.at && start <= s.next);
    const sequential = stream !== undefined;
    if (stream) {
      stream.window = Math.min(stream.window * 2, maxWindow);
      this.#streams.splice(this.#streams.indexOf(stream), 1);
    } else {
      stream = { at: start, next: start, window: minWindow };
      if (this.#streams.length >= MAX_STREAMS) this.#streams.pop();
    }
    this.#streams.unshift(stream);
    // The faulting range, grown to a window unless a transfer already brings it.
    const urgentEnd = Math.min(this.pages, this.#state[start] === ABSENT ? Math.max(end, start + stream.window) : end);
    this.#urgent.push([start, urgentEnd]);
    stream.at = start;
    stream.next = Math.max(stream.next, urgentEnd);
    // A sequential reader: keep one to two whole windows requested ahead of it.
    while (sequential && stream.next < this.pages && stream.next - start < 2 * stream.window) {
      const aheadEnd = Math.min(this.pages, stream.next + stream.window);
      this.#readahead.push([stream.next, aheadEnd]);
      this.#mark(stream.next);
      stream.next = aheadEnd;
    }
  }

  // A page in flight in a read-ahead or background transfer that will reach
  // it late: end that transfer at the page, which becomes absent again.
  #maybeSplit(page: number): void {
    for (const transfer of this.#transfers) {
      if (page < transfer.start || page >= transfer.end) continue;
      if (transfer.priority === 'urgent' || page <= transfer.landed || !this.#split(transfer, page)) return;
      this.#release(page, transfer.end);
      transfer.end = page;
      // Background fill picks the rest up next, in order.
      if (transfer.priority === 'background') this.#backgroundCursor = Math.min(this.#backgroundCursor, page);
      this.counters.split++;
      return;
    }
  }

  #mark(page: number): void {
    if (this.#state[page] === PRESENT || this.#marker[page] !== 0) return;
    this.#marker[page] = 1;
    this.#markers++;
  }

  #unmark(page: number): void {
    this.#marker[page] = 0;
    this.#markers--;
    if (this.#state[page] === PRESENT) Atomics.store(this.#present, page, 1);
  }

  #unmarkAll(): void {
    if (this.#markers === 0) return;
    for (let page = 0; page < this.pages && this.#markers > 0; page++) if (this.#marker[page] !== 0) this.#unmark(page);
  }

  #schedulePump(): void {
    if (this.#pumpQueued) return;
    this.#pumpQueued = true;
    // A microtask: every fault of one batch from the kernel has asked by then,
    // so neighbours coalesce.
    queueMicrotask(() => {
      this.#pumpQueued = false;
      this.#pump();
    });
  }

  #pump(): void {
    if (this.#stopped || this.#failure !== undefined) return;
    const { slots, reserve, backgroundSlots } = this.#options;
    if (this.#urgent.length > 0 && this.inFlight < slots) {
      const merged = this.#merge(this.#urgent);
      this.#urgent = [];
      const requests = merged.flatMap(([s, e]) => this.#carve(s, e));
      // What does not fit now waits, first in line, for the next free slot.
      while (requests.length > 0 && this.inFlight < slots) {
        const [s, e] = requests.shift()!;
        this.#dispatch(s, e, 'urgent');
      }
      for (const [s, e] of requests) this.#release(s, e);
      if (requests.length > 0) this.#urgent.push(...requests);
    }
    if (this.#urgent.length > 0) return;
    while (this.#readahead.length > 0 && this.inFlight < slots - reserve) {
      const [s, e] = this.#readahead.shift()!;
      const requests = this.#carve(s, e);
      while (requests.length > 0 && this.inFlight < slots - reserve) {
        const [rs, re] = requests.shift()!;
        this.#dispatch(rs, re, 'readahead');
      }
      for (const [rs, re] of requests) this.#release(rs, re);
      this.#readahead.unshift(...requests);
    }
    if (!this.#options.background || this.#readahead.length > 0) return;
    while (this.#inFlight.background < backgroundSlots && this.inFlight < slots - reserve) {
      const next = this.#nextBackground();
      if (!next) break;
      this.#dispatch(next[0], next[1], 'background');
    }
  }

  // Sorts and joins ranges that overlap, touch, or lie within `gap` pages.
  #merge(ranges: [number, number][]): [number, number][] {
    const sorted = ranges.slice().sort((a, b) => a[0] - b[0]);
    const out: [number, number][] = [];
    for (const [s, e] of sorted) {
      const last = out[out.length - 1];
      if (last && s <= last[1] + this.#options.gap) {
        if (e > last[1]) last[1] = e;
        this.counters.coalesced++;
      } else {
        out.push([s, e]);
      }
    }
    return out;
  }

  // The absent runs of [start, end), split at maxRequest, marked in flight.
  #carve(start: number, end: number): [number, number][] {
    const out: [number, number][] = [];
    let page = start;
    while (page < end) {
      while (page < end && this.#state[page] !== ABSENT) page++;
      const runStart = page;
      while (page < end && this.#state[page] === ABSENT && page - runStart < this.#options.maxRequest) {
        this.#state[page] = IN_FLIGHT;
        page++;
      }
      if (page > runStart) out.push([runStart, page]);
    }
    return out;
  }

  #release(start: number, end: number): void {
    for (let page = start; page < end; page++) if (this.#state[page] === IN_FLIGHT) this.#state[page] = ABSENT;
  }

  #nextBackground(): [number, number] | undefined {
    const backgroundChunk = this.#options.backgroundChunk();
    for (let pass = 0; pass < 2; pass++) {
      let page = this.#backgroundCursor;
      while (page < this.pages && this.#state[page] !== ABSENT) page++;
      if (page < this.pages) {
        const start = page;
        while (page < this.pages && this.#state[page] === ABSENT && page - start < backgroundChunk) {
          this.#state[page] = IN_FLIGHT;
          page++;
        }
        this.#backgroundCursor = page;
        return [start, page];
      }
      // Pages before the cursor may have come back absent (a released urgent range).
      this.#backgroundCursor = 0;
    }
    return undefined;
  }

  #dispatch(start: number, end: number, priority: Priority): void {
    // A read-ahead window joined to an urgent request is a fault's now: no marker in it.
    if (priority === 'urgent' && this.#markers > 0) for (let page = start; page < end; page++) if (this.#marker[page] !== 0) this.#unmark(page);
    this.#inFlight[priority]++;
    this.counters.requests[priority]++;
    this.counters.pages[priority] += end - start;
    const transfer: Transfer = { start, end, landed: start, priority };
    this.#transfers.add(transfer);
    this.#run(transfer).then(
      () => {
        this.#transfers.delete(transfer);
        this.#inFlight[priority]--;
        this.#pump();
      },
      (error: unknown) => {
        this.#transfers.delete(transfer);
        this.#inFlight[priority]--;
        this.fail(error);
      },
    );
  }
}
