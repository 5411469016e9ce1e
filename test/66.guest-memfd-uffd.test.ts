// userfaultfd on guest_memfd: a KVM guest_memfd created by the library
// (KVM_CREATE_GUEST_MEMFD with MMAP | INIT_SHARED), mapped, registered in
// MISSING and MINOR modes, and real faults from a worker served with
// UFFDIO_COPY and with UFFDIO_CONTINUE. Only kernels with the KVM half of
// "mm, kvm: allow uffd support in guest_memfd" accept the registration (no
// packaged kernel yet; `npm run test:gmem` boots one under qemu). Elsewhere
// these skip with the reason; test/64 checks the refusal (the error says the
// running kernel lacks the support) and guest_memfd creation.
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, Memfd, Userfaultfd, probe, type Fault, type Feature, type UffdError } from '../dist/index.js';
import { PAGE, pattern, touch } from './helpers';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

function guestMemfd(pages: number): Memfd {
  const memfd = Memfd.createGuestMemfd(pages * PAGE);
  cleanup.push(() => memfd.close());
  return memfd;
}

// Features the shmem-like modes need, where the kernel offers them.
function open(): Userfaultfd {
  const offered = Userfaultfd.open();
  const wanted = (['MISSING_SHMEM', 'MINOR_SHMEM', 'THREAD_ID'] as Feature[]).filter((f) => offered.offeredFeatures.has(f));
  offered.close();
  const uffd = Userfaultfd.open({ features: wanted });
  cleanup.push(() => uffd.close());
  return uffd;
}

// What this host can do: no guest_memfd at all, a guest_memfd the kernel will
// not register, or one it registers.
function survey(): { noGuestMemfd?: string; refusal?: UffdError } {
  let memfd: Memfd;
  let mapping: Mapping;
  try {
    memfd = Memfd.createGuestMemfd(PAGE);
  } catch (error) {
    return { noGuestMemfd: (error as Error).message };
  }
  try {
    // Refused where the kernel has no GUEST_MEMFD_FLAG_MMAP.
    mapping = memfd.map();
  } catch (error) {
    memfd.close();
    return { noGuestMemfd: (error as Error).message };
  }
  const uffd = Userfaultfd.open();
  try {
    uffd.register(mapping, { missing: true });
    return {};
  } catch (error) {
    return { refusal: error as UffdError };
  } finally {
    uffd.close();
    mapping.unmap();
    memfd.close();
  }
}

const host = survey();
const supportSkip = host.noGuestMemfd
  ? `no guest_memfd here: ${host.noGuestMemfd}`
  : host.refusal
    ? `the running kernel refuses userfaultfd on guest_memfd (${host.refusal.code}); \`npm run test:gmem\` runs these under a kernel that accepts it`
    : undefined;
if (supportSkip) console.warn(`guest_memfd userfaultfd fault tests skipped: ${supportSkip}`);

describe.skipIf(supportSkip !== undefined)(`userfaultfd on guest_memfd${supportSkip ? ` — skipped: ${supportSkip}` : ''}`, () => {
  it('the probe reports MISSING and MINOR registration on guest_memfd, with the ioctls they allow', () => {
    const rows = probe().memory.guest_memfd;
    expect(rows.available).toEqual({ ok: true });
    expect(rows.modes.missing).toMatchObject({ ok: true, ioctls: expect.arrayContaining(['COPY', 'WAKE']) });
    expect(rows.modes.minor).toMatchObject({ ok: true, ioctls: expect.arrayContaining(['CONTINUE', 'WAKE']) });
  });

  it('MISSING: faults on holes, resolved with UFFDIO_COPY, every byte checked', async () => {
    const pages = 16;
    const memfd = guestMemfd(pages);
    const mapping = memfd.map();
    cleanup.push(() => mapping.unmap());
    const uffd = open();
    const ioctls = uffd.register(mapping, { missing: true });
    expect(ioctls).toContain('COPY');
    expect(ioctls).toContain('WAKE');
    const source = pattern(pages * PAGE, 66);
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      const offset = Number(fault.pageAddress - mapping.address);
      fault.copy(new Uint8Array(source, offset, PAGE));
    });
    const report = await touch({ address: mapping.address, length: mapping.length, expected: source }).result;
    expect(report).toMatchObject({ ok: true, touched: pages });
    expect(faults).toHaveLength(pages);
    expect(faults.every((f) => f.kind === 'missing')).toBe(true);
    // The pages went into the guest_memfd itself: a second mapping sees them.
    const other = memfd.map();
    cleanup.push(() => other.unmap());
    expect(Buffer.compare(other.read(), Buffer.from(source))).toBe(0);
  });

  it('MISSING: a range nobody faulted on can be filled ahead (prefetch), so no fault arrives', async () => {
    const pages = 8;
    const memfd = guestMemfd(pages);
    const mapping = memfd.map();
    cleanup.push(() => mapping.unmap());
    const uffd = open();
    uffd.register(mapping, { missing: true });
    const source = pattern(pages * PAGE, 67);
    expect(uffd.copy(mapping.address, new Uint8Array(source))).toBe(pages * PAGE);
    let faults = 0;
    void uffd.serve((fault) => {
      faults++;
      fault.zero();
    });
    const report = await touch({ address: mapping.address, length: mapping.length, expected: source }).result;
    expect(report.ok).toBe(true);
    expect(faults).toBe(0);
  });

  it('MINOR: pages in the page cache (written through a second mapping) fault as minor, rewritten, then UFFDIO_CONTINUE', async () => {
    const pages = 8;
    const memfd = guestMemfd(pages);
    const alias = memfd.map();
    const registered = memfd.map();
    cleanup.push(() => registered.unmap(), () => alias.unmap());
    const before = pattern(pages * PAGE, 68);
    const after = pattern(pages * PAGE, 69);
    alias.view().set(new Uint8Array(before));
    const uffd = open();
    const ioctls = uffd.register(registered, { minor: true });
    expect(ioctls).toContain('CONTINUE');
    const faults: Fault[] = [];
    void uffd.serve((fault) => {
      faults.push(fault);
      // The handler changes the page cache's page through the alias, then maps it.
      const offset = Number(fault.pageAddress - registered.address);
      alias.view(offset, PAGE).set(new Uint8Array(after, offset, PAGE));
      fault.continue();
    });
    const report = await touch({ address: registered.address, length: registered.length, expected: after }).result;
    expect(report).toMatchObject({ ok: true, touched: pages });
    expect(faults).toHaveLength(pages);
    expect(faults.every((f) => f.kind === 'minor')).toBe(true);
  });
});
