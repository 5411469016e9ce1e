// The uffd's binding: UffdHandle (one uffd, the ioctls on it, and the stream
// or native server that delivers its messages to JavaScript), and the module
// functions that open a uffd and do its handshake.
#include <uv.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "binding_util.h"
#include "fault_stream.h"
#include "fd_watch.h"
#include "mapping_table.h"
#include "page_server.h"
#include "spin_policy.h"
#include "uffd.h"
#include "uffd_share.h"

namespace binding {

// A uffd and the stream that delivers its messages to one JavaScript callback.
class UffdHandle : public Napi::ObjectWrap<UffdHandle>, public FaultStream::Sink, private FdWatch::Sink {
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
                           InstanceMethod<&UffdHandle::JsSetEventWaits>("setEventWaits"),
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
    // A borrower lets go when the owner closes: at once if it waits in
    // serveSync, else when its loop next runs, so that an idle borrower (or
    // one serving on its loop) does not keep the uffd, and so its memory
    // registered, after the owner's close(). A descriptor of its own: one
    // loop must not poll one fd twice (two borrowers on one thread).
    if (!owner_) {
      lender_closed_fd_ = share_->DupShutdownFd();
      lender_closed_ = lender_closed_fd_ < 0 ? nullptr : FdWatch::Create(loop, lender_closed_fd_, this, &err);
      if (lender_closed_ == nullptr || (err = lender_closed_->Start(UV_READABLE)) < 0) {
        if (lender_closed_fd_ < 0) err = lender_closed_fd_;
        CloseNative();
        ThrowErrno(env, err, "uv_poll_init");
      }
      lender_closed_->Unref();
    }
    Data(env)->handles.insert(this);
    // The owner's thread is the one to serve its ranges (see
    // GuardServingThread) while no other thread reads the uffd; a borrower
    // serves them from when it starts to (ServeHere).
    if (owner_) ServeHere(MappingTable::Role::kOwner);
  }

  ~UffdHandle() override {
    CloseNative();
    // At environment teardown the instance data may already be gone.
    if (AddonData* data = Data(Env())) data->handles.erase(this);
  }

