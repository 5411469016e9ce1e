// The memory binding: memfds and guest_memfds, mappings and their page
// sizes, views of them for JavaScript, and the page-table scans.
#include <string>
#include <vector>

#include "binding_util.h"
#include "kvm.h"
#include "mapping_table.h"
#include "memory.h"

namespace binding {
namespace {

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
  bool detach = info[2].ToBoolean();
  // With EVENT_UNMAP, munmap waits until the serving thread reads the event:
  // refused there; collected memory stays mapped rather than hang the thread.
  if (MappingTable::Get().ServedHere(address, length, MappingTable::Access::kUnmap)) {
    if (detach) ThrowCode(info.Env(), "ERR_UFFD_WOULD_DEADLOCK", "munmap");
    return info.Env().Undefined();
  }
  int r = MappingTable::Get().Remove(address, detach);
  if (r == 1) r = memory::Unmap(address, length);
  if (r < 0) ThrowErrno(info.Env(), r, "munmap");
  return info.Env().Undefined();
}

// discard(address, length, remove)
Napi::Value Discard(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t address = U64(info, 0), length = U64(info, 1);
  // With EVENT_REMOVE, madvise waits until the serving thread reads the event.
  if (MappingTable::Get().ServedHere(address, length, MappingTable::Access::kRemove)) ThrowCode(env, "ERR_UFFD_WOULD_DEADLOCK", "madvise");
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

// view(address, length, caller) -> ArrayBuffer over the mapping, from any
// thread; caller ('view', 'attachView') names the call in errors.
Napi::Value View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t address = U64(info, 0), length = U64(info, 1);
  std::string caller = info[2].As<Napi::String>();
  if (MappingTable::Get().ServedHere(address, length)) ThrowCode(env, "ERR_UFFD_WOULD_DEADLOCK", caller.c_str());
  uint64_t start = MappingTable::Get().AcquireView(address, length);
  if (start == 0) ThrowCode(env, "ERR_UFFD_NOT_MAPPED", caller.c_str());
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

}  // namespace

void ExportMemory(Napi::Env env, Napi::Object exports) {
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
}

}  // namespace binding
