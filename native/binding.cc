// The N-API binding: converts JavaScript arguments to the core's types and the
// core's -errno results to errors built by lib/errors.ts. No policy lives here.
// This file: the module's initialisation and the shared conversions
// (binding_util.h); each subject has its own file: binding_uffd.cc (the uffd
// handle), binding_memory.cc, binding_socket.cc, binding_constants.cc.
// Thread: every function runs on the JavaScript thread of the environment
// (main thread or worker) that loaded the addon.
#include "binding_util.h"

#include <string>

#include "mapping_table.h"
#include "memory.h"

namespace binding {

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

Napi::Function FunctionArg(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsFunction()) throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a function");
  return info[i].As<Napi::Function>();
}

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

void GuardServingThread(Napi::Env env, uint64_t address, uint64_t length, const char* syscall) {
  if (length == 0 || !MappingTable::Get().ServedHere(address, length)) return;
  if (memory::AllPresent(address, length) == 1) return;
  ThrowCode(env, "ERR_UFFD_WOULD_DEADLOCK", syscall);
}

}  // namespace binding

namespace {

using namespace binding;

void CleanupEnvAndFree(Napi::Env, AddonData* data) {
  CleanupEnv(data);
  delete data;
}

Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) {
  Data(info.Env())->make_error = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData, &CleanupEnvAndFree>(data);
  exports.Set("setErrorFactory", Napi::Function::New<SetErrorFactory>(env));
  ExportUffd(env, exports);
  ExportMemory(env, exports);
  ExportSocket(env, exports);
  exports.Set("constants", Constants(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(userfaultfd, Init)
