// Serving a uffd's faults with JavaScript handlers: serve() (a Fault per
// fault, handlers may be asynchronous), serveSync() (blocking a worker in the
// addon) and serveBatch() (one reused FaultBatch), and the failure policy that
// resolves what a handler left unresolved, so that no faulting thread hangs.
// Userfaultfd's serving methods delegate here; serve-from.ts builds on
// serveWith() for the native fast path's misses.
import type { UffdHandle } from './binding';
import { EVENT, MSG_SIZE } from './constants';
import { UffdError, argTypeError, argValueError } from './errors';
import type { EventStream } from './event-stream';
import { decode, expire, refused, type DecodeContext, type Fault } from './events';
import { FaultBatch } from './fault-batch';
import type { NonFaultEvent, Userfaultfd } from './uffd';
import * as validate from './validate';

export interface ServeOptions {
  /** Non-cooperative events (fork, remap, remove, unmap). A fork's uffd is closed if this is not given. */
  onEvent?: (event: NonFaultEvent) => void;
  /** Called when the handler throws, rejects, or returns without resolving its fault. Default: process.emitWarning. */
  onError?: (error: unknown, fault: Fault) => void;
  /**
   * How a fault the handler failed on is resolved, so that its thread never hangs:
   * 'fill' (default): missing -> zero page, minor -> the page cache's page, wp -> write allowed;
   * 'poison': UFFDIO_POISON, the faulting thread gets SIGBUS ('fill' where the range does not allow POISON).
   */
  failure?: 'fill' | 'poison';
  /**
   * How long an asynchronous handler may hold its fault (milliseconds, default
   * none): a fault still unresolved this long after it was read is resolved by
   * the failure policy and reported to onError as ERR_UFFD_TIMEOUT. The
   * handler's own resolution, if it comes later, does nothing and returns 'exists'.
   */
  timeoutMs?: number;
  /**
   * Adaptive spinning on this thread after each batch (default false): faster
   * when faults come back to back, but the loop runs nothing else for up to
   * 1 ms at a time (see docs/performance.md).
   */
  spin?: boolean;
}

/**
 * serveSync's options; no timeoutMs, as its handlers cannot hold a fault
 * past their return. Nothing scheduled runs while serveSync blocks, so the
 * default onError's warning (process.emitWarning, emitted on the next tick)
 * appears, and a throwing onEvent or onError is raised, only once serveSync
 * has returned: give onError to hear of failed faults while serving.
 */
export interface ServeSyncOptions extends Omit<ServeOptions, 'spin' | 'timeoutMs'> {
  /** Adaptive spinning in wait (default true: this thread does nothing else). */
  spin?: boolean;
}

export type ServeBatchOptions = Pick<ServeOptions, 'onEvent' | 'spin'> & { onError?: (error: unknown) => void };

/**
 * @internal What serving needs of a Userfaultfd beyond its public API: its
 * handle, its message buffer and its event stream. Made by the Userfaultfd
 * for the functions here; never public.
 */
export interface ServeHost {
  readonly uffd: Userfaultfd;
  readonly handle: UffdHandle;
  /** The buffer the addon reads messages into, and how many it holds. */
  readonly view: DataView;
  readonly capacity: number;
  readonly stream: EventStream<Userfaultfd>;
  /** Takes the event stream for serving; ERR_UFFD_CLOSED, or ERR_UFFD_BUSY if it has a consumer already. */
  claim(): void;
  /** Faults handed to JavaScript handlers (ServeStats.jsFaults). */
  countJsFaults(count: number): void;
  decodeContext(): DecodeContext<Userfaultfd>;
  checkOpen(syscall: string): void;
  pageSizeAt(address: bigint): number;
  pageSizeAtNumber(address: number): number;
}

/** How serveWith's caller drives it: the promise of the end, and (serveSync) the retry of refused faults. */
export interface Serving {
  readonly served: Promise<void>;
  /** Hands the faults refused with EAGAIN to the handler again; true if some were refused again. */
  readonly retryNow: () => boolean;
}

