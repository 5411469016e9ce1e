// The N-API binding: converts JavaScript arguments to the core's types and the
// core's -errno results to errors built by lib/errors.ts. No policy lives here.
// Thread: every function runs on the JavaScript thread of the environment
// (main thread or worker) that loaded the addon.
#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <set>
#include <string>
#include <thread>

#include "fault_stream.h"
#include "fd_watch.h"
#include "kvm.h"
#include "mapping_table.h"
#include "memory.h"
#include "page_server.h"
#include "pidfd.h"
#include "uffd.h"
#include "uffd_share.h"
#include "unix_socket.h"

namespace {

class UffdHandle;

// Per-environment state: a worker that loads the addon gets its own.
struct AddonData {
  Napi::FunctionReference make_error;
  Napi::FunctionReference uffd_constructor;
  std::set<UffdHandle*> handles;
};

AddonData* Data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

// Throws the error lib/errors.ts builds for (-errno, syscall, extra fields).
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall, Napi::Object extra) {
  Napi::Value error = Data(env)->make_error.Call({Napi::Number::New(env, err), Napi::String::New(env, syscall), extra});
  throw Napi::Error(env, error);
}

[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  ThrowErrno(env, err, syscall, Napi::Object::New(env));
}

[[noreturn]] void ThrowCode(Napi::Env env, const char* code, const char* syscall) {
  Napi::Object extra = Napi::Object::New(env);
  extra.Set("code", code);
  ThrowErrno(env, 0, syscall, extra);
}

uint64_t U64(const Napi::CallbackInfo& info, size_t i) {
  if (info[i].IsBigInt()) {
    bool lossless = false;
    uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(info.Env(), "argument " + std::to_string(i) + " is out of range");
    return v;
  }
  if (info[i].IsNumber()) {
    double d = info[i].As<Napi::Number>().DoubleValue();
    if (!(d >= 0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<uint64_t>(d))) {
      throw Napi::RangeError::New(info.Env(), "argument " + std::to_string(i) + " is not a safe non-negative integer");
    }
    return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a bigint or a number");
}

int Int(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number");
  return info[i].As<Napi::Number>().Int32Value();
}

Napi::BigInt Big(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }

Napi::Function FunctionArg(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsFunction()) throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a function");
  return info[i].As<Napi::Function>();
}

struct Bytes {
  uint64_t address;
  uint64_t length;
};

// The memory behind an ArrayBuffer or a view of one (Buffer, TypedArray,
// DataView).
Bytes BytesOf(const Napi::CallbackInfo& info, size_t i) {
  Napi::Value v = info[i];
  napi_env env = info.Env();
  bool detached = false;
  if (v.IsArrayBuffer()) {
    napi_is_detached_arraybuffer(env, v, &detached);
    if (detached) throw Napi::TypeError::New(info.Env(), "the source ArrayBuffer is detached");
    auto ab = v.As<Napi::ArrayBuffer>();
    return {reinterpret_cast<uint64_t>(ab.Data()), ab.ByteLength()};
  }
  if (v.IsTypedArray() || v.IsDataView()) {
    void* data = nullptr;
    size_t length = 0;
    napi_value buffer;
    if (v.IsTypedArray()) {
      napi_typedarray_type type;
      size_t count;
      size_t offset;
      napi_get_typedarray_info(env, v, &type, &count, &data, &buffer, &offset);
      length = v.As<Napi::TypedArray>().ByteLength();
    } else {
      size_t offset;
      napi_get_dataview_info(env, v, &length, &data, &buffer, &offset);
    }
    napi_is_detached_arraybuffer(env, buffer, &detached);
    if (detached) throw Napi::TypeError::New(info.Env(), "the source buffer is detached");
    return {reinterpret_cast<uint64_t>(data), length};
  }
  throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be an ArrayBuffer or a view of one");
}

// Refuses, on a thread that serves faults, an access to memory that only that
// thread could make present: the access would block it forever.
void GuardServingThread(Napi::Env env, uint64_t address, uint64_t length, const char* syscall) {
  if (length == 0 || !MappingTable::Get().ServedHere(address, length)) return;
  if (memory::AllPresent(address, length) == 1) return;
  ThrowCode(env, "ERR_UFFD_WOULD_DEADLOCK", syscall);
}

// A JavaScript callback that native events call. Weak while idle: the
// callback's closure holds the JavaScript object that holds the native handle,
// and a strong reference would make that cycle a root never collected. Held
// strongly while events can arrive.
class JsCallback {
 public:
  JsCallback(Napi::Env env, Napi::Function fn) : fn_(Napi::Weak(fn)), context_(env, "userfaultfd") {}
  void Hold() { fn_.Ref(); }
  void Release() { fn_.Unref(); }
  // An exception the callback throws becomes an uncaught exception, as from
  // any other callback.
  void Call(Napi::Object recv, const std::initializer_list<napi_value>& args) {
    if (fn_.IsEmpty() || fn_.Value().IsEmpty()) return;
    try {
      fn_.MakeCallback(recv, args, context_);
    } catch (const Napi::Error& e) {
      napi_fatal_exception(recv.Env(), e.Value());
    }
  }

