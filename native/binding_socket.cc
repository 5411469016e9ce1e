// The socket binding: Unix sockets that carry descriptors, the readiness of
// a descriptor for JavaScript (WatchHandle), and the pidfd of the process at
// the other end of a socket.
#include <uv.h>

#include <cerrno>
#include <string>
#include <vector>

#include "binding_util.h"
#include "fd_watch.h"
#include "pidfd.h"
#include "unix_socket.h"

namespace binding {
namespace {

// Readiness of any descriptor (a Unix socket) for JavaScript:
// new WatchHandle(fd, onReady(status, readable, hangup)). It never closes fd.
class WatchHandle : public Napi::ObjectWrap<WatchHandle>, public FdWatch::Sink {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "WatchHandle",
                       {
                           InstanceMethod<&WatchHandle::JsStart>("start"),
                           InstanceMethod<&WatchHandle::JsStop>("stop"),
                           InstanceMethod<&WatchHandle::JsClose>("close"),
                       });
  }

  explicit WatchHandle(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<WatchHandle>(info), on_ready_(info.Env(), FunctionArg(info, 1)) {
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(info.Env(), &loop);
    int err = 0;
    watch_ = FdWatch::Create(loop, Int(info, 0), this, &err);
    if (watch_ == nullptr) ThrowErrno(info.Env(), err, "uv_poll_init");
  }

  ~WatchHandle() override { Destroy(); }

  void OnReady(int status, int events) override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (status < 0) Stop();
    on_ready_.Call(Value(), {Napi::Number::New(env, status), Napi::Boolean::New(env, events & UV_READABLE),
                             Napi::Boolean::New(env, events & UV_DISCONNECT)});
  }

 private:
  Napi::Value JsStart(const Napi::CallbackInfo& info) {
    if (watch_ == nullptr) ThrowCode(info.Env(), "ERR_UFFD_CLOSED", "uv_poll_start");
    if (!held_) {
      int r = watch_->Start(UV_READABLE | UV_DISCONNECT);
      if (r < 0) ThrowErrno(info.Env(), r, "uv_poll_start");
      held_ = true;
      Ref();
      on_ready_.Hold();
    }
    return info.Env().Undefined();
  }

  Napi::Value JsStop(const Napi::CallbackInfo& info) {
    Stop();
    return info.Env().Undefined();
  }

  Napi::Value JsClose(const Napi::CallbackInfo& info) {
    Stop();
    Destroy();
    return info.Env().Undefined();
  }

  // While started, the watch holds the JavaScript object and its callback.
  void Stop() {
    if (!held_) return;
    if (watch_ != nullptr) watch_->Stop();
    held_ = false;
    Unref();
    on_ready_.Release();
  }

  void Destroy() {
    if (watch_ == nullptr) return;
    watch_->Destroy();
    watch_ = nullptr;
  }

  FdWatch* watch_ = nullptr;
  bool held_ = false;
  JsCallback on_ready_;
};

// ---- Unix sockets that carry descriptors ----

std::string StringArg(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsString()) throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

Napi::Value SocketListen(const Napi::CallbackInfo& info) {
  int fd = unix_socket::Listen(StringArg(info, 0), Int(info, 1));
  if (fd < 0) ThrowErrno(info.Env(), fd, "listen");
  return Napi::Number::New(info.Env(), fd);
}

