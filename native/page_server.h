// The native fast path: a thread of its own that reads a uffd and resolves
// every fault whose answer is already in local memory, with no JavaScript in
// the loop. It serves registered ranges from a page source (bytes in this
// process: a mapped file or memfd, an ArrayBuffer, a SharedArrayBuffer), each
// range at its own offset into the source (a Firecracker snapshot's regions),
// in any page size (hugetlb ranges too):
// - missing faults on present pages: UFFDIO_COPY from the source;
// - minor faults on present pages: UFFDIO_CONTINUE (the page cache holds them);
// - missing faults in a zero range, or on pages a REMOVE event dropped:
//   UFFDIO_ZEROPAGE (a copy of zeros on hugetlb, which has no ZEROPAGE).
// Faults in one batch on adjacent pages are resolved by one ioctl. With
// read-ahead N, the rest of the aligned chunk of N pages around each fault is
// filled right after the faulting pages are resolved (the faulting thread
// runs again as soon as its own page is in), and when the fault continues a
// sequential stream (the chunk before it is in), so is the next chunk: the
// two windows of the kernel's own read-ahead, so that a sequential reader
// faults once per two chunks and rarely waits for a copy. Read-ahead goes in
// pieces, with the uffd read between them: a demand fault never waits behind
// more than one piece.
// With background fill, once the first fault has been read (or from the start,
// for memory whose owner needs no sign of life first), every page of the
// source ranges that nothing has resolved yet is copied in, a piece at a time
// behind the faults and their read-ahead (the uffd is read between pieces), so
// that a restore finishes without waiting for the workload to touch each page.
// Pages the source does not hold yet are passed over and looked at again
// every few milliseconds, as a remote source fills them.
// Read-ahead and background pieces are also taken by `fill_threads` helper
// threads: the copy, not the fault, is what bounds a sequential restore once
// read-ahead has removed the wake-ups, and the faulting thread's CPU is idle
// while it waits for it. The server thread keeps serving faults first and
// takes pieces too. Page states are bytes accessed atomically; the streams
// and the background cursor are guarded by one mutex; a filler looks at its
// pages and issues its ioctl only while the uffd is not being read (the
// gate, fill_gate.h), so that a REMOVE read meanwhile is never filled over.
// Everything else goes to JavaScript through a MessageQueue, unchanged: faults
// on pages not present (yet), write-protect faults, faults outside the ranges,
// faults an ioctl refused, and every non-fault event.
//
// REMOVE (MADV_DONTNEED / MADV_REMOVE of registered memory) is applied here,
// before any fault of the same batch: the pages read as zeros from then on,
// as they would without userfaultfd. A resolution refused with EAGAIN (the
// address space is changing and its event is not read yet) is retried after
// the next read. REMAP and UNMAP do not move the ranges: later faults at the
// new addresses fall outside them and go to JavaScript.
//
// `present` holds one flag per present_page bytes of the source, set (by
// JavaScript, with Atomics.store) after the bytes; this thread reads a flag
// with acquire ordering before reading the bytes.
//
// No N-API. Thread: Create, Destroy and stats on the loop's thread; the
// server's own thread does the rest.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "fill_gate.h"
#include "message_queue.h"
#include "spin_policy.h"
#include "uffd_abi.h"

class PageServer {
 public:
  // How missing faults in a range are filled: from the source, with zeros, or
  // not natively (kNone: only minor faults are resolved here, by CONTINUE).
  enum class Fill : uint8_t { kSource = 0, kZero = 1, kNone = 2 };

  struct Range {
    uint64_t start;
    uint64_t length;
    uint64_t page_size;
    uint64_t source_offset;  // where the range's first byte is in the source
    Fill fill;
  };

  struct Source {
    const uint8_t* bytes = nullptr;
    uint64_t size = 0;
    const uint8_t* present = nullptr;  // nullptr: every page is present
    uint64_t present_page = 0;
    // A descriptor of a file holding the same bytes (bytes[0] at file_offset),
    // or -1. Create() takes it when it succeeds (the server closes it when
    // destroyed; on failure the caller still owns it). The server copies pages
    // of the system page size through pread into a buffer of its own thread,
    // not from `bytes`: see CopyFromFile().
    int file = -1;
    uint64_t file_offset = 0;
  };