 private:
  Napi::FunctionReference fn_;
  Napi::AsyncContext context_;
};

// A uffd and the stream that delivers its messages to one JavaScript callback.
class UffdHandle : public Napi::ObjectWrap<UffdHandle>, public FaultStream::Sink {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "UffdHandle",
                       {
                           InstanceMethod<&UffdHandle::JsRegister>("register"),
                           InstanceMethod<&UffdHandle::JsUnregister>("unregister"),
                           InstanceMethod<&UffdHandle::JsCopy>("copy"),
                           InstanceMethod<&UffdHandle::JsZeroPage>("zeroPage"),
                           InstanceMethod<&UffdHandle::JsContinue>("continue"),
                           InstanceMethod<&UffdHandle::JsPoison>("poison"),
                           InstanceMethod<&UffdHandle::JsMove>("move"),
                           InstanceMethod<&UffdHandle::JsWake>("wake"),
                           InstanceMethod<&UffdHandle::JsWriteProtect>("writeProtect"),
                           InstanceMethod<&UffdHandle::JsRwProtect>("rwProtect"),
                           InstanceMethod<&UffdHandle::JsSetMode>("setMode"),
                           InstanceMethod<&UffdHandle::JsStart>("start"),
                           InstanceMethod<&UffdHandle::JsStop>("stop"),
                           InstanceMethod<&UffdHandle::JsSetRef>("setRef"),
                           InstanceMethod<&UffdHandle::JsClose>("close"),
                           InstanceMethod<&UffdHandle::JsServeNative>("serveNative"),
                           InstanceMethod<&UffdHandle::JsStats>("stats"),
                           InstanceMethod<&UffdHandle::JsSetSpin>("setSpin"),
                           InstanceMethod<&UffdHandle::JsWait>("wait"),
                           InstanceMethod<&UffdHandle::JsLend>("lend"),
                           InstanceAccessor<&UffdHandle::JsFd>("fd"),
                       });
  }

  // new UffdHandle(fd, onMessages(count), messages: ArrayBuffer, lentId?):
  // adopts fd, or with lentId shares the uffd another thread lent (fd unused).
  explicit UffdHandle(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<UffdHandle>(info), on_messages_(info.Env(), FunctionArg(info, 1)) {
    Napi::Env env = info.Env();
    if (!info[2].IsArrayBuffer()) throw Napi::TypeError::New(env, "UffdHandle(fd, onMessages, messages)");
    int err = 0;
    if (info.Length() > 3 && !info[3].IsUndefined()) {
      share_ = UffdShare::Borrow(U64(info, 3));
      if (share_ == nullptr) ThrowCode(env, "ERR_UFFD_CLOSED", "userfaultfd");
      owner_ = false;
    } else {
      int fd = Int(info, 0);
      share_ = UffdShare::Adopt(fd, &err);
      if (share_ == nullptr) {
        uffd::Close(fd);
        ThrowErrno(env, err, "eventfd");
      }
    }
    fd_ = share_->fd();
    messages_ = Napi::Persistent(info[2].As<Napi::ArrayBuffer>());
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    stream_ = FaultStream::Create(loop, fd_, this, &err);
    if (stream_ == nullptr) {
      share_.reset();
      fd_ = -1;
      ThrowErrno(env, err, "uv_poll_init");
    }
    Data(env)->handles.insert(this);
    // Only this thread's loop can read this object's events: its registered
    // ranges are served here until it is closed (see GuardServingThread).
    MappingTable::Get().ServeOn(this, std::this_thread::get_id());
  }

  ~UffdHandle() override {
    CloseNative();
    // At environment teardown the instance data may already be gone.
    if (AddonData* data = Data(Env())) data->handles.erase(this);
  }

  // Closing the last descriptor makes the kernel drop the registrations and
  // wake every thread blocked on a fault of this uffd.
  // A borrowed uffd stays open for its owner: closing it here only lets go.
  void CloseNative() {
    if (fd_ < 0) return;
    MappingTable::Get().Forget(this);
    // The native thread first: it must never outlive the descriptor.
    // (The source's references go with StopPolling or the destructor: at
    // environment teardown no reference may be deleted here.)
    if (server_ != nullptr) {
      StopServer();
    }
    if (stream_ != nullptr) {
      stream_spin_final_ = stream_->spin_counters();
      stream_->Destroy();
      stream_ = nullptr;
    }
    if (owner_) share_->Shutdown();
    share_.reset();
    fd_ = -1;
  }

  void OnMessages(const uffd_msg* msgs, size_t n) override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    Napi::ArrayBuffer buffer = messages_.Value();
    size_t fit = buffer.ByteLength() / sizeof(uffd_msg);
    if (n > fit) n = fit;
    std::memcpy(buffer.Data(), msgs, n * sizeof(uffd_msg));
    on_messages_.Call(Value(), {Napi::Number::New(env, static_cast<double>(n))});
  }

  void OnStreamError(int error) override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    on_messages_.Call(Value(), {Napi::Number::New(env, error)});
  }

 private:

  int Fd(const Napi::CallbackInfo& info) {
    if (fd_ < 0 || share_->shut_down()) ThrowCode(info.Env(), "ERR_UFFD_CLOSED", "userfaultfd");
    return fd_;
  }

  Napi::Value Done(Napi::Env env, int r, uint64_t done, const char* syscall) {
    if (r < 0) {
      Napi::Object extra = Napi::Object::New(env);
      extra.Set("bytesDone", Napi::Number::New(env, static_cast<double>(done)));
      ThrowErrno(env, r, syscall, extra);
    }
    return Napi::Number::New(env, static_cast<double>(done));
  }

  // register(start, len, mode) -> allowed ioctls (bigint)
  Napi::Value JsRegister(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    uint64_t start = U64(info, 0), len = U64(info, 1), mode = U64(info, 2);
    uint64_t ioctls = 0;
    int r = uffd::Register(fd, start, len, mode, &ioctls);
    if (r < 0) ThrowErrno(info.Env(), r, "ioctl(UFFDIO_REGISTER)");
    MappingTable::Get().AddRegistration(this, start, len);
    return Big(info.Env(), ioctls);
  }

  Napi::Value JsUnregister(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    uint64_t start = U64(info, 0), len = U64(info, 1);
    int r = uffd::Unregister(fd, start, len);
    if (r < 0) ThrowErrno(info.Env(), r, "ioctl(UFFDIO_UNREGISTER)");
    MappingTable::Get().RemoveRegistration(this, start, len);
    return info.Env().Undefined();
  }

  // copy(dst, source, mode) -> bytes copied; copies source.byteLength bytes.
  Napi::Value JsCopy(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    uint64_t dst = U64(info, 0);
    Bytes src = BytesOf(info, 1);
    uint64_t mode = U64(info, 2);
    // The kernel reads the source with an ordinary user access: if it is
    // registered memory served here, that read would never be resolved.
    GuardServingThread(info.Env(), src.address, src.length, "ioctl(UFFDIO_COPY)");
    uint64_t done = 0;
    int r = uffd::Copy(fd, dst, src.address, src.length, mode, &done);
    return Done(info.Env(), r, done, "ioctl(UFFDIO_COPY)");
  }

  Napi::Value JsZeroPage(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    uint64_t done = 0;
    int r = uffd::ZeroPage(fd, U64(info, 0), U64(info, 1), U64(info, 2), &done);
    return Done(info.Env(), r, done, "ioctl(UFFDIO_ZEROPAGE)");
  }

  Napi::Value JsContinue(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    uint64_t done = 0;
    int r = uffd::Continue(fd, U64(info, 0), U64(info, 1), U64(info, 2), &done);
    return Done(info.Env(), r, done, "ioctl(UFFDIO_CONTINUE)");
  }

  Napi::Value JsPoison(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    uint64_t done = 0;
    int r = uffd::Poison(fd, U64(info, 0), U64(info, 1), U64(info, 2), &done);
    return Done(info.Env(), r, done, "ioctl(UFFDIO_POISON)");
  }

  // move(dst, src, len, mode) -> bytes moved
  Napi::Value JsMove(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    uint64_t done = 0;
    int r = uffd::Move(fd, U64(info, 0), U64(info, 1), U64(info, 2), U64(info, 3), &done);
    return Done(info.Env(), r, done, "ioctl(UFFDIO_MOVE)");
  }

  Napi::Value JsWake(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    int r = uffd::Wake(fd, U64(info, 0), U64(info, 1));
    if (r < 0) ThrowErrno(info.Env(), r, "ioctl(UFFDIO_WAKE)");
    return info.Env().Undefined();
  }

  Napi::Value JsWriteProtect(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    int r = uffd::WriteProtect(fd, U64(info, 0), U64(info, 1), U64(info, 2));
    if (r < 0) ThrowErrno(info.Env(), r, "ioctl(UFFDIO_WRITEPROTECT)");
    return info.Env().Undefined();
  }

  Napi::Value JsRwProtect(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    int r = uffd::RwProtect(fd, U64(info, 0), U64(info, 1), U64(info, 2));
    if (r < 0) ThrowErrno(info.Env(), r, "ioctl(UFFDIO_RWPROTECT)");
    return info.Env().Undefined();
  }

  Napi::Value JsSetMode(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    int r = uffd::SetMode(fd, U64(info, 0), U64(info, 1));
    if (r < 0) ThrowErrno(info.Env(), r, "ioctl(UFFDIO_SET_MODE)");
    return info.Env().Undefined();
  }

  // While the stream runs, it holds the JavaScript object alive.
  Napi::Value JsStart(const Napi::CallbackInfo& info) {
    Fd(info);
    if (!started_) {
      int r = stream_->Start();
      if (r < 0) ThrowErrno(info.Env(), r, "uv_poll_start");
      started_ = true;
      Ref();
      on_messages_.Hold();
    }
    return info.Env().Undefined();
  }

  Napi::Value JsStop(const Napi::CallbackInfo& info) {
    StopPolling();
    return info.Env().Undefined();
  }

  // Joins the native thread, keeping its final counters for stats().
  void StopServer() {
    server_->Stop();
    final_stats_ = server_->stats();
    has_final_stats_ = true;
    server_->Destroy();
    server_ = nullptr;
  }

  void StopPolling() {
    if (server_ != nullptr) {
      StopServer();
      source_bytes_.Reset();
      source_present_.Reset();
      Unref();
      on_messages_.Release();
    }
    if (!started_) return;
    if (stream_ != nullptr) stream_->Stop();
    started_ = false;
    Unref();
    on_messages_.Release();
  }

  Napi::Value JsSetRef(const Napi::CallbackInfo& info) {
    Fd(info);
    if (info[0].ToBoolean()) {
      stream_->Ref();
      if (server_ != nullptr) server_->Ref();
    } else {
      stream_->Unref();
      if (server_ != nullptr) server_->Unref();
    }
    return info.Env().Undefined();
  }

  Napi::Value JsClose(const Napi::CallbackInfo& info) {
    StopPolling();
    CloseNative();
    return info.Env().Undefined();
  }

  Napi::Value JsFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  // serveNative(bytes: Uint8Array, present: Uint8Array | null, presentPage,
  //   ranges: BigUint64Array [start, length, pageSize, sourceOffset, fill]...,
  //   readAhead, spin): starts the native fast path instead of the stream.
  // The source's buffers are held until the server has stopped.
  Napi::Value JsServeNative(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Fd(info);
    if (started_ || server_ != nullptr) ThrowCode(env, "ERR_UFFD_BUSY", "serveFrom");
    if (!info[0].IsTypedArray() || !info[3].IsTypedArray()) throw Napi::TypeError::New(env, "serveNative(bytes, present, presentPage, ranges, readAhead, spin)");
    Bytes bytes = BytesOf(info, 0);
    // The native thread reads the source inside UFFDIO_COPY: registered
    // memory that only this uffd could fill would block it for good.
    GuardServingThread(env, bytes.address, bytes.length, "serveFrom");
    PageServer::Source source;
    source.bytes = reinterpret_cast<const uint8_t*>(bytes.address);
    source.size = bytes.length;
    if (!info[1].IsNull()) {
      Bytes present = BytesOf(info, 1);
      source.present = reinterpret_cast<const uint8_t*>(present.address);
      source.present_page = U64(info, 2);
      if (present.length * source.present_page < source.size) throw Napi::RangeError::New(env, "present has fewer flags than the source has pages");
    }
    auto table = info[3].As<Napi::BigUint64Array>();
    if (table.ElementLength() % 5 != 0) throw Napi::TypeError::New(env, "ranges: 5 numbers per range");
    std::vector<PageServer::Range> ranges;
    for (size_t i = 0; i < table.ElementLength(); i += 5) {
      uint64_t fill = table[i + 4];
      if (fill > 2) throw Napi::RangeError::New(env, "ranges: fill is 0, 1 or 2");
      ranges.push_back({table[i], table[i + 1], table[i + 2], table[i + 3], static_cast<PageServer::Fill>(fill)});
    }
    PageServer::Options options;
    options.read_ahead = static_cast<uint32_t>(U64(info, 4));
    options.spin = info[5].ToBoolean();
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    int err = 0;
    server_ = PageServer::Create(loop, fd, source, std::move(ranges), options, this, &err);
    if (server_ == nullptr) ThrowErrno(env, err, "serveFrom");
    source_bytes_ = Napi::Persistent(info[0].As<Napi::Object>());
    if (!info[1].IsNull()) source_present_ = Napi::Persistent(info[1].As<Napi::Object>());
    Ref();
    on_messages_.Hold();
    return env.Undefined();
  }

  // stats() -> Float64Array of the counters, in the order lib/stats.ts reads them.
  Napi::Value JsStats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto out = Napi::Float64Array::New(env, 20);
    if (server_ != nullptr || has_final_stats_) {
      PageServer::Stats s = server_ != nullptr ? server_->stats() : final_stats_;
      const uint64_t values[] = {s.faults_native, s.faults_forwarded, s.events, s.pages, s.bytes, s.read_ahead_pages,
                                 s.zero_pages, s.continued_pages, s.eexist, s.eagain, s.batches, s.messages, s.ioctls,
                                 s.service_p50_ns, s.service_p99_ns, s.service_max_ns, s.spin_windows, s.spin_hits, s.spin_ns};
      for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) out[i] = static_cast<double>(values[i]);
    } else {
      const SpinPolicy::Counters& c = stream_ != nullptr ? stream_->spin_counters() : stream_spin_final_;
      const SpinPolicy::Counters& w = wait_spin_.counters();
      out[16] = static_cast<double>(c.spins + w.spins);
      out[17] = static_cast<double>(c.hits + w.hits);
      out[18] = static_cast<double>(c.spun_ns + w.spun_ns);
    }
    out[19] = server_ != nullptr || has_final_stats_ ? 1 : 0;
    return out;
  }

  Napi::Value JsSetSpin(const Napi::CallbackInfo& info) {
    Fd(info);
    stream_->SetSpin(info[0].ToBoolean());
    return info.Env().Undefined();
  }

  // wait(timeoutMs, spin) -> messages read into the messages buffer, 0 when
  // the time ran out, -1 once the uffd is closed. Blocks this thread.
  Napi::Value JsWait(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) return Napi::Number::New(env, -1);
    if (started_ || server_ != nullptr) ThrowCode(env, "ERR_UFFD_BUSY", "wait");
    wait_spin_.set_enabled(info[1].ToBoolean());
    Napi::ArrayBuffer buffer = messages_.Value();
    size_t capacity = std::min(buffer.ByteLength() / sizeof(uffd_msg), FaultStream::kCapacity);
    long n = share_->Wait(static_cast<uffd_msg*>(buffer.Data()), capacity, Int(info, 0), &wait_spin_);
    if (n == -ECANCELED) return Napi::Number::New(env, -1);
    if (n < 0) ThrowErrno(env, static_cast<int>(n), "read");
    return Napi::Number::New(env, static_cast<double>(n));
  }

  // lend() -> an id another thread's UffdHandle can share this uffd by.
  Napi::Value JsLend(const Napi::CallbackInfo& info) {
    Fd(info);
    return Napi::Number::New(info.Env(), static_cast<double>(UffdShare::Lend(share_)));
  }

  int fd_ = -1;
  std::shared_ptr<UffdShare> share_;
  bool owner_ = true;
  PageServer* server_ = nullptr;
  PageServer::Stats final_stats_{};
  bool has_final_stats_ = false;
  Napi::Reference<Napi::Object> source_bytes_;
  Napi::Reference<Napi::Object> source_present_;
  SpinPolicy wait_spin_;
  SpinPolicy::Counters stream_spin_final_;
  FaultStream* stream_ = nullptr;
  bool started_ = false;
  JsCallback on_messages_;
  Napi::Reference<Napi::ArrayBuffer> messages_;

  friend void CleanupEnv(AddonData*);
};

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

