// Delivers uffd messages on the thread that runs a libuv loop (the Node main
// thread or a worker's), with no thread of its own: a uv_poll_t watches the
// O_NONBLOCK uffd, and each wake-up reads every pending message (up to the
// buffer's capacity) with one read(2) and hands the batch over in one call.
// This is the fastest route to JavaScript measured on these machines
// (../shared/research/handoff-measurements.md, design C): one wake-up per
// batch, where a reader thread plus a thread-safe function needs two.
// libuv polls level-triggered, so messages beyond the capacity wake it again.
// Uses libuv only, no N-API. Thread: the loop's thread, for every method.
#pragma once

#include <uv.h>

#include <cstddef>

#include "uffd_abi.h"

class FaultPoller {
 public:
  class Sink {
   public:
    virtual ~Sink() = default;
    // The batch is valid until this returns: the next read reuses it.
    virtual void OnMessages(const uffd_msg* msgs, size_t n) = 0;
    // The uffd cannot be read any more (-errno); the poller has stopped.
    virtual void OnPollError(int error) = 0;
  };

  // Most messages one wake-up reads: as many as the kernel queues for 64
  // blocked threads, and 2 KiB.
  static constexpr size_t kCapacity = 64;

  // Fails (returns nullptr, *error = -errno) if libuv refuses the fd.
  static FaultPoller* Create(uv_loop_t* loop, int fd, Sink* sink, int* error);

  int Start();
  void Stop();
  void Ref();
  void Unref();
  // Stops for good and frees the poller once libuv lets go of the handle.
  // The fd may be closed right after this returns.
  void Destroy();

 private:
  FaultPoller(int fd, Sink* sink);
  static void OnPoll(uv_poll_t* handle, int status, int events);

  uv_poll_t handle_;
  int fd_;
  uffd_msg buffer_[kCapacity];
  Sink* sink_;
  bool active_ = false;
};
