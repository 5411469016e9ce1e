// Every userfaultfd number the TypeScript side uses, named as the kernel names
// it (include/uapi/linux/userfaultfd.h, minus the prefix). The addon reports
// the same numbers from its own definitions; test/constants.test.ts checks
// that the two agree with each other and with the kernel's published values.

/** UFFDIO_API features, by bit. */
export const FEATURES = {
  PAGEFAULT_FLAG_WP: 1n << 0n,
  EVENT_FORK: 1n << 1n,
  EVENT_REMAP: 1n << 2n,
  EVENT_REMOVE: 1n << 3n,
  MISSING_HUGETLBFS: 1n << 4n,
  MISSING_SHMEM: 1n << 5n,
  EVENT_UNMAP: 1n << 6n,
  SIGBUS: 1n << 7n,
  THREAD_ID: 1n << 8n,
  MINOR_HUGETLBFS: 1n << 9n,
  MINOR_SHMEM: 1n << 10n,
  EXACT_ADDRESS: 1n << 11n,
  WP_HUGETLBFS_SHMEM: 1n << 12n,
  WP_UNPOPULATED: 1n << 13n,
  POISON: 1n << 14n,
  WP_ASYNC: 1n << 15n,
  MOVE: 1n << 16n,
  /** Linux 7.3: UFFDIO_REGISTER_MODE_RWP, read-write protection (every access to a protected page faults). */
  RWP: 1n << 17n,
  /** Linux 7.3: RWP faults resolved by the kernel itself (no message); toggled at run time with UFFDIO_SET_MODE. */
  RWP_ASYNC: 1n << 18n,
} as const;
export type Feature = keyof typeof FEATURES;

/** Ioctl numbers as bit positions in the masks UFFDIO_API and UFFDIO_REGISTER return. */
export const IOCTLS = {
  REGISTER: 0x00,
  UNREGISTER: 0x01,
  WAKE: 0x02,
  COPY: 0x03,
  ZEROPAGE: 0x04,
  MOVE: 0x05,
  WRITEPROTECT: 0x06,
  CONTINUE: 0x07,
  POISON: 0x08,
  RWPROTECT: 0x09,
  SET_MODE: 0x0a,
  API: 0x3f,
} as const;
export type Ioctl = keyof typeof IOCTLS;

export const REGISTER_MODE = { MISSING: 1n << 0n, WP: 1n << 1n, MINOR: 1n << 2n, RWP: 1n << 3n } as const;

// The mode bits of the resolving ioctls. DONTWAKE is bit 0 for all of them.
export const MODE_DONTWAKE = 1n << 0n;
export const COPY_MODE_WP = 1n << 1n;
export const CONTINUE_MODE_WP = 1n << 1n;
export const WRITEPROTECT_MODE_WP = 1n << 0n;
export const WRITEPROTECT_MODE_DONTWAKE = 1n << 1n;
export const MOVE_MODE_ALLOW_SRC_HOLES = 1n << 1n;
export const RWPROTECT_MODE_RWP = 1n << 0n;
export const RWPROTECT_MODE_DONTWAKE = 1n << 1n;
/** The features UFFDIO_SET_MODE may turn on and off (Linux 7.3). */
export const RUNTIME_FEATURES = ['RWP_ASYNC'] as const;

export const EVENT = { PAGEFAULT: 0x12, FORK: 0x13, REMAP: 0x14, REMOVE: 0x15, UNMAP: 0x16 } as const;

export const PAGEFAULT_FLAG = { WRITE: 1n << 0n, WP: 1n << 1n, MINOR: 1n << 2n, RWP: 1n << 3n } as const;

/** KVM_CREATE_GUEST_MEMFD flags (include/uapi/linux/kvm.h, Linux 6.18). */
export const GUEST_MEMFD_FLAG = { MMAP: 1n << 0n, INIT_SHARED: 1n << 1n } as const;

/** Size of struct uffd_msg. */
export const MSG_SIZE = 32;

export function featureBits(names: readonly Feature[]): bigint {
  let bits = 0n;
  for (const name of names) bits |= FEATURES[name];
  return bits;
}

export function featureNames(bits: bigint): Set<Feature> {
  const names = new Set<Feature>();
  for (const [name, bit] of Object.entries(FEATURES) as [Feature, bigint][]) if (bits & bit) names.add(name);
  return names;
}

export function ioctlNames(mask: bigint): Set<Ioctl> {
  const names = new Set<Ioctl>();
  for (const [name, bit] of Object.entries(IOCTLS) as [Ioctl, number][]) if (mask & (1n << BigInt(bit))) names.add(name);
  return names;
}
