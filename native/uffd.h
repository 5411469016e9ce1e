// The userfaultfd core: opening a uffd, the API handshake, and one function per
// ioctl. Plain C++ over the kernel ABI, no N-API: every function returns 0 (or
// a count) on success and -errno on failure, and never throws. Thread: any;
// the kernel serialises ioctls on one uffd itself.
// See: man 2 userfaultfd, man 2 ioctl_userfaultfd,
// Documentation/admin-guide/mm/userfaultfd.rst.
#pragma once

#include <cstddef>
#include <cstdint>

#include "uffd_abi.h"

namespace uffd {

enum class OpenMethod { kSyscall, kDevice };

// What each way of opening answered; 0 means not tried or succeeded.
struct OpenReport {
  OpenMethod method = OpenMethod::kSyscall;
  int syscall_error = 0;
  int device_error = 0;
};

// Opens an O_NONBLOCK | O_CLOEXEC uffd: userfaultfd(2) first, then
// /dev/userfaultfd (USERFAULTFD_IOC_NEW) when the syscall is refused.
// Returns the fd, or -errno of the syscall attempt with both errors in report.
int Open(bool user_mode_only, OpenReport* report);

// UFFDIO_API with the requested feature bits. On success *offered holds every
// feature the kernel supports and *ioctls the ioctls allowed on the fd.
int Api(int fd, uint64_t features, uint64_t* offered, uint64_t* ioctls);

// The features this kernel offers, learned on a throwaway uffd so that the
// caller's uffd can still be handshaken with any subset of them.
int QueryFeatures(bool user_mode_only, uint64_t* offered);

int Register(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t* ioctls);
int Unregister(int fd, uint64_t start, uint64_t len);
int Wake(int fd, uint64_t start, uint64_t len);
// UFFDIO_WAKE of the whole user address space: every thread waiting on a
// fault of this uffd wakes and faults again (what closing its last
// descriptor does, without closing it).
int WakeAll(int fd);
int WriteProtect(int fd, uint64_t start, uint64_t len, uint64_t mode);
// UFFDIO_RWPROTECT (Linux 7.3): mode UFFDIO_RWPROTECT_MODE_RWP installs
// read-write protection on the present pages, no RWP bit removes it (and
// wakes the waiting threads unless DONTWAKE).
int RwProtect(int fd, uint64_t start, uint64_t len, uint64_t mode);
// UFFDIO_SET_MODE (Linux 7.3): turns run-time toggleable features on or off.
int SetMode(int fd, uint64_t enable, uint64_t disable);

// The resolving ioctls. The kernel may do less than asked (a partial count
// with -EAGAIN): these retry the rest, so on return *done holds every byte
// resolved, and a non-zero result is the error that stopped them (-EEXIST:
// a page was already there; -EAGAIN with no progress: the address space is
// changing and the pending events must be read first).
int Copy(int fd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode, uint64_t* done);
int ZeroPage(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t* done);
int Continue(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t* done);
int Poison(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t* done);
int Move(int fd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode, uint64_t* done);

// Reads up to max messages without blocking. Returns how many, or -EAGAIN
// when none is pending.
long ReadMessages(int fd, uffd_msg* msgs, size_t max);

// Reads every message queued, without blocking, and drops it: an event
// completes when it is read, so the thread that queued it (a madvise that
// raised REMOVE, in a process that keeps its own copy of the uffd) stops
// waiting. A FORK event's new uffd is closed. The events come only after
// every pending fault has been read, and a fault read is gone from the queue
// for any other holder of the uffd; so once the queue is empty each fault
// read is woken (UFFDIO_WAKE): its thread faults again, and that message
// goes to whoever else reads this uffd (or waits, as it would have).
void DrainMessages(int fd);

int Close(int fd);

}  // namespace uffd
