// The one error class of the library, and every message it carries. Errors
// look like Node's own system errors: `code` ('EEXIST', or 'ERR_UFFD_*' for
// conditions that are not an errno), `errno` (negative, as Node reports it),
// `syscall` ('ioctl(UFFDIO_COPY)'), and a message that says what to do.
import util from 'node:util';

export class UffdError extends Error {
  readonly code: string;
  readonly errno: number | undefined;
  readonly syscall: string | undefined;
  /** For the resolving ioctls: bytes resolved before the error stopped them. */
  readonly bytesDone: number | undefined;

  constructor(code: string, message: string, fields: { errno?: number; syscall?: string; bytesDone?: number } = {}) {
    super(message);
    this.name = 'UffdError';
    this.code = code;
    this.errno = fields.errno;
    this.syscall = fields.syscall;
    this.bytesDone = fields.bytesDone;
  }
}

const ERRNO = {
  EPERM: -1, ENOENT: -2, ESRCH: -3, EAGAIN: -11, ENOMEM: -12, EFAULT: -14, EBUSY: -16,
  EEXIST: -17, EINVAL: -22, ENOSPC: -28, ENOSYS: -38, ENOTTY: -25, EACCES: -13, ENODEV: -19,
} as const;

// What to do, by error and syscall. The kernel's reasons are from
// man 2 ioctl_userfaultfd and mm/userfaultfd.c.
function hint(code: string, syscall: string, extra: Record<string, unknown>): string {
  const ioctl = syscall.startsWith('ioctl(') ? syscall.slice(6, -1) : '';
  if (syscall === 'open(/dev/kvm)') {
    return code === 'ENOENT' ? 'this host has no /dev/kvm (no KVM here, or it was not passed into the container)' : 'no access to /dev/kvm (add this user to the kvm group)';
  }
  if (syscall === 'ioctl(KVM_CREATE_GUEST_MEMFD)') {
    return 'this kernel\'s KVM cannot create a guest_memfd for this VM (KVM_CREATE_GUEST_MEMFD needs Linux 6.8 or newer; one a process can map, 6.18 or newer)';
  }
  if (syscall === 'userfaultfd') {
    const device = typeof extra.deviceErrno === 'number' && extra.deviceErrno !== 0
      ? util.getSystemErrorName(extra.deviceErrno) : 'not tried';
    if (code === 'ENOSYS') {
      return `this kernel has no userfaultfd (CONFIG_USERFAULTFD), or a seccomp filter hides it, as container runtimes do by default (/dev/userfaultfd: ${device})`;
    }
    return 'both ways to open a userfaultfd were refused: the syscall ' +
      `(${code}) and /dev/userfaultfd (${device}). Either run as root (or with CAP_SYS_PTRACE), ` +
      'or set the sysctl vm.unprivileged_userfaultfd=1, or grant this user read-write access to /dev/userfaultfd, ' +
      'or open with { userModeOnly: true } (UFFD_USER_MODE_ONLY: faults raised by the kernel itself, such as from read(2) into the region, then fail with EFAULT). ' +
      'In a container, the default seccomp profile blocks userfaultfd(2): allow it in the profile';
  }
  if (syscall === 'listen') {
    // What unix_socket::Listen found at the path.
    if (code === 'EADDRINUSE') return 'another process is listening on this path: pick another path, or stop that process (a socket file nobody listens on is replaced)';
    if (code === 'EEXIST') return 'a file that is not a socket is at this path: pick another path, or remove that file';
  }
  switch (code) {
    case 'EISDIR':
      return 'a directory cannot be mapped: name the memory file in it';
    case 'ESRCH':
      return 'the process that owns this memory has exited; its faults need no answer';
    case 'EEXIST':
      return 'a page is already present there (written since, or another resolution won a race); nothing was overwritten, and a thread faulting there still needs a wake (uffd.wake)';
    case 'EAGAIN':
      return 'the address space is changing (a fork, mremap, madvise or munmap event is pending): read the pending events, then retry the rest';
    case 'ENOENT':
      if (!ioctl.startsWith('UFFDIO_')) return '';
      return (ioctl === 'UFFDIO_MOVE' ? 'the source has a page that is not there (pass { allowSrcHoles: true } to skip such pages), or ' : '') +
        'the destination is not inside a range registered with this userfaultfd (or that mode is not registered there, or it was unregistered or unmapped since the fault): register it first';
    case 'EBUSY':
      // UFFDIO_MOVE's EBUSY is about the source pages, never about registrations.
      if (ioctl === 'UFFDIO_MOVE') {
        return 'a source page is pinned or not exclusive to this process (shared with a fork, or a KSM page): write to it first to make it exclusive, or copy it instead';
      }
      return 'part of this range is already registered with another userfaultfd: unregister it there first';
    case 'EPERM':
      return ioctl === 'UFFDIO_API' ? 'EVENT_FORK needs CAP_SYS_PTRACE' : 'the mapping does not allow this (a read-only or sealed mapping?)';
    case 'ENOMEM':
      return 'the kernel could not allocate a page (for hugetlb memory: reserve huge pages in /proc/sys/vm/nr_hugepages)';
    case 'EFAULT':
      return ioctl === 'UFFDIO_CONTINUE'
        ? 'the page cache has no page there: fill it through another mapping of the file first'
        : 'the source or destination is not accessible memory';
    case 'EINVAL':
      // Other calls' EINVAL has no one reason to give.
      if (!ioctl.startsWith('UFFDIO_') && ioctl !== 'PAGEMAP_SCAN') return '';
      if (ioctl === 'UFFDIO_REGISTER') {
        return 'the range must be page-aligned and lie within mappings that support this mode (MINOR needs shmem or hugetlbfs, WP needs the WP feature, RWP Linux 7.3, guest_memfd a kernel with uffd support for it), ' +
          'and the uffd enabled (a descriptor adopted with fromFd needs its UFFDIO_API done by whoever opened it)';
      }
      if (ioctl === 'UFFDIO_API') return 'the kernel refused the requested features';
      // The kernel answers 0 for a mapped range that is not registered, and EINVAL when nothing is mapped there.
      if (ioctl === 'UFFDIO_UNREGISTER') return 'the range must be aligned to the page size of its mapping, and something must be mapped in it (unmapped memory is unregistered already)';
      if (ioctl === 'UFFDIO_RWPROTECT' || ioctl === 'UFFDIO_SET_MODE') {
        return 'read-write protection (UFFDIO_RWPROTECT, RWP_ASYNC) needs Linux 7.3 and a range registered with { rwp: true } (probe() says what this kernel has); ' +
          'otherwise the address and length must be aligned to the page size of the range';
      }
      if (ioctl === 'PAGEMAP_SCAN') {
        return 'PAGEMAP_SCAN needs Linux 6.7, and a range registered WP on a uffd with WP_ASYNC (written pages) or, Linux 7.3, registered with { rwp: true } (accessed pages); the range must be page-aligned';
      }
      // move_pages() refuses with EINVAL whatever is not a move between private
      // anonymous mappings of the uffd's own process into a range it registered.
      if (ioctl === 'UFFDIO_MOVE') {
        return 'UFFDIO_MOVE moves pages only between private anonymous mappings (not shmem, hugetlb or file memory) of the process that opened the userfaultfd, ' +
          'called from that process, into a range registered with this userfaultfd; source and destination must not overlap, and the addresses and length must be page-aligned. ' +
          'Use copy() for other memory';
      }
      // hugetlb ranges do not offer UFFDIO_ZEROPAGE (UFFDIO_REGISTER leaves it out of their ioctls).
      if (ioctl === 'UFFDIO_ZEROPAGE') {
        return 'the address and length must be aligned to the page size of the range; hugetlb memory has no UFFDIO_ZEROPAGE: copy a page of zeros there instead (fault.zero() does) ' +
          '(or this uffd was never enabled: a descriptor adopted with fromFd needs its UFFDIO_API done by whoever opened it)';
      }
      // COPY and CONTINUE with writeProtect into a range not registered WP is EINVAL too (mfill_atomic's VM_UFFD_WP check).
      return 'the address and length must be aligned to the page size of the range, and the mode must be one this ioctl supports there ' +
        (ioctl === 'UFFDIO_COPY' || ioctl === 'UFFDIO_CONTINUE' ? '(writeProtect: true needs the range registered with { wp: true }) ' : '') +
        '(or this uffd was never enabled: a descriptor adopted with fromFd needs its UFFDIO_API done by whoever opened it)';
    default:
      return '';
  }
}