  struct Options {
    uint32_t read_ahead = 1;  // pages per fault, 1: the faulting page only
    bool spin = true;
    bool background = false;  // fill every source page, behind the faults
    bool background_now = false;  // from the start, not after the first fault
    uint64_t background_piece = 64 * 1024;  // bytes per background ioctl
    uint32_t fill_threads = 0;  // helpers that take read-ahead and background pieces
  };

  struct Stats {
    uint64_t faults_native, faults_forwarded, events, pages, bytes, read_ahead_pages, zero_pages,
        continued_pages, eexist, eagain, batches, messages, ioctls;
    uint64_t service_p50_ns, service_p99_ns, service_max_ns;
    uint64_t spin_windows, spin_hits, spin_ns;
    uint64_t background_pages, copied_bytes;
    // Pages of the ranges that nothing has claimed yet: not resolved here, not
    // removed, not handed to JavaScript with a fault.
    uint64_t pages_left;
    static constexpr size_t kBuckets = 160;
    uint64_t histogram[kBuckets];  // service times, see Bucket() in page_server.cc
  };
  // The middle of a histogram bucket's range, in ns.
  static uint64_t BucketValue(size_t bucket);

  // Checks the ranges (page-aligned, inside the source, not overlapping) and
  // starts the thread. Fails with nullptr and *error = -errno.
  static PageServer* Create(uv_loop_t* loop, int uffd, const Source& source, std::vector<Range> ranges,
                            const Options& options, FaultStream::Sink* sink, int* error);

  Stats stats() const;
  // The thread that reads the uffd (for the deadlock guard).
  std::thread::id reader() const { return thread_.get_id(); }
  void Ref() { queue_->Ref(); }
  void Unref() { queue_->Unref(); }
  // UFFDIO_COPY of [src, src + len) to dst for JavaScript (a miss it has
  // fetched) while this server runs: inside the fill gate, and pages a
  // REMOVE has taken since get zero pages instead, as their faults must
  // (fill_gate.h). Thread: the loop's; returns like uffd::Copy.
  int CopyForJs(uint64_t dst, uint64_t src, uint64_t len, uint64_t mode, uint64_t* done);
  // JavaScript resolved [start, start + length) through this uffd (a fault
  // it was passed, or a range of its own): those pages leave pagesLeft.
  // Thread: the loop's.
  void ResolvedByJs(uint64_t start, uint64_t length);
  // Stops the thread and waits for it (idempotent); stats() stay readable.
  void Stop();
  // Stops, then frees the server; the uffd may be closed right after.
  void Destroy();

 private:
  struct RangeState {
    Range range;
    uint64_t pages;
    // Per page: kServed once resolved (or found there), kRemoved after a
    // REMOVE, kForwarded once its fault went to JavaScript (which resolves
    // it). Lets read-ahead and background fill skip pages known to be there.
    // A page leaves pages_left when it is first served or removed, not when
    // its fault is passed on: until JavaScript has resolved it, the restore
    // is not complete (a thread still waits on it).
    std::vector<uint8_t> state;
    // The chunk of the last fault read ahead of, for telling a sequential
    // stream (the next fault one or two chunks on) from random access.
    uint64_t last_chunk = 0;
    bool any_chunk = false;
  };
  static constexpr uint8_t kServed = 1;
  static constexpr uint8_t kRemoved = 2;
  static constexpr uint8_t kForwarded = 4;

  enum class Kind : uint8_t { kCopy, kZero, kContinue };
  struct Job {
    uint32_t range;
    uint64_t page;
    Kind kind;
    uint64_t read_at;  // when the message was read, for the service time
    uffd_msg msg;
  };

