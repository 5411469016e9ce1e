// Watches a descriptor on a libuv loop with no thread of its own: a uv_poll_t
// that calls its sink when the descriptor is ready. The uffd event stream and
// the Unix sockets that carry descriptors both use it. Uses libuv only, no
// N-API. Thread: the loop's thread, for every method.
#pragma once

#include <uv.h>

class FdWatch {
 public:
  class Sink {
   public:
    virtual ~Sink() = default;
    // status < 0: libuv reports the descriptor unusable (the watch stopped).
    // events: UV_READABLE, UV_WRITABLE, UV_DISCONNECT bits.
    virtual void OnReady(int status, int events) = 0;
  };

  // Fails (returns nullptr, *error = -errno) if libuv refuses the fd.
  static FdWatch* Create(uv_loop_t* loop, int fd, Sink* sink, int* error);

  int Start(int events);
  void Stop();
  bool active() const { return active_; }
  void Ref();
  void Unref();
  // Stops for good and frees the watch once libuv lets go of the handle.
  // The fd may be closed right after this returns.
  void Destroy();

 private:
  explicit FdWatch(Sink* sink) : sink_(sink) {}
  static void OnPoll(uv_poll_t* handle, int status, int events);

  uv_poll_t handle_;
  Sink* sink_;
  bool active_ = false;
};
