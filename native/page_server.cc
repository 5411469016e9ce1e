#include "page_server.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <system_error>

#include "uffd.h"

namespace {

uint64_t SystemPage() {
  static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return page;
}

bool PowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

size_t Bucket(uint64_t ns) {
  if (ns < 4) return static_cast<size_t>(ns);
  unsigned e = 63u - static_cast<unsigned>(__builtin_clzll(ns));
  size_t b = 4 * e + ((ns >> (e - 2)) & 3);
  return std::min(b, static_cast<size_t>(159));
}

}  // namespace

uint64_t PageServer::BucketValue(size_t b) {
  // Buckets 4 to 7 are never filled (Bucket() maps 4 ns and up to 8 and up).
  if (b < 8) return b;
  uint64_t e = b / 4, frac = b % 4;
  uint64_t low = (uint64_t{1} << e) + frac * (uint64_t{1} << (e - 2));
  return low + (uint64_t{1} << (e - 2)) / 2;
}

PageServer* PageServer::Create(uv_loop_t* loop, int uffd, const Source& source, std::vector<Range> ranges,
                               const Options& options, FaultStream::Sink* sink, int* error) {
  *error = -EINVAL;
  if (source.present != nullptr && !PowerOfTwo(source.present_page)) return nullptr;
  if (options.read_ahead == 0 || options.background_piece == 0) return nullptr;
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.start < b.start; });
  for (size_t i = 0; i < ranges.size(); i++) {
    const Range& r = ranges[i];
    if (!PowerOfTwo(r.page_size) || r.page_size % SystemPage() != 0) return nullptr;
    if (r.length == 0 || r.start % r.page_size != 0 || r.length % r.page_size != 0) return nullptr;
    if (r.start + r.length < r.start) return nullptr;
    if (i > 0 && ranges[i - 1].start + ranges[i - 1].length > r.start) return nullptr;
    if (r.fill == Fill::kSource && (r.source_offset > source.size || r.length > source.size - r.source_offset)) {
      return nullptr;
    }
  }
  auto* server = new PageServer();
  server->uffd_ = uffd;
  server->source_ = source;
  server->options_ = options;
  server->spin_.set_enabled(options.spin);
  server->armed_ = server->background_.armed = options.background && options.background_now;
  for (const Range& r : ranges) {
    uint64_t pages = r.length / r.page_size;
    server->ranges_.push_back(RangeState{r, pages, std::vector<uint8_t>(pages, 0)});
    server->counters_.pages_left.fetch_add(pages, std::memory_order_relaxed);
  }
  server->stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (server->stop_fd_ < 0) {
    *error = -errno;
    delete server;
    return nullptr;
  }
  server->queue_ = MessageQueue::Create(loop, sink, error);
  if (server->queue_ == nullptr || (*error = server->queue_->Start()) < 0) {
    if (server->queue_ != nullptr) server->queue_->Destroy();
    close(server->stop_fd_);
    delete server;
    return nullptr;
  }
  try {
    // The fillers first: the reader looks at fillers_ (Read()), so the vector
    // must be complete before that thread exists (ThreadSanitizer found the
    // reader reading it while this thread was still growing it).
    for (uint32_t i = 0; i < options.fill_threads; i++) {
      server->fillers_.emplace_back([server] { server->RunFiller(); });
      // Named here, not by the thread itself, so it is visible at once.
      pthread_setname_np(server->fillers_.back().native_handle(), "uffd-fill");
    }
    server->thread_ = std::thread([server] { server->Run(); });
    pthread_setname_np(server->thread_.native_handle(), "uffd-pages");
  } catch (const std::system_error& e) {
    *error = -e.code().value();
    server->Stop();
    server->queue_->Destroy();
    close(server->stop_fd_);
    delete server;
    return nullptr;
  }
  *error = 0;
  return server;
}

void PageServer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_.store(true, std::memory_order_relaxed);
  }
  filler_cv_.notify_all();
  for (std::thread& filler : fillers_) {
    if (filler.joinable()) filler.join();
  }
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  (void)!write(stop_fd_, &one, sizeof one);
  thread_.join();
}

