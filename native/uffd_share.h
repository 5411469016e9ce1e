// A uffd descriptor used by more than one thread: the environment that opened
// it (its owner) and the workers it lends it to, which wait for its faults
// inside the addon and resolve them in JavaScript with no event loop involved
// (a worker-thread handler: a busy main thread never delays a fault).
//
// The descriptor is closed when the last user lets go, never while another
// thread may be inside a wait or an ioctl on it (the number could otherwise be
// reused under it). The owner's Shutdown() wakes every waiter at once; they
// return -ECANCELED, and their JavaScript lets go; a borrower that is not
// waiting learns of it from its event loop (DupShutdownFd). Lending goes through a
// process-wide table of ids, since a worker receives plain data, not pointers;
// the table holds no reference, so a lent id outlives nothing.
// No N-API. Thread: any.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "spin_policy.h"
#include "uffd_abi.h"

class UffdShare {
 public:
  // Takes ownership of fd. Fails with nullptr and *error = -errno.
  static std::shared_ptr<UffdShare> Adopt(int fd, int* error);
  ~UffdShare();
  UffdShare(const UffdShare&) = delete;
  UffdShare& operator=(const UffdShare&) = delete;

  int fd() const { return fd_; }
  // Wakes every Wait() for good; they return -ECANCELED from now on.
  void Shutdown();
  bool shut_down() const { return shut_down_.load(std::memory_order_acquire); }
  // A descriptor of the caller's own (it closes it) that polls readable once
  // Shutdown() has run: a borrower's event loop watches it, to let go of the
  // uffd when the owner closes it. -errno on failure.
  int DupShutdownFd() const;

  // Blocks the calling thread until messages are pending, then reads up to
  // max of them: first spinning for spin's window, then in poll(2) for at most
  // timeout_ms (a bound, so that a worker asked to terminate gets back to
  // JavaScript); where faults come at a steady pace, the poll is cut short
  // by spin's Deferral and a spin. Returns how many were read, 0 when the
  // time ran out, -ECANCELED after Shutdown(), or -errno.
  long Wait(uffd_msg* out, size_t max, int timeout_ms, SpinPolicy* spin);

  // An id any thread can Borrow() while the share is alive and not shut down:
  // one per share, however often it is lent, so lending costs nothing lasting.
  static uint64_t Lend(const std::shared_ptr<UffdShare>& share);
  // nullptr when the share is gone or shut down.
  static std::shared_ptr<UffdShare> Borrow(uint64_t id);

 private:
  UffdShare(int fd, int stop_fd) : fd_(fd), stop_fd_(stop_fd) {}
  long Spin(uffd_msg* out, size_t max, SpinPolicy* spin);

  int fd_;
  int stop_fd_;
  std::atomic<bool> shut_down_{false};
  uint64_t lent_id_ = 0;  // Lend()'s id, 0 until lent; under the lend table's lock
};
