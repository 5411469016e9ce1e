// Memory for userfaultfd to manage: memfds (shmem, or hugetlbfs with huge
// pages), shared mappings of them at chosen offsets, and anonymous private
// mappings. Mappings are unmapped by unmap() or, failing that, when garbage
// collected. Any thread of the process can reach a mapping by address
// (attachView), which is how a worker touches registered memory while
// another thread serves its faults.
import fs from 'node:fs';
import { native } from './binding';
import { GUEST_MEMFD_FLAG } from './constants';
import { UffdError, argRangeError, argTypeError, argValueError, illegalConstructor, invalid, libraryError } from './errors';
import * as validate from './validate';


/** false: ordinary pages. true: the system's default huge page size. A number: that huge page size in bytes. */
export type HugePages = boolean | number;

export function systemPageSize(): number {
  return native.systemPageSize();
}

let zeros = new Uint8Array(0);

/** size bytes of zeros, to copy where UFFDIO_ZEROPAGE does not apply (hugetlb). Shared: never write to it. */
export function zeroBytes(size: number): Uint8Array {
  if (zeros.length < size) zeros = new Uint8Array(size);
  return zeros.subarray(0, size);
}

/** The default huge page size from /proc/meminfo (Hugepagesize), or 0 when the kernel has none. */
export function defaultHugePageSize(): number {
  const match = /^Hugepagesize:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return match ? Number(match[1]) * 1024 : 0;
}

// The encoding memfd_create and mmap take: log2 of the size, 1 for the default.
function hugePageLog2(hugePages: unknown): number {
  if (hugePages === undefined || hugePages === false) return 0;
  if (hugePages === true) return 1;
  // A size in bytes: a power of two above the base page size, whose log2
  // fits the 6 bits memfd_create and mmap give it (MFD_HUGE_MASK, MAP_HUGE_MASK).
  const log2 = typeof hugePages === 'number' ? Math.log2(hugePages) : Number.NaN;
  if (Number.isInteger(log2) && hugePages as number > systemPageSize() && log2 < 64) return log2;
  throw argValueError('hugePages', `must be a boolean or a power-of-two huge page size in bytes, larger than the ${systemPageSize()}-byte base page. Received ${String(hugePages)}`);
}

// The page size hugePageLog2's encoding stands for.
function pageSizeOf(log2: number): number {
  return log2 === 0 ? systemPageSize() : log2 === 1 ? defaultHugePageSize() : 2 ** log2;
}

// Memory of this library is mapped whole: its length a non-zero multiple of its page size.
function checkLength(bytes: number, pageSize: number, syscall: string, what: string): void {
  // pageSize 0: the kernel has no huge pages, and says so itself.
  if (bytes === 0 || (pageSize > 0 && !validate.isAligned(bytes, pageSize))) {
    throw invalid(syscall, `${what} ${bytes} must be a non-zero multiple of the page size (${pageSize} bytes)`);
  }
}

const CONSTRUCT = Symbol('Mapping');
// Mapping's constructor, for Memfd.map (set by Mapping's static block).
let mapping: (address: bigint, length: number, pageSize: number, backing: Backing) => Mapping;

const unmapOnCollect = new FinalizationRegistry<{ address: bigint; length: number }>(({ address, length }) => {
  native.unmap(address, length, false);
});
const closeOnCollect = new FinalizationRegistry<number>((fd) => native.closeFd(fd));

/** What memory is behind a mapping. */
export type Backing = 'anonymous' | 'memfd' | 'hugetlbfs' | 'guest_memfd' | 'file';

export class Mapping {
  readonly address: bigint;
  readonly length: number;
  /** The page size that governs alignment in this mapping (a huge page size for hugetlb memory). */
  readonly pageSize: number;
  /** 'anonymous': private anonymous memory; 'shared': a shared mapping of a memfd or guest_memfd. */
  readonly kind: 'anonymous' | 'shared';
  readonly backing: Backing;
  readonly readOnly: boolean;
  #mapped = true;

  // A Mapping unmaps its range when collected, so one made by a caller over
  // memory it does not own would take that memory (and its table entry) away.
  private constructor(key: symbol, address: bigint, length: number, pageSize: number, backing: Backing) {
    if (key !== CONSTRUCT) throw illegalConstructor('Mapping.anonymous(), Mapping.file() or memfd.map()');
    this.address = address;
    this.length = length;
    this.pageSize = pageSize;
    this.kind = backing === 'anonymous' ? 'anonymous' : 'shared';
    this.backing = backing;
    this.readOnly = backing === 'file';
    unmapOnCollect.register(this, { address, length }, this);
  }

