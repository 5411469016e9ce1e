// guest_memfd through /dev/kvm: created on a fresh VM, mapped, registered with
// userfaultfd where the kernel allows it. Where /dev/kvm is absent, or the
// kernel refuses the registration, the error says which; the probe reports it.
// Real faults through a registered guest_memfd mapping: test/66.
// The ioctl numbers and structure layouts are checked everywhere against the
// kernel's published uapi (include/uapi/linux/kvm.h: 6.12 for the structures
// and ioctls, 6.18 for the GUEST_MEMFD_FLAG_* bits and KVM_CAP_GUEST_MEMFD_FLAGS).
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Memfd, Userfaultfd, probe, systemPageSize, type UffdError } from '../dist/index.js';

// asm-generic/ioctl.h, which x86 and arm64 use: dir in bits 30-31, size in 16-29.
const IOC_NONE = 0n;
const IOC_WRITE = 1n;
const IOC_READ = 2n;
const ioc = (dir: bigint, type: number, nr: number, size: number): bigint => (dir << 30n) | (BigInt(size) << 16n) | (BigInt(type) << 8n) | BigInt(nr);
const KVMIO = 0xae;

const kvmPresent = fs.existsSync('/dev/kvm');
const noKvm = kvmPresent ? undefined : 'this host has no /dev/kvm';
if (noKvm) console.warn(`skipping the guest_memfd tests that need KVM: ${noKvm}`);

// Whether the running kernel lets userfaultfd register a guest_memfd mapping.
function registrationSupport(): string | undefined {
  if (noKvm) return noKvm;
  const memfd = Memfd.createGuestMemfd(systemPageSize());
  if (!(memfd.guestMemfdFlags & 1n)) {
    memfd.close();
    return 'this kernel\'s guest_memfd cannot be mapped (no GUEST_MEMFD_FLAG_MMAP)';
  }
  const mapping = memfd.map();
  const uffd = Userfaultfd.open({ features: ['MINOR_SHMEM'] });
  try {
    uffd.register(mapping, { missing: true });
    return undefined;
  } catch (error) {
    return `this kernel refuses UFFDIO_REGISTER on guest_memfd (${(error as UffdError).code})`;
  } finally {
    uffd.close();
    mapping.unmap();
    memfd.close();
  }
}
const noUffdOnGmem = registrationSupport();

describe('KVM uapi numbers and layouts', () => {
  it('the ioctl numbers equal _IO/_IOW/_IOWR of the published structures', async () => {
    const { native } = await import('../dist/binding.js');
    const c = native.constants;
    expect(c.KVM_CREATE_VM).toBe(ioc(IOC_NONE, KVMIO, 0x01, 0));
    expect(c.KVM_CHECK_EXTENSION).toBe(ioc(IOC_NONE, KVMIO, 0x03, 0));
    expect(c.KVM_CREATE_GUEST_MEMFD).toBe(ioc(IOC_READ | IOC_WRITE, KVMIO, 0xd4, 64));
    expect(c.KVM_SET_USER_MEMORY_REGION2).toBe(ioc(IOC_WRITE, KVMIO, 0x49, 160));
    expect(c.KVM_CREATE_GUEST_MEMFD).toBe(0xc040aed4n);
    expect(c.KVM_SET_USER_MEMORY_REGION2).toBe(0x40a0ae49n);
  });

  it('struct kvm_create_guest_memfd and kvm_userspace_memory_region2 have the published sizes and field offsets', async () => {
    const { native } = await import('../dist/binding.js');
    const c = native.constants;
    // { __u64 size; __u64 flags; __u64 reserved[6]; }
    expect(c.sizeofKvmCreateGuestMemfd).toBe(64);
    expect(c.offsetofKvmCreateGuestMemfdFlags).toBe(8);
    // { __u32 slot, flags; __u64 guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset; __u32 guest_memfd, pad1; __u64 pad2[14]; }
    expect(c.sizeofKvmUserspaceMemoryRegion2).toBe(160);
    expect(c.offsetofKvmRegion2GuestMemfdOffset).toBe(32);
    expect(c.offsetofKvmRegion2GuestMemfd).toBe(40);
  });

  it('the flags and capabilities have the published values', async () => {
    const { native } = await import('../dist/binding.js');
    const { GUEST_MEMFD_FLAG } = await import('../dist/constants.js');
    const c = native.constants;
    expect(GUEST_MEMFD_FLAG.MMAP).toBe(c.GUEST_MEMFD_FLAG_MMAP);
    expect(GUEST_MEMFD_FLAG.INIT_SHARED).toBe(c.GUEST_MEMFD_FLAG_INIT_SHARED);
    expect(c.GUEST_MEMFD_FLAG_MMAP).toBe(1n << 0n);
    expect(c.GUEST_MEMFD_FLAG_INIT_SHARED).toBe(1n << 1n);
    expect(c.KVM_MEM_GUEST_MEMFD).toBe(1n << 2n);
    expect(c.KVM_CAP_GUEST_MEMFD).toBe(234n);
    expect(c.KVM_CAP_GUEST_MEMFD_FLAGS).toBe(244n);
  });
});

