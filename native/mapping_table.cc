#include "mapping_table.h"

#include <algorithm>

#include "memory.h"

MappingTable& MappingTable::Get() {
  // Never destroyed: views may be released by finalizers that run during exit.
  static MappingTable* table = new MappingTable();
  return *table;
}

void MappingTable::Add(uint64_t start, uint64_t length) {
  std::lock_guard<std::mutex> lock(mutex_);
  mappings_.push_back({start, length, 0, false});
}

int MappingTable::Remove(uint64_t start, bool detach) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = std::find_if(mappings_.begin(), mappings_.end(),
                         [&](const Mapping& m) { return m.start == start && !m.removed; });
  if (it == mappings_.end()) return 0;
  // The kernel ends a uffd registration with the memory it covers (munmap,
  // or Detach's mapping over it): the serving thread may then touch what
  // the kernel maps at that address next.
  uint64_t length = it->length;
  if (it->views == 0) {
    mappings_.erase(it);
    CutRegistrations(nullptr, start, length);
    return 1;
  }
  // A view is still out: never leave it a dangling pointer.
  if (detach) {
    int r = memory::Detach(it->start, it->length);
    if (r < 0) return r;
    CutRegistrations(nullptr, start, length);
  }
  it->removed = true;
  return 0;
}

uint64_t MappingTable::AcquireView(uint64_t address, uint64_t length) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (Mapping& m : mappings_) {
    if (!m.removed && address >= m.start && address - m.start <= m.length &&
        length <= m.length - (address - m.start)) {
      m.views++;
      return m.start;
    }
  }
  return 0;
}

void MappingTable::ReleaseView(uint64_t start) {
  std::lock_guard<std::mutex> lock(mutex_);
  // A removed mapping and a new one at the same address can coexist briefly;
  // the removed one is the older, so prefer it.
  auto it = std::find_if(mappings_.begin(), mappings_.end(),
                         [&](const Mapping& m) { return m.start == start && m.removed; });
  if (it == mappings_.end()) {
    it = std::find_if(mappings_.begin(), mappings_.end(), [&](const Mapping& m) { return m.start == start; });
  }
  if (it == mappings_.end() || it->views == 0) return;
  if (--it->views == 0 && it->removed) {
    memory::Unmap(it->start, it->length);
    mappings_.erase(it);
  }
}

void MappingTable::AddRegistration(const void* uffd, uint64_t start, uint64_t length, bool faults_wait) {
  std::lock_guard<std::mutex> lock(mutex_);
  registrations_.push_back({uffd, start, length, faults_wait});
}

void MappingTable::RemoveRegistration(const void* uffd, uint64_t start, uint64_t length) {
  std::lock_guard<std::mutex> lock(mutex_);
  CutRegistrations(uffd, start, length);
}

void MappingTable::CutRegistrations(const void* uffd, uint64_t start, uint64_t length) {
  std::vector<Registration> kept;
  uint64_t end = start + length;
  for (const Registration& r : registrations_) {
    uint64_t r_end = r.start + r.length;
    if ((uffd != nullptr && r.uffd != uffd) || r_end <= start || r.start >= end) {
      kept.push_back(r);
      continue;
    }
    // Unregistering part of a range leaves the parts outside it registered.
    if (r.start < start) kept.push_back({r.uffd, r.start, start - r.start, r.faults_wait});
    if (r_end > end) kept.push_back({r.uffd, end, r_end - end, r.faults_wait});
  }
  registrations_.swap(kept);
}

void MappingTable::ServeOn(const void* server, const void* uffd, std::thread::id thread, Role role) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = std::find_if(servers_.begin(), servers_.end(), [&](const Server& s) { return s.server == server; });
  if (it == servers_.end()) {
    servers_.push_back({server, uffd, thread, role});
  } else {
    it->role = std::max(it->role, role);
  }
}

void MappingTable::SetEventWaits(const void* uffd, bool remove, bool unmap) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = std::find_if(event_waits_.begin(), event_waits_.end(), [&](const EventWaits& w) { return w.uffd == uffd; });
  if (it == event_waits_.end()) {
    event_waits_.push_back({uffd, remove, unmap});
  } else {
    *it = {uffd, remove, unmap};
  }
}

void MappingTable::StopServing(const void* server) {
  std::lock_guard<std::mutex> lock(mutex_);
  servers_.erase(std::remove_if(servers_.begin(), servers_.end(), [&](const Server& s) { return s.server == server; }),
                 servers_.end());
}

void MappingTable::ForgetUffd(const void* uffd) {
  std::lock_guard<std::mutex> lock(mutex_);
  registrations_.erase(std::remove_if(registrations_.begin(), registrations_.end(),
                                      [&](const Registration& r) { return r.uffd == uffd; }),
                       registrations_.end());
  servers_.erase(std::remove_if(servers_.begin(), servers_.end(), [&](const Server& s) { return s.uffd == uffd; }),
                 servers_.end());
  event_waits_.erase(std::remove_if(event_waits_.begin(), event_waits_.end(), [&](const EventWaits& w) { return w.uffd == uffd; }),
                     event_waits_.end());
}

bool MappingTable::WaitsForItself(const Server& server, Access access) const {
  switch (server.role) {
    case Role::kReads:
      return true;
    case Role::kResolves:
      // The event is read by the thread that passes the faults on.
      return access == Access::kTouch;
    case Role::kOwner:
      // Served elsewhere: whoever reads the uffd serves this thread's faults
      // and reads its events.
      return std::none_of(servers_.begin(), servers_.end(),
                          [&](const Server& s) { return s.uffd == server.uffd && s.role != Role::kOwner; });
  }
  return true;
}

bool MappingTable::ServedHere(uint64_t address, uint64_t length, Access access) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::thread::id self = std::this_thread::get_id();
  for (const Server& server : servers_) {
    if (server.thread != self || !WaitsForItself(server, access)) continue;
    // madvise and munmap wait only for a uffd with their event, and then for
    // any range of it, whether its faults wait or not.
    if (access != Access::kTouch) {
      auto w = std::find_if(event_waits_.begin(), event_waits_.end(), [&](const EventWaits& e) { return e.uffd == server.uffd; });
      if (w == event_waits_.end() || !(access == Access::kRemove ? w->remove : w->unmap)) continue;
    }
    for (const Registration& r : registrations_) {
      if (r.uffd != server.uffd || (access == Access::kTouch && !r.faults_wait)) continue;
      if (address < r.start + r.length && r.start < address + length) return true;
    }
  }
  return false;
}