  // Closing the last descriptor makes the kernel drop the registrations and
  // wake every thread blocked on a fault of this uffd.
  // A borrowed uffd stays open for its owner: closing it here only lets go.
  // drain: read and drop what is queued first (a uffd another process holds
  // too: see uffd::DrainMessages).
  void CloseNative(bool drain = false) {
    if (fd_ < 0) return;
    MappingTable::Get().StopServing(this);
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
    if (lender_closed_ != nullptr) {
      lender_closed_->Destroy();
      lender_closed_ = nullptr;
    }
    if (lender_closed_fd_ >= 0) {
      close(lender_closed_fd_);
      lender_closed_fd_ = -1;
    }
    if (drain && owner_) uffd::DrainMessages(fd_);
    // A borrower (a worker) going away may have read faults it never
    // resolved, and the owner's descriptor stays open, so the kernel wakes
    // nobody: wake them all here, and each faults again for the owner.
    if (!owner_) uffd::WakeAll(fd_);
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

  // The owner closed a borrowed uffd (lender_closed_ is readable): the
  // JavaScript side closes this object (onMessages(-ECANCELED): the end, not
  // a failure), which lets go of the descriptor; if that callback is gone,
  // let go here.
  void OnReady(int /*status*/, int /*events*/) override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    on_messages_.Call(Value(), {Napi::Number::New(env, -ECANCELED)});
    CloseNative();
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

  // register(start, len, mode, waits) -> allowed ioctls (bigint). waits:
  // whether an access to the range can wait for this uffd's reader.
  Napi::Value JsRegister(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    uint64_t start = U64(info, 0), len = U64(info, 1), mode = U64(info, 2);
    bool waits = info[3].ToBoolean();
    uint64_t ioctls = 0;
    int r = uffd::Register(fd, start, len, mode, &ioctls);
    if (r < 0) ThrowErrno(info.Env(), r, "ioctl(UFFDIO_REGISTER)");
    // Registering again replaces the range's modes, as the kernel does.
    MappingTable::Get().RemoveRegistration(share_.get(), start, len);
    MappingTable::Get().AddRegistration(share_.get(), start, len, waits);
    return Big(info.Env(), ioctls);
  }

  Napi::Value JsUnregister(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    uint64_t start = U64(info, 0), len = U64(info, 1);
    int r = uffd::Unregister(fd, start, len);
    if (r < 0) ThrowErrno(info.Env(), r, "ioctl(UFFDIO_UNREGISTER)");
    MappingTable::Get().RemoveRegistration(share_.get(), start, len);
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
    int r = server_ != nullptr ? server_->CopyForJs(dst, src.address, src.length, mode, &done)
                               : uffd::Copy(fd, dst, src.address, src.length, mode, &done);
    Resolved(dst, done, r);
    return Done(info.Env(), r, done, "ioctl(UFFDIO_COPY)");
  }

  // Tells serveFrom's native thread what JavaScript resolved (done bytes
  // from start, and with EEXIST the page after them, there already), so
  // that pagesLeft counts a page passed on with its fault until then.
  void Resolved(uint64_t start, uint64_t done, int rc) {
    if (server_ == nullptr) return;
    if (rc == -EEXIST) done += 1;  // Marked by page: this reaches into the page that exists.
    if (done > 0) server_->ResolvedByJs(start, done);
  }

  // zeroPage / continue / poison (start, len, mode) -> bytes done: the same
  // call around a different ioctl.
  template <int (*Ioctl)(int, uint64_t, uint64_t, uint64_t, uint64_t*)>
  Napi::Value RangeIoctl(const Napi::CallbackInfo& info, const char* syscall) {
    int fd = Fd(info);
    uint64_t done = 0, start = U64(info, 0);
    int r = Ioctl(fd, start, U64(info, 1), U64(info, 2), &done);
    Resolved(start, done, r);
    return Done(info.Env(), r, done, syscall);
  }

  Napi::Value JsZeroPage(const Napi::CallbackInfo& info) {
    return RangeIoctl<uffd::ZeroPage>(info, "ioctl(UFFDIO_ZEROPAGE)");
  }

  Napi::Value JsContinue(const Napi::CallbackInfo& info) {
    return RangeIoctl<uffd::Continue>(info, "ioctl(UFFDIO_CONTINUE)");
  }

  Napi::Value JsPoison(const Napi::CallbackInfo& info) {
    return RangeIoctl<uffd::Poison>(info, "ioctl(UFFDIO_POISON)");
  }

  // move(dst, src, len, mode) -> bytes moved
  Napi::Value JsMove(const Napi::CallbackInfo& info) {
    int fd = Fd(info);
    uint64_t done = 0, dst = U64(info, 0);
    int r = uffd::Move(fd, dst, U64(info, 1), U64(info, 2), U64(info, 3), &done);
    Resolved(dst, done, r);
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
      ServeHere(MappingTable::Role::kReads);
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
    MappingTable::Get().StopServing(server_);
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
    CloseNative(info.Length() > 0 && info[0].ToBoolean());
    return info.Env().Undefined();
  }

  Napi::Value JsFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  // serveNative(bytes: Uint8Array, present: Uint8Array | null, presentPage,
  //   ranges: BigUint64Array [start, length, pageSize, sourceOffset, fill]...,
  //   readAhead, spin, backgroundPiece, fillThreads, backgroundNow, file,
  //   fileOffset): starts the native fast path instead of the stream;
  //   backgroundPiece 0: no background fill; backgroundNow: fill from the
  //   start, not after a fault; file: a descriptor holding the source's bytes
  //   from fileOffset on (pread; the server keeps a duplicate), or -1.
  // The source's buffers are held until the server has stopped.
  Napi::Value JsServeNative(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = Fd(info);
    if (started_ || server_ != nullptr) ThrowCode(env, "ERR_UFFD_BUSY", "serveFrom");
    if (!info[0].IsTypedArray() || !info[3].IsTypedArray()) throw Napi::TypeError::New(env, "serveNative(bytes, present, presentPage, ranges, readAhead, spin, backgroundPiece, fillThreads, backgroundNow, file, fileOffset)");
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
    uint64_t piece = U64(info, 6);
    options.background = piece > 0;
    if (piece > 0) options.background_piece = piece;
    options.fill_threads = static_cast<uint32_t>(U64(info, 7));
    options.background_now = info[8].ToBoolean();
    int64_t file = info[9].As<Napi::Number>().Int64Value();
    uint64_t file_offset = U64(info, 10);
    if (file >= 0) {
      // A duplicate of its own: the caller may close its descriptor, and the
      // number then name another file, while the server reads.
      source.file = fcntl(static_cast<int>(file), F_DUPFD_CLOEXEC, 0);
      if (source.file < 0) ThrowErrno(env, -errno, "serveFrom");
      // Opened for writing only, every pread would fail: say so now.
      if ((fcntl(source.file, F_GETFL) & O_ACCMODE) == O_WRONLY) {
        close(source.file);
        ThrowErrno(env, -EBADF, "serveFrom");
      }
      source.file_offset = file_offset;
    }
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    int err = 0;
    server_ = PageServer::Create(loop, fd, source, std::move(ranges), options, this, &err);
    if (server_ == nullptr) {
      if (source.file >= 0) close(source.file);
      ThrowErrno(env, err, "serveFrom");
    }
    // The native thread reads the uffd; misses are resolved on this thread.
    MappingTable::Get().ServeOn(server_, share_.get(), server_->reader(), MappingTable::Role::kReads);
    ServeHere(MappingTable::Role::kResolves);
    source_bytes_ = Napi::Persistent(info[0].As<Napi::Object>());
    if (!info[1].IsNull()) source_present_ = Napi::Persistent(info[1].As<Napi::Object>());
    Ref();
    on_messages_.Hold();
    return env.Undefined();
  }

  // stats(out: Float64Array): fills out (kCountersLength numbers, or
  // kStatsLength to have the histogram too) with the counters, in the order
  // lib/stats.ts reads them; from kHistogramAt, the service-time histogram as
  // (ns, count) pairs. The caller keeps one array and passes it each time:
  // stats() is polled every few ms by the sessions, and a new array per call
  // would pile up as external memory between collections.
  static constexpr size_t kHistogramAt = 24;
  static constexpr size_t kCountersLength = kHistogramAt;
  static constexpr size_t kStatsLength = kHistogramAt + 2 * PageServer::Stats::kBuckets;
  Napi::Value JsStats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
      throw Napi::TypeError::New(env, "stats(out: Float64Array)");
    }
    auto out = info[0].As<Napi::Float64Array>();
    if (out.ElementLength() != kCountersLength && out.ElementLength() != kStatsLength) {
      throw Napi::RangeError::New(env, "stats(out): out holds the counters, or the counters and the histogram");
    }
    bool histogram = out.ElementLength() == kStatsLength;
    for (size_t i = 0; i < out.ElementLength(); i++) out[i] = 0;
    if (server_ != nullptr || has_final_stats_) {
      PageServer::Stats s = server_ != nullptr ? server_->stats() : final_stats_;
      const uint64_t values[] = {s.faults_native, s.faults_forwarded, s.events, s.pages, s.bytes, s.read_ahead_pages,
                                 s.zero_pages, s.continued_pages, s.eexist, s.eagain, s.batches, s.messages, s.ioctls,
                                 s.service_p50_ns, s.service_p99_ns, s.service_max_ns, s.spin_windows, s.spin_hits, s.spin_ns};
      for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) out[i] = static_cast<double>(values[i]);
      out[20] = static_cast<double>(s.background_pages);
      out[21] = static_cast<double>(s.copied_bytes);
      out[22] = static_cast<double>(s.pages_left);
      for (size_t b = 0; histogram && b < PageServer::Stats::kBuckets; b++) {
        out[kHistogramAt + 2 * b] = static_cast<double>(PageServer::BucketValue(b));
        out[kHistogramAt + 2 * b + 1] = static_cast<double>(s.histogram[b]);
      }
    } else {
      const SpinPolicy::Counters& c = stream_ != nullptr ? stream_->spin_counters() : stream_spin_final_;
      const SpinPolicy::Counters& w = wait_spin_.counters();
      out[16] = static_cast<double>(c.spins + w.spins);
      out[17] = static_cast<double>(c.hits + w.hits);
      out[18] = static_cast<double>(c.spun_ns + w.spun_ns);
    }
    out[19] = server_ != nullptr || has_final_stats_ ? 1 : 0;
    return env.Undefined();
  }

  // setEventWaits(remove, unmap): the uffd has EVENT_REMOVE / EVENT_UNMAP
  // (see MappingTable::SetEventWaits).
  Napi::Value JsSetEventWaits(const Napi::CallbackInfo& info) {
    MappingTable::Get().SetEventWaits(share_.get(), info[0].ToBoolean(), info[1].ToBoolean());
    return info.Env().Undefined();
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
    ServeHere(MappingTable::Role::kReads);
    wait_spin_.set_enabled(info[1].ToBoolean());
    Napi::ArrayBuffer buffer = messages_.Value();
    size_t capacity = std::min(buffer.ByteLength() / sizeof(uffd_msg), FaultStream::kCapacity);
    long n = share_->Wait(static_cast<uffd_msg*>(buffer.Data()), capacity, Int(info, 0), &wait_spin_);
    if (n == -ECANCELED) return Napi::Number::New(env, -1);
    if (n < 0) ThrowErrno(env, static_cast<int>(n), "read");
    return Napi::Number::New(env, static_cast<double>(n));
  }

  // This thread serves the uffd's faults from now on (the deadlock guard's
  // serving thread), in `role`, until it is closed: the owner's from the
  // start, a borrower's once it waits for faults or starts a stream.
  void ServeHere(MappingTable::Role role) { MappingTable::Get().ServeOn(this, share_.get(), std::this_thread::get_id(), role); }

  // lend() -> an id another thread's UffdHandle can share this uffd by.
  Napi::Value JsLend(const Napi::CallbackInfo& info) {
    Fd(info);
    return Napi::Number::New(info.Env(), static_cast<double>(UffdShare::Lend(share_)));
  }

  int fd_ = -1;
  std::shared_ptr<UffdShare> share_;
  bool owner_ = true;
  // A borrower's watch on the owner's close (UffdShare::DupShutdownFd).
  FdWatch* lender_closed_ = nullptr;
  int lender_closed_fd_ = -1;
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

// Worker termination or process exit: close every uffd this environment still
// holds, so no stream outlives its loop.
void CleanupEnv(AddonData* data) {
  for (UffdHandle* handle : data->handles) {
    handle->started_ = false;
    handle->CloseNative();
  }
  data->handles.clear();
}

namespace {

// closeAll(): every uffd this thread holds, at its exit: a worker blocked on
// a fault of one would otherwise never be joined (environment cleanup, which
// closes them too, comes after the join).
Napi::Value CloseAll(const Napi::CallbackInfo& info) {
  CleanupEnv(Data(info.Env()));
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

}  // namespace

void ExportUffd(Napi::Env env, Napi::Object exports) {
  AddonData* data = Data(env);
  data->uffd_constructor = Napi::Persistent(UffdHandle::Define(env));
  exports.Set("UffdHandle", data->uffd_constructor.Value());
  exports.Set("open", Napi::Function::New<Open>(env));
  exports.Set("api", Napi::Function::New<Api>(env));
  exports.Set("queryFeatures", Napi::Function::New<QueryFeatures>(env));
  exports.Set("closeFd", Napi::Function::New<CloseFd>(env));
  exports.Set("closeAll", Napi::Function::New<CloseAll>(env));
}

}  // namespace binding