// Worker termination or process exit: close every uffd this environment still
// holds, so no stream outlives its loop.
void CleanupEnv(AddonData* data) {
  for (UffdHandle* handle : data->handles) {
    handle->started_ = false;
    handle->CloseNative();
  }
  data->handles.clear();
}

// ---- module functions ----

void CleanupEnvAndFree(Napi::Env, AddonData* data) {
  CleanupEnv(data);
  delete data;
}

Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) {
  Data(info.Env())->make_error = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

// open(userModeOnly) -> { fd, method }
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uffd::OpenReport report;
  int fd = uffd::Open(info[0].ToBoolean(), &report);
  if (fd < 0) {
    Napi::Object extra = Napi::Object::New(env);
    extra.Set("deviceErrno", Napi::Number::New(env, report.device_error));
    ThrowErrno(env, fd, "userfaultfd", extra);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", Napi::Number::New(env, fd));
  result.Set("method", report.method == uffd::OpenMethod::kDevice ? "device" : "syscall");
  return result;
}

// api(fd, features) -> { offered, ioctls } (bigints)
Napi::Value Api(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t offered = 0, ioctls = 0;
  int r = uffd::Api(Int(info, 0), U64(info, 1), &offered, &ioctls);
  if (r < 0) ThrowErrno(env, r, "ioctl(UFFDIO_API)");
  Napi::Object result = Napi::Object::New(env);
  result.Set("offered", Big(env, offered));
  result.Set("ioctls", Big(env, ioctls));
  return result;
}

Napi::Value QueryFeatures(const Napi::CallbackInfo& info) {
  uint64_t offered = 0;
  int r = uffd::QueryFeatures(info[0].ToBoolean(), &offered);
  if (r < 0) ThrowErrno(info.Env(), r, "ioctl(UFFDIO_API)");
  return Big(info.Env(), offered);
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int r = uffd::Close(Int(info, 0));
  if (r < 0) ThrowErrno(info.Env(), r, "close");
  return info.Env().Undefined();
}

// memfdCreate(name, size, hugePageLog2) -> [fd, pageSize]
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>().Utf8Value();
  int fd = memory::MemfdCreate(name.c_str(), U64(info, 1), static_cast<unsigned>(Int(info, 2)));
  if (fd < 0) ThrowErrno(env, fd, "memfd_create");
  long page = memory::FilePageSize(fd);
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, fd));
  result.Set(1u, Napi::Number::New(env, static_cast<double>(page)));
  return result;
}