void PageServer::Destroy() {
  Stop();
  close(stop_fd_);
  if (source_.file >= 0) close(source_.file);
  queue_->Destroy();
  if (zeros_ != nullptr) munmap(const_cast<uint8_t*>(zeros_), zeros_size_);
  delete this;
}

PageServer::Stats PageServer::stats() const {
  const Counters& c = counters_;
  // First: a page leaves it only once its counters are in (Mark).
  uint64_t pages_left = c.pages_left.load(std::memory_order_acquire);
  auto get = [](const std::atomic<uint64_t>& v) { return v.load(std::memory_order_relaxed); };
  Stats s{get(c.faults_native), get(c.faults_forwarded), get(c.events), get(c.pages), get(c.bytes),
          get(c.read_ahead_pages), get(c.zero_pages), get(c.continued_pages), get(c.eexist), get(c.eagain),
          get(c.batches), get(c.messages), get(c.ioctls), 0, 0, get(c.service_max_ns), get(c.spin_windows),
          get(c.spin_hits), get(c.spin_ns), get(c.background_pages), get(c.copied_bytes), pages_left, {}};
  uint64_t total = 0;
  for (size_t b = 0; b < Stats::kBuckets; b++) total += s.histogram[b] = get(c.histogram[b]);
  uint64_t seen = 0;
  for (size_t b = 0; b < Stats::kBuckets && total > 0; b++) {
    seen += s.histogram[b];
    if (s.service_p50_ns == 0 && seen * 2 >= total) s.service_p50_ns = BucketValue(b);
    if (seen * 100 >= total * 99) {
      s.service_p99_ns = BucketValue(b);
      break;
    }
  }
  return s;
}

void PageServer::CountResolved(Kind kind, uint64_t pages, uint64_t page_size) {
  counters_.pages.fetch_add(pages, std::memory_order_relaxed);
  counters_.bytes.fetch_add(pages * page_size, std::memory_order_relaxed);
  if (kind == Kind::kZero) counters_.zero_pages.fetch_add(pages, std::memory_order_relaxed);
  if (kind == Kind::kContinue) counters_.continued_pages.fetch_add(pages, std::memory_order_relaxed);
  if (kind == Kind::kCopy) counters_.copied_bytes.fetch_add(pages * page_size, std::memory_order_relaxed);
}

int PageServer::PollTimeout() {
  // A fault refused with EAGAIN is retried soon even if nothing new arrives;
  // background fill looks again at pages the source has delivered since.
  if (!pending_.empty()) return 1;
  if (!options_.background) return -1;
  std::lock_guard<std::mutex> lock(mu_);
  return background_.waiting ? background_.wait_ms : -1;
}

void PageServer::Mark(RangeState& r, uint64_t from, uint64_t to, uint8_t bits) {
  constexpr uint8_t kDone = kServed | kRemoved;
  uint64_t claimed = 0;
  for (uint64_t p = from; p < to; p++) {
    uint8_t before = __atomic_fetch_or(&r.state[p], bits, __ATOMIC_RELAXED);
    claimed += (bits & kDone) != 0 && (before & kDone) == 0;
  }
  if (claimed > 0) counters_.pages_left.fetch_sub(claimed, std::memory_order_release);
}

void PageServer::ResolvedByJs(uint64_t start, uint64_t length) {
  for (RangeState& r : ranges_) {
    uint64_t from = std::max(start, r.range.start), to = std::min(start + length, r.range.start + r.range.length);
    if (from >= to) continue;
    uint64_t ps = r.range.page_size;
    Mark(r, (from - r.range.start) / ps, (to - r.range.start + ps - 1) / ps, kServed);
  }
}

void PageServer::Record(uint64_t ns) {
  counters_.histogram[Bucket(ns)].fetch_add(1, std::memory_order_relaxed);
  if (ns > counters_.service_max_ns.load(std::memory_order_relaxed)) {
    counters_.service_max_ns.store(ns, std::memory_order_relaxed);
  }
}