  // Pages to fill ahead of the faults: [next, end) of a range, by one kind.
  struct Ahead {
    uint32_t range;
    uint64_t next;
    uint64_t end;
    Kind kind;
    bool background;
  };
  // At most this many streams are followed; a new one replaces the oldest.
  static constexpr size_t kMaxAhead = 16;
  // Bytes filled ahead per ioctl (at least one page): small enough that a
  // demand fault read between pieces is not kept waiting for long.
  static constexpr uint64_t kAheadPiece = 16 * 1024;

  PageServer() = default;
  void Run();
  // Fills ahead_ piece by piece, serving any message that arrives first.
  // False when reading the uffd failed (the error is pushed).
  bool ReadAhead();
  // A run of pages to fill by one ioctl, taken from a stream or the background.
  struct Piece {
    uint32_t range;
    uint64_t first, end;
    Kind kind;
    bool background;
  };
  // Takes the next piece: read-ahead streams first, then background fill.
  // False when there is none now. Requires mu_.
  bool TakePiece(Piece* piece);
  // Cuts the next piece off `a`; false when `a` has no fillable page left. Requires mu_.
  bool CutPiece(Ahead& a, Piece* piece);
  // Fills one piece (no lock held). False after EAGAIN (the address space is
  // changing): the caller waits for the event to be read.
  bool FillPiece(const Piece& piece);
  // The next run of pages for background fill, from its cursor; false when
  // there is none now (all claimed, or waiting for the source). Requires mu_.
  bool NextBackground(Ahead* a);
  void RunFiller();
  uint8_t State(const RangeState& r, uint64_t page) const {
    return __atomic_load_n(&r.state[page], __ATOMIC_RELAXED);
  }
  void QueueAhead(uint32_t range, uint64_t first, uint64_t end, Kind kind);
  // Reads up to kCapacity messages into buffer_ and applies their events,
  // with no filler inside the gate meanwhile (fill_gate.h). -errno on error.
  long Read();
  void Serve(const uffd_msg* msgs, size_t n, uint64_t read_at);
  // REMOVE: the pages read as zeros from now on. UNMAP and REMAP's old
  // addresses: nothing is there to fill.
  void ApplyEvent(const uffd_msg& msg);
  // Sets bits on [from, to); pages served or removed for the first time
  // leave pages_left (last, with release: whoever reads pages_left first, with
  // acquire, sees the counters of what brought it down).
  void Mark(RangeState& r, uint64_t from, uint64_t to, uint8_t bits);
  void Forwarded(const uffd_msg& msg);
  bool Present(const RangeState& r, uint64_t page) const;
  bool Plan(const uffd_msg& msg, uint64_t read_at, Job* job) const;
  // The range holding address, and the page's index in it; false outside every range.
  bool Locate(uint64_t address, uint32_t* range, uint64_t* page) const;
  bool Fillable(const RangeState& r, uint64_t page, Kind kind) const;
  // Resolves pages [first, end) of range r, which hold the faults jobs[a, b).
  void Resolve(const Job* jobs, size_t a, size_t b, uint64_t first, uint64_t end);
  int Ioctl(const RangeState& r, Kind kind, uint64_t page, uint64_t count, uint64_t mode, uint64_t* done);
  // UFFDIO_COPY of [offset, offset + len) of the source, read from its file
  // with pread into a buffer this thread reuses, kReadBuffer bytes at a time.
  // The kernel otherwise reads each source page through the mapping, taking
  // a fault per page the first time (this process has never read the page:
  // the usual case, as each page is copied once); the buffer is mapped
  // already and pread reads the page cache directly. On a VM with shadow
  // paging that halves what a copied page costs (bench/native/copy_cost.c
  // prints both). Returns 0 with *done < len when pread comes up short (or
  // the buffer cannot be mapped): Ioctl() copies the rest from the mapping.
  int CopyFromFile(uint64_t dst, uint64_t offset, uint64_t len, uint64_t mode, uint64_t* done);
  static constexpr uint64_t kReadBuffer = 256 * 1024;
  // Pages resolved by one ioctl, by a fault's resolution or by read-ahead.
  void CountResolved(Kind kind, uint64_t pages, uint64_t page_size);
  // Polling timeout: -1, or sooner when an EAGAIN retry or the source is awaited.
  int PollTimeout();
  void Record(uint64_t ns);