// createGuestMemfd(size, wantedFlags) -> [fd, pageSize, flags it was created with]
Napi::Value CreateGuestMemfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  kvm::GuestMemfdResult result;
  int r = kvm::CreateGuestMemfd(U64(info, 0), U64(info, 1), &result);
  if (r < 0) {
    Napi::Object extra = Napi::Object::New(env);
    extra.Set("supportedFlags", Napi::Number::New(env, static_cast<double>(result.supported_flags)));
    ThrowErrno(env, r, result.step, extra);
  }
  Napi::Array out = Napi::Array::New(env, 3);
  out.Set(0u, Napi::Number::New(env, result.fd));
  out.Set(1u, Napi::Number::New(env, static_cast<double>(memory::SystemPageSize())));
  out.Set(2u, Big(env, result.flags));
  return out;
}

Napi::Value FilePageSize(const Napi::CallbackInfo& info) {
  long page = memory::FilePageSize(Int(info, 0));
  if (page < 0) ThrowErrno(info.Env(), static_cast<int>(page), "fstat");
  return Napi::Number::New(info.Env(), static_cast<double>(page));
}

Napi::Value SystemPageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(memory::SystemPageSize()));
}

// mapShared(fd, offset, length, readOnly) -> address
Napi::Value MapShared(const Napi::CallbackInfo& info) {
  uint64_t address = 0, length = U64(info, 2);
  int r = info[3].ToBoolean() ? memory::MapReadOnly(Int(info, 0), U64(info, 1), length, &address)
                              : memory::MapShared(Int(info, 0), U64(info, 1), length, &address);
  if (r < 0) ThrowErrno(info.Env(), r, "mmap");
  MappingTable::Get().Add(address, length);
  return Big(info.Env(), address);
}

