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
  // memory::Detach). Either way the registrations in it end, for every uffd.
  // -errno on failure.
  int Remove(uint64_t start, bool detach);

  // Takes a reference on the mapping that holds [address, address+length), for
  // a view. Returns the mapping's start, or 0 when no live mapping holds it.
  uint64_t AcquireView(uint64_t address, uint64_t length);
  // Drops a view reference; unmaps a removed mapping with its last view.
  void ReleaseView(uint64_t start);

  // Ranges registered with a uffd (`uffd` identifies the uffd itself, not
  // one handle of it: a lender and its borrowers share the registrations),
  // and the threads its faults are served on. A uffd registered here and
  // served by another process serves nothing on any thread of this one.
  // faults_wait: an access there can wait for the uffd's reader (not so for
  // a range registered WP alone on a uffd with WP_ASYNC).
  void AddRegistration(const void* uffd, uint64_t start, uint64_t length, bool faults_wait);
  void RemoveRegistration(const void* uffd, uint64_t start, uint64_t length);
  // How a thread serves a uffd, which decides what on it would wait for itself.
  enum class Role {
    // The thread that opened the uffd, before it reads the uffd itself: it is
    // the one to serve it (a touch there before serve() would hang), unless
    // another thread reads the uffd meanwhile (a serveSync worker, say).
    kOwner,
    // Resolves faults others read and pass to it (serveFrom's loop thread:
    // the misses), but reads no events: a touch waits for it, a madvise or
    // munmap only for the reader.
    kResolves,
    // Reads the uffd: its faults and events (the loop with a stream, a
    // serveSync worker, serveFrom's native thread).
    kReads,
  };
  // `server`, a handle of `uffd` (or its native thread), serves it on
  // `thread` in `role` until StopServing(server). Called again for the same
  // server, the role only grows (an owner that starts to read reads).
  void ServeOn(const void* server, const void* uffd, std::thread::id thread, Role role);
  void StopServing(const void* server);
  // Drops everything known about the uffd (its descriptor is closed).
  void ForgetUffd(const void* uffd);
  // The uffd has EVENT_REMOVE (`remove`: a madvise of its ranges waits until
  // its event is read) or EVENT_UNMAP (`unmap`: an munmap does), so on a
  // serving thread that call would never return.
  void SetEventWaits(const void* uffd, bool remove, bool unmap);
  // What the calling thread is about to do to memory: touch it (waits where
  // a fault waits), or madvise / munmap it (waits where the uffd has the event).
  enum class Access { kTouch, kRemove, kUnmap };
  // Whether `access` of [address, address+length) would wait for a uffd
  // whose faults are served on the calling thread.
  bool ServedHere(uint64_t address, uint64_t length, Access access = Access::kTouch);

 private:
  struct Mapping {
    uint64_t start;
    uint64_t length;
    unsigned views;
    bool removed;
  };
  struct Registration {
    const void* uffd;
    uint64_t start;
    uint64_t length;
    bool faults_wait;
  };
  // Drops what is registered in [start, start+length): `uffd`'s, or every
  // uffd's with nullptr. The lock must be held.
  void CutRegistrations(const void* uffd, uint64_t start, uint64_t length);

  struct Server {
    const void* server;
    const void* uffd;
    std::thread::id thread;
    Role role;
  };
  // Whether `access` on server's thread waits for that thread itself. The
  // lock must be held.
  bool WaitsForItself(const Server& server, Access access) const;
  std::mutex mutex_;
  std::vector<Mapping> mappings_;
  std::vector<Registration> registrations_;
  std::vector<Server> servers_;
  struct EventWaits {
    const void* uffd;
    bool remove;
    bool unmap;
  };
  std::vector<EventWaits> event_waits_;
};
