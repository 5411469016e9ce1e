#include "memory.h"

#include <cerrno>
#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/fs.h>
#include <sys/ioctl.h>

#include <string>

// PAGEMAP_SCAN arrived in Linux 6.7, after the oldest headers this builds with.
#ifndef PAGEMAP_SCAN
#define PAGE_IS_WRITTEN (1 << 1)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
struct page_region {
  __u64 start;
  __u64 end;
  __u64 categories;
};
struct pm_scan_arg {
  __u64 size;
  __u64 flags;
  __u64 start;
  __u64 end;
  __u64 walk_end;
  __u64 vec;
  __u64 vec_len;
  __u64 max_pages;
  __u64 category_inverted;
  __u64 category_mask;
  __u64 category_anyof_mask;
  __u64 return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

// Linux 7.3: on ranges registered in RWP mode, pages accessed since protection.
#ifndef PAGE_IS_ACCESSED
#define PAGE_IS_ACCESSED (1 << 9)
#endif

#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif

namespace memory {
namespace {

int Errno() { return -errno; }

unsigned HugeFlags(unsigned huge_page_log2, unsigned shift) {
  // log2 1 means the default huge page size: no size bits.
  if (huge_page_log2 <= 1) return 0;
  return huge_page_log2 << shift;
}

}  // namespace

int MemfdCreate(const char* name, uint64_t size, unsigned huge_page_log2) {
  unsigned flags = MFD_CLOEXEC;
  if (huge_page_log2 != 0) flags |= MFD_HUGETLB | HugeFlags(huge_page_log2, MFD_HUGE_SHIFT);
  int fd = static_cast<int>(syscall(SYS_memfd_create, name, flags));
  if (fd < 0) return Errno();
  if (ftruncate(fd, static_cast<off_t>(size)) < 0) {
    int err = Errno();
    close(fd);
    return err;
  }
  return fd;
}

long FilePageSize(int fd) {
  struct stat st;
  if (fstat(fd, &st) < 0) return Errno();
  return st.st_blksize;
}

long SystemPageSize() { return sysconf(_SC_PAGESIZE); }

int MapShared(int fd, uint64_t offset, uint64_t length, uint64_t* address) {
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) return Errno();
  *address = reinterpret_cast<uint64_t>(p);
  return 0;
}

int MapReadOnly(int fd, uint64_t offset, uint64_t length, uint64_t* address) {
  void* p = mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) return Errno();
  *address = reinterpret_cast<uint64_t>(p);
  return 0;
}

int MapAnonymous(uint64_t length, unsigned huge_page_log2, uint64_t* address) {
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  if (huge_page_log2 != 0) flags |= MAP_HUGETLB | static_cast<int>(HugeFlags(huge_page_log2, MAP_HUGE_SHIFT));
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) return Errno();
  *address = reinterpret_cast<uint64_t>(p);
  return 0;
}

int Unmap(uint64_t address, uint64_t length) {
  return munmap(reinterpret_cast<void*>(address), length) < 0 ? Errno() : 0;
}

int Detach(uint64_t address, uint64_t length) {
  void* p = mmap(reinterpret_cast<void*>(address), length, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? Errno() : 0;
}

int AllPresent(uint64_t address, uint64_t length) {
  // pagemap is indexed by base page whatever the mapping's page size.
  long base = SystemPageSize();
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno();
  uint64_t first = address / static_cast<uint64_t>(base);
  uint64_t count = (length + static_cast<uint64_t>(base) - 1) / static_cast<uint64_t>(base);
  uint64_t entries[512];
  int result = 1;
  for (uint64_t i = 0; i < count && result == 1;) {
    uint64_t n = count - i < 512 ? count - i : 512;
    ssize_t got = pread(fd, entries, n * sizeof(uint64_t), static_cast<off_t>((first + i) * sizeof(uint64_t)));
    if (got < static_cast<ssize_t>(n * sizeof(uint64_t))) {
      result = got < 0 ? Errno() : -EIO;
      break;
    }
    for (uint64_t j = 0; j < n; j++) {
      if (!(entries[j] >> 63)) {  // bit 63: page present
        result = 0;
        break;
      }
    }
    i += n;
  }
  close(fd);
  return result;
}

int Discard(uint64_t address, uint64_t length, bool remove) {
  int r;
  do {
    r = madvise(reinterpret_cast<void*>(address), length, remove ? MADV_REMOVE : MADV_DONTNEED);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? Errno() : 0;
}

namespace {

int Scan(int pid, uint64_t start, uint64_t length, uint64_t category, uint64_t flags, std::vector<Range>* ranges) {
  std::string path = pid == 0 ? "/proc/self/pagemap" : "/proc/" + std::to_string(pid) + "/pagemap";
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno();
  page_region regions[256];
  uint64_t end = start + length;
  int result = 0;
  while (start < end) {
    pm_scan_arg arg{};
    arg.size = sizeof(arg);
    arg.flags = flags;
    arg.start = start;
    arg.end = end;
    arg.vec = reinterpret_cast<uint64_t>(regions);
    arg.vec_len = sizeof(regions) / sizeof(regions[0]);
    arg.category_mask = category;
    arg.return_mask = category;
    int n = ioctl(fd, PAGEMAP_SCAN, &arg);
    if (n < 0) {
      if (errno == EINTR) continue;
      result = Errno();
      break;
    }
    for (int i = 0; i < n; i++) {
      // The kernel merges adjacent pages into one region, across calls too.
      if (!ranges->empty() && ranges->back().end == regions[i].start) {
        ranges->back().end = regions[i].end;
      } else {
        ranges->push_back({regions[i].start, regions[i].end});
      }
    }
    // The walk stops early when the output vector is full.
    if (arg.walk_end <= start) break;
    start = arg.walk_end;
  }
  close(fd);
  return result;
}

}  // namespace

int ScanWritten(int pid, uint64_t start, uint64_t length, bool rearm, std::vector<Range>* ranges) {
  return Scan(pid, start, length, PAGE_IS_WRITTEN, rearm ? (PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC) : 0, ranges);
}

int ScanAccessed(int pid, uint64_t start, uint64_t length, std::vector<Range>* ranges) {
  return Scan(pid, start, length, PAGE_IS_ACCESSED, 0, ranges);
}

}  // namespace memory