void PageServer::Run() {
  pollfd fds[2] = {{uffd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
  // Filling from the start: the first pass begins now, not at the first
  // message (fillers, if any, have started on it already).
  if (armed_ && !ReadAhead()) return;
  for (;;) {
    uint64_t slept_from = SpinPolicy::NowNs();
    int timeout = PollTimeout();
    uint64_t deferral = timeout < 0 ? spin_.Deferral() : 0;
    int r = deferral > 0 ? SpinPolicy::SleepFor(fds, 2, deferral) : poll(fds, 2, timeout);
    if (r < 0 && errno != EINTR) {
      queue_->PushError(-errno);
      return;
    }
    if (options_.background) {
      // Background fill waited for the source: look again (and let the fillers).
      bool waited;
      {
        std::lock_guard<std::mutex> lock(mu_);
        waited = background_.waiting;
        background_.waiting = false;
      }
      if (waited) filler_cv_.notify_all();
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents & (POLLERR | POLLNVAL)) {
      queue_->PushError(-EBADF);
      return;
    }
    long n = Read();
    if (n < 0 && n != -EAGAIN) {
      queue_->PushError(static_cast<int>(n));
      return;
    }
    uint64_t now = SpinPolicy::NowNs();
    if (n > 0) spin_.Slept(now - slept_from);
    if (n > 0 || !pending_.empty()) Serve(buffer_, n > 0 ? static_cast<size_t>(n) : 0, now);
    if (!ReadAhead()) return;
    // Spin: the next fault usually comes sooner than this thread could wake.
    for (uint64_t window; (window = spin_.Window()) > 0;) {
      uint64_t start = SpinPolicy::NowNs();
      bool hit = false;
      for (now = start; now - start < window; now = SpinPolicy::NowNs()) {
        n = Read();
        if (n > 0) {
          now = SpinPolicy::NowNs();
          spin_.Hit(now - start);
          Serve(buffer_, static_cast<size_t>(n), now);
          if (!ReadAhead()) return;
          hit = true;
          break;
        }
        if (n < 0 && n != -EAGAIN) {
          queue_->PushError(static_cast<int>(n));
          return;
        }
        // Stopping is checked by poll() once the window ends; windows are short.
        SpinPolicy::Yield();
      }
      if (!hit) {
        spin_.Miss(window);
        break;
      }
    }
    const SpinPolicy::Counters& sc = spin_.counters();
    counters_.spin_windows.store(sc.spins, std::memory_order_relaxed);
    counters_.spin_hits.store(sc.hits, std::memory_order_relaxed);
    counters_.spin_ns.store(sc.spun_ns, std::memory_order_relaxed);
  }
}

bool PageServer::ReadAhead() {
  while (!stopping_.load(std::memory_order_relaxed)) {
    Piece piece;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!TakePiece(&piece)) break;
    }
    // Demand first: whatever faulted meanwhile is served before this piece
    // (which FillPiece looks at again after this read's events).
    long n = Read();
    if (n > 0) {
      Serve(buffer_, static_cast<size_t>(n), SpinPolicy::NowNs());
    } else if (n < 0 && n != -EAGAIN) {
      queue_->PushError(static_cast<int>(n));
      return false;
    }
    // After EAGAIN the loop reads the uffd again, and with it the event.
    FillPiece(piece);
  }
  return true;
}

void PageServer::RunFiller() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    Piece piece;
    filler_cv_.wait(lock, [&] { return stopping_.load(std::memory_order_relaxed) || TakePiece(&piece); });
    if (stopping_.load(std::memory_order_relaxed)) return;
    lock.unlock();
    // EAGAIN: the server thread reads the event; try again a little later.
    if (!FillPiece(piece)) std::this_thread::sleep_for(std::chrono::microseconds(100));
    lock.lock();
  }
}

bool PageServer::TakePiece(Piece* piece) {
  while (!ahead_.empty()) {
    bool cut = CutPiece(ahead_.front(), piece);
    if (ahead_.front().next >= ahead_.front().end) ahead_.erase(ahead_.begin());
    if (cut) return true;
  }
  for (;;) {
    if (!background_.has_current) {
      if (!NextBackground(&background_.current)) return false;
      background_.has_current = true;
    }
    bool cut = CutPiece(background_.current, piece);
    if (background_.current.next >= background_.current.end) background_.has_current = false;
    if (cut) return true;
  }
}

