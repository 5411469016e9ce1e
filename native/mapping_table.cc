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
  if (it->views == 0) {
    mappings_.erase(it);
    return 1;
  }
  // A view is still out: never leave it a dangling pointer.
  if (detach) {
    int r = memory::Detach(it->start, it->length);
    if (r < 0) return r;
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

void MappingTable::AddServed(const void* owner, uint64_t start, uint64_t length, std::thread::id thread) {
  std::lock_guard<std::mutex> lock(mutex_);
  served_.push_back({owner, start, length, thread});
}

void MappingTable::RemoveServed(const void* owner, uint64_t start, uint64_t length) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<Served> kept;
  uint64_t end = start + length;
  for (const Served& s : served_) {
    uint64_t s_end = s.start + s.length;
    if (s.owner != owner || s_end <= start || s.start >= end) {
      kept.push_back(s);
      continue;
    }
    // Unregistering part of a range leaves the parts outside it registered.
    if (s.start < start) kept.push_back({owner, s.start, start - s.start, s.thread});
    if (s_end > end) kept.push_back({owner, end, s_end - end, s.thread});
  }
  served_.swap(kept);
}

void MappingTable::RemoveServedBy(const void* owner) {
  std::lock_guard<std::mutex> lock(mutex_);
  served_.erase(std::remove_if(served_.begin(), served_.end(), [&](const Served& s) { return s.owner == owner; }),
                served_.end());
}

bool MappingTable::ServedHere(uint64_t address, uint64_t length) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::thread::id self = std::this_thread::get_id();
  for (const Served& s : served_) {
    if (s.thread == self && address < s.start + s.length && s.start < address + length) return true;
  }
  return false;
}
