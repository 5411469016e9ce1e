// Memory the library creates for userfaultfd to manage: memfds (shmem or
// hugetlbfs), shared mappings of them, and anonymous private mappings. Plain
// C++, no N-API; functions return -errno on failure. Thread: any.
// See: man 2 memfd_create, man 2 mmap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace memory {

// huge_page_log2: 0 for ordinary shmem, otherwise log2 of the huge page size
// (21 for 2 MiB, 30 for 1 GiB); 1 asks for the system's default huge page size.
int MemfdCreate(const char* name, uint64_t size, unsigned huge_page_log2);

// The page size that governs alignment on a file: st_blksize, which hugetlbfs
// sets to its huge page size.
long FilePageSize(int fd);

long SystemPageSize();

// Maps fd [offset, offset+length) shared, read-write. Returns the address
// through *address.
int MapShared(int fd, uint64_t offset, uint64_t length, uint64_t* address);

// Maps fd [offset, offset+length) read-only: a page source, such as a
// snapshot's memory file.
int MapReadOnly(int fd, uint64_t offset, uint64_t length, uint64_t* address);

// An anonymous private read-write mapping, with huge pages when huge_page_log2
// is non-zero (see MemfdCreate).
int MapAnonymous(uint64_t length, unsigned huge_page_log2, uint64_t* address);

int Unmap(uint64_t address, uint64_t length);

// Replaces [address, address+length) with fresh anonymous zero memory, so that
// a view another thread still holds reads zeros instead of faulting; the
// userfaultfd registration of the old range ends with it.
int Detach(uint64_t address, uint64_t length);

// Whether every page of [address, address+length) is mapped in this process
// (pagemap's present bit): a read of a page that is not may block on
// userfaultfd. Returns 1 if all are present, 0 if not, -errno on failure.
int AllPresent(uint64_t address, uint64_t length);

// madvise: MADV_DONTNEED (private memory: the pages are gone, a later access
// faults as missing) or MADV_REMOVE (shared memory: the file's pages are freed
// too). With UFFD_FEATURE_EVENT_REMOVE this blocks until the uffd's reader has
// read the REMOVE event.
int Discard(uint64_t address, uint64_t length, bool remove);

// PAGEMAP_SCAN (Linux 6.7) of process pid (0: this one) for pages written
// since they were write-protected under UFFD_FEATURE_WP_ASYNC. With rearm,
// the written pages are write-protected again in the same walk, so the next
// scan reports only later writes. Appends [start, end) ranges to *ranges.
struct Range {
  uint64_t start;
  uint64_t end;
};
int ScanWritten(int pid, uint64_t start, uint64_t length, bool rearm, std::vector<Range>* ranges);

// PAGEMAP_SCAN for pages accessed (read or written) since they were
// read-write protected under UFFD_FEATURE_RWP_ASYNC (PAGE_IS_ACCESSED, Linux
// 7.3): the working set. Re-arming is UFFDIO_RWPROTECT's job, not the scan's.
int ScanAccessed(int pid, uint64_t start, uint64_t length, std::vector<Range>* ranges);

}  // namespace memory