// accept(listener) -> fd, or -1 when no connection is pending
Napi::Value SocketAccept(const Napi::CallbackInfo& info) {
  int fd = unix_socket::Accept(Int(info, 0));
  if (fd == -EAGAIN) return Napi::Number::New(info.Env(), -1);
  if (fd < 0) ThrowErrno(info.Env(), fd, "accept");
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value SocketConnect(const Napi::CallbackInfo& info) {
  int fd = unix_socket::Connect(StringArg(info, 0));
  if (fd < 0) ThrowErrno(info.Env(), fd, "connect");
  return Napi::Number::New(info.Env(), fd);
}

// send(fd, data, fds[]) -> bytes sent
Napi::Value SocketSend(const Napi::CallbackInfo& info) {
  Bytes data = BytesOf(info, 1);
  std::vector<int> fds;
  Napi::Array list = info[2].As<Napi::Array>();
  for (uint32_t i = 0; i < list.Length(); i++) fds.push_back(list.Get(i).As<Napi::Number>().Int32Value());
  long n = unix_socket::Send(Int(info, 0), reinterpret_cast<const void*>(data.address), data.length, fds);
  if (n < 0) ThrowErrno(info.Env(), static_cast<int>(n), "sendmsg");
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

// receive(fd, maxBytes, maxFds) -> { data: Buffer, fds: number[], fdsTruncated }
// (data empty: end of stream), or null when nothing is there yet.
Napi::Value SocketReceive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  unix_socket::Received received;
  long n = unix_socket::Receive(Int(info, 0), U64(info, 1), U64(info, 2), &received);
  if (n == -EAGAIN) return env.Null();
  if (n < 0) ThrowErrno(env, static_cast<int>(n), "recvmsg");
  Napi::Object result = Napi::Object::New(env);
  result.Set("data", Napi::Buffer<char>::Copy(env, received.data.data(), received.data.size()));
  Napi::Array fds = Napi::Array::New(env, received.fds.size());
  for (size_t i = 0; i < received.fds.size(); i++) fds.Set(static_cast<uint32_t>(i), Napi::Number::New(env, received.fds[i]));
  result.Set("fds", fds);
  result.Set("fdsTruncated", Napi::Boolean::New(env, received.fds_truncated));
  return result;
}

Napi::Value SocketPeer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  unix_socket::Credentials cred{};
  int r = unix_socket::PeerCredentials(Int(info, 0), &cred);
  if (r < 0) ThrowErrno(env, r, "getsockopt(SO_PEERCRED)");
  Napi::Object result = Napi::Object::New(env);
  result.Set("pid", Napi::Number::New(env, cred.pid));
  result.Set("uid", Napi::Number::New(env, cred.uid));
  result.Set("gid", Napi::Number::New(env, cred.gid));
  return result;
}

// socketPeerPidfd(fd) -> a pidfd for the peer process
Napi::Value SocketPeerPidfd(const Napi::CallbackInfo& info) {
  int r = unix_socket::PeerPidfd(Int(info, 0));
  if (r < 0) ThrowErrno(info.Env(), r, "getsockopt(SO_PEERPIDFD)");
  return Napi::Number::New(info.Env(), r);
}

// pidfdOpen(pid) -> fd
Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  int fd = pidfd::Open(Int(info, 0));
  if (fd < 0) ThrowErrno(info.Env(), fd, "pidfd_open");
  return Napi::Number::New(info.Env(), fd);
}

// pidfdSignal(fd, signal)
Napi::Value PidfdSignal(const Napi::CallbackInfo& info) {
  int r = pidfd::SendSignal(Int(info, 0), Int(info, 1));
  if (r < 0) ThrowErrno(info.Env(), r, "pidfd_send_signal");
  return info.Env().Undefined();
}

Napi::Value DescriptorKind(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), unix_socket::DescriptorKind(Int(info, 0)));
}

}  // namespace

void ExportSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("WatchHandle", WatchHandle::Define(env));
  exports.Set("socketListen", Napi::Function::New<SocketListen>(env));
  exports.Set("socketAccept", Napi::Function::New<SocketAccept>(env));
  exports.Set("socketConnect", Napi::Function::New<SocketConnect>(env));
  exports.Set("socketSend", Napi::Function::New<SocketSend>(env));
  exports.Set("socketReceive", Napi::Function::New<SocketReceive>(env));
  exports.Set("socketPeer", Napi::Function::New<SocketPeer>(env));
  exports.Set("socketPeerPidfd", Napi::Function::New<SocketPeerPidfd>(env));
  exports.Set("descriptorKind", Napi::Function::New<DescriptorKind>(env));
  exports.Set("pidfdOpen", Napi::Function::New<PidfdOpen>(env));
  exports.Set("pidfdSignal", Napi::Function::New<PidfdSignal>(env));
}

}  // namespace binding