bool PageServer::CutPiece(Ahead& a, Piece* piece) {
  const RangeState& r = ranges_[a.range];
  while (a.next < a.end && !Fillable(r, a.next, a.kind)) a.next++;
  if (a.next >= a.end) return false;
  uint64_t ps = r.range.page_size;
  uint64_t pages = std::max<uint64_t>(1, (a.background ? options_.background_piece : kAheadPiece) / ps);
  uint64_t end = a.next + 1;
  while (end < a.end && end - a.next < pages && Fillable(r, end, a.kind)) end++;
  *piece = Piece{a.range, a.next, end, a.kind, a.background};
  a.next = end;
  return true;
}

bool PageServer::FillPiece(const Piece& piece) {
  RangeState& r = ranges_[piece.range];
  uint64_t ps = r.range.page_size;
  auto& filled = piece.background ? counters_.background_pages : counters_.read_ahead_pages;
  for (uint64_t at = piece.first; at < piece.end;) {
    // Mode 0: the ioctl wakes any thread that faulted on these pages before
    // its message was read (that message then finds them there: EEXIST).
    uint64_t done = 0, end = at;
    int rc = 0;
    {
      // The pages are looked at again inside the gate (fill_gate.h): one
      // removed, or resolved, since the piece was cut is left alone.
      FillGate::Fill inside(gate_);
      while (end < piece.end && Fillable(r, end, piece.kind)) end++;
      if (end > at) rc = Ioctl(r, piece.kind, at, end - at, 0, &done);
    }
    if (end == at) {
      at++;
      continue;
    }
    uint64_t got = done / ps;
    CountResolved(piece.kind, got, ps);
    filled.fetch_add(got, std::memory_order_relaxed);
    Mark(r, at, at + got, kServed);
    at += got;
    if (rc == 0) continue;
    if (rc == -EEXIST || (rc == -ENOENT && piece.background)) {
      // There already (a racing resolution, or the process wrote it), or
      // not registered there any more (unregistered, or unmapped without an
      // UNMAP event): nothing to fill at this page; go on with the next.
      if (rc == -EEXIST) counters_.eexist.fetch_add(1, std::memory_order_relaxed);
      Mark(r, at, at + 1, kServed);
      at++;
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (rc == -ESRCH || rc == -ENOENT) {
      ahead_.clear();  // the faulting process is gone
      if (rc == -ESRCH) background_.done = true;
    } else if (rc == -EAGAIN && piece.background) {
      // The address space is changing: look at these pages again once its
      // event has been read (the next pass takes them as a hole; a pass that
      // ended meanwhile, with nothing left, is not the last one after all).
      background_.next_holes.push_back(Hole{piece.range, at, piece.end});
      if (background_.done) {
        background_.done = false;
        background_.waiting = true;
      }
      return false;
    } else if (piece.background) {
      background_.done = true;  // refused: the pages are left to faults
    }
    // Read-ahead refused (EAGAIN or otherwise) is only ever a guess: the
    // piece is dropped; the faults still come.
    return rc != -EAGAIN;
  }
  return true;
}

bool PageServer::ScanBackground(uint32_t ri, uint64_t* page, uint64_t end, uint64_t gap, Ahead* a, bool* stopped) {
  const RangeState& r = ranges_[ri];
  Background& b = background_;
  uint64_t p = *page;
  *stopped = false;
  while (p < end) {
    if (State(r, p) != 0) {
      p++;
      continue;
    }
    if (Present(r, p)) {
      uint64_t last = p + 1;
      while (last < end && State(r, last) == 0 && Present(r, last)) last++;
      *a = Ahead{ri, p, last, Kind::kCopy, true};
      *page = last;
      return true;
    }
    uint64_t first = p;
    while (p < end && State(r, p) == 0 && !Present(r, p)) {
      p++;
      if (gap > 0 && p - first >= gap) {
        *page = first;
        *stopped = true;
        return false;
      }
    }
    b.next_holes.push_back(Hole{ri, first, p});
  }
  *page = p;
  return false;
}

bool PageServer::NextBackground(Ahead* a) {
  Background& b = background_;
  if (!options_.background || !b.armed || b.done || b.waiting) return false;
  bool stopped = false;
  // What the last pass passed over, in case it has arrived since.
  while (b.hole < b.holes.size()) {
    Hole& h = b.holes[b.hole];
    if (ScanBackground(h.range, &h.first, h.end, 0, a, &stopped)) return b.found = true;
    b.hole++;
  }
  while (b.range < ranges_.size()) {
    const RangeState& r = ranges_[b.range];
    if (r.range.fill == Fill::kSource) {
      uint64_t gap = std::max<uint64_t>(1, kBackgroundGap / r.range.page_size);
      if (ScanBackground(b.range, &b.page, r.pages, gap, a, &stopped)) return b.found = true;
      if (stopped) break;
    }
    b.range++;
    b.page = 0;
  }
  // The pass is over: the holes it left are the next pass's.
  b.holes.swap(b.next_holes);
  b.next_holes.clear();
  b.hole = 0;
  if (b.holes.empty() && !stopped) {
    b.done = true;
  } else {
    b.waiting = true;  // poll() waits a little first (PollTimeout)
    b.wait_ms = b.found ? kBackgroundWaitMs : std::min(2 * b.wait_ms, kBackgroundWaitMaxMs);
  }
  b.found = false;
  return false;
}

void PageServer::QueueAhead(uint32_t range, uint64_t first, uint64_t end, Kind kind) {
  if (first >= end) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    bool merged = false;
    for (Ahead& a : ahead_) {
      if (a.range == range && a.kind == kind && first <= a.end && a.next <= end) {
        a.next = std::min(a.next, first);
        a.end = std::max(a.end, end);
        merged = true;
        break;
      }
    }
    if (!merged) {
      if (ahead_.size() == kMaxAhead) ahead_.erase(ahead_.begin());
      ahead_.push_back(Ahead{range, first, end, kind, false});
    }
  }
  filler_cv_.notify_one();
}

