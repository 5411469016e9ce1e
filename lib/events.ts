// Typed userfaultfd events, decoded once from the kernel's struct uffd_msg.
// A page fault is a Fault object that can resolve itself; the other events
// (non-cooperative mode, enabled by the EVENT_* features) are plain records.
import os from 'node:os';
import { EVENT, MSG_SIZE, PAGEFAULT_FLAG } from './constants';
import type { UffdError } from './errors';
import { systemPageSize, zeroBytes } from './memory';

/** missing: no page; minor: in the page cache, not mapped; wp: a write to a write-protected page; rwp: any access to a read-write-protected page (Linux 7.3). */
export type FaultKind = 'missing' | 'minor' | 'wp' | 'rwp';

/** The resolving operations a Fault needs from the uffd that delivered it. */
export interface FaultResolver {
  copy(address: bigint, data: ArrayBufferView | ArrayBuffer, options?: { writeProtect?: boolean }): number;
  zeroPage(address: bigint, length: number): number;
  continue(address: bigint, length: number, options?: { writeProtect?: boolean }): number;
  poison(address: bigint, length: number): number;
  move(dst: bigint, src: bigint, length: number): number;
  writeProtect(address: bigint, length: number, enable: boolean): void;
  rwProtect(address: bigint, length: number, enable: boolean): void;
  wake(address: bigint, length: number): void;
}

/** What a resolution did: 'done', or 'exists' when the page was already there (the faulting thread has been woken). */
export type Outcome = 'done' | 'exists';

function codeOf(error: unknown): string | undefined {
  return (error as UffdError | null | undefined)?.code;
}

let expireFault: (fault: Fault) => void;

/** @internal serve()'s timeoutMs: after the failure policy resolved the fault, its resolving methods do nothing and return 'exists'. */
export function expire(fault: Fault): void {
  expireFault(fault);
}

let refusedFault: (fault: Fault) => boolean;

/** @internal Whether the kernel refused the fault's last resolution with EAGAIN (an event is queued): serve() tries it again, caught or not. */
export function refused(fault: Fault): boolean {
  return refusedFault(fault);
}

export class Fault {
  readonly type = 'pagefault' as const;
  readonly kind: FaultKind;
  readonly write: boolean;
  /** The faulting address: exact with the EXACT_ADDRESS feature, else rounded down to a base page. */
  readonly address: bigint;
  /** The start of the page that faulted, in the registered range's page size. */
  readonly pageAddress: bigint;
  readonly pageSize: number;
  /** The faulting thread's id, with the THREAD_ID feature. */
  readonly tid: number | undefined;
  /** performance.now() when the batch holding this fault was read from the kernel. */
  readonly receivedAt: number;
  #resolver: FaultResolver;
  #resolved = false;
  // Resolved by the failure policy once its handler's time ran out: the
  // handler's late resolutions must not act (a copy would overwrite a poison
  // marker, which the kernel allows, and undo the policy).
  #expired = false;
  #refused = false;

  static {
    expireFault = (fault) => {
      fault.#expired = true;
    };
    refusedFault = (fault) => fault.#refused;
  }

  constructor(resolver: FaultResolver, kind: FaultKind, write: boolean, address: bigint, pageSize: number, tid: number | undefined, receivedAt: number) {
    this.#resolver = resolver;
    this.kind = kind;
    this.write = write;
    this.address = address;
    this.pageSize = pageSize;
    this.pageAddress = address - (address % BigInt(pageSize));
    this.tid = tid;
    this.receivedAt = receivedAt;
  }

  /** Whether one of the resolving methods has succeeded (or found the page there). */
  get resolved(): boolean {
    return this.#resolved;
  }

  /**
   * UFFDIO_COPY of data to the faulting page (data.byteLength bytes from
   * pageAddress: one page, or several to fill pages ahead of the fault).
   */
  copy(data: ArrayBufferView | ArrayBuffer, options?: { writeProtect?: boolean }): Outcome {
    return this.#resolve(() => this.#resolver.copy(this.pageAddress, data, options));
  }

  /** The page reads as zeros: UFFDIO_ZEROPAGE, or a copy of zeros on hugetlb (which has no ZEROPAGE). */
  zero(): Outcome {
    if (this.pageSize !== systemPageSize()) return this.#resolve(() => this.#resolver.copy(this.pageAddress, zeroBytes(this.pageSize)));
    return this.#resolve(() => this.#resolver.zeroPage(this.pageAddress, this.pageSize));
  }

  /** UFFDIO_CONTINUE: map the page that is already in the page cache (MINOR faults). */
  continue(options?: { writeProtect?: boolean }): Outcome {
    return this.#resolve(() => this.#resolver.continue(this.pageAddress, this.pageSize, options));
  }

  /** UFFDIO_MOVE: moves the anonymous page at src (in the faulting process) to the faulting page. */
  move(src: bigint): Outcome {
    return this.#resolve(() => this.#resolver.move(this.pageAddress, src, this.pageSize));
  }

  /** UFFDIO_POISON: the faulting thread, and any later access, gets SIGBUS. */
  poison(): Outcome {
    return this.#resolve(() => this.#resolver.poison(this.pageAddress, this.pageSize));
  }

