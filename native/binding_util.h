// What the binding files (native/binding*.cc) share: the per-environment
// state, the conversions of JavaScript arguments to the core's types, and the
// errors lib/errors.ts builds for the core's -errno results. Only binding*.cc
// and this header include napi.h: the core in native/ knows nothing of N-API.
// Thread: everything here runs on the JavaScript thread of the environment
// (main thread or worker) that loaded the addon.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <set>

namespace binding {

class UffdHandle;

// Per-environment state: a worker that loads the addon gets its own.
struct AddonData {
  Napi::FunctionReference make_error;
  Napi::FunctionReference uffd_constructor;
  std::set<UffdHandle*> handles;
};

inline AddonData* Data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

// Throws the error lib/errors.ts builds for (-errno, syscall, extra fields).
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall, Napi::Object extra);
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall);
// Throws the library error `code` (ERR_UFFD_...) for syscall.
[[noreturn]] void ThrowCode(Napi::Env env, const char* code, const char* syscall);

// Argument i as an address or length: a bigint, or a number that is a safe
// non-negative integer.
uint64_t U64(const Napi::CallbackInfo& info, size_t i);
int Int(const Napi::CallbackInfo& info, size_t i);
Napi::Function FunctionArg(const Napi::CallbackInfo& info, size_t i);
inline Napi::BigInt Big(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }

struct Bytes {
  uint64_t address;
  uint64_t length;
};

// The memory behind an ArrayBuffer or a view of one (Buffer, TypedArray,
// DataView).
Bytes BytesOf(const Napi::CallbackInfo& info, size_t i);

// Refuses, on a thread that serves faults, an access to memory that only that
// thread could make present: the access would block it forever.
void GuardServingThread(Napi::Env env, uint64_t address, uint64_t length, const char* syscall);

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

// Each subject's binding file adds its functions and classes to the module's
// exports (binding.cc's Init calls them).
void ExportUffd(Napi::Env env, Napi::Object exports);
void ExportMemory(Napi::Env env, Napi::Object exports);
void ExportSocket(Napi::Env env, Napi::Object exports);
// The kernel's numbers lib/constants.ts checks itself against.
Napi::Value Constants(Napi::Env env);

// Worker termination or process exit: close every uffd this environment still
// holds, so no stream outlives its loop.
void CleanupEnv(AddonData* data);

}  // namespace binding
