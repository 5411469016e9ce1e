#include "kvm.h"

#include <cerrno>
#include <fcntl.h>
#include <unistd.h>

namespace kvm {

int CreateGuestMemfd(uint64_t size, uint64_t wanted_flags, GuestMemfdResult* result) {
  *result = GuestMemfdResult{};
  int dev = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (dev < 0) {
    result->step = "open(/dev/kvm)";
    return -errno;
  }
  int vm = ioctl(dev, KVM_CREATE_VM, 0);
  if (vm < 0) {
    int err = -errno;
    close(dev);
    result->step = "ioctl(KVM_CREATE_VM)";
    return err;
  }
  int caps = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD_FLAGS);
  result->supported_flags = caps > 0 ? static_cast<uint64_t>(caps) : 0;
  result->flags = wanted_flags & result->supported_flags;
  kvm_create_guest_memfd args{};
  args.size = size;
  args.flags = result->flags;
  int fd = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &args);
  int err = fd < 0 ? -errno : 0;
  // The guest_memfd holds its own reference on the VM.
  close(vm);
  close(dev);
  if (fd < 0) {
    result->step = "ioctl(KVM_CREATE_GUEST_MEMFD)";
    return err;
  }
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  result->fd = fd;
  return 0;
}

}  // namespace kvm
