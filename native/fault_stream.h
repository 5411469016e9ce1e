// Delivers a uffd's messages on the thread that runs a libuv loop (the Node
// main thread or a worker's), with no thread of its own: an FdWatch on the
// O_NONBLOCK uffd, and on each wake-up one read(2) of every pending message
// (up to kCapacity), handed over in one call. This is the fastest route to
// JavaScript measured on these machines (../shared/research/
// handoff-measurements.md, design C): one wake-up per batch, where a reader
// thread plus a thread-safe function needs two. libuv polls level-triggered,
// so messages beyond the capacity wake it again. No N-API.
// Thread: the loop's thread, for every method.
#pragma once

#include <cstddef>

#include "fd_watch.h"
#include "uffd_abi.h"

class FaultStream : private FdWatch::Sink {
 public:
  class Sink {
   public:
    virtual ~Sink() = default;
    // The batch is valid until this returns: the next read reuses it.
    virtual void OnMessages(const uffd_msg* msgs, size_t n) = 0;
    // The uffd cannot be read any more (-errno); the stream has stopped.
    virtual void OnStreamError(int error) = 0;
  };

  // Most messages one wake-up reads: 2 KiB, more than the faults 64 blocked
  // threads can have queued.
  static constexpr size_t kCapacity = 64;

  // Fails (returns nullptr, *error = -errno) if libuv refuses the fd.
  static FaultStream* Create(uv_loop_t* loop, int fd, Sink* sink, int* error);

  int Start();
  void Stop();
  void Ref() { watch_->Ref(); }
  void Unref() { watch_->Unref(); }
  // Stops for good and frees the stream; the fd may be closed right after.
  void Destroy();

 private:
  FaultStream(int fd, Sink* sink) : fd_(fd), sink_(sink) {}
  void OnReady(int status, int events) override;

  FdWatch* watch_ = nullptr;
  int fd_;
  Sink* sink_;
  uffd_msg buffer_[kCapacity];
};
