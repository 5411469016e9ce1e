// guest_memfd through /dev/kvm: the memory of confidential-computing-capable
// VMs, which userfaultfd can serve only on kernels with the KVM half of the
// "mm, kvm: allow uffd support in guest_memfd" series. Plain C++, no N-API;
// functions return -errno on failure. Thread: any.
// See: Documentation/virt/kvm/api.rst (KVM_CREATE_GUEST_MEMFD).
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>

// Newer than the oldest headers this builds with (Linux 6.1).
#ifndef KVM_CREATE_GUEST_MEMFD
struct kvm_create_guest_memfd {
  __u64 size;
  __u64 flags;
  __u64 reserved[6];
};
#define KVM_CREATE_GUEST_MEMFD _IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)
#endif
#ifndef KVM_SET_USER_MEMORY_REGION2
struct kvm_userspace_memory_region2 {
  __u32 slot;
  __u32 flags;
  __u64 guest_phys_addr;
  __u64 memory_size;
  __u64 userspace_addr;
  __u64 guest_memfd_offset;
  __u32 guest_memfd;
  __u32 pad1;
  __u64 pad2[14];
};
#define KVM_SET_USER_MEMORY_REGION2 _IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)
#endif
#ifndef GUEST_MEMFD_FLAG_MMAP
#define GUEST_MEMFD_FLAG_MMAP (1ULL << 0)
#endif
#ifndef GUEST_MEMFD_FLAG_INIT_SHARED
#define GUEST_MEMFD_FLAG_INIT_SHARED (1ULL << 1)
#endif
#ifndef KVM_MEM_GUEST_MEMFD
#define KVM_MEM_GUEST_MEMFD (1UL << 2)
#endif
#ifndef KVM_CAP_GUEST_MEMFD
#define KVM_CAP_GUEST_MEMFD 234
#endif
#ifndef KVM_CAP_GUEST_MEMFD_FLAGS
#define KVM_CAP_GUEST_MEMFD_FLAGS 244
#endif

namespace kvm {

struct GuestMemfdResult {
  int fd = -1;
  // Which step failed: "open(/dev/kvm)", "ioctl(KVM_CREATE_VM)" or
  // "ioctl(KVM_CREATE_GUEST_MEMFD)".
  const char* step = nullptr;
  // KVM_CHECK_EXTENSION(KVM_CAP_GUEST_MEMFD_FLAGS): the flags this host accepts
  // (0 before Linux 6.18, which knows no flags and no such capability).
  uint64_t supported_flags = 0;
  // The flags the guest_memfd was created with.
  uint64_t flags = 0;
};

// Creates a guest_memfd of `size` bytes on a fresh VM, with those of
// `wanted_flags` that this host supports (older kernels reject unknown flags
// with EINVAL; the caller learns from result->flags what it got). The VM stays
// alive as long as the guest_memfd does. Returns 0 or -errno.
int CreateGuestMemfd(uint64_t size, uint64_t wanted_flags, GuestMemfdResult* result);

}  // namespace kvm