// mapAnonymous(length, hugePageLog2) -> address
Napi::Value MapAnonymous(const Napi::CallbackInfo& info) {
  uint64_t address = 0, length = U64(info, 0);
  int r = memory::MapAnonymous(length, static_cast<unsigned>(Int(info, 1)), &address);
  if (r < 0) ThrowErrno(info.Env(), r, "mmap");
  MappingTable::Get().Add(address, length);
  return Big(info.Env(), address);
}

// unmap(address, length, detach): detach (an explicit unmap) gives views still
// out zeros at once; otherwise (garbage collection) they keep the memory.
Napi::Value Unmap(const Napi::CallbackInfo& info) {
  uint64_t address = U64(info, 0), length = U64(info, 1);
  int r = MappingTable::Get().Remove(address, info[2].ToBoolean());
  if (r == 1) r = memory::Unmap(address, length);
  if (r < 0) ThrowErrno(info.Env(), r, "munmap");
  return info.Env().Undefined();
}

// discard(address, length, remove)
Napi::Value Discard(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t address = U64(info, 0), length = U64(info, 1);
  // With EVENT_REMOVE, madvise waits until the serving thread reads the event.
  if (MappingTable::Get().ServedHere(address, length)) ThrowCode(env, "ERR_UFFD_WOULD_DEADLOCK", "madvise");
  int r = memory::Discard(address, length, info[2].ToBoolean());
  if (r < 0) ThrowErrno(env, r, "madvise");
  return env.Undefined();
}