function describe(errno: number): string {
  const entry = util.getSystemErrorMap().get(errno);
  return entry ? entry[1] : 'unknown error';
}

// Library conditions that are not an errno.
const LIBRARY: Record<string, string> = {
  ERR_UFFD_CLOSED: 'this userfaultfd is closed; open a new one with Userfaultfd.open()',
  ERR_UFFD_WOULD_DEADLOCK:
    'the thread that serves this userfaultfd would touch registered memory that is not present yet, and only this thread can make it present: it would block forever. Touch registered memory from a worker thread (attachView) or another process, or serve the faults in a worker (Userfaultfd.borrow(uffd.lend()).serveSync) while this thread reads none of them',
  ERR_UFFD_TIMEOUT: 'timed out',
  ERR_UFFD_UNSERVABLE: 'a page fault could not be served',
  ERR_UFFD_NOT_MAPPED: 'no live mapping made by this library holds this range (unmapped already, or never made by Memfd.map / Mapping.anonymous)',
};

// ERR_UFFD_WOULD_DEADLOCK for madvise and munmap, which do not fault but wait
// for a read: any thread other than this one reading the uffd's events ends
// the wait (serveFrom's native thread, a worker serving a borrowed uffd).
const WAITS_FOR_READER =
  'with EVENT_REMOVE (madvise) or EVENT_UNMAP (munmap) this call waits until the thread that serves this userfaultfd has read its event, and this is that thread: it would block forever. Have another thread read the events (uffd.serveFrom, or a worker serving Userfaultfd.borrow(uffd.lend())), or make this call from another thread or process';