  /** Removes the protection that faulted (write protection for wp faults, read-write protection for rwp faults) and wakes the thread. */
  unprotect(): Outcome {
    if (this.kind === 'rwp') return this.#resolve(() => this.#resolver.rwProtect(this.pageAddress, this.pageSize, false));
    return this.#resolve(() => this.#resolver.writeProtect(this.pageAddress, this.pageSize, false));
  }

  /** UFFDIO_WAKE: wakes the faulting thread without resolving; it faults again unless someone else resolved the page. */
  wake(): void {
    this.#resolver.wake(this.pageAddress, this.pageSize);
  }

  /**
   * UFFDIO_WAKE for a fault the kernel now handles by itself, because its
   * range was unregistered (or its page made present some other way) since
   * the fault was queued: the woken thread retries its access and does not
   * fault to this uffd again. Counts as a resolution.
   */
  release(): Outcome {
    return this.#resolve(() => this.#resolver.wake(this.pageAddress, this.pageSize));
  }

  #resolve(operation: () => unknown): Outcome {
    if (this.#expired) return 'exists';
    try {
      operation();
      this.#resolved = true;
      return 'done';
    } catch (error) {
      this.#refused = codeOf(error) === 'EAGAIN';
      if (codeOf(error) === 'ENOENT') {
        // The range was unregistered or unmapped since the fault: nothing can
        // resolve it now, but the thread must not wait forever; woken, it
        // retries against whatever is mapped there now.
        try {
          this.#resolver.wake(this.pageAddress, this.pageSize);
        } catch {
          // The error that matters is the one thrown below.
        }
      }
      if (codeOf(error) !== 'EEXIST') throw error;
      // Another resolution put the page there first; this thread's fault
      // still waits for a wake.
      this.#resolver.wake(this.pageAddress, this.pageSize);
      this.#resolved = true;
      return 'exists';
    }
  }
}

export interface ForkEvent<U> {
  readonly type: 'fork';
  /** The child's uffd, already open in this process. */
  readonly uffd: U;
}
export interface RemapEvent {
  readonly type: 'remap';
  readonly from: bigint;
  readonly to: bigint;
  readonly length: number;
}
export interface RemoveEvent {
  readonly type: 'remove';
  readonly start: bigint;
  readonly end: bigint;
}
export interface UnmapEvent {
  readonly type: 'unmap';
  readonly start: bigint;
  readonly end: bigint;
}
export type UffdEvent<U> = Fault | ForkEvent<U> | RemapEvent | RemoveEvent | UnmapEvent;

const LITTLE_ENDIAN = os.endianness() === 'LE';
const FLAG_WRITE = Number(PAGEFAULT_FLAG.WRITE);
const FLAG_WP = Number(PAGEFAULT_FLAG.WP);
const FLAG_MINOR = Number(PAGEFAULT_FLAG.MINOR);
const FLAG_RWP = Number(PAGEFAULT_FLAG.RWP);

export interface DecodeContext<U> {
  resolver: FaultResolver;
  pageSizeAt(address: bigint): number;
  threadIds: boolean;
  receivedAt: number;
  adopt(fd: number): U;
  /** The kernel moved registrations with a mapping (REMAP) or dropped them (UNMAP): the record follows before later faults decode. */
  remapped(from: bigint, to: bigint, length: number): void;
  unmapped(start: bigint, end: bigint): void;
}

/** Decodes message `index` of a batch the addon wrote into `view`. */
export function decode<U>(view: DataView, index: number, context: DecodeContext<U>): UffdEvent<U> | undefined {
  const at = index * MSG_SIZE;
  const event = view.getUint8(at);
  const arg = at + 8;
  const u64 = (offset: number): bigint => view.getBigUint64(arg + offset, LITTLE_ENDIAN);
  switch (event) {
    case EVENT.PAGEFAULT: {
      // The flags fit in the low word: read them as a number, not a bigint.
      const flags = view.getUint32(arg + (LITTLE_ENDIAN ? 0 : 4), LITTLE_ENDIAN);
      const address = u64(8);
      const kind: FaultKind = flags & FLAG_RWP ? 'rwp' : flags & FLAG_WP ? 'wp' : flags & FLAG_MINOR ? 'minor' : 'missing';
      const tid = context.threadIds ? view.getUint32(arg + 16, LITTLE_ENDIAN) : undefined;
      return new Fault(context.resolver, kind, (flags & FLAG_WRITE) !== 0, address, context.pageSizeAt(address), tid, context.receivedAt);
    }
    case EVENT.FORK:
      return { type: 'fork', uffd: context.adopt(view.getUint32(arg, LITTLE_ENDIAN)) };
    case EVENT.REMAP: {
      const remap: RemapEvent = { type: 'remap', from: u64(0), to: u64(8), length: Number(u64(16)) };
      context.remapped(remap.from, remap.to, remap.length);
      return remap;
    }
    case EVENT.REMOVE:
      return { type: 'remove', start: u64(0), end: u64(8) };
    case EVENT.UNMAP: {
      const unmap: UnmapEvent = { type: 'unmap', start: u64(0), end: u64(8) };
      context.unmapped(unmap.start, unmap.end);
      return unmap;
    }
    default:
      // A kernel newer than this library may add events: skip them.
      return undefined;
  }
}