long PageServer::Read() {
  // With fillers, a read holds them back: only read when there is something
  // (the spin loop reads again and again, mostly finding nothing).
  if (!fillers_.empty()) {
    pollfd ready = {uffd_, POLLIN, 0};
    if (poll(&ready, 1, 0) == 0) return -EAGAIN;
  }
  FillGate::Read reading(gate_);
  long n = uffd::ReadMessages(uffd_, buffer_, FaultStream::kCapacity);
  for (long i = 0; i < n; i++) {
    if (buffer_[i].event != UFFD_EVENT_PAGEFAULT) ApplyEvent(buffer_[i]);
  }
  return n;
}

void PageServer::ApplyEvent(const uffd_msg& msg) {
  uint64_t start, end;
  if (msg.event == UFFD_EVENT_REMOVE || msg.event == UFFD_EVENT_UNMAP) {
    start = msg.arg.remove.start;
    end = msg.arg.remove.end;
  } else if (msg.event == UFFD_EVENT_REMAP) {
    start = msg.arg.remap.from;
    end = msg.arg.remap.from + msg.arg.remap.len;
  } else {
    return;
  }
  for (RangeState& r : ranges_) {
    uint64_t from = std::max(start, r.range.start), to = std::min(end, r.range.start + r.range.length);
    if (from >= to) continue;
    uint64_t ps = r.range.page_size, first = (from - r.range.start) / ps, last = (to - r.range.start + ps - 1) / ps;
    Mark(r, first, last, kServed);
    if (msg.event == UFFD_EVENT_REMOVE) {
      for (uint64_t p = first; p < last; p++) __atomic_store_n(&r.state[p], kRemoved, __ATOMIC_RELAXED);
    }
  }
}

void PageServer::Forwarded(const uffd_msg& msg) {
  forward_.push_back(msg);
  counters_.faults_forwarded.fetch_add(1, std::memory_order_relaxed);
  if (msg.arg.pagefault.flags & (UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_RWP)) return;
  uint32_t range;
  uint64_t page;
  if (Locate(msg.arg.pagefault.address, &range, &page)) Mark(ranges_[range], page, page + 1, kForwarded);
}

