// Userfaultfd: one uffd, its registrations, the ioctls that resolve faults,
// and the stream of its events. The parts live in their own modules, and the
// methods here delegate to them: the record of registrations
// (registrations.ts), the event stream and its one consumer (event-stream.ts),
// serving faults with JavaScript handlers (serve.ts) and from a page source
// (serve-from.ts).
//
// Threading: events are read on the thread that opened the uffd (the main
// thread or a worker), by its event loop, never blocking it, unless another
// thread reads them (serveFrom's native thread, a worker given uffd.lend());
// resolving ioctls run synchronously on the thread that reads. That thread
// must never touch registered memory that is not yet present: it would block
// in the kernel waiting for a resolution only it can make. Faults come from
// other threads (workers using attachView), native threads, or other
// processes (docs/threading.md).
import { native, type UffdHandle } from './binding';
import {
  COPY_MODE_WP, CONTINUE_MODE_WP, MODE_DONTWAKE, MOVE_MODE_ALLOW_SRC_HOLES, MSG_SIZE, REGISTER_MODE,
  RUNTIME_FEATURES, RWPROTECT_MODE_DONTWAKE, RWPROTECT_MODE_RWP,
  WRITEPROTECT_MODE_DONTWAKE, WRITEPROTECT_MODE_WP, featureBits, featureNames, ioctlNames,
  type Feature, type Ioctl,
} from './constants';
import { UffdError, argTypeError, argValueError, invalid, libraryError, systemError } from './errors';
import { EventStream } from './event-stream';
import type { FaultBatch } from './fault-batch';
import type { DecodeContext, Fault, FaultResolver, ForkEvent, RemapEvent, RemoveEvent, UffdEvent, UnmapEvent } from './events';
import { Mapping, systemPageSize } from './memory';
import type { PageSource } from './page-source';
import { Registrations, type AdoptedRange, type RegisterModes, type Registration } from './registrations';
import * as serving from './serve';
import type { ServeBatchOptions, ServeHost, ServeOptions, ServeSyncOptions } from './serve';
import { serveFrom as serveFromSource, type ServeFromOptions } from './serve-from';
import { COUNTERS_LENGTH, STATS_LENGTH, readStats, type ServeStats } from './stats';
import * as validate from './validate';

native.setErrorFactory(systemError);
// At this thread's exit (process.exit, an uncaught exception, a worker's
// end), before Node joins its workers: a worker blocked on a fault of a uffd
// this thread serves would otherwise never return, and the exit hang.
process.once('exit', () => native.closeAll());

const MESSAGE_CAPACITY = Number(native.constants.messageCapacity);

export interface OpenOptions {
  /** Features to enable, by kernel name (UFFD_FEATURE_ minus the prefix). Missing ones throw ERR_UFFD_UNSUPPORTED_FEATURE. */
  features?: Feature[];
  /**
   * UFFD_USER_MODE_ONLY: only faults from user-space accesses are reported, which
   * unprivileged processes may open where vm.unprivileged_userfaultfd is 0.
   * Faults the kernel raises itself (read(2) into the region, KVM) then fail with EFAULT.
   */
  userModeOnly?: boolean;
}

/** A range to register: a Mapping, or any page-aligned range of this process (or of the process that created the uffd). */
export type Target = Mapping | { address: bigint; length: number | bigint; pageSize?: number };

export type Event = UffdEvent<Userfaultfd>;
export type NonFaultEvent = ForkEvent<Userfaultfd> | RemapEvent | RemoveEvent | UnmapEvent;

/** What a worker needs to serve this uffd's faults (Userfaultfd.borrow); plain data, for workerData. */
export interface UffdLoan {
  readonly id: number;
  readonly features: Feature[];
  readonly ranges: AdoptedRange[];
}

