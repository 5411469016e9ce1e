#include "fault_poller.h"

#include <cerrno>

#include "uffd.h"

FaultPoller::FaultPoller(int fd, Sink* sink) : fd_(fd), sink_(sink) {}

FaultPoller* FaultPoller::Create(uv_loop_t* loop, int fd, Sink* sink, int* error) {
  auto* poller = new FaultPoller(fd, sink);
  // uv_poll_init also sets O_NONBLOCK, which the uffd already has: without it
  // poll(2) reports POLLERR on a uffd and libuv would stop the handle.
  int r = uv_poll_init(loop, &poller->handle_, fd);
  if (r < 0) {
    delete poller;
    *error = r;
    return nullptr;
  }
  poller->handle_.data = poller;
  return poller;
}

int FaultPoller::Start() {
  if (active_) return 0;
  int r = uv_poll_start(&handle_, UV_READABLE, OnPoll);
  if (r == 0) active_ = true;
  return r;
}

void FaultPoller::Stop() {
  if (!active_) return;
  uv_poll_stop(&handle_);
  active_ = false;
}

void FaultPoller::Ref() { uv_ref(reinterpret_cast<uv_handle_t*>(&handle_)); }
void FaultPoller::Unref() { uv_unref(reinterpret_cast<uv_handle_t*>(&handle_)); }

void FaultPoller::Destroy() {
  sink_ = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&handle_),
           [](uv_handle_t* h) { delete static_cast<FaultPoller*>(h->data); });
}

void FaultPoller::OnPoll(uv_poll_t* handle, int status, int /*events*/) {
  auto* self = static_cast<FaultPoller*>(handle->data);
  if (self->sink_ == nullptr) return;
  if (status < 0) {
    self->Stop();
    self->sink_->OnPollError(status);
    return;
  }
  long n = uffd::ReadMessages(self->fd_, self->buffer_, kCapacity);
  // libuv may report readable when nothing is there (another reader won it).
  if (n == -EAGAIN || n == 0) return;
  if (n < 0) {
    self->Stop();
    self->sink_->OnPollError(static_cast<int>(n));
    return;
  }
  self->sink_->OnMessages(self->buffer_, static_cast<size_t>(n));
}