  static {
    mapping = (address, length, pageSize, backing) => new Mapping(CONSTRUCT, address, length, pageSize, backing);
  }

  /** An anonymous private mapping of `length` bytes (a multiple of the page size). */
  static anonymous(length: number | bigint, options?: { hugePages?: HugePages }): Mapping {
    const bytes = validate.size(length, 'length');
    const log2 = hugePageLog2(validate.options<{ hugePages: HugePages }>(options, 'options').hugePages);
    const pageSize = pageSizeOf(log2);
    checkLength(bytes, pageSize, 'mmap', 'length');
    return mapping(native.mapAnonymous(bytes, log2), bytes, pageSize, 'anonymous');
  }

  /**
   * A read-only shared mapping of a file (or [offset, offset+length) of it):
   * a page source, such as a snapshot's memory file. Its pages come from the
   * page cache on first access.
   */
  static file(path: string, options?: { offset?: number; length?: number }): Mapping {
    if (typeof path !== 'string') throw argValueError('path', 'must be a string');
    const opts = validate.options<{ offset: number; length: number }>(options, 'options');
    const fd = fs.openSync(path, 'r');
    try {
      return Mapping.fileDescriptor(fd, opts);
    } finally {
      fs.closeSync(fd);
    }
  }

  /** @internal Mapping.file() of an open descriptor, which stays open (FilePageSource keeps it for pread). */
  static fileDescriptor(fd: number, opts: { offset?: number; length?: number }): Mapping {
    const size = fs.fstatSync(fd).size;
    const offset = validate.size(opts.offset ?? 0, 'options.offset');
    const length = opts.length === undefined ? size - offset : validate.size(opts.length, 'options.length');
    const pageSize = systemPageSize();
    if (!validate.isAligned(offset, pageSize) || length <= 0 || offset + length > size) {
      throw invalid('mmap', `[${offset}, ${offset + length}) must be a non-empty range of the ${size}-byte file, starting at a page boundary`);
    }
    return mapping(native.mapShared(fd, offset, length, true), length, pageSize, 'file');
  }

  get mapped(): boolean {
    return this.#mapped;
  }

  get end(): bigint {
    return this.address + BigInt(this.length);
  }

  /**
   * A Uint8Array over [offset, offset+length) of the mapping. Touching it
   * faults like any access. Refused (ERR_UFFD_WOULD_DEADLOCK) on the thread
   * that serves faults for this memory: pass `address` to a worker and use
   * attachView() there instead.
   */
  view(offset: number = 0, length?: number): Uint8Array {
    const [start, bytes] = this.#slice(offset, length);
    return new Uint8Array(native.view(start, bytes, 'view'));
  }

  /** A copy of [offset, offset+length). On the serving thread, only if every page is present already. */
  read(offset: number = 0, length?: number): Buffer {
    const [start, bytes] = this.#slice(offset, length);
    return native.read(start, bytes);
  }

  /**
   * Gives [offset, offset+length) back to the kernel: MADV_DONTNEED for
   * anonymous memory, MADV_REMOVE for shared memory (the file's pages are freed
   * too). The next access faults as missing. With UFFD_FEATURE_EVENT_REMOVE the
   * uffd's reader gets a 'remove' event, and this call waits until it has read
   * it, so it is refused on the thread that serves this memory.
   */
  discard(offset: number = 0, length?: number): void {
    const [start, bytes] = this.#slice(offset, length);
    if (!validate.isAligned(start, this.pageSize) || !validate.isAligned(bytes, this.pageSize)) {
      throw invalid('madvise', `offset and length must be multiples of the page size (${this.pageSize} bytes)`);
    }
    native.discard(start, bytes, this.kind === 'shared');
  }