export class Userfaultfd implements FaultResolver {
  readonly #handle: UffdHandle;
  readonly #callback: (count: number) => void;
  readonly #messages = new ArrayBuffer(MSG_SIZE * MESSAGE_CAPACITY);
  readonly #view = new DataView(this.#messages);
  #closed = false;
  readonly #registrations = new Registrations();
  readonly #stream: EventStream<Userfaultfd> = new EventStream(this.#view, this, () => this.#decodeContext());
  #jsFaults = 0;
  #context: DecodeContext<Userfaultfd> | undefined;
  #serveHost: ServeHost | undefined;
  #finalStats: Float64Array = new Float64Array(STATS_LENGTH);
  // stats() reads the counters into this, every call: no allocation per poll.
  readonly #counters = new Float64Array(COUNTERS_LENGTH);

  /** How the descriptor was obtained: 'syscall', 'device' (/dev/userfaultfd), 'adopted' (an fd given to fromFd or a fork event), or 'borrowed' (lent by another thread). */
  readonly openedWith: 'syscall' | 'device' | 'adopted' | 'borrowed';
  /** Features the kernel offers, as UFFDIO_API answered (empty for an adopted uffd). */
  readonly offeredFeatures: ReadonlySet<Feature>;
  /** Features enabled on this uffd (UFFDIO_API's request, then setMode's changes). */
  readonly enabledFeatures: ReadonlySet<Feature>;
  readonly #enabled: Set<Feature>;