// How long a blocking wait lasts before it returns to JavaScript, so that a
// worker asked to terminate gets the chance (an idle worker wakes this often).
const WAIT_SLICE_MS = 50;

/** Userfaultfd.serve(). */
export function serve(host: ServeHost, handler: (fault: Fault) => void | Promise<void>, options?: ServeOptions): Promise<void> {
  if (typeof handler !== 'function') throw argTypeError('handler', 'a function', handler);
  const opts = validate.options<ServeOptions>(options, 'options');
  const { served } = serveWith(host, handler, opts, false);
  host.handle.setSpin(opts.spin === true);
  host.handle.start();
  return served;
}

/** Userfaultfd.serveSync(). */
export function serveSync(host: ServeHost, handler: (fault: Fault) => void, options?: ServeSyncOptions): void {
  if (typeof handler !== 'function') throw argTypeError('handler', 'a function', handler);
  const opts = validate.options<ServeSyncOptions>(options, 'options');
  const { served, retryNow } = serveWith(host, handler, opts, true);
  served.catch(() => {});
  const spin = opts.spin !== false;
  let retrying = false;
  try {
    for (;;) {
      // Faults refused with EAGAIN are retried after at most 1 ms.
      const count = host.handle.wait(retrying ? 1 : WAIT_SLICE_MS, spin);
      if (count < 0 || host.uffd.closed) break;
      if (count > 0) host.stream.receive(count);
      if (host.uffd.closed) break;
      retrying = retryNow();
    }
  } finally {
    host.uffd.close();
  }
}

/** Userfaultfd.serveBatch(). */
export function serveBatch(host: ServeHost, handler: (batch: FaultBatch) => void, options?: ServeBatchOptions): Promise<void> {
  if (typeof handler !== 'function') throw argTypeError('handler', 'a function', handler);
  const opts = validate.options<ServeBatchOptions>(options, 'options');
  checkServeOptions(opts);
  host.claim();
  const { view, handle } = host;
  const batch = new FaultBatch(view, host.capacity, handle, (address) => host.pageSizeAtNumber(address));
  const report = opts.onError ?? ((error: unknown) => process.emitWarning(error as Error, 'UffdHandlerWarning'));
  host.stream.setBatchHandler((count) => {
    batch.load(count);
    if (batch.length < count) {
      // Events first, as serve() does; they are rare, so they may allocate.
      for (let i = 0; i < count; i++) {
        const event = view.getUint8(i * MSG_SIZE) === EVENT.PAGEFAULT ? undefined : decode(view, i, host.decodeContext());
        if (!event || event.type === 'pagefault') continue;
        if (opts.onEvent) guarded(() => opts.onEvent!(event));
        else if (event.type === 'fork') event.uffd.close();
      }
    }
    if (batch.length === 0) return;
    host.countJsFaults(batch.length);
    let threw = false;
    let changing = false;
    try {
      handler(batch);
    } catch (error) {
      // EAGAIN is the kernel's "read the queued event first", not a failure
      // of the handler: as serve() retries such faults, they come back.
      if ((error as UffdError | null | undefined)?.code === 'EAGAIN') changing = true;
      else {
        threw = true;
        guarded(() => report(error));
      }
    }
    if (host.uffd.closed) return;
    const left = batch.fillUnresolved(changing);
    // As serve() reports a fault its handler returned from without resolving.
    if (left > 0 && !threw) {
      guarded(() => report(new UffdError('ERR_UFFD_UNRESOLVED',
        `ERR_UFFD_UNRESOLVED: the batch handler finished with ${left} of ${batch.length} faults unresolved; the failure policy resolved them (a zero page, the page cache's page, or the protection removed)`)));
    }
  });
  handle.setSpin(opts.spin === true);
  handle.start();
  return host.stream.ended();
}