  int uffd_ = -1;
  int stop_fd_ = -1;
  Source source_;
  std::vector<RangeState> ranges_;
  Options options_;
  MessageQueue* queue_ = nullptr;
  std::thread thread_;
  std::atomic<bool> stopping_{false};  // ends ReadAhead() and the fillers; poll() then sees stop_fd_
  bool armed_ = false;  // the server thread's own copy of background_.armed
  SpinPolicy spin_;
  const uint8_t* zeros_ = nullptr;
  uint64_t zeros_size_ = 0;
  std::vector<Job> pending_;  // refused with EAGAIN: retried after the next read
  FillGate gate_;  // between reading the uffd and the fillers' ioctls
  std::vector<Job> jobs_;
  // Guards ahead_ and background_, which the fillers share; filler_cv_ wakes
  // them when there is work or when stopping.
  std::mutex mu_;
  std::condition_variable filler_cv_;
  std::vector<std::thread> fillers_;
  std::mutex zeros_mu_;
  std::vector<Ahead> ahead_;
  // Background fill, armed by the first fault (or at once). A pass looks at
  // the holes the last one left (runs of pages the source did not hold
  // then), then moves the cursor on over pages nothing has claimed, and ends
  // at the end of the ranges or at a long run of pages the source does not
  // hold yet (a remote source fills in order: what lies beyond comes later).
  // The next pass starts after a short wait. So a pass costs what arrived
  // and what is still out of order, never the whole of a large image.
  struct Hole {
    uint32_t range;
    uint64_t first, end;
  };
  struct Background {
    bool armed = false, done = false, waiting = false;
    uint32_t range = 0;
    uint64_t page = 0;
    std::vector<Hole> holes, next_holes;
    size_t hole = 0;
    // The wait between passes: short while pages arrive, longer (up to
    // kBackgroundWaitMaxMs) while a pass finds nothing new, as for a source
    // that has stalled: an idle server stays cheap.
    int wait_ms = kBackgroundWaitMs;
    bool found = false;  // this pass has found pages to fill
    Ahead current{};
    bool has_current = false;
  } background_;
  static constexpr int kBackgroundWaitMs = 5, kBackgroundWaitMaxMs = 80;
  // Pages not in the source after which a pass stops (in bytes of the range).
  static constexpr uint64_t kBackgroundGap = 16 << 20;
  // Scans range `ri` from *page to `end` for pages to fill: claimed pages are
  // passed, runs of unclaimed pages the source lacks go to next_holes, and
  // the first run of unclaimed present pages goes to *a (true). With a gap
  // limit, a run of that many missing pages stops the scan at its start
  // (false, *page there); false at `end` otherwise. Requires mu_.
  bool ScanBackground(uint32_t ri, uint64_t* page, uint64_t end, uint64_t gap, Ahead* a, bool* stopped);
  std::vector<uffd_msg> forward_;
  uffd_msg buffer_[FaultStream::kCapacity];

  // Written by the server thread, read by stats() on the loop's thread.
  struct Counters {
    std::atomic<uint64_t> faults_native{0}, faults_forwarded{0}, events{0}, pages{0}, bytes{0},
        read_ahead_pages{0}, zero_pages{0}, continued_pages{0}, eexist{0}, eagain{0}, batches{0},
        messages{0}, ioctls{0}, service_max_ns{0}, spin_windows{0}, spin_hits{0}, spin_ns{0},
        background_pages{0}, copied_bytes{0}, pages_left{0};
    // Service time (message read -> its page resolved), in quarter-octave
    // buckets: bucket 4*log2(ns) + the next two bits.
    std::atomic<uint64_t> histogram[Stats::kBuckets] = {};
  } counters_;
};