int PageServer::CopyForJs(uint64_t dst, uint64_t src, uint64_t len, uint64_t mode, uint64_t* done) {
  FillGate::Fill inside(gate_);
  // The page at address: its size, and whether a REMOVE has taken it (then
  // *range and *page say which it is).
  auto removed = [&](uint64_t address, uint64_t* size, uint32_t* range, uint64_t* page) {
    if (!Locate(address, range, page)) {
      *size = SystemPage();
      return false;
    }
    *size = ranges_[*range].range.page_size;
    return (State(ranges_[*range], *page) & kRemoved) != 0;
  };
  uint32_t range = 0;
  uint64_t page = 0;
  bool any = false;
  for (uint64_t at = dst, size; at < dst + len && !any; at += size) any = removed(at, &size, &range, &page);
  if (!any) return uffd::Copy(uffd_, dst, src, len, mode, done);
  // A page at a time only where some page was removed (rare: the peer
  // removed memory a fault of its own was waiting on).
  *done = 0;
  while (*done < len) {
    uint64_t at = dst + *done, size = 0, one = 0;
    int rc = removed(at, &size, &range, &page)
                 ? Ioctl(ranges_[range], Kind::kZero, page, 1, mode & UFFDIO_COPY_MODE_DONTWAKE, &one)
                 : uffd::Copy(uffd_, at, src + *done, std::min(size, len - *done), mode, &one);
    *done += one;
    if (rc < 0) return rc;
  }
  return 0;
}

bool PageServer::Locate(uint64_t address, uint32_t* range, uint64_t* page) const {
  for (uint32_t i = 0; i < ranges_.size(); i++) {
    const Range& r = ranges_[i].range;
    if (address - r.start >= r.length) continue;
    *range = i;
    *page = (address - r.start) / r.page_size;
    return true;
  }
  return false;
}

bool PageServer::Present(const RangeState& r, uint64_t page) const {
  if (source_.present == nullptr || r.range.fill != Fill::kSource) return true;
  uint64_t offset = r.range.source_offset + page * r.range.page_size;
  uint64_t first = offset / source_.present_page, last = (offset + r.range.page_size - 1) / source_.present_page;
  if (last >= (source_.size + source_.present_page - 1) / source_.present_page) return false;
  for (uint64_t i = first; i <= last; i++) {
    if (__atomic_load_n(&source_.present[i], __ATOMIC_ACQUIRE) == 0) return false;
  }
  return true;
}

bool PageServer::Plan(const uffd_msg& msg, uint64_t read_at, Job* job) const {
  if (msg.event != UFFD_EVENT_PAGEFAULT) return false;
  uint64_t flags = msg.arg.pagefault.flags, address = msg.arg.pagefault.address;
  // Protection faults have their page: JavaScript decides (a copy would only
  // find it there, and the woken thread would fault again).
  if (flags & (UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_RWP)) return false;
  uint32_t i;
  uint64_t page;
  if (!Locate(address, &i, &page)) return false;
  const RangeState& r = ranges_[i];
  Kind kind;
  if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
    if (!Present(r, page)) return false;
    kind = Kind::kContinue;
  } else if (r.range.fill == Fill::kZero || (State(r, page) & kRemoved)) {
    kind = Kind::kZero;
  } else if (r.range.fill == Fill::kSource && Present(r, page)) {
    kind = Kind::kCopy;
  } else {
    return false;
  }
  *job = Job{i, page, kind, read_at, msg};
  return true;
}

bool PageServer::Fillable(const RangeState& r, uint64_t page, Kind kind) const {
  uint8_t state = State(r, page);
  if (state & (kServed | kForwarded)) return false;
  if (kind == Kind::kZero) return r.range.fill == Fill::kZero || (state & kRemoved);
  return kind == Kind::kCopy && r.range.fill == Fill::kSource && !(state & kRemoved) && Present(r, page);
}