/**
 * Claims the uffd for serving and sets the delivery of batches: events first,
 * then faults to handler. sync: handlers cannot await (serveSync).
 */
export function serveWith(host: ServeHost, handler: (fault: Fault) => void | Promise<void>, opts: Partial<ServeOptions>, sync: boolean): Serving {
  checkServeOptions(opts);
  host.claim();
  const { uffd } = host;
  const report = opts.onError ?? warnHandlerFailure;
  const failure = opts.failure ?? 'fill';
  const { timeoutMs } = opts;
  const fail = (error: unknown, fault: Fault): void => {
    if (uffd.closed) return;
    if (!fault.resolved) resolveAfterFailure(fault, failure);
    // A throwing onError must not cost the rest of the batch its handling.
    guarded(() => report(error, fault));
  };
  // A resolution refused with EAGAIN (an event is queued that this side
  // has not read yet) is tried again after the next batch's events.
  let retry: Fault[] = [];
  const failed = (error: unknown, fault: Fault): void => {
    // Handlers may throw anything, undefined and null included.
    if ((error as UffdError | null | undefined)?.code === 'EAGAIN' && !fault.resolved) {
      retry.push(fault);
      scheduleRetry();
    } else {
      fail(error, fault);
    }
  };
  // A handler that caught the EAGAIN and returned has not failed either: the
  // fault waits for the event like one whose handler let the EAGAIN through.
  const unsettled = (fault: Fault): void => {
    if (refused(fault)) {
      retry.push(fault);
      scheduleRetry();
    } else {
      fail(unresolved(fault), fault);
    }
  };
  const dispatch = (fault: Fault): void => {
    host.countJsFaults(1);
    let result: void | Promise<void>;
    try {
      result = handler(fault);
    } catch (error) {
      failed(error, fault);
      return;
    }
    if (fault.resolved) return;
    // Closures only for handlers that are still working on their fault.
    if (!sync && result && typeof (result as Promise<void>).then === 'function') {
      const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
        if (fault.resolved) return;
        fail(timedOut(fault, timeoutMs), fault);
        expire(fault);
      }, Math.max(0, timeoutMs - (performance.now() - fault.receivedAt))).unref();
      (result as Promise<void>).then(() => {
        clearTimeout(timer);
        if (!fault.resolved) unsettled(fault);
      }, (error) => {
        clearTimeout(timer);
        failed(error, fault);
      });
    } else {
      unsettled(fault);
    }
  };
  // The event that made the kernel refuse with EAGAIN is usually read in
  // the next batch; but the kernel lowers its "address space changing" mark
  // only after the changing thread resumes, a moment after its event was
  // read, and then no further batch may come. So refused faults are also
  // retried on the next turn of the event loop (after its poll phase has
  // read whatever is queued), backing off to 1 ms after many tries.
  let retryScheduled = false;
  let retryTurns = 0;
  // serveSync blocks the loop: it calls this between its waits instead.
  const retryNow = (): boolean => {
    const again = retry;
    retry = [];
    for (const fault of again) if (!uffd.closed) dispatch(fault);
    return retry.length > 0;
  };
  const scheduleRetry = (): void => {
    if (sync || retryScheduled || retry.length === 0 || uffd.closed) return;
    retryScheduled = true;
    const run = (): void => {
      retryScheduled = false;
      retryTurns++;
      if (!retryNow()) retryTurns = 0;
      scheduleRetry();
    };
    if (retryTurns < 100) setImmediate(run);
    else setTimeout(run, 1);
  };
  host.stream.setDeliver((batch) => {
    // Events first: a fault read in the same batch as a REMOVE of its page
    // must be served after the removal is known, or stale data lands there.
    for (const event of batch) {
      if (event.type === 'pagefault') continue;
      if (opts.onEvent) guarded(() => opts.onEvent!(event));
      else if (event.type === 'fork') event.uffd.close();
    }
    if (retry.length > 0) retryNow();
    for (const event of batch) if (event.type === 'pagefault' && !uffd.closed) dispatch(event);
    scheduleRetry();
  });
  return { served: host.stream.ended(), retryNow };
}