/** Builds the error for -errno (or a library code in extra.code) from syscall. */
export function systemError(errno: number, syscall: string, extra: Record<string, unknown> = {}): UffdError {
  const bytesDone = typeof extra.bytesDone === 'number' ? extra.bytesDone : undefined;
  if (typeof extra.code === 'string') {
    const text = extra.code === 'ERR_UFFD_WOULD_DEADLOCK' && (syscall === 'madvise' || syscall === 'munmap') ? WAITS_FOR_READER : LIBRARY[extra.code];
    return new UffdError(extra.code, `${extra.code}: ${text ?? 'failed'}, ${syscall}`, { syscall });
  }
  const code = util.getSystemErrorName(errno);
  const why = hint(code, syscall, extra);
  const done = bytesDone ? ` (${bytesDone} bytes were resolved before it)` : '';
  return new UffdError(code, `${code}: ${describe(errno)}, ${syscall}${why ? ` — ${why}` : ''}${done}`,
    { errno, syscall, bytesDone });
}

/** The error the kernel would give, raised before calling it, with the exact reason. */
export function invalid(syscall: string, reason: string): UffdError {
  return new UffdError('EINVAL', `EINVAL: invalid argument, ${syscall} — ${reason}`, { errno: ERRNO.EINVAL, syscall });
}

export function libraryError(code: keyof typeof LIBRARY | string, syscall: string, detail?: string): UffdError {
  const text = detail ?? LIBRARY[code] ?? code;
  return new UffdError(code, `${code}: ${text}, ${syscall}`, { syscall });
}

interface ArgError extends Error { code: string }

export function argTypeError(name: string, expected: string, actual: unknown): TypeError {
  const shown = typeof actual === 'bigint' ? `${actual}n` : typeof actual === 'string' ? `'${actual}'` : String(actual);
  const error = new TypeError(`The "${name}" argument must be ${expected}. Received ${typeof actual} (${shown.slice(0, 40)})`) as TypeError & ArgError;
  error.code = 'ERR_INVALID_ARG_TYPE';
  return error;
}

export function argRangeError(name: string, expected: string, actual: unknown): RangeError {
  const error = new RangeError(`The value of "${name}" is out of range. It must be ${expected}. Received ${String(actual)}`) as RangeError & ArgError;
  error.code = 'ERR_OUT_OF_RANGE';
  return error;
}

export function argValueError(name: string, reason: string): TypeError {
  const error = new TypeError(`The argument '${name}' ${reason}`) as TypeError & ArgError;
  error.code = 'ERR_INVALID_ARG_VALUE';
  return error;
}

/** Node's ERR_ILLEGAL_CONSTRUCTOR, for a class only the library may construct; use: what to call instead. */
export function illegalConstructor(use: string): TypeError {
  const error = new TypeError(`Illegal constructor: use ${use}`) as TypeError & ArgError;
  error.code = 'ERR_ILLEGAL_CONSTRUCTOR';
  return error;
}