void PageServer::Serve(const uffd_msg* msgs, size_t n, uint64_t read_at) {
  counters_.batches.fetch_add(1, std::memory_order_relaxed);
  counters_.messages.fetch_add(n, std::memory_order_relaxed);
  forward_.clear();
  // Events first (Read() has applied them): a fault read in the same batch
  // as a REMOVE of its page must see the removal, or the source's stale
  // bytes land there.
  bool faulted = false;
  for (size_t i = 0; i < n; i++) {
    if (msgs[i].event == UFFD_EVENT_PAGEFAULT) {
      faulted = true;
      continue;
    }
    forward_.push_back(msgs[i]);
    counters_.events.fetch_add(1, std::memory_order_relaxed);
  }
  jobs_.clear();
  std::vector<Job> retry;
  retry.swap(pending_);
  auto plan = [&](const uffd_msg& msg, uint64_t at) {
    Job job;
    if (Plan(msg, at, &job)) {
      jobs_.push_back(job);
    } else {
      Forwarded(msg);
    }
  };
  for (const Job& job : retry) plan(job.msg, job.read_at);
  for (size_t i = 0; i < n; i++) {
    if (msgs[i].event == UFFD_EVENT_PAGEFAULT) plan(msgs[i], read_at);
  }
  // JavaScript starts on what only it can answer while this thread resolves the rest.
  queue_->Push(forward_.data(), forward_.size());
  forward_.clear();
  std::sort(jobs_.begin(), jobs_.end(), [](const Job& a, const Job& b) {
    return a.range != b.range ? a.range < b.range : a.page < b.page;
  });
  // Faults on adjacent pages of one range, resolved the same way: one ioctl.
  for (size_t a = 0; a < jobs_.size();) {
    size_t b = a + 1;
    while (b < jobs_.size() && jobs_[b].range == jobs_[a].range && jobs_[b].kind == jobs_[a].kind &&
           jobs_[b].page <= jobs_[b - 1].page + 1) {
      b++;
    }
    Resolve(jobs_.data(), a, b, jobs_[a].page, jobs_[b - 1].page + 1);
    a = b;
  }
  queue_->Push(forward_.data(), forward_.size());
  // Background fill starts once the first faults are resolved (or handed on):
  // the peer is running, and its own pages went first.
  if (faulted && options_.background && !armed_) {
    armed_ = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      background_.armed = true;
    }
    filler_cv_.notify_all();
  }
}

