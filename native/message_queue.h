// Hands uffd messages from a native thread to the thread that runs a libuv
// loop: the native fast path's faults it cannot answer, and every non-fault
// event. The producer appends under a lock and signals an eventfd; the loop
// watches the eventfd (FdWatch, like FaultStream watches the uffd) and passes
// up to FaultStream::kCapacity messages per wake-up to the same sink
// FaultStream uses, so JavaScript sees one kind of batch whoever read it.
// Only the slow path crosses here: what the native thread resolves never does.
// No N-API. Thread: Push from any thread; everything else on the loop's thread.
#pragma once

#include <mutex>
#include <vector>

#include "fault_stream.h"
#include "fd_watch.h"

class MessageQueue : private FdWatch::Sink {
 public:
  // Fails (returns nullptr, *error = -errno).
  static MessageQueue* Create(uv_loop_t* loop, FaultStream::Sink* sink, int* error);

  // Thread: any. Never blocks on the loop.
  void Push(const uffd_msg* msgs, size_t n);
  // Thread: any. The stream has failed with -errno: tell the sink once.
  void PushError(int error);

  int Start();
  void Ref() { watch_->Ref(); }
  void Unref() { watch_->Unref(); }
  // Stops for good and frees the queue (messages still queued are dropped).
  void Destroy();

 private:
  MessageQueue(int efd, FaultStream::Sink* sink) : efd_(efd), sink_(sink) {}
  void OnReady(int status, int events) override;
  void Signal();

  FdWatch* watch_ = nullptr;
  int efd_;
  FaultStream::Sink* sink_;
  std::mutex mutex_;
  std::vector<uffd_msg> queued_;
  int error_ = 0;
  uffd_msg batch_[FaultStream::kCapacity];
};
