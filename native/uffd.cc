#include "uffd.h"

#include <cerrno>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <vector>

namespace uffd {
namespace {

int Errno() { return -errno; }

int IoctlRetryingEintr(int fd, unsigned long request, void* arg) {
  int r;
  do {
    r = ioctl(fd, request, arg);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? Errno() : r;
}

// Runs one resolving ioctl until the whole range is done or it fails without
// progress. `issue` sets the remaining range in the argument, calls the ioctl,
// and returns {result, count the kernel wrote back}. The kernel reports a
// partial resolution as -EAGAIN with a positive count, and an error with no
// progress as a negative count.
template <typename Issue>
int ResolveAll(uint64_t len, uint64_t* done, Issue issue) {
  *done = 0;
  while (*done < len) {
    int64_t progress = 0;
    int r = issue(*done, len - *done, &progress);
    if (r == 0) {
      *done = len;
      return 0;
    }
    if (progress <= 0) return r;
    *done += static_cast<uint64_t>(progress);
  }
  return 0;
}

// ZEROPAGE, CONTINUE and POISON take the same {range, mode} argument and
// differ only in the request and the field the kernel writes its count to.
template <typename Arg, typename Count>
int ResolveRange(int fd, unsigned long request, Count Arg::*count, uint64_t start, uint64_t len,
                 uint64_t mode, uint64_t* done) {
  return ResolveAll(len, done, [&](uint64_t off, uint64_t rest, int64_t* progress) {
    Arg arg{};
    arg.range.start = start + off;
    arg.range.len = rest;
    arg.mode = mode;
    int r = IoctlRetryingEintr(fd, request, &arg);
    *progress = arg.*count;
    return r;
  });
}

}  // namespace

int Open(bool user_mode_only, OpenReport* report) {
  int flags = O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0);
  *report = OpenReport{};
  int fd = static_cast<int>(syscall(SYS_userfaultfd, flags));
  if (fd >= 0) return fd;
  report->syscall_error = Errno();
  // The device exists since Linux 6.1 so that access can be granted by file
  // permissions instead of vm.unprivileged_userfaultfd.
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) {
    report->device_error = Errno();
    return report->syscall_error;
  }
  fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
  if (fd < 0) report->device_error = Errno();
  close(dev);
  if (fd < 0) return report->syscall_error;
  report->method = OpenMethod::kDevice;
  return fd;
}

int Api(int fd, uint64_t features, uint64_t* offered, uint64_t* ioctls) {
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = features;
  int r = IoctlRetryingEintr(fd, UFFDIO_API, &api);
  if (r < 0) return r;
  *offered = api.features;
  *ioctls = api.ioctls;
  return 0;
}

int QueryFeatures(bool user_mode_only, uint64_t* offered) {
  OpenReport report;
  int fd = Open(user_mode_only, &report);
  if (fd < 0) return fd;
  uint64_t ioctls = 0;
  int r = Api(fd, 0, offered, &ioctls);
  close(fd);
  return r;
}

int Register(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t* ioctls) {
  uffdio_register reg{};
  reg.range.start = start;
  reg.range.len = len;
  reg.mode = mode;
  int r = IoctlRetryingEintr(fd, UFFDIO_REGISTER, &reg);
  if (r < 0) return r;
  *ioctls = reg.ioctls;
  return 0;
}

int Unregister(int fd, uint64_t start, uint64_t len) {
  uffdio_range range{start, len};
  return IoctlRetryingEintr(fd, UFFDIO_UNREGISTER, &range);
}

int Wake(int fd, uint64_t start, uint64_t len) {
  uffdio_range range{start, len};
  return IoctlRetryingEintr(fd, UFFDIO_WAKE, &range);
}

int WriteProtect(int fd, uint64_t start, uint64_t len, uint64_t mode) {
  uffdio_writeprotect wp{};
  wp.range.start = start;
  wp.range.len = len;
  wp.mode = mode;
  return IoctlRetryingEintr(fd, UFFDIO_WRITEPROTECT, &wp);
}

int RwProtect(int fd, uint64_t start, uint64_t len, uint64_t mode) {
  uffdio_rwprotect arg{};
  arg.range.start = start;
  arg.range.len = len;
  arg.mode = mode;
  return IoctlRetryingEintr(fd, UFFDIO_RWPROTECT, &arg);
}

int SetMode(int fd, uint64_t enable, uint64_t disable) {
  uffdio_set_mode arg{};
  arg.enable = enable;
  arg.disable = disable;
  return IoctlRetryingEintr(fd, UFFDIO_SET_MODE, &arg);
}

int Copy(int fd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode, uint64_t* done) {
  return ResolveAll(len, done, [&](uint64_t off, uint64_t rest, int64_t* progress) {
    uffdio_copy arg{};
    arg.dst = dst + off;
    arg.src = src + off;
    arg.len = rest;
    arg.mode = mode;
    int r = IoctlRetryingEintr(fd, UFFDIO_COPY, &arg);
    *progress = arg.copy;
    return r;
  });
}

int ZeroPage(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t* done) {
  return ResolveRange(fd, UFFDIO_ZEROPAGE, &uffdio_zeropage::zeropage, start, len, mode, done);
}

int Continue(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t* done) {
  return ResolveRange(fd, UFFDIO_CONTINUE, &uffdio_continue::mapped, start, len, mode, done);
}

int Poison(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t* done) {
  return ResolveRange(fd, UFFDIO_POISON, &uffdio_poison::updated, start, len, mode, done);
}

int Move(int fd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode, uint64_t* done) {
  return ResolveAll(len, done, [&](uint64_t off, uint64_t rest, int64_t* progress) {
    uffdio_move arg{};
    arg.dst = dst + off;
    arg.src = src + off;
    arg.len = rest;
    arg.mode = mode;
    int r = IoctlRetryingEintr(fd, UFFDIO_MOVE, &arg);
    *progress = arg.move;
    return r;
  });
}

long ReadMessages(int fd, uffd_msg* msgs, size_t max) {
  ssize_t n;
  do {
    n = read(fd, msgs, max * sizeof(uffd_msg));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Errno();
  // The kernel only ever returns whole messages.
  return static_cast<long>(n / static_cast<ssize_t>(sizeof(uffd_msg)));
}

int WakeAll(int fd) {
  // The range must start at or above vm.mmap_min_addr and end within the
  // process's address space, whose size the kernel does not tell: the
  // largest that it accepts (57-bit, 52, 48, then x86-64's 47-bit).
  uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE)), start = 1 << 20;
  for (int bits : {56, 52, 48, 47}) {
    uint64_t end = (uint64_t{1} << bits) - page;
    int r = Wake(fd, start, end - start);
    if (r != -EINVAL) return r;
  }
  return -EINVAL;
}

void DrainMessages(int fd) {
  uffd_msg msgs[16];
  std::vector<uint64_t> faulted;
  for (long n; (n = ReadMessages(fd, msgs, 16)) > 0;) {
    for (long i = 0; i < n; i++) {
      if (msgs[i].event == UFFD_EVENT_FORK) close(static_cast<int>(msgs[i].arg.fork.ufd));
      if (msgs[i].event == UFFD_EVENT_PAGEFAULT) faulted.push_back(msgs[i].arg.pagefault.address);
    }
  }
  // Woken only now: woken at once, a thread could fault again before the
  // events behind it were read, and keep this loop going.
  uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  for (uint64_t address : faulted) (void)Wake(fd, address & ~(page - 1), page);
}

int Close(int fd) { return close(fd) < 0 ? Errno() : 0; }

}  // namespace uffd