int PageServer::Ioctl(const RangeState& r, Kind kind, uint64_t page, uint64_t count, uint64_t mode, uint64_t* done) {
  uint64_t ps = r.range.page_size, dst = r.range.start + page * ps, len = count * ps;
  counters_.ioctls.fetch_add(1, std::memory_order_relaxed);
  switch (kind) {
    case Kind::kContinue:
      return uffd::Continue(uffd_, dst, len, mode, done);
    case Kind::kZero: {
      if (ps == SystemPage()) return uffd::ZeroPage(uffd_, dst, len, mode, done);
      // hugetlb has no ZEROPAGE: copy from memory that reads as zeros (held
      // for the copy: another thread may want a larger buffer meanwhile).
      std::lock_guard<std::mutex> lock(zeros_mu_);
      if (zeros_size_ < len) {
        if (zeros_ != nullptr) munmap(const_cast<uint8_t*>(zeros_), zeros_size_);
        void* z = mmap(nullptr, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (z == MAP_FAILED) {
          zeros_ = nullptr;
          zeros_size_ = 0;
          *done = 0;
          return -errno;
        }
        zeros_ = static_cast<const uint8_t*>(z);
        zeros_size_ = len;
      }
      return uffd::Copy(uffd_, dst, reinterpret_cast<uint64_t>(zeros_), len, mode, done);
    }
    case Kind::kCopy:
      break;
  }
  uint64_t offset = r.range.source_offset + page * ps;
  uint64_t through_file = 0;
  if (source_.file >= 0 && ps == SystemPage()) {
    int rc = CopyFromFile(dst, offset, len, mode, &through_file);
    if (rc < 0 || through_file == len) {
      *done = through_file;
      return rc;
    }
  }
  // No file, or it came up short (shorter than the source says, or no
  // buffer): the rest comes from the mapping.
  uint64_t copied = 0;
  int rc = uffd::Copy(uffd_, dst + through_file, reinterpret_cast<uint64_t>(source_.bytes + offset + through_file),
                      len - through_file, mode, &copied);
  *done = through_file + copied;
  return rc;
}

int PageServer::CopyFromFile(uint64_t dst, uint64_t offset, uint64_t len, uint64_t mode, uint64_t* done) {
  // One buffer per thread (the server's and each filler's), unmapped when the thread ends.
  struct ReadBuffer {
    void* bytes = MAP_FAILED;
    ~ReadBuffer() {
      if (bytes != MAP_FAILED) munmap(bytes, kReadBuffer);
    }
  };
  thread_local ReadBuffer buffer;
  if (buffer.bytes == MAP_FAILED) {
    buffer.bytes = mmap(nullptr, kReadBuffer, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  }
  *done = 0;
  while (buffer.bytes != MAP_FAILED && *done < len) {
    uint64_t n = std::min(len - *done, kReadBuffer);
    ssize_t got = pread(source_.file, buffer.bytes, n, static_cast<off_t>(source_.file_offset + offset + *done));
    if (got != static_cast<ssize_t>(n)) break;
    uint64_t copied = 0;
    int rc = uffd::Copy(uffd_, dst + *done, reinterpret_cast<uint64_t>(buffer.bytes), n, mode, &copied);
    *done += copied;
    if (rc < 0) return rc;
  }
  return 0;
}

void PageServer::Resolve(const Job* jobs, size_t a, size_t b, uint64_t first, uint64_t end) {
  RangeState& r = ranges_[jobs[a].range];
  Kind kind = jobs[a].kind;
  uint64_t ps = r.range.page_size;
  // Pages this thread put in; those found there already are not counted.
  // Every page of [first, p) is there at the end, and marked so after the
  // counting (Mark).
  uint64_t resolved = 0;
  // One ioctl that wakes what it resolves; if a page in the middle is there
  // already, the rest goes in with DONTWAKE and one WAKE covers the run.
  uint64_t done = 0, p = first;
  int rc = Ioctl(r, kind, p, end - p, 0, &done);
  resolved += done / ps;
  p += done / ps;
  bool wake = false;
  while (rc == -EEXIST && p < end) {
    counters_.eexist.fetch_add(1, std::memory_order_relaxed);
    p++;
    wake = true;
    if (p == end) {
      rc = 0;
      break;
    }
    rc = Ioctl(r, kind, p, end - p, UFFDIO_COPY_MODE_DONTWAKE, &done);
    resolved += done / ps;
    p += done / ps;
  }
  if (wake) {
    counters_.ioctls.fetch_add(1, std::memory_order_relaxed);
    uffd::Wake(uffd_, r.range.start + first * ps, (p - first) * ps);
  }
  CountResolved(kind, resolved, ps);
  Mark(r, first, p, kServed);
  uint64_t now = SpinPolicy::NowNs();
  for (size_t i = a; i < b; i++) {
    const Job& job = jobs[i];
    if (job.page < p) {
      counters_.faults_native.fetch_add(1, std::memory_order_relaxed);
      Record(now - job.read_at);
    } else if (rc == -EAGAIN) {
      // The address space is changing: its event comes with the next read.
      counters_.eagain.fetch_add(1, std::memory_order_relaxed);
      pending_.push_back(job);
    } else if (rc == -ESRCH) {
      // The faulting process is gone: nothing waits.
    } else if (rc == -ENOENT) {
      // Not registered there any more (Firecracker v1.7-v1.10 maps fresh
      // memory over a ballooned range, with no event): the thread still
      // waits; woken, it retries and the kernel answers it.
      counters_.ioctls.fetch_add(1, std::memory_order_relaxed);
      uffd::Wake(uffd_, r.range.start + job.page * ps, ps);
    } else {
      // Refused for another reason: JavaScript's handler decides (and its
      // failure policy makes sure the thread does not hang).
      Forwarded(job.msg);
    }
  }
  // Read-ahead, after the faulting pages are in: the rest of their chunk, and
  // the chunk after it when the faults follow each other one or two chunks
  // apart (a sequential stream faults once per two chunks when it is kept
  // ahead of).
  uint64_t ra = options_.read_ahead;
  if (ra <= 1 || kind == Kind::kContinue || rc < 0) return;
  uint64_t chunk = first / ra, chunk_first = chunk * ra;
  uint64_t chunk_end = std::min(r.pages, (end + ra - 1) / ra * ra);
  bool sequential = r.any_chunk && (chunk == r.last_chunk + 1 || chunk == r.last_chunk + 2);
  r.last_chunk = (end - 1) / ra;
  r.any_chunk = true;
  uint32_t range = jobs[a].range;
  QueueAhead(range, end, sequential ? std::min(r.pages, chunk_end + ra) : chunk_end, kind);
  QueueAhead(range, chunk_first, first, kind);
}