  private constructor(fd: number, openedWith: Userfaultfd['openedWith'], offered: bigint, enabled: bigint, lentId?: number) {
    this.openedWith = openedWith;
    this.offeredFeatures = featureNames(offered);
    this.#enabled = featureNames(enabled);
    // The kernel turns WP_UNPOPULATED on with WP_ASYNC, which relies on it.
    if (this.#enabled.has('WP_ASYNC')) this.#enabled.add('WP_UNPOPULATED');
    this.enabledFeatures = this.#enabled;
    // The handle holds this callback weakly until the stream starts; a
    // Userfaultfd nobody holds is collected and its handle closes the fd.
    this.#callback = (count: number) => this.#stream.receive(count);
    this.#handle = new native.UffdHandle(fd, this.#callback, this.#messages, lentId);
    if (this.#enabled.has('EVENT_REMOVE') || this.#enabled.has('EVENT_UNMAP')) {
      this.#handle.setEventWaits(this.#enabled.has('EVENT_REMOVE'), this.#enabled.has('EVENT_UNMAP'));
    }
  }

  /**
   * Opens a userfaultfd (the userfaultfd(2) syscall, then /dev/userfaultfd) and
   * does the UFFDIO_API handshake with the requested features.
   */
  static open(options?: OpenOptions): Userfaultfd {
    const opts = validate.options<OpenOptions>(options, 'options');
    const requested = validate.features(opts.features, 'options.features');
    const userModeOnly = opts.userModeOnly === true;
    const bits = featureBits(requested);
    const { fd, method } = native.open(userModeOnly);
    try {
      const { offered } = native.api(fd, bits);
      return new Userfaultfd(fd, method, offered, bits);
    } catch (error) {
      native.closeFd(fd);
      throw explainApiFailure(error, bits, userModeOnly);
    }
  }

  /**
   * Adopts a uffd descriptor that has had its UFFDIO_API handshake already,
   * for example one received from another process. The object owns it from
   * now on. features: those the other side enabled (THREAD_ID changes how
   * events decode). ranges: what the other side registered, so that faults
   * know their page size (default: this system's page size).
   */
  static fromFd(fd: number, options?: { features?: Feature[]; ranges?: AdoptedRange[] }): Userfaultfd {
    validate.fd(fd, 'fd');
    // Anything else would be adopted (and closed with this object) or refused late, by an ioctl.
    const kind = native.descriptorKind(fd);
    if (kind !== 'userfaultfd') throw argValueError('fd', `must be a userfaultfd. Received a descriptor of kind '${kind}', left open`);
    const opts = validate.options<{ features: Feature[]; ranges: AdoptedRange[] }>(options, 'options');
    // Checked before adopting: a refused call leaves the descriptor the caller's.
    const features = validate.features(opts.features, 'options.features');
    const ranges = Registrations.checkAdopted(opts.ranges ?? [], 'options.ranges');
    const uffd = new Userfaultfd(fd, 'adopted', 0n, featureBits(features));
    uffd.#registrations.adopt(ranges);
    return uffd;
  }

  /**
   * Shares this uffd with a worker thread: pass the loan in workerData, and
   * the worker's Userfaultfd.borrow(loan) serves faults with serveSync(),
   * blocked in the addon, so that nothing this thread does delays a fault.
   * This thread keeps the uffd: its close() ends the worker's serveSync(),
   * and the descriptor closes once the worker lets go (a borrower that is
   * not in serveSync lets go when its event loop next runs).
   */
  lend(): UffdLoan {
    this.#checkOpen('userfaultfd');
    return {
      id: this.#handle.lend(),
      features: [...this.enabledFeatures],
      ranges: this.#registrations.forAdoption(),
    };
  }

  /** The worker's side of lend(): the same uffd, to serve with serveSync() (or any resolving method). */
  static borrow(loan: UffdLoan): Userfaultfd {
    if (loan === null || typeof loan !== 'object' || !Number.isSafeInteger(loan.id) || loan.id <= 0) {
      throw argTypeError('loan', 'the object uffd.lend() returned', loan);
    }
    // Checked before borrowing: a borrowed share refused afterwards would
    // keep the uffd open (and its memory registered) until collected.
    const features = validate.features(loan.features, 'loan.features');
    const ranges = Registrations.checkAdopted(loan.ranges ?? [], 'loan.ranges');
    let uffd: Userfaultfd;
    try {
      uffd = new Userfaultfd(-1, 'borrowed', 0n, featureBits(features), loan.id);
    } catch (error) {
      // The generic advice (open a new uffd) is wrong here: the uffd is the lender's.
      if ((error as UffdError).code !== 'ERR_UFFD_CLOSED') throw error;
      throw libraryError('ERR_UFFD_CLOSED', 'userfaultfd', 'the uffd this loan names is closed (or the loan is not from uffd.lend() in this process): ask its owner for a new loan');
    }
    uffd.#registrations.adopt(ranges);
    return uffd;
  }

  get fd(): number {
    return this.#handle.fd;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * The ranges this uffd has registered, as this process knows them: its own
   * register/unregister calls, this library's unmaps, the ranges a fromFd or a
   * borrow was given, and (with EVENT_REMAP / EVENT_UNMAP) the peer's mremap and
   * munmap. An munmap the uffd gets no event for (another process's without
   * EVENT_UNMAP, or native code's) leaves its range listed: the kernel has
   * dropped it, and a resolving ioctl there fails with ENOENT.
   */
  get registrations(): readonly Registration[] {
    return this.#registrations.list;
  }

  /** UFFDIO_REGISTER. Returns the ioctls the kernel allows on the range. */
  register(target: Target, modes: RegisterModes = { missing: true }): ReadonlySet<Ioctl> {
    const { start, length, pageSize } = targetRange(target);
    const m = validate.options<RegisterModes>(modes, 'modes');
    for (const mode of ['missing', 'minor', 'wp', 'rwp'] as const) {
      validate.flag(m[mode], `modes.${mode}`);
    }
    const bits = (m.missing ? REGISTER_MODE.MISSING : 0n) | (m.minor ? REGISTER_MODE.MINOR : 0n) | (m.wp ? REGISTER_MODE.WP : 0n) |
      (m.rwp ? REGISTER_MODE.RWP : 0n);
    if (bits === 0n) throw argValueError('modes', 'must set at least one of missing, minor, wp, rwp. Received none');
    if (m.wp && m.rwp) throw argValueError('modes', 'cannot combine wp and rwp on one range (the kernel tracks both with the same PTE bit): register one of them. Received both');
    this.#checkOpen('ioctl(UFFDIO_REGISTER)');
    validate.range('ioctl(UFFDIO_REGISTER)', start, length, pageSize);
    // With WP_ASYNC the kernel resolves write-protect faults itself and sends
    // nothing: a WP-only range never waits for this uffd's reader, so the
    // deadlock guards (view, read, discard) leave it alone.
    const waits = !(bits === REGISTER_MODE.WP && this.#enabled.has('WP_ASYNC'));
    let mask: bigint;
    try {
      mask = this.#handle.register(start, BigInt(length), bits, waits);
    } catch (error) {
      throw explainRegisterFailure(error, target);
    }
    const ioctls = ioctlNames(mask);
    this.#registrations.add({
      start, end: start + BigInt(length), pageSize, ioctls,
      modes: { missing: !!m.missing, minor: !!m.minor, wp: !!m.wp, rwp: !!m.rwp },
    }, target instanceof Mapping ? target : undefined);
    return ioctls;
  }

  /** UFFDIO_UNREGISTER. Threads waiting on faults in the range are woken. */
  unregister(target: Target): void {
    const { start, length, pageSize } = targetRange(target);
    this.#checkOpen('ioctl(UFFDIO_UNREGISTER)');
    validate.range('ioctl(UFFDIO_UNREGISTER)', start, length, pageSize);
    this.#handle.unregister(start, BigInt(length));
    this.#registrations.forget(start, start + BigInt(length));
  }

  /**
   * UFFDIO_COPY of data (its whole byteLength, a multiple of the page size) to
   * address. Returns the bytes copied. Throws EEXIST if a page was already
   * there (err.bytesDone tells how far it got).
   */
  copy(address: bigint, data: ArrayBufferView | ArrayBuffer, options?: { dontWake?: boolean; writeProtect?: boolean }): number {
    const syscall = 'ioctl(UFFDIO_COPY)';
    validate.address(address, 'address');
    if (!ArrayBuffer.isView(data) && !(data instanceof ArrayBuffer)) {
      throw argTypeError('data', 'an ArrayBuffer, a TypedArray, a DataView or a Buffer', data);
    }
    if (data.byteLength === 0 && isDetached(data)) throw argValueError('data', 'is detached (transferred or destroyed); pass a live buffer');
    const opts = validate.options<{ dontWake: boolean; writeProtect: boolean }>(options, 'options');
    this.#checkOpen(syscall);
    validate.range(syscall, address, data.byteLength, this.#registrations.pageSizeAt(address));
    const mode = (opts.dontWake ? MODE_DONTWAKE : 0n) | (opts.writeProtect ? COPY_MODE_WP : 0n);
    return this.#handle.copy(address, data, mode);
  }

  /** UFFDIO_ZEROPAGE: the range reads as zeros. Returns the bytes resolved. */
  zeroPage(address: bigint, length: number | bigint, options?: { dontWake?: boolean }): number {
    const [start, bytes] = this.#range('ioctl(UFFDIO_ZEROPAGE)', address, length);
    return this.#handle.zeroPage(start, BigInt(bytes), dontWake(options));
  }

  /** UFFDIO_CONTINUE: maps the pages already in the page cache (MINOR mode). Returns the bytes mapped. */
  continue(address: bigint, length: number | bigint, options?: { dontWake?: boolean; writeProtect?: boolean }): number {
    const [start, bytes] = this.#range('ioctl(UFFDIO_CONTINUE)', address, length);
    const opts = validate.options<{ dontWake: boolean; writeProtect: boolean }>(options, 'options');
    const mode = (opts.dontWake ? MODE_DONTWAKE : 0n) | (opts.writeProtect ? CONTINUE_MODE_WP : 0n);
    return this.#handle.continue(start, BigInt(bytes), mode);
  }

  /** UFFDIO_POISON: accesses to the range raise SIGBUS. Returns the bytes poisoned. */
  poison(address: bigint, length: number | bigint, options?: { dontWake?: boolean }): number {
    const [start, bytes] = this.#range('ioctl(UFFDIO_POISON)', address, length);
    return this.#handle.poison(start, BigInt(bytes), dontWake(options));
  }

  /** UFFDIO_WRITEPROTECT: enable or remove write protection; removing it wakes waiting threads unless dontWake. */
  writeProtect(address: bigint, length: number | bigint, enable: boolean, options?: { dontWake?: boolean }): void {
    const [start, bytes] = this.#range('ioctl(UFFDIO_WRITEPROTECT)', address, length);
    // A truthy non-boolean ('false', 0n) would otherwise arm protection the caller meant to remove.
    if (typeof enable !== 'boolean') throw argTypeError('enable', 'a boolean', enable);
    const opts = validate.options<{ dontWake: boolean }>(options, 'options');
    const mode = (enable ? WRITEPROTECT_MODE_WP : 0n) | (opts.dontWake ? WRITEPROTECT_MODE_DONTWAKE : 0n);
    this.#handle.writeProtect(start, BigInt(bytes), mode);
  }

  /**
   * UFFDIO_RWPROTECT (Linux 7.3, ranges registered with rwp): enable=true makes
   * the pages present in the range fault on any access (pages not present are
   * left alone); enable=false removes the protection, which is how an 'rwp'
   * fault is resolved, and wakes the waiting threads unless dontWake.
   * dontWake is only meaningful when removing.
   */
  rwProtect(address: bigint, length: number | bigint, enable: boolean, options?: { dontWake?: boolean }): void {
    const syscall = 'ioctl(UFFDIO_RWPROTECT)';
    const [start, bytes] = this.#range(syscall, address, length);
    if (typeof enable !== 'boolean') throw argTypeError('enable', 'a boolean', enable);
    const opts = validate.options<{ dontWake: boolean }>(options, 'options');
    if (enable && opts.dontWake) throw invalid(syscall, 'dontWake applies only when removing protection (enable=false): installing it wakes nobody');
    const mode = (enable ? RWPROTECT_MODE_RWP : 0n) | (opts.dontWake ? RWPROTECT_MODE_DONTWAKE : 0n);
    this.#handle.rwProtect(start, BigInt(bytes), mode);
  }

  /**
   * UFFDIO_SET_MODE (Linux 7.3): turns features on or off while the uffd is in
   * use, without registering again. Only RWP_ASYNC can be toggled (it needs
   * RWP enabled at open): switching to async wakes the threads waiting on RWP
   * faults, which the kernel then resolves itself.
   */
  setMode(changes: { enable?: Feature[]; disable?: Feature[] }): void {
    const syscall = 'ioctl(UFFDIO_SET_MODE)';
    const c = validate.options<{ enable: Feature[]; disable: Feature[] }>(changes, 'changes');
    const list = (names: unknown, what: string): Feature[] => {
      if (names === undefined) return [];
      if (!Array.isArray(names)) throw argTypeError(`changes.${what}`, 'an array of feature names', names);
      for (const name of names) {
        if (!(RUNTIME_FEATURES as readonly unknown[]).includes(name)) {
          throw argValueError(`changes.${what}`, `holds ${String(name)}, which cannot be changed at run time; only ${RUNTIME_FEATURES.join(', ')} can`);
        }
      }
      return names as Feature[];
    };
    const enable = list(c.enable, 'enable');
    const disable = list(c.disable, 'disable');
    this.#checkOpen(syscall);
    if (enable.some((name) => disable.includes(name))) throw invalid(syscall, 'a feature is both enabled and disabled; name each once');
    this.#handle.setMode(featureBits(enable), featureBits(disable));
    for (const name of enable) this.#enabled.add(name);
    for (const name of disable) this.#enabled.delete(name);
  }

  /** UFFDIO_MOVE: moves anonymous pages from src to dst without copying. Returns the bytes moved. */
  move(dst: bigint, src: bigint, length: number | bigint, options?: { dontWake?: boolean; allowSrcHoles?: boolean }): number {
    const syscall = 'ioctl(UFFDIO_MOVE)';
    const [start, bytes] = this.#range(syscall, dst, length);
    validate.range(syscall, validate.address(src, 'src'), bytes, this.#registrations.pageSizeAt(start));
    const opts = validate.options<{ dontWake: boolean; allowSrcHoles: boolean }>(options, 'options');
    const mode = (opts.dontWake ? MODE_DONTWAKE : 0n) | (opts.allowSrcHoles ? MOVE_MODE_ALLOW_SRC_HOLES : 0n);
    return this.#handle.move(start, src, BigInt(bytes), mode);
  }

  /** UFFDIO_WAKE: wakes threads waiting on faults in the range (after resolutions made with dontWake). */
  wake(address: bigint, length: number | bigint): void {
    const [start, bytes] = this.#range('ioctl(UFFDIO_WAKE)', address, length);
    this.#handle.wake(start, BigInt(bytes));
  }

  /**
   * The events of this uffd, in the order the kernel queued them. Reading
   * never blocks the event loop. Ending the iteration (break, return, throw)
   * closes the uffd, which wakes every waiting thread.
   */
  events(): AsyncIterableIterator<Event> {
    this.#checkOpen('userfaultfd');
    this.#stream.claim('iterator');
    const iterator = this.#stream.iterator();
    this.#handle.start();
    return iterator;
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Event> {
    return this.events();
  }

  /**
   * Serves every page fault with handler, called once per fault as it arrives
   * (without waiting for earlier handlers: faults from several threads are
   * served concurrently). The handler resolves the fault (fault.copy(),
   * fault.zero(), fault.continue(), ...), synchronously or later. A fault it
   * fails on is resolved by options.failure. Within each batch read from the
   * kernel, non-fault events reach options.onEvent before any fault is
   * handled, and a fault whose resolution was refused with EAGAIN (the
   * address space is changing and its event is not read yet), whether the
   * handler let the error through or caught it, is handed to the handler
   * again after the next batch's events. Resolves when the uffd is closed.
   */
  serve(handler: (fault: Fault) => void | Promise<void>, options?: ServeOptions): Promise<void> {
    return serving.serve(this.#host(), handler, options);
  }

  /**
   * The native fast path: a thread of the addon resolves every fault whose
   * page `source` holds (present), from the source's bytes at each range's
   * offset, with no JavaScript involved: UFFDIO_COPY for missing faults,
   * UFFDIO_CONTINUE for minor ones, UFFDIO_ZEROPAGE in `zero` ranges and on
   * pages a REMOVE event dropped. Faults on adjacent pages go in one ioctl;
   * readAhead fills the aligned chunk around each fault. Everything else
   * (pages not present yet, write-protect faults, faults outside the ranges)
   * reaches options.onMiss as a Fault, and non-fault events reach onEvent,
   * on this thread, with serve()'s failure policy. `source` null: only minor
   * faults and zero ranges are served natively. The source's memory is held
   * until the uffd is closed. Resolves when the uffd is closed.
   * See docs/performance.md.
   */
  serveFrom(source: PageSource | null, options?: ServeFromOptions): Promise<void> {
    return serveFromSource(this.#host(), source, options);
  }

  /**
   * Serves faults on this thread, blocking it: it waits for faults inside
   * the addon (no event loop involved), calls handler for each, and returns
   * when the uffd is closed (by this thread's handler, or by the thread that
   * lent it). Meant for a worker thread given a Userfaultfd.borrow(loan): a
   * busy main thread then never delays a fault. Handlers must resolve their
   * fault before returning (nothing asynchronous runs while this blocks); a
   * fault left unresolved gets the failure policy. See docs/performance.md.
   */
  serveSync(handler: (fault: Fault) => void, options?: ServeSyncOptions): void {
    serving.serveSync(this.#host(), handler, options);
  }

  /**
   * serve() without a Fault per fault: handler gets each batch the kernel
   * delivered (up to 64 faults) as one reused FaultBatch, and resolves fault
   * i with batch.copy(i, data), batch.zero(i), batch.continue(i) or
   * batch.unprotect(i) before it returns; addresses are numbers. Nothing is
   * allocated per fault, so the garbage collector has nothing to chase.
   * Faults left unresolved (or a handler that throws, reported to onError)
   * get the 'fill' policy. A fault whose resolution the kernel refused with
   * EAGAIN (an event is queued: the address space is changing), and every
   * fault left after a handler threw EAGAIN, is woken instead, unreported: it
   * faults again and comes back in a later batch, after the event.
   * Non-fault events reach onEvent first. Resolves when the uffd is closed.
   */
  serveBatch(handler: (batch: FaultBatch) => void, options?: ServeBatchOptions): Promise<void> {
    return serving.serveBatch(this.#host(), handler, options);
  }

  /** Counters of what serving has done so far (cheap: one call into the addon). */
  stats(): ServeStats {
    if (this.#closed) return readStats(this.#finalStats, this.#jsFaults, () => this.#finalStats);
    this.#handle.stats(this.#counters);
    return readStats(this.#counters, this.#jsFaults, () => {
      if (this.#closed) return this.#finalStats;
      const full = new Float64Array(STATS_LENGTH);
      this.#handle.stats(full);
      return full;
    });
  }

  /** Whether an active event stream keeps the process alive (the default), like a socket's ref(). */
  ref(): this {
    this.#checkOpen('userfaultfd');
    this.#handle.setRef(true);
    return this;
  }

  unref(): this {
    this.#checkOpen('userfaultfd');
    this.#handle.setRef(false);
    return this;
  }

  /**
   * Closes the uffd. The kernel drops its registrations and wakes every thread
   * waiting on one of its faults (they then see the memory as unregistered:
   * zeros for missing anonymous pages). The event stream ends. Idempotent.
   * A uffd adopted from another process (fromFd) is read empty first, its
   * queued messages dropped: that process keeps its own copy, so the kernel
   * wakes nothing when this one closes, and a thread of it that raised an
   * event (a madvise that queued REMOVE) waits until the event is read.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#handle.close(this.openedWith === 'adopted');
    // After close: the native thread has been joined, its counters are final.
    this.#handle.stats(this.#finalStats);
    this.#registrations.clear();
    this.#stream.end();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // ---- internals ----

  // What the serving functions (serve.ts, serve-from.ts) may use of this
  // object's internals; made once, on the first serve.
  #host(): ServeHost {
    return (this.#serveHost ??= {
      uffd: this,
      handle: this.#handle,
      view: this.#view,
      capacity: MESSAGE_CAPACITY,
      stream: this.#stream,
      claim: () => {
        this.#checkOpen('userfaultfd');
        this.#stream.claim('serve');
      },
      countJsFaults: (count) => {
        this.#jsFaults += count;
      },
      decodeContext: () => this.#decodeContext(),
      checkOpen: (syscall) => this.#checkOpen(syscall),
      pageSizeAt: (address) => this.#registrations.pageSizeAt(address),
      pageSizeAtNumber: (address) => this.#registrations.pageSizeAtNumber(address),
    });
  }

  // One context for the uffd's life: a batch allocates its events and nothing else.
  #decodeContext(): DecodeContext<Userfaultfd> {
    return (this.#context ??= {
      resolver: this as FaultResolver,
      pageSizeAt: (address: bigint) => this.#registrations.pageSizeAt(address),
      threadIds: this.enabledFeatures.has('THREAD_ID'),
      receivedAt: 0,
      // The kernel gives the child's copy of each registered mapping to the
      // child's uffd, with its modes (dup_userfaultfd): the same ranges.
      adopt: (fd: number) => Userfaultfd.fromFd(fd, { features: [...this.enabledFeatures], ranges: this.#registrations.forAdoption() }),
      remapped: (from: bigint, to: bigint, length: number) => this.#registrations.remap(from, to, length),
      unmapped: (start: bigint, end: bigint) => this.#registrations.forget(start, end),
    });
  }

  #checkOpen(syscall: string): void {
    if (this.#closed) throw libraryError('ERR_UFFD_CLOSED', syscall);
  }

  // Node's order: the arguments' types and values, then whether the uffd is
  // open, then what the kernel would refuse (alignment, EINVAL).
  #range(syscall: string, address: unknown, length: unknown): [bigint, number] {
    const start = validate.address(address, 'address');
    const bytes = validate.size(length, 'length');
    this.#checkOpen(syscall);
    validate.range(syscall, start, bytes, this.#registrations.pageSizeAt(start));
    return [start, bytes];
  }


}

function isDetached(data: ArrayBufferView | ArrayBuffer): boolean {
  try {
    new Uint8Array(ArrayBuffer.isView(data) ? data.buffer : data);
    return false;
  } catch {
    return true;
  }
}

function dontWake(options: unknown): bigint {
  return validate.options<{ dontWake: boolean }>(options, 'options').dontWake ? MODE_DONTWAKE : 0n;
}

function targetRange(target: Target): { start: bigint; length: number; pageSize: number } {
  if (target instanceof Mapping) {
    if (!target.mapped) throw libraryError('ERR_UFFD_NOT_MAPPED', 'ioctl(UFFDIO_REGISTER)');
    return { start: target.address, length: target.length, pageSize: target.pageSize };
  }
  if (target === null || typeof target !== 'object') throw argTypeError('target', 'a Mapping or { address, length }', target);
  const start = validate.address(target.address, 'target.address');
  const length = validate.size(target.length, 'target.length');
  const pageSize = target.pageSize === undefined ? systemPageSize() : validate.pageSize(target.pageSize, 'target.pageSize');
  return { start, length, pageSize };
}

// The kernel answers EINVAL for every range it cannot register; for a
// guest_memfd the reason is known and worth saying precisely.
function explainRegisterFailure(error: unknown, target: Target): unknown {
  if (!(target instanceof Mapping) || target.backing !== 'guest_memfd' || (error as UffdError).code !== 'EINVAL') return error;
  return new UffdError('EINVAL',
    'EINVAL: invalid argument, ioctl(UFFDIO_REGISTER) — the running kernel lacks userfaultfd support for guest_memfd ' +
    '(the KVM half of the "mm, kvm: allow uffd support in guest_memfd" series; Linux 6.18, 7.2 and 7.3 lack it). ' +
    'Serve this memory another way, or run a kernel with that support',
    { errno: (error as UffdError).errno, syscall: 'ioctl(UFFDIO_REGISTER)' });
}

function explainApiFailure(error: unknown, requested: bigint, userModeOnly: boolean): unknown {
  if ((error as UffdError).code !== 'EINVAL' || requested === 0n) return error;
  let offered: bigint;
  try {
    offered = native.queryFeatures(userModeOnly);
  } catch {
    return error;
  }
  const missing = [...featureNames(requested & ~offered)];
  if (missing.length === 0) return error;
  return new UffdError('ERR_UFFD_UNSUPPORTED_FEATURE',
    `ERR_UFFD_UNSUPPORTED_FEATURE: this kernel does not offer ${missing.join(', ')}; it offers ${[...featureNames(offered)].join(', ') || 'none'}. ` +
    'Leave those features out, or run on a kernel that has them (npx userfaultfd probe lists what this host supports)',
    { errno: (error as UffdError).errno, syscall: 'ioctl(UFFDIO_API)' });
}