// scanWritten(pid, start, length, rearm) and scanAccessed(pid, start, length)
// -> BigUint64Array [start0, end0, start1, end1, ...]
Napi::Value RangesOut(Napi::Env env, int r, const std::vector<memory::Range>& ranges) {
  if (r < 0) ThrowErrno(env, r, "ioctl(PAGEMAP_SCAN)");
  auto out = Napi::BigUint64Array::New(env, ranges.size() * 2);
  for (size_t i = 0; i < ranges.size(); i++) {
    out[2 * i] = ranges[i].start;
    out[2 * i + 1] = ranges[i].end;
  }
  return out;
}

Napi::Value ScanWritten(const Napi::CallbackInfo& info) {
  std::vector<memory::Range> ranges;
  int r = memory::ScanWritten(Int(info, 0), U64(info, 1), U64(info, 2), info[3].ToBoolean(), &ranges);
  return RangesOut(info.Env(), r, ranges);
}

Napi::Value ScanAccessed(const Napi::CallbackInfo& info) {
  std::vector<memory::Range> ranges;
  int r = memory::ScanAccessed(Int(info, 0), U64(info, 1), U64(info, 2), &ranges);
  return RangesOut(info.Env(), r, ranges);
}

// view(address, length) -> ArrayBuffer over the mapping, from any thread.
Napi::Value View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t address = U64(info, 0), length = U64(info, 1);
  if (MappingTable::Get().ServedHere(address, length)) ThrowCode(env, "ERR_UFFD_WOULD_DEADLOCK", "view");
  uint64_t start = MappingTable::Get().AcquireView(address, length);
  if (start == 0) ThrowCode(env, "ERR_UFFD_NOT_MAPPED", "view");
  return Napi::ArrayBuffer::New(
      env, reinterpret_cast<void*>(address), length,
      [](Napi::Env, void*, uint64_t* start) {
        MappingTable::Get().ReleaseView(*start);
        delete start;
      },
      new uint64_t(start));
}

