// A batch of page faults as one reused object, for JavaScript handlers that
// must not allocate per fault (uffd.serveBatch). Addresses are numbers (user
// addresses are below 2^53, so exact), faults are indexes into the batch, and
// the resolving methods take the index: nothing here allocates unless the
// kernel refuses a resolution. The Fault objects of serve() are the friendlier
// API; this is for handlers where each allocation shows.
import type { UffdHandle } from './binding';
import { CONTINUE_MODE_WP, COPY_MODE_WP, EVENT, MSG_SIZE, PAGEFAULT_FLAG } from './constants';
import type { UffdError } from './errors';
import type { FaultKind, Outcome } from './events';
import { systemPageSize, zeroBytes } from './memory';
import * as validate from './validate';

const FLAG_WRITE = Number(PAGEFAULT_FLAG.WRITE);
const FLAG_WP = Number(PAGEFAULT_FLAG.WP);
const FLAG_MINOR = Number(PAGEFAULT_FLAG.MINOR);
const FLAG_RWP = Number(PAGEFAULT_FLAG.RWP);
const TWO_32 = 2 ** 32;
const NO_MODE = 0n;

export class FaultBatch {
  readonly #view: DataView;
  readonly #handle: UffdHandle;
  readonly #pageSizeAt: (address: number) => number;
  // Message index of each fault, whether it has been resolved, and whether
  // the kernel refused its resolution with EAGAIN.
  readonly #at: Uint8Array;
  readonly #resolved: Uint8Array;
  readonly #refused: Uint8Array;
  #length = 0;

  /** @internal Made by Userfaultfd.serveBatch. */
  constructor(view: DataView, capacity: number, handle: UffdHandle, pageSizeAt: (address: number) => number) {
    this.#view = view;
    this.#handle = handle;
    this.#pageSizeAt = pageSizeAt;
    this.#at = new Uint8Array(capacity);
    this.#resolved = new Uint8Array(capacity);
    this.#refused = new Uint8Array(capacity);
  }

  /** @internal Takes the faults among the first `count` messages of the buffer. */
  load(count: number): void {
    let n = 0;
    for (let i = 0; i < count; i++) {
      if (this.#view.getUint8(i * MSG_SIZE) === EVENT.PAGEFAULT) {
        this.#at[n] = i;
        this.#resolved[n] = 0;
        this.#refused[n] = 0;
        n++;
      }
    }
    this.#length = n;
  }

  /** How many faults this batch holds. */
  get length(): number {
    return this.#length;
  }

  /** The faulting address (exact with EXACT_ADDRESS, else rounded down to a base page). */
  address(i: number): number {
    const at = this.#offset(i) + 16;
    const high = this.#view.getUint32(at + 4, true);
    // Above 2^53 a number is not exact (5-level page tables can map there): use serve().
    if (high >= 0x200000) throw new RangeError('the fault address is above 2^53; serve faults there with serve()');
    return high * TWO_32 + this.#view.getUint32(at, true);
  }

  /** The page size of the registered range the fault is in. */
  pageSize(i: number): number {
    return this.#pageSizeAt(this.address(i));
  }

