// The capability probe (API and command) and the constants newer than the
// system headers, checked against the kernel's published uapi values.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FEATURES, IOCTLS, Userfaultfd, probe, type ProbeReport } from '../dist/index.js';

const cli = path.join(__dirname, '..', 'dist', 'cli.js');
const offersEverything = (() => {
  const uffd = Userfaultfd.open();
  const all = Object.keys(FEATURES).every((name) => uffd.offeredFeatures.has(name as keyof typeof FEATURES));
  uffd.close();
  return all;
})();

describe('probe', () => {
  it('reports the features UFFDIO_API offers, by trying', () => {
    const report = probe();
    const uffd = Userfaultfd.open();
    for (const name of Object.keys(FEATURES) as (keyof typeof FEATURES)[]) {
      expect(report.features[name], name).toBe(uffd.offeredFeatures.has(name));
    }
    uffd.close();
    expect(report.open.syscall).toEqual({ ok: true });
    expect(report.memory.anonymous.modes.missing).toMatchObject({ ok: true, ioctls: expect.arrayContaining(['COPY', 'ZEROPAGE', 'WAKE']) });
    expect(report.memory.anonymous.modes.minor.ok).toBe(false);
    expect(report.memory.shmem.modes.minor).toMatchObject({ ok: true, ioctls: expect.arrayContaining(['CONTINUE']) });
  });

  it.skipIf(!offersEverything)(`reports every feature through MOVE as available where the kernel offers them all${offersEverything ? '' : ' — skipped: this kernel offers fewer'}`, () => {
    expect(Object.values(probe().features).every(Boolean)).toBe(true);
    expect(probe().unknownFeatureBits).toMatch(/^0x/);
  });

  it('`userfaultfd probe --json` prints the same report, and the text form names every feature', () => {
    const json = JSON.parse(execFileSync(process.execPath, [cli, 'probe', '--json'], { encoding: 'utf8' })) as ProbeReport;
    expect(json.features).toEqual(probe().features);
    expect(json.kernel.release).toMatch(/^\d+\.\d+/);
    const text = execFileSync(process.execPath, [cli, 'probe'], { encoding: 'utf8' });
    for (const name of Object.keys(FEATURES)) expect(text).toContain(name);
    expect(text).toMatch(/guest_memfd\s+missing/);
  });

  it('says why hugetlb cannot be probed when no huge page is free, instead of trusting the feature bits', () => {
    const report = probe();
    const free = report.hugePages.some((h) => h.free > 0);
    if (!free) expect(report.memory.hugetlb.modes.missing).toEqual({ ok: false, error: expect.stringContaining('no free huge pages') });
  });
});

// The kernel's published values (include/uapi/linux/userfaultfd.h and
// include/uapi/linux/kvm.h, Linux 6.18), computed as _IOWR/_IOR/_IOW from the
// structure sizes there. The addon's numbers come from its own definitions
// (native/uffd_abi.h and native/kvm.h) where the 6.1 headers lack them.
const PUBLISHED = {
  UFFD_API: 0xaan,
  UFFDIO_API: 0xc018aa3fn,
  UFFDIO_REGISTER: 0xc020aa00n,
  UFFDIO_UNREGISTER: 0x8010aa01n,
  UFFDIO_WAKE: 0x8010aa02n,
  UFFDIO_COPY: 0xc028aa03n,
  UFFDIO_ZEROPAGE: 0xc020aa04n,
  UFFDIO_MOVE: 0xc028aa05n,
  UFFDIO_WRITEPROTECT: 0xc018aa06n,
  UFFDIO_CONTINUE: 0xc020aa07n,
  UFFDIO_POISON: 0xc020aa08n,
  USERFAULTFD_IOC_NEW: 0xaa00n,
  UFFD_FEATURE_WP_UNPOPULATED: 1n << 13n,
  UFFD_FEATURE_POISON: 1n << 14n,
  UFFD_FEATURE_WP_ASYNC: 1n << 15n,
  UFFD_FEATURE_MOVE: 1n << 16n,
  UFFDIO_CONTINUE_MODE_WP: 1n << 1n,
  UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES: 1n << 1n,
  KVM_CREATE_VM: 0xae01n,
  KVM_CHECK_EXTENSION: 0xae03n,
  KVM_CREATE_GUEST_MEMFD: 0xc040aed4n,
  KVM_SET_USER_MEMORY_REGION2: 0x40a0ae49n,
  GUEST_MEMFD_FLAG_MMAP: 1n,
  GUEST_MEMFD_FLAG_INIT_SHARED: 2n,
};

describe('constants', () => {
  it('the addon\'s ioctl numbers, features and structure sizes equal the kernel\'s published ones', async () => {
    const { native } = await import('../dist/binding.js');
    const c = native.constants;
    for (const [name, value] of Object.entries(PUBLISHED)) expect(c[name], name).toBe(value);
    expect(c.sizeofUffdMsg).toBe(32);
    expect(c.sizeofUffdioMove).toBe(40);
    expect(c.sizeofUffdioPoison).toBe(32);
    expect(c.sizeofKvmCreateGuestMemfd).toBe(64);
    expect(c.sizeofKvmUserspaceMemoryRegion2).toBe(160);
    expect([c.UFFD_EVENT_PAGEFAULT, c.UFFD_EVENT_FORK, c.UFFD_EVENT_REMAP, c.UFFD_EVENT_REMOVE, c.UFFD_EVENT_UNMAP]).toEqual([0x12, 0x13, 0x14, 0x15, 0x16]);
  });

  it('the TypeScript names agree with the addon', async () => {
    const { native } = await import('../dist/binding.js');
    const c = native.constants;
    expect(FEATURES.MOVE).toBe(c.UFFD_FEATURE_MOVE);
    expect(FEATURES.WP_ASYNC).toBe(c.UFFD_FEATURE_WP_ASYNC);
    expect(FEATURES.POISON).toBe(c.UFFD_FEATURE_POISON);
    expect(FEATURES.WP_UNPOPULATED).toBe(c.UFFD_FEATURE_WP_UNPOPULATED);
    // The ioctl number's low byte is its bit in the masks.
    for (const name of ['COPY', 'MOVE', 'POISON', 'CONTINUE', 'ZEROPAGE', 'WAKE', 'UNREGISTER', 'WRITEPROTECT', 'API', 'REGISTER'] as const) {
      expect(BigInt(IOCTLS[name]), name).toBe((c[`UFFDIO_${name}`] as bigint) & 0xffn);
    }
  });
});