// read(address, length) -> Buffer copy, refused where it would deadlock.
Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t address = U64(info, 0), length = U64(info, 1);
  uint64_t start = MappingTable::Get().AcquireView(address, length);
  if (start == 0) ThrowCode(env, "ERR_UFFD_NOT_MAPPED", "read");
  try {
    GuardServingThread(env, address, length, "read");
  } catch (...) {
    MappingTable::Get().ReleaseView(start);
    throw;
  }
  auto copy = Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(address), length);
  MappingTable::Get().ReleaseView(start);
  return copy;
}

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

Napi::Value Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  // Only the numbers lib/constants.ts checks itself against (test/constants).
  c.Set("UFFD_API", Big(env, UFFD_API));
  c.Set("UFFDIO_API", Big(env, UFFDIO_API));
  c.Set("UFFDIO_REGISTER", Big(env, UFFDIO_REGISTER));
  c.Set("UFFDIO_COPY", Big(env, UFFDIO_COPY));
  c.Set("UFFDIO_MOVE", Big(env, UFFDIO_MOVE));
  c.Set("UFFDIO_POISON", Big(env, UFFDIO_POISON));
  c.Set("UFFDIO_CONTINUE", Big(env, UFFDIO_CONTINUE));
  c.Set("UFFDIO_ZEROPAGE", Big(env, UFFDIO_ZEROPAGE));
  c.Set("UFFDIO_WAKE", Big(env, UFFDIO_WAKE));
  c.Set("UFFDIO_UNREGISTER", Big(env, UFFDIO_UNREGISTER));
  c.Set("UFFDIO_WRITEPROTECT", Big(env, UFFDIO_WRITEPROTECT));
  c.Set("UFFDIO_CONTINUE_MODE_WP", Big(env, UFFDIO_CONTINUE_MODE_WP));
  c.Set("UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES", Big(env, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES));
  c.Set("sizeofUffdioMove", Napi::Number::New(env, sizeof(uffdio_move)));
  c.Set("sizeofUffdioPoison", Napi::Number::New(env, sizeof(uffdio_poison)));
  c.Set("USERFAULTFD_IOC_NEW", Big(env, USERFAULTFD_IOC_NEW));
  c.Set("UFFD_FEATURE_MOVE", Big(env, UFFD_FEATURE_MOVE));
  c.Set("UFFD_FEATURE_WP_ASYNC", Big(env, UFFD_FEATURE_WP_ASYNC));
  c.Set("UFFD_FEATURE_POISON", Big(env, UFFD_FEATURE_POISON));
  c.Set("UFFD_FEATURE_WP_UNPOPULATED", Big(env, UFFD_FEATURE_WP_UNPOPULATED));
  c.Set("UFFD_FEATURE_RWP", Big(env, UFFD_FEATURE_RWP));
  c.Set("UFFD_FEATURE_RWP_ASYNC", Big(env, UFFD_FEATURE_RWP_ASYNC));
  c.Set("UFFDIO_RWPROTECT", Big(env, UFFDIO_RWPROTECT));
  c.Set("UFFDIO_SET_MODE", Big(env, UFFDIO_SET_MODE));
  c.Set("UFFDIO_REGISTER_MODE_RWP", Big(env, UFFDIO_REGISTER_MODE_RWP));
  c.Set("UFFDIO_RWPROTECT_MODE_RWP", Big(env, UFFDIO_RWPROTECT_MODE_RWP));
  c.Set("UFFDIO_RWPROTECT_MODE_DONTWAKE", Big(env, UFFDIO_RWPROTECT_MODE_DONTWAKE));
  c.Set("UFFD_PAGEFAULT_FLAG_RWP", Big(env, UFFD_PAGEFAULT_FLAG_RWP));
  c.Set("sizeofUffdioRwprotect", Napi::Number::New(env, sizeof(uffdio_rwprotect)));
  c.Set("sizeofUffdioSetMode", Napi::Number::New(env, sizeof(uffdio_set_mode)));
  c.Set("UFFD_EVENT_PAGEFAULT", Napi::Number::New(env, UFFD_EVENT_PAGEFAULT));
  c.Set("UFFD_EVENT_FORK", Napi::Number::New(env, UFFD_EVENT_FORK));
  c.Set("UFFD_EVENT_REMAP", Napi::Number::New(env, UFFD_EVENT_REMAP));
  c.Set("UFFD_EVENT_REMOVE", Napi::Number::New(env, UFFD_EVENT_REMOVE));
  c.Set("UFFD_EVENT_UNMAP", Napi::Number::New(env, UFFD_EVENT_UNMAP));
  c.Set("KVM_CREATE_VM", Big(env, KVM_CREATE_VM));
  c.Set("KVM_CHECK_EXTENSION", Big(env, KVM_CHECK_EXTENSION));
  c.Set("KVM_CREATE_GUEST_MEMFD", Big(env, KVM_CREATE_GUEST_MEMFD));
  c.Set("KVM_SET_USER_MEMORY_REGION2", Big(env, KVM_SET_USER_MEMORY_REGION2));
  c.Set("sizeofKvmCreateGuestMemfd", Napi::Number::New(env, sizeof(kvm_create_guest_memfd)));
  c.Set("sizeofKvmUserspaceMemoryRegion2", Napi::Number::New(env, sizeof(kvm_userspace_memory_region2)));
  c.Set("GUEST_MEMFD_FLAG_MMAP", Big(env, GUEST_MEMFD_FLAG_MMAP));
  c.Set("GUEST_MEMFD_FLAG_INIT_SHARED", Big(env, GUEST_MEMFD_FLAG_INIT_SHARED));
  c.Set("KVM_MEM_GUEST_MEMFD", Big(env, KVM_MEM_GUEST_MEMFD));
  c.Set("KVM_CAP_GUEST_MEMFD", Big(env, KVM_CAP_GUEST_MEMFD));
  c.Set("KVM_CAP_GUEST_MEMFD_FLAGS", Big(env, KVM_CAP_GUEST_MEMFD_FLAGS));
  c.Set("offsetofKvmCreateGuestMemfdFlags", Napi::Number::New(env, offsetof(kvm_create_guest_memfd, flags)));
  c.Set("offsetofKvmRegion2GuestMemfdOffset", Napi::Number::New(env, offsetof(kvm_userspace_memory_region2, guest_memfd_offset)));
  c.Set("offsetofKvmRegion2GuestMemfd", Napi::Number::New(env, offsetof(kvm_userspace_memory_region2, guest_memfd)));
  c.Set("sizeofUffdMsg", Napi::Number::New(env, sizeof(uffd_msg)));
  c.Set("messageCapacity", Napi::Number::New(env, FaultStream::kCapacity));
  return c;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData, &CleanupEnvAndFree>(data);
  data->uffd_constructor = Napi::Persistent(UffdHandle::Define(env));
  exports.Set("UffdHandle", data->uffd_constructor.Value());
  exports.Set("setErrorFactory", Napi::Function::New<SetErrorFactory>(env));
  exports.Set("open", Napi::Function::New<Open>(env));
  exports.Set("api", Napi::Function::New<Api>(env));
  exports.Set("queryFeatures", Napi::Function::New<QueryFeatures>(env));
  exports.Set("closeFd", Napi::Function::New<CloseFd>(env));
  exports.Set("memfdCreate", Napi::Function::New<MemfdCreate>(env));
  exports.Set("createGuestMemfd", Napi::Function::New<CreateGuestMemfd>(env));
  exports.Set("filePageSize", Napi::Function::New<FilePageSize>(env));
  exports.Set("systemPageSize", Napi::Function::New<SystemPageSize>(env));
  exports.Set("mapShared", Napi::Function::New<MapShared>(env));
  exports.Set("mapAnonymous", Napi::Function::New<MapAnonymous>(env));
  exports.Set("unmap", Napi::Function::New<Unmap>(env));
  exports.Set("view", Napi::Function::New<View>(env));
  exports.Set("discard", Napi::Function::New<Discard>(env));
  exports.Set("scanWritten", Napi::Function::New<ScanWritten>(env));
  exports.Set("scanAccessed", Napi::Function::New<ScanAccessed>(env));
  exports.Set("read", Napi::Function::New<Read>(env));
  exports.Set("WatchHandle", WatchHandle::Define(env));
  exports.Set("socketListen", Napi::Function::New<SocketListen>(env));
  exports.Set("socketAccept", Napi::Function::New<SocketAccept>(env));
  exports.Set("socketConnect", Napi::Function::New<SocketConnect>(env));
  exports.Set("socketSend", Napi::Function::New<SocketSend>(env));
  exports.Set("socketReceive", Napi::Function::New<SocketReceive>(env));
  exports.Set("socketPeer", Napi::Function::New<SocketPeer>(env));
  exports.Set("descriptorKind", Napi::Function::New<DescriptorKind>(env));
  exports.Set("pidfdOpen", Napi::Function::New<PidfdOpen>(env));
  exports.Set("pidfdSignal", Napi::Function::New<PidfdSignal>(env));
  exports.Set("constants", Constants(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(userfaultfd, Init)