  /**
   * Unmaps now. A view another thread still holds reads zeros from then on,
   * until it is collected. With UFFD_FEATURE_EVENT_UNMAP the uffd's reader
   * gets an 'unmap' event and this call waits until it has read it, so it is
   * refused (ERR_UFFD_WOULD_DEADLOCK) on the thread that serves this memory.
   */
  unmap(): void {
    if (!this.#mapped) return;
    native.unmap(this.address, this.length, true);
    this.#mapped = false;
    unmapOnCollect.unregister(this);
  }

  // Offsets past the end are the caller's argument error, as for a Buffer
  // (ERR_OUT_OF_RANGE), and come before ERR_UFFD_NOT_MAPPED, as argument errors do.
  #slice(offset: unknown, length: unknown): [bigint, number] {
    const start = validate.size(offset, 'offset');
    if (start > this.length) throw argRangeError('offset', `<= ${this.length} (the mapping's length)`, start);
    const bytes = length === undefined ? this.length - start : validate.size(length, 'length');
    if (bytes > this.length - start) throw argRangeError('length', `<= ${this.length - start} (the mapping's length minus offset)`, bytes);
    if (!this.#mapped) throw libraryError('ERR_UFFD_NOT_MAPPED', 'view');
    return [this.address + BigInt(start), bytes];
  }
}

/**
 * A Uint8Array over memory a Mapping of this process holds, found by address:
 * from any thread, a worker included. Throws ERR_UFFD_NOT_MAPPED if no live
 * mapping holds the whole range, and ERR_UFFD_WOULD_DEADLOCK on the thread
 * that serves its faults. The mapping stays valid while the view is alive.
 */
export function attachView(address: bigint, length: number | bigint): Uint8Array {
  return new Uint8Array(native.view(validate.address(address, 'address'), validate.size(length, 'length'), 'attachView'));
}

/**
 * The pages of [address, address+length) written since they were
 * write-protected, for a range registered in WP mode on a uffd with the
 * WP_ASYNC feature (PAGEMAP_SCAN, Linux 6.7): the dirty pages, for live
 * migration. With rearm (the default) they are write-protected again in the
 * same walk, so the next scan reports only later writes. pid: another process
 * whose memory this is (default: this one).
 */
export function scanWritten(address: bigint, length: number | bigint, options?: { rearm?: boolean; pid?: number }): { start: bigint; end: bigint }[] {
  const start = validate.address(address, 'address');
  const bytes = validate.size(length, 'length');
  const opts = validate.options<{ rearm: boolean; pid: number }>(options, 'options');
  const pid = opts.pid === undefined ? 0 : validate.size(opts.pid, 'options.pid');
  return pairs(native.scanWritten(pid, start, bytes, opts.rearm ?? true));
}

/**
 * The pages of [address, address+length) accessed (read or written) since
 * they were read-write protected, for a range registered in RWP mode on a
 * uffd with RWP_ASYNC (PAGEMAP_SCAN's PAGE_IS_ACCESSED, Linux 7.3): the
 * working set. Only pages present when protected are tracked; re-arm with
 * rwProtect(..., true). pid: another process whose memory this is.
 */
export function scanAccessed(address: bigint, length: number | bigint, options?: { pid?: number }): { start: bigint; end: bigint }[] {
  const start = validate.address(address, 'address');
  const bytes = validate.size(length, 'length');
  const opts = validate.options<{ pid: number }>(options, 'options');
  const pid = opts.pid === undefined ? 0 : validate.size(opts.pid, 'options.pid');
  return pairs(native.scanAccessed(pid, start, bytes));
}

function pairs(flat: BigUint64Array): { start: bigint; end: bigint }[] {
  const ranges: { start: bigint; end: bigint }[] = [];
  for (let i = 0; i < flat.length; i += 2) ranges.push({ start: flat[i]!, end: flat[i + 1]! });
  return ranges;
}

/**
 * A memory file to map shared: a memfd (shmem, or hugetlbfs with huge pages),
 * or a KVM guest_memfd.
 */
export class Memfd {
  readonly fd: number;
  readonly size: number;
  /** The file's page size: the huge page size on hugetlbfs. */
  readonly pageSize: number;
  readonly name: string;
  readonly backing: 'memfd' | 'hugetlbfs' | 'guest_memfd';
  #open = true;

  private constructor(fd: number, size: number, pageSize: number, name: string, backing: 'memfd' | 'hugetlbfs' | 'guest_memfd') {
    this.fd = fd;
    this.size = size;
    this.pageSize = pageSize;
    this.name = name;
    this.backing = backing;
    closeOnCollect.register(this, fd, this);
  }

