// The capability probe (API and command) and the constants newer than the
// system headers, checked against the kernel's published uapi values.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FEATURES, IOCTLS, Userfaultfd, probe, unavailable, type Feature, type ProbeReport } from '../dist/index.js';

const cli = path.join(__dirname, '..', 'dist', 'cli.js');
// Every feature up to and including MOVE (Linux 6.8).
const THROUGH_MOVE = Object.keys(FEATURES).slice(0, Object.keys(FEATURES).indexOf('MOVE') + 1) as Feature[];
const needThroughMove = unavailable(probe(), { features: THROUGH_MOVE });

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

  it.skipIf(needThroughMove !== undefined)(`reports every feature through MOVE as available where the kernel offers them all${needThroughMove ? ` — skipped: ${needThroughMove}` : ''}`, () => {
    const report = probe();
    expect(THROUGH_MOVE.every((name) => report.features[name])).toBe(true);
    expect(report.unknownFeatureBits).toMatch(/^0x/);
  });

  it('says why a feature the kernel lacks is unavailable, in the same words for every caller', () => {
    const report = probe();
    const absent = (Object.keys(FEATURES) as Feature[]).find((name) => !report.features[name]);
    if (absent) expect(unavailable(report, { features: [absent] })).toBe(`the kernel does not offer UFFD_FEATURE_${absent}`);
    expect(unavailable(report, { memory: 'anonymous', modes: ['minor'] })).toMatch(/^anonymous memory cannot be registered in minor mode: /);
    expect(unavailable(report, { memory: 'anonymous', modes: ['missing'], ioctls: ['CONTINUE'] })).toMatch(/does not allow UFFDIO_CONTINUE/);
    expect(unavailable(report, { memory: 'anonymous', modes: ['missing'], ioctls: ['COPY'] })).toBeUndefined();
    expect(report.memory.shmem.move.ok).toBe(false);
  });

  it('`userfaultfd probe --json` prints the same report, and the text form names every feature', () => {
    const json = JSON.parse(execFileSync(process.execPath, [cli, 'probe', '--json'], { encoding: 'utf8' })) as ProbeReport;
    expect(json.features).toEqual(probe().features);
    expect(json.kernel.release).toMatch(/^\d+\.\d+/);
    const text = execFileSync(process.execPath, [cli, 'probe'], { encoding: 'utf8' });
    for (const name of Object.keys(FEATURES)) expect(text).toContain(name);
    expect(text).toMatch(/guest_memfd\s+missing/);
  });

  it('`userfaultfd probe` refuses an option it does not know: exit 2, the reason and the usage on stderr', () => {
    const run = spawnSync(process.execPath, [cli, 'probe', '--bogus'], { encoding: 'utf8' });
    expect(run.status).toBe(2);
    expect(run.stdout).toBe('');
    expect(run.stderr).toMatch(/^userfaultfd probe: Unknown option '--bogus'.*\nusage: userfaultfd probe \[--json\]/s);
  });

  it('says why hugetlb cannot be probed when no huge page is free, instead of trusting the feature bits', () => {
    const report = probe();
    const free = report.hugePages.some((h) => h.free > 0);
    if (!free) expect(report.memory.hugetlb.modes.missing).toEqual({ ok: false, error: expect.stringContaining('no free huge pages') });
  });
});

// The kernel's published values (include/uapi/linux/userfaultfd.h and
// include/uapi/linux/kvm.h, Linux 6.18; the RWP ones from Linux 7.3's, in
// Debian's linux-libc-dev 7.3~rc7-1~exp1), computed as _IOWR/_IOR/_IOW from the
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
  UFFD_FEATURE_RWP: 1n << 17n,
  UFFD_FEATURE_RWP_ASYNC: 1n << 18n,
  UFFDIO_RWPROTECT: 0xc018aa09n,
  UFFDIO_SET_MODE: 0x4010aa0an,
  UFFDIO_REGISTER_MODE_RWP: 1n << 3n,
  UFFDIO_RWPROTECT_MODE_RWP: 1n << 0n,
  UFFDIO_RWPROTECT_MODE_DONTWAKE: 1n << 1n,
  UFFD_PAGEFAULT_FLAG_RWP: 1n << 3n,
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
    expect(c.sizeofUffdioRwprotect).toBe(24);
    expect(c.sizeofUffdioSetMode).toBe(16);
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
    expect(FEATURES.RWP).toBe(c.UFFD_FEATURE_RWP);
    expect(FEATURES.RWP_ASYNC).toBe(c.UFFD_FEATURE_RWP_ASYNC);
    // The ioctl number's low byte is its bit in the masks.
    for (const name of ['COPY', 'MOVE', 'POISON', 'CONTINUE', 'ZEROPAGE', 'WAKE', 'UNREGISTER', 'WRITEPROTECT', 'RWPROTECT', 'SET_MODE', 'API', 'REGISTER'] as const) {
      expect(BigInt(IOCTLS[name]), name).toBe((c[`UFFDIO_${name}`] as bigint) & 0xffn);
    }
  });
});

// A newer kernel's uapi header, when one is given (npm run test:kernels passes
// Linux 7.3's from Debian's linux-libc-dev): the addon's numbers must be what
// that header says, compiled by the C compiler rather than copied by hand.
const header = process.env.UFFD_UAPI_INCLUDE;
const noHeader = header && fs.existsSync(path.join(header, 'linux', 'userfaultfd.h')) ? undefined
  : 'no newer uapi header given (UFFD_UAPI_INCLUDE; npm run test:kernels gives Linux 7.3\'s)';
describe('constants against a uapi header', () => {
  it.skipIf(noHeader !== undefined)(`equal the values of the header in UFFD_UAPI_INCLUDE${noHeader ? ` — skipped: ${noHeader}` : ''}`, async () => {
    const { native } = await import('../dist/binding.js');
    const names = Object.keys(PUBLISHED).filter((name) => /^UFFD/.test(name));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-uapi-'));
    try {
      fs.writeFileSync(path.join(dir, 'p.c'), [
        '#include <stdio.h>', '#include <sys/ioctl.h>', '#include <linux/userfaultfd.h>', 'int main(void) {',
        ...names.map((name) => `  printf("${name} %llu\\n", (unsigned long long)(${name}));`),
        '  printf("sizeofUffdioRwprotect %zu\\nsizeofUffdioSetMode %zu\\n", sizeof(struct uffdio_rwprotect), sizeof(struct uffdio_set_mode));',
        '  return 0;', '}'].join('\n'));
      execFileSync('cc', ['-I', header!, '-o', path.join(dir, 'p'), path.join(dir, 'p.c')]);
      const values = Object.fromEntries(execFileSync(path.join(dir, 'p'), { encoding: 'utf8' }).trim().split('\n').map((line) => line.split(' ')));
      for (const name of names) expect(native.constants[name], name).toBe(BigInt(values[name]));
      expect(native.constants.sizeofUffdioRwprotect).toBe(Number(values.sizeofUffdioRwprotect));
      expect(native.constants.sizeofUffdioSetMode).toBe(Number(values.sizeofUffdioSetMode));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
