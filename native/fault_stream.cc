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
  delete this;
}

void FaultStream::OnReady(int status, int /*events*/) {
  if (status < 0) {
    sink_->OnStreamError(status);
    return;
  }
  long n = uffd::ReadMessages(fd_, buffer_, kCapacity);
  // libuv may report readable when nothing is there (another reader won it).
  if (n == -EAGAIN || n == 0) return;
  if (n < 0) {
    Stop();
    sink_->OnStreamError(static_cast<int>(n));
    return;
  }
  sink_->OnMessages(buffer_, static_cast<size_t>(n));
}
