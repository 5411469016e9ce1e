// The kernel's numbers, for lib/constants.ts to check its own against: the
// uffd ABI (uffd_abi.h fills in what the system headers lack), KVM's, and the
// addon's message buffer.
#include <cstddef>

#include "binding_util.h"
#include "fault_stream.h"
#include "kvm.h"
#include "uffd.h"

namespace binding {

Napi::Value Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  // Only the numbers lib/constants.ts checks itself against (test/constants).
  c.Set("UFFD_API", Big(env, UFFD_API));
  c.Set("UFFDIO_API", Big(env, UFFDIO_API));
  c.Set("UFFDIO_REGISTER", Big(env, UFFDIO_REGISTER));
  c.Set("UFFDIO_COPY", Big(env, UFFDIO_COPY));
  c.Set("UFFDIO_MOVE", Big(env, UFFDIO_MOVE));
  c.Set("UFFDIO_POISON", Big(env, UFFDIO_POISON));
  c.Set("UFFDIO_CONTINUE", Big(env, UFFDIO_CONTINUE));
  c.Set("UFFDIO_ZEROPAGE", Big(env, UFFDIO_ZEROPAGE));
  c.Set("UFFDIO_WAKE", Big(env, UFFDIO_WAKE));
  c.Set("UFFDIO_UNREGISTER", Big(env, UFFDIO_UNREGISTER));
  c.Set("UFFDIO_WRITEPROTECT", Big(env, UFFDIO_WRITEPROTECT));
  c.Set("UFFDIO_CONTINUE_MODE_WP", Big(env, UFFDIO_CONTINUE_MODE_WP));
  c.Set("UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES", Big(env, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES));
  c.Set("sizeofUffdioMove", Napi::Number::New(env, sizeof(uffdio_move)));
  c.Set("sizeofUffdioPoison", Napi::Number::New(env, sizeof(uffdio_poison)));
  c.Set("USERFAULTFD_IOC_NEW", Big(env, USERFAULTFD_IOC_NEW));
  c.Set("UFFD_FEATURE_MOVE", Big(env, UFFD_FEATURE_MOVE));
  c.Set("UFFD_FEATURE_WP_ASYNC", Big(env, UFFD_FEATURE_WP_ASYNC));
  c.Set("UFFD_FEATURE_POISON", Big(env, UFFD_FEATURE_POISON));
  c.Set("UFFD_FEATURE_WP_UNPOPULATED", Big(env, UFFD_FEATURE_WP_UNPOPULATED));
  c.Set("UFFD_FEATURE_RWP", Big(env, UFFD_FEATURE_RWP));
  c.Set("UFFD_FEATURE_RWP_ASYNC", Big(env, UFFD_FEATURE_RWP_ASYNC));
  c.Set("UFFDIO_RWPROTECT", Big(env, UFFDIO_RWPROTECT));
  c.Set("UFFDIO_SET_MODE", Big(env, UFFDIO_SET_MODE));
  c.Set("UFFDIO_REGISTER_MODE_RWP", Big(env, UFFDIO_REGISTER_MODE_RWP));
  c.Set("UFFDIO_RWPROTECT_MODE_RWP", Big(env, UFFDIO_RWPROTECT_MODE_RWP));
  c.Set("UFFDIO_RWPROTECT_MODE_DONTWAKE", Big(env, UFFDIO_RWPROTECT_MODE_DONTWAKE));
  c.Set("UFFD_PAGEFAULT_FLAG_RWP", Big(env, UFFD_PAGEFAULT_FLAG_RWP));
  c.Set("sizeofUffdioRwprotect", Napi::Number::New(env, sizeof(uffdio_rwprotect)));
  c.Set("sizeofUffdioSetMode", Napi::Number::New(env, sizeof(uffdio_set_mode)));
  c.Set("UFFD_EVENT_PAGEFAULT", Napi::Number::New(env, UFFD_EVENT_PAGEFAULT));
  c.Set("UFFD_EVENT_FORK", Napi::Number::New(env, UFFD_EVENT_FORK));
  c.Set("UFFD_EVENT_REMAP", Napi::Number::New(env, UFFD_EVENT_REMAP));
  c.Set("UFFD_EVENT_REMOVE", Napi::Number::New(env, UFFD_EVENT_REMOVE));
  c.Set("UFFD_EVENT_UNMAP", Napi::Number::New(env, UFFD_EVENT_UNMAP));
  c.Set("KVM_CREATE_VM", Big(env, KVM_CREATE_VM));
  c.Set("KVM_CHECK_EXTENSION", Big(env, KVM_CHECK_EXTENSION));
  c.Set("KVM_CREATE_GUEST_MEMFD", Big(env, KVM_CREATE_GUEST_MEMFD));
  c.Set("KVM_SET_USER_MEMORY_REGION2", Big(env, KVM_SET_USER_MEMORY_REGION2));
  c.Set("sizeofKvmCreateGuestMemfd", Napi::Number::New(env, sizeof(kvm_create_guest_memfd)));
  c.Set("sizeofKvmUserspaceMemoryRegion2", Napi::Number::New(env, sizeof(kvm_userspace_memory_region2)));
  c.Set("GUEST_MEMFD_FLAG_MMAP", Big(env, GUEST_MEMFD_FLAG_MMAP));
  c.Set("GUEST_MEMFD_FLAG_INIT_SHARED", Big(env, GUEST_MEMFD_FLAG_INIT_SHARED));
  c.Set("KVM_MEM_GUEST_MEMFD", Big(env, KVM_MEM_GUEST_MEMFD));
  c.Set("KVM_CAP_GUEST_MEMFD", Big(env, KVM_CAP_GUEST_MEMFD));
  c.Set("KVM_CAP_GUEST_MEMFD_FLAGS", Big(env, KVM_CAP_GUEST_MEMFD_FLAGS));
  c.Set("offsetofKvmCreateGuestMemfdFlags", Napi::Number::New(env, offsetof(kvm_create_guest_memfd, flags)));
  c.Set("offsetofKvmRegion2GuestMemfdOffset", Napi::Number::New(env, offsetof(kvm_userspace_memory_region2, guest_memfd_offset)));
  c.Set("offsetofKvmRegion2GuestMemfd", Napi::Number::New(env, offsetof(kvm_userspace_memory_region2, guest_memfd)));
  c.Set("sizeofUffdMsg", Napi::Number::New(env, sizeof(uffd_msg)));
  c.Set("messageCapacity", Napi::Number::New(env, FaultStream::kCapacity));
  return c;
}

}  // namespace binding