describe('guest_memfd', () => {
  it.skipIf(kvmPresent)(`without /dev/kvm, creating one throws ENOENT naming /dev/kvm, and the probe says so${kvmPresent ? ' — skipped: this host has /dev/kvm' : ''}`, () => {
    expect(() => Memfd.createGuestMemfd(systemPageSize())).toThrow(expect.objectContaining({
      code: 'ENOENT', syscall: 'open(/dev/kvm)', message: expect.stringMatching(/this host has no \/dev\/kvm/),
    }));
    const report = probe();
    expect(report.memory.guest_memfd.available).toEqual({ ok: false, error: 'no /dev/kvm on this host (ENOENT)' });
    expect(report.memory.guest_memfd.modes.missing).toEqual({ ok: false, error: 'no /dev/kvm on this host (ENOENT)' });
  });

  it('refuses a size that is not a non-zero multiple of the page size before touching /dev/kvm', () => {
    expect(() => Memfd.createGuestMemfd(100)).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'ioctl(KVM_CREATE_GUEST_MEMFD)' }));
    expect(() => Memfd.createGuestMemfd(0)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });

  it.skipIf(noKvm)(`is created through /dev/kvm and mapped, readable and writable by this process${noKvm ? ` — skipped: ${noKvm}` : ''}`, () => {
    const memfd = Memfd.createGuestMemfd(4 * systemPageSize());
    expect(memfd.backing).toBe('guest_memfd');
    if (!(memfd.guestMemfdFlags & 1n)) {
      // Before Linux 6.18 there is no GUEST_MEMFD_FLAG_MMAP: the mapping is refused with the reason.
      expect(() => memfd.map()).toThrow(expect.objectContaining({ code: 'ENODEV', message: expect.stringMatching(/needs Linux 6.18/) }));
      memfd.close();
      return;
    }
    const mapping = memfd.map();
    mapping.view().fill(0x5a);
    expect(mapping.read(0, 16).every((b) => b === 0x5a)).toBe(true);
    mapping.unmap();
    memfd.close();
  });

  it.skipIf(noKvm || !noUffdOnGmem)(`where the kernel refuses UFFDIO_REGISTER on it, the error says that kernel lacks uffd support for guest_memfd, and the probe agrees${noKvm ? ` — skipped: ${noKvm}` : !noUffdOnGmem ? ' — skipped: this kernel accepts the registration' : ''}`, () => {
    const memfd = Memfd.createGuestMemfd(systemPageSize());
    const mapping = memfd.map();
    const uffd = Userfaultfd.open({ features: ['MINOR_SHMEM'] });
    for (const modes of [{ missing: true }, { minor: true }]) {
      expect(() => uffd.register(mapping, modes)).toThrow(expect.objectContaining({
        code: 'EINVAL', syscall: 'ioctl(UFFDIO_REGISTER)', message: expect.stringMatching(/lacks userfaultfd support for guest_memfd/),
      }));
    }
    uffd.close();
    mapping.unmap();
    memfd.close();
    expect(probe().memory.guest_memfd.modes.missing).toEqual({ ok: false, error: 'EINVAL: this kernel lacks userfaultfd support for guest_memfd' });
  });
});
