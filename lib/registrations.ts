// The ranges registered on one uffd, as this side knows them: faults learn
// their page size from them, lend() passes them on, serveFrom() serves them
// by default. The kernel keeps the real registrations; this is the record of
// what UFFDIO_REGISTER answered, or of what another thread or process said it
// registered (adopted ranges).
import type { Ioctl } from './constants';
import { argTypeError } from './errors';
import { type Mapping, systemPageSize } from './memory';
import * as validate from './validate';

export interface RegisterModes {
  /** Faults on pages that are not there (resolve with copy, zeroPage). register() without modes registers this mode alone; given modes, only those set to true. */
  missing?: boolean;
  /** Faults on pages in the page cache but not mapped (shmem, hugetlbfs; resolve with continue). */
  minor?: boolean;
  /** Faults on writes to write-protected pages (resolve with writeProtect(..., false)). */
  wp?: boolean;
  /**
   * Linux 7.3, feature RWP: faults on any access, read or write, to pages made
   * read-write protected with rwProtect(..., true) (resolve with
   * rwProtect(..., false)). Cannot be combined with wp: both use the same PTE bit.
   */
  rwp?: boolean;
}

export interface Registration {
  readonly start: bigint;
  readonly end: bigint;
  readonly pageSize: number;
  readonly modes: Readonly<Required<RegisterModes>>;
  /** The ioctls the kernel allows on this range (UFFDIO_REGISTER's answer). */
  readonly ioctls: ReadonlySet<Ioctl>;
}

/** A range another process registered on an adopted uffd. */
export interface AdoptedRange {
  address: bigint;
  length: number | bigint;
  pageSize?: number;
  modes?: RegisterModes;
}

export class Registrations {
  #list: Registration[] = [];
  // The Mapping each registration of one was made on. Held, so that garbage
  // collection cannot unmap memory a uffd still serves; and asked, because
  // unmapping ends the kernel's registration without telling this record.
  #mappings = new WeakMap<Registration, Mapping>();

  get list(): readonly Registration[] {
    this.#dropUnmapped();
    return this.#list;
  }

  /** Records a new registration over [start, end), replacing what was recorded there. */
  add(registration: Registration, mapping?: Mapping): void {
    this.forget(registration.start, registration.end);
    this.#list.push(registration);
    if (mapping) this.#mappings.set(registration, mapping);
  }

  #dropUnmapped(): void {
    if (this.#list.some((r) => this.#mappings.get(r)?.mapped === false)) {
      this.#list = this.#list.filter((r) => this.#mappings.get(r)?.mapped !== false);
    }
  }

  /**
   * Checks ranges another process or thread says it registered (name: the
   * argument they came in), without recording them: a uffd is adopted or
   * borrowed only once its ranges are known to be good.
   */
  static checkAdopted(ranges: unknown, name: string): Registration[] {
    if (!Array.isArray(ranges)) throw argTypeError(name, 'an array of { address, length, pageSize?, modes? }', ranges);
    return (ranges as AdoptedRange[]).map((range, i) => {
      const at = `${name}[${i}]`;
      if (range === null || typeof range !== 'object') throw argTypeError(at, 'an object { address, length, pageSize?, modes? }', range);
      const start = validate.address(range.address, `${at}.address`);
      const length = validate.size(range.length, `${at}.length`);
      const pageSize = range.pageSize === undefined ? systemPageSize() : validate.pageSize(range.pageSize, `${at}.pageSize`);
      validate.range('userfaultfd', start, length, pageSize);
      return {
        start, end: start + BigInt(length), pageSize, ioctls: new Set<Ioctl>(),
        modes: { missing: range.modes?.missing ?? true, minor: range.modes?.minor ?? false, wp: range.modes?.wp ?? false, rwp: range.modes?.rwp ?? false },
      };
    });
  }

  // Records ranges another process or thread registered (checked by
  // checkAdopted): faults there learn their page size and modes from them.
  adopt(ranges: readonly Registration[]): void {
    this.#list.push(...ranges);
  }

  /** The ranges as another holder of the uffd adopts them (lend(), a fork's uffd). */
  forAdoption(): AdoptedRange[] {
    return this.#list.map((r) => ({ address: r.start, length: r.end - r.start, pageSize: r.pageSize, modes: { ...r.modes } }));
  }

  // With EVENT_REMAP the kernel keeps the moved mapping registered at its new
  // address; under MREMAP_DONTUNMAP the old one stays registered too, and the
  // event does not say which, so the old record is kept (an UNMAP event, or
  // unregister, drops it).
  /** Records at [to, to+length) a copy of what is registered in [from, from+length). */
  remap(from: bigint, to: bigint, length: number): void {
    const end = from + BigInt(length);
    const moved = this.#list
      .filter((r) => r.start < end && r.end > from)
      .map((r) => ({ ...r, start: (r.start > from ? r.start : from) - from + to, end: (r.end < end ? r.end : end) - from + to }));
    this.forget(to, to + BigInt(length));
    this.#list.push(...moved);
  }

  // Drops the parts of registrations inside [start, end).
  forget(start: bigint, end: bigint): void {
    const kept: Registration[] = [];
    for (const r of this.#list) {
      if (r.end <= start || r.start >= end) {
        kept.push(r);
        continue;
      }
      const mapping = this.#mappings.get(r);
      for (const part of [r.start < start && { ...r, end: start }, r.end > end && { ...r, start: end }]) {
        if (!part) continue;
        kept.push(part);
        if (mapping) this.#mappings.set(part, mapping);
      }
    }
    this.#list = kept;
  }

  clear(): void {
    this.#list = [];
  }

  /** The page size of the registration holding address (the system's outside every registration). */
  pageSizeAt(address: bigint): number {
    for (const r of this.list) if (address >= r.start && address < r.end) return r.pageSize;
    return systemPageSize();
  }

  /** pageSizeAt for a number address (FaultBatch's). */
  pageSizeAtNumber(address: number): number {
    for (const r of this.list) if (address >= Number(r.start) && address < Number(r.end)) return r.pageSize;
    return systemPageSize();
  }
}

/** The first address of [start, end) no registration in list covers, or undefined when they cover it all. */
export function firstUncovered(list: readonly Registration[], start: bigint, end: bigint): bigint | undefined {
  let at = start;
  for (let r; at < end && (r = list.find((x) => x.start <= at && at < x.end)); ) at = r.end;
  return at < end ? at : undefined;
}