// The options every serving method shares (timeoutMs: those serve() has).
// spin's default differs by method (on for serveSync and serveFrom), so a
// truthy or falsy stand-in would mean opposite things to them: booleans only.
function checkServeOptions(opts: Partial<Pick<ServeOptions, 'onError' | 'onEvent' | 'failure' | 'timeoutMs' | 'spin'>>): void {
  for (const name of ['onError', 'onEvent'] as const) {
    if (opts[name] !== undefined && typeof opts[name] !== 'function') throw argTypeError(`options.${name}`, 'a function', opts[name]);
  }
  validate.flag(opts.spin, 'options.spin');
  checkFailure(opts.failure, 'options.failure');
  if (opts.timeoutMs !== undefined) validate.timeout(opts.timeoutMs, 'options.timeoutMs');
}

/** A failure policy named by a handler's options or by a source: 'fill', 'poison', or undefined (the default). */
export function checkFailure(value: unknown, name: string): void {
  if (value !== undefined && value !== 'fill' && value !== 'poison') throw argValueError(name, `must be 'fill' or 'poison'. Received ${String(value)}`);
}

// Runs a user callback of serve(); what it throws becomes an uncaught
// exception once the current batch has been handled, as from any callback.
function guarded(callback: () => void): void {
  try {
    callback();
  } catch (error) {
    process.nextTick(() => {
      throw error;
    });
  }
}

function warnHandlerFailure(error: unknown, fault: Fault): void {
  if (error instanceof Error) {
    process.emitWarning(error, 'UffdHandlerWarning');
    return;
  }
  process.emitWarning(
    `the handler for the ${fault.kind} fault at 0x${fault.address.toString(16)} threw or rejected with ${typeof error === 'string' ? `'${error}'` : String(error)}, not an Error; the fault was resolved by the failure policy`,
    'UffdHandlerWarning');
}

function unresolved(fault: Fault): UffdError {
  return new UffdError('ERR_UFFD_UNRESOLVED',
    `ERR_UFFD_UNRESOLVED: the handler finished without resolving the ${fault.kind} fault at 0x${fault.address.toString(16)}; call fault.copy(), fault.zero(), fault.continue() or another resolving method`);
}

function timedOut(fault: Fault, timeoutMs: number): UffdError {
  return new UffdError('ERR_UFFD_TIMEOUT',
    `ERR_UFFD_TIMEOUT: the handler held the ${fault.kind} fault at 0x${fault.address.toString(16)} for ${timeoutMs} ms (options.timeoutMs); the failure policy resolved it. Resolve faults sooner, or raise timeoutMs`);
}

// The failure policy. It must not throw: the handler's error is what gets reported.
function resolveAfterFailure(fault: Fault, failure: 'fill' | 'poison'): void {
  const attempts: (() => unknown)[] = [];
  if (failure === 'poison') attempts.push(() => fault.poison());
  if (fault.kind === 'minor') attempts.push(() => fault.continue());
  if (fault.kind === 'wp' || fault.kind === 'rwp') attempts.push(() => fault.unprotect());
  attempts.push(() => fault.zero());
  // Filling failed too (no memory: a hugetlb pool ran dry). A wake alone would
  // let the thread fault again at once, forever; SIGBUS is what the kernel
  // itself gives a thread whose huge page cannot be allocated.
  if (failure !== 'poison') attempts.push(() => fault.poison());
  // No range any more (unregistered, unmapped): the thread sees ordinary memory.
  attempts.push(() => fault.wake());
  for (const attempt of attempts) {
    try {
      attempt();
      return;
    } catch {
      // Try the next way.
    }
  }
}
