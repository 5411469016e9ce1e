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
#include "spin_policy.h"
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

  // With spinning on, the longest one wake-up keeps the loop thread reading
  // faults before it returns to libuv (timers, I/O, immediates). 1 ms: the
  // resolution of libuv's timers, so a timer fires at most one tick late,
  // while one loop iteration per ms costs well under 1% of the throughput.
  static constexpr uint64_t kLoopCapNs = 1'000'000;

  // Fails (returns nullptr, *error = -errno) if libuv refuses the fd.
  static FaultStream* Create(uv_loop_t* loop, int fd, Sink* sink, int* error);

  int Start();
  void Stop();
  // Adaptive spinning after each batch, capped at kLoopCapNs (default off:
  // it delays the loop's other work by up to the cap).
  void SetSpin(bool enabled) { spin_.set_enabled(enabled); }
  const SpinPolicy::Counters& spin_counters() const { return spin_.counters(); }
  void Ref() { watch_->Ref(); }
  void Unref() { watch_->Unref(); }
  // Stops for good and frees the stream (at the latest when the callback
  // that called it returns); the fd may be closed right after.
  void Destroy();

 private:
  FaultStream(int fd, Sink* sink) : fd_(fd), sink_(sink) {}
  void OnReady(int status, int events) override;

  // Delivers a batch; false when the sink destroyed the stream meanwhile.
  bool Deliver(size_t n);

  FdWatch* watch_ = nullptr;
  int fd_;
  Sink* sink_;
  SpinPolicy spin_;
  bool in_callback_ = false;
  bool destroyed_ = false;
  uint64_t last_batch_end_ = 0;
  uffd_msg buffer_[kCapacity];
};
