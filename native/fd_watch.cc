#include "fd_watch.h"

FdWatch* FdWatch::Create(uv_loop_t* loop, int fd, Sink* sink, int* error) {
  auto* watch = new FdWatch(sink);
  // uv_poll_init sets O_NONBLOCK. A uffd must have it before it is polled:
  // without it poll(2) reports POLLERR on a uffd and libuv stops the handle.
  int r = uv_poll_init(loop, &watch->handle_, fd);
  if (r < 0) {
    delete watch;
    *error = r;
    return nullptr;
  }
  watch->handle_.data = watch;
  return watch;
}

int FdWatch::Start(int events) {
  int r = uv_poll_start(&handle_, events, OnPoll);
  if (r == 0) active_ = true;
  return r;
}

void FdWatch::Stop() {
  if (!active_) return;
  uv_poll_stop(&handle_);
  active_ = false;
}

void FdWatch::Ref() { uv_ref(reinterpret_cast<uv_handle_t*>(&handle_)); }
void FdWatch::Unref() { uv_unref(reinterpret_cast<uv_handle_t*>(&handle_)); }

void FdWatch::Destroy() {
  sink_ = nullptr;
  active_ = false;
  uv_close(reinterpret_cast<uv_handle_t*>(&handle_), [](uv_handle_t* h) { delete static_cast<FdWatch*>(h->data); });
}

void FdWatch::OnPoll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<FdWatch*>(handle->data);
  if (self->sink_ == nullptr) return;
  // libuv stops the handle itself when it reports an error.
  if (status < 0) self->active_ = false;
  self->sink_->OnReady(status, events);
}
