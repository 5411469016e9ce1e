#include "fault_stream.h"

#include <cerrno>

#include "uffd.h"

FaultStream* FaultStream::Create(uv_loop_t* loop, int fd, Sink* sink, int* error) {
  auto* stream = new FaultStream(fd, sink);
  stream->watch_ = FdWatch::Create(loop, fd, stream, error);
  if (stream->watch_ == nullptr) {
    delete stream;
    return nullptr;
  }
  return stream;
}

int FaultStream::Start() { return watch_->active() ? 0 : watch_->Start(UV_READABLE); }

void FaultStream::Stop() { watch_->Stop(); }

void FaultStream::Destroy() {
  // The watch is freed by libuv's close callback; this object is not
  // referenced by it once the sink is gone.
  watch_->Destroy();
  if (in_callback_) {
    destroyed_ = true;  // OnReady frees it on its way out
    return;
  }
  delete this;
}

bool FaultStream::Deliver(size_t n) {
  in_callback_ = true;
  sink_->OnMessages(buffer_, n);
  in_callback_ = false;
  if (destroyed_) {
    delete this;
    return false;
  }
  return watch_->active();
}

void FaultStream::OnReady(int status, int /*events*/) {
  if (status < 0) {
    sink_->OnStreamError(status);
    return;
  }
  uint64_t start = SpinPolicy::NowNs();
  long n = uffd::ReadMessages(fd_, buffer_, kCapacity);
  // libuv may report readable when nothing is there (another reader won it).
  if (n == -EAGAIN || n == 0) return;
  if (n < 0) {
    Stop();
    sink_->OnStreamError(static_cast<int>(n));
    return;
  }
  // The gap since the last batch, loop work included: what a sleep cost.
  if (spin_.enabled() && last_batch_end_ != 0) spin_.Slept(start - last_batch_end_);
  if (!Deliver(static_cast<size_t>(n))) return;
  // Spinning, within the cap: after it, libuv runs timers and I/O, and comes
  // back here at once if faults are still pending (level-triggered).
  for (uint64_t window; (window = spin_.Window()) > 0;) {
    uint64_t from = SpinPolicy::NowNs(), now = from;
    bool hit = false;
    for (; now - from < window && now - start < kLoopCapNs; now = SpinPolicy::NowNs()) {
      n = uffd::ReadMessages(fd_, buffer_, kCapacity);
      if (n > 0) {
        spin_.Hit(SpinPolicy::NowNs() - from);
        if (!Deliver(static_cast<size_t>(n))) return;
        hit = true;
        break;
      }
      if (n < 0 && n != -EAGAIN) {
        Stop();
        sink_->OnStreamError(static_cast<int>(n));
        return;
      }
      SpinPolicy::Yield();
    }
    if (!hit) {
      // The cap ending a window is not the window failing.
      if (now - start < kLoopCapNs) spin_.Miss(window);
      break;
    }
    if (SpinPolicy::NowNs() - start >= kLoopCapNs) break;
  }
  last_batch_end_ = SpinPolicy::NowNs();
}