  /**
   * memfd_create + ftruncate. size is a non-zero multiple of the page size:
   * the huge page size with hugePages, where the memfd lives on hugetlbfs.
   */
  static create(size: number | bigint, options?: { name?: string; hugePages?: HugePages }): Memfd {
    const bytes = validate.size(size, 'size');
    const opts = validate.options<{ name: string; hugePages: HugePages }>(options, 'options');
    const name = opts.name ?? 'userfaultfd';
    if (typeof name !== 'string') throw argTypeError('options.name', 'of type string', name);
    // memfd_create(2) takes a C string of at most 249 bytes (NAME_MAX minus its "memfd:" prefix):
    // a NUL would cut it short, a longer UTF-8 name is EINVAL with no reason given.
    if (Buffer.byteLength(name) > 249 || name.includes('\0')) {
      throw argValueError('options.name', `must be at most 249 bytes of UTF-8 with no NUL. Received ${Buffer.byteLength(name)} bytes${name.includes('\0') ? ' with a NUL' : ''}`);
    }
    const log2 = hugePageLog2(opts.hugePages);
    checkLength(bytes, pageSizeOf(log2), 'memfd_create', 'size');
    const [fd, pageSize] = native.memfdCreate(name, bytes, log2);
    return new Memfd(fd, bytes, pageSize, name, log2 === 0 ? 'memfd' : 'hugetlbfs');
  }

  /**
   * A KVM guest_memfd of `size` bytes on a new VM (/dev/kvm), created with
   * GUEST_MEMFD_FLAG_MMAP and GUEST_MEMFD_FLAG_INIT_SHARED where the kernel
   * has them (Linux 6.18+), so that this process can map, read and write it
   * (the only kind userfaultfd can register). `guestMemfdFlags` says what it
   * got; without MMAP, map() refuses with the reason.
   */
  static createGuestMemfd(size: number | bigint): Memfd {
    const bytes = validate.size(size, 'size');
    const pageSize = systemPageSize();
    checkLength(bytes, pageSize, 'ioctl(KVM_CREATE_GUEST_MEMFD)', 'size');
    const [fd, , flags] = native.createGuestMemfd(bytes, GUEST_MEMFD_FLAG.MMAP | GUEST_MEMFD_FLAG.INIT_SHARED);
    const memfd = new Memfd(fd, bytes, pageSize, 'guest_memfd', 'guest_memfd');
    memfd.guestMemfdFlags = flags;
    return memfd;
  }

  /** For a guest_memfd: the GUEST_MEMFD_FLAG_* bits it was created with. */
  guestMemfdFlags = 0n;

  /** Maps [offset, offset+length) of the file shared and read-write. */
  map(options?: { offset?: number | bigint; length?: number | bigint }): Mapping {
    if (!this.#open) throw libraryError('ERR_UFFD_CLOSED', 'mmap', 'this memfd is closed');
    if (this.backing === 'guest_memfd' && !(this.guestMemfdFlags & GUEST_MEMFD_FLAG.MMAP)) {
      throw new UffdError('ENODEV', 'ENODEV: no such device, mmap — this kernel\'s guest_memfd cannot be mapped by a process ' +
        '(GUEST_MEMFD_FLAG_MMAP needs Linux 6.18 or newer), so userfaultfd cannot serve it', { errno: -19, syscall: 'mmap' });
    }
    const opts = validate.options<{ offset: number; length: number }>(options, 'options');
    const offset = validate.size(opts.offset ?? 0, 'options.offset');
    const length = opts.length === undefined ? this.size - offset : validate.size(opts.length, 'options.length');
    if (!validate.isAligned(offset, this.pageSize) || length === 0 || !validate.isAligned(length, this.pageSize)) {
      throw invalid('mmap', `offset ${offset} and length ${length} must be multiples of the page size (${this.pageSize} bytes), length non-zero`);
    }
    if (offset > this.size || length > this.size - offset) {
      throw invalid('mmap', `[${offset}, ${offset + length}) is outside the memfd's ${this.size} bytes`);
    }
    return mapping(native.mapShared(this.fd, offset, length, false), length, this.pageSize, this.backing);
  }

  /** Closes the descriptor; mappings made from it stay valid. */
  close(): void {
    if (!this.#open) return;
    this.#open = false;
    closeOnCollect.unregister(this);
    native.closeFd(this.fd);
  }
}
