// The process-wide table of mappings this library created, so that any thread
// (a worker, say) can look one up by address, and of the ranges registered
// with a uffd whose faults are served on some thread, so that the library can
// refuse what would deadlock: the serving thread touching memory only it can
// resolve. Plain C++, no N-API. Thread: any; every method takes the lock.
#pragma once

#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

class MappingTable {
 public:
  static MappingTable& Get();

  void Add(uint64_t start, uint64_t length);

  // Ends a mapping. Returns 1 when the caller must munmap it now; 0 when
  // views are still out, in which case the last view's release unmaps it, and
  // with `detach` the memory has been replaced by zeros already (see
  // memory::Detach). -errno on failure.
  int Remove(uint64_t start, bool detach);

  // Takes a reference on the mapping that holds [address, address+length), for
  // a view. Returns the mapping's start, or 0 when no live mapping holds it.
  uint64_t AcquireView(uint64_t address, uint64_t length);
  // Drops a view reference; unmaps a removed mapping with its last view.
  void ReleaseView(uint64_t start);

  // Ranges registered with a uffd whose faults are served on `thread`.
  // `owner` identifies the uffd, so that closing it drops its ranges.
  void AddServed(const void* owner, uint64_t start, uint64_t length, std::thread::id thread);
  void RemoveServed(const void* owner, uint64_t start, uint64_t length);
  void RemoveServedBy(const void* owner);
  // Whether [address, address+length) overlaps a range whose faults are
  // served on the calling thread.
  bool ServedHere(uint64_t address, uint64_t length);

 private:
  struct Mapping {
    uint64_t start;
    uint64_t length;
    unsigned views;
    bool removed;
  };
  struct Served {
    const void* owner;
    uint64_t start;
    uint64_t length;
    std::thread::id thread;
  };
  std::mutex mutex_;
  std::vector<Mapping> mappings_;
  std::vector<Served> served_;
};
