#include "message_queue.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

MessageQueue* MessageQueue::Create(uv_loop_t* loop, FaultStream::Sink* sink, int* error) {
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) {
    *error = -errno;
    return nullptr;
  }
  auto* queue = new MessageQueue(efd, sink);
  queue->watch_ = FdWatch::Create(loop, efd, queue, error);
  if (queue->watch_ == nullptr) {
    close(efd);
    delete queue;
    return nullptr;
  }
  return queue;
}

void MessageQueue::Signal() {
  uint64_t one = 1;
  // EAGAIN only when the counter is about to overflow: it is signalled then.
  (void)!write(efd_, &one, sizeof one);
}

void MessageQueue::Push(const uffd_msg* msgs, size_t n) {
  if (n == 0) return;
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    was_empty = queued_.empty();
    queued_.insert(queued_.end(), msgs, msgs + n);
  }
  if (was_empty) Signal();
}

void MessageQueue::PushError(int error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_ != 0) return;
    error_ = error;
  }
  Signal();
}

int MessageQueue::Start() { return watch_->active() ? 0 : watch_->Start(UV_READABLE); }

void MessageQueue::Destroy() {
  watch_->Destroy();
  close(efd_);
  delete this;
}

void MessageQueue::OnReady(int status, int /*events*/) {
  if (status < 0) {
    sink_->OnStreamError(status);
    return;
  }
  uint64_t count;
  (void)!read(efd_, &count, sizeof count);
  size_t n;
  bool more;
  int error;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    n = std::min(queued_.size(), FaultStream::kCapacity);
    std::copy(queued_.begin(), queued_.begin() + static_cast<std::ptrdiff_t>(n), batch_);
    queued_.erase(queued_.begin(), queued_.begin() + static_cast<std::ptrdiff_t>(n));
    more = !queued_.empty();
    error = queued_.empty() ? error_ : 0;
  }
  // What is left waits for the next loop iteration, so a flood of slow-path
  // messages cannot keep timers and I/O from running.
  if (more) Signal();
  // The sink may destroy this queue: nothing touches `this` after it.
  if (error != 0 && n == 0) {
    watch_->Stop();
    sink_->OnStreamError(error);
    return;
  }
  if (error != 0) Signal();
  if (n > 0) sink_->OnMessages(batch_, n);
}