  /** The start of the faulting page, in its range's page size. */
  pageAddress(i: number): number {
    const address = this.address(i);
    return address - (address % this.#pageSizeAt(address));
  }

  kind(i: number): FaultKind {
    const flags = this.#flags(i);
    return flags & FLAG_RWP ? 'rwp' : flags & FLAG_WP ? 'wp' : flags & FLAG_MINOR ? 'minor' : 'missing';
  }

  write(i: number): boolean {
    return (this.#flags(i) & FLAG_WRITE) !== 0;
  }

  resolved(i: number): boolean {
    return this.#resolved[this.#check(i)] === 1;
  }

  /**
   * UFFDIO_COPY of data (data.byteLength bytes: one page or more) to the
   * faulting page; with writeProtect, the page comes in write-protected (the
   * range registered { wp: true }), as Fault.copy(data, { writeProtect }).
   * Pass one options object kept for the purpose: nothing is allocated then.
   */
  copy(i: number, data: ArrayBufferView, options?: { writeProtect?: boolean }): Outcome {
    return this.#resolve(i, 0, data, this.#writeProtect(options, COPY_MODE_WP));
  }

  /** Zeros for the faulting page (UFFDIO_ZEROPAGE; a copy of zeros on hugetlb). */
  zero(i: number): Outcome {
    return this.#resolve(i, 1, undefined);
  }

  /** UFFDIO_CONTINUE: maps the page cache's page (minor faults); writeProtect as for copy(). */
  continue(i: number, options?: { writeProtect?: boolean }): Outcome {
    return this.#resolve(i, 2, undefined, this.#writeProtect(options, CONTINUE_MODE_WP));
  }

  /**
   * Removes the protection that faulted (UFFDIO_WRITEPROTECT for wp faults,
   * UFFDIO_RWPROTECT for rwp faults) and wakes the thread, as Fault.unprotect().
   */
  unprotect(i: number): Outcome {
    const page = this.pageAddress(i);
    const size = this.#pageSizeAt(page);
    try {
      if (this.kind(i) === 'rwp') this.#handle.rwProtect(page, size, NO_MODE);
      else this.#handle.writeProtect(page, size, NO_MODE);
    } catch (error) {
      if ((error as UffdError).code === 'EAGAIN') this.#refused[i] = 1;
      throw error;
    }
    this.#resolved[i] = 1;
    return 'done';
  }

  /**
   * @internal serve()'s 'fill' policy, for every fault the handler left
   * unresolved; returns how many got it. A fault whose resolution the kernel
   * refused with EAGAIN, and every fault left when `changing` (the handler
   * threw EAGAIN), is only woken: an event is queued and the address space is
   * changing, so a fill could land zeros where the handler's bytes belong as
   * soon as the kernel allows it again. Woken, the thread faults again, and
   * its new message comes after the event's.
   */
  fillUnresolved(changing: boolean): number {
    let left = 0;
    for (let i = 0; i < this.#length; i++) {
      if (this.#resolved[i]) continue;
      if (changing || this.#refused[i]) {
        this.#handle.wake(this.pageAddress(i), this.pageSize(i));
        continue;
      }
      left++;
      const kind = this.kind(i);
      try {
        if (kind === 'minor') this.continue(i);
        // A protection fault has its page: filling it would only find it
        // there (EEXIST) and the thread would fault again.
        else if (kind === 'wp' || kind === 'rwp') this.unprotect(i);
        else this.zero(i);
      } catch {
        // Whatever refused it, the thread must not hang: it faults again.
        this.#handle.wake(this.pageAddress(i), this.pageSize(i));
      }
    }
    return left;
  }

  #check(i: number): number {
    if (!(i >= 0 && i < this.#length)) throw new RangeError(`fault index ${i} is outside the batch (length ${this.#length})`);
    return i;
  }

  #offset(i: number): number {
    return this.#at[this.#check(i)]! * MSG_SIZE;
  }

  #flags(i: number): number {
    return this.#view.getUint32(this.#offset(i) + 8, true);
  }

  #writeProtect(options: { writeProtect?: boolean } | undefined, mode: bigint): bigint {
    if (options === undefined) return NO_MODE;
    return validate.flag(validate.options<{ writeProtect: boolean }>(options, 'options').writeProtect, 'options.writeProtect') ? mode : NO_MODE;
  }

  #resolve(i: number, how: 0 | 1 | 2, data: ArrayBufferView | undefined, mode = NO_MODE): Outcome {
    const page = this.pageAddress(i);
    const size = this.#pageSizeAt(page);
    try {
      if (how === 0) this.#handle.copy(page, data!, mode);
      else if (how === 2) this.#handle.continue(page, size, mode);
      else if (size === systemPageSize()) this.#handle.zeroPage(page, size, NO_MODE);
      else this.#handle.copy(page, zeroBytes(size), NO_MODE);
      this.#resolved[i] = 1;
      return 'done';
    } catch (error) {
      const code = (error as UffdError).code;
      if (code === 'EAGAIN') this.#refused[i] = 1;
      if (code !== 'EEXIST') throw error;
      // Another resolution put the page there first; this thread still waits for a wake.
      this.#handle.wake(page, size);
      this.#resolved[i] = 1;
      return 'exists';
    }
  }
}
