// The gate between the threads that fill pages ahead of faults and the one
// that reads the uffd, so that no copy lands in memory the peer has removed.
//
// A page the peer removes (MADV_DONTNEED: a REMOVE event) must read as zeros
// from then on, never as the source's bytes. The kernel refuses resolutions
// with EAGAIN while a REMOVE is queued and unread, but only until the thread
// that removed resumes, which reading the event lets it do, and that thread
// zaps the pages after that. A filler that looked at its pages before the
// read and issues its ioctl after the zap would put stale bytes there; it
// happened (a churned page read back non-zero, about one run in 25 of
// `fc_peer --churn` against `serve --prefetch`). So a filler is inside the
// gate from looking at its pages until its ioctl returns, and the reader
// reads (and marks what the batch removed) only while no filler is inside.
// Each side announces itself, then looks at the other (Dekker, sequentially
// consistent): at least one of them sees the other and waits.
//
// Cost: a read waits for at most the ioctl a filler is in; fillers wait for
// a read (one syscall and its marks). Thread: any; no N-API.
#pragma once

#include <atomic>

#include "spin_policy.h"

class FillGate {
 public:
  // A filler between looking at its pages and its ioctl's return.
  class Fill {
   public:
    explicit Fill(FillGate& gate) : gate_(gate) {
      for (;;) {
        gate_.filling_.fetch_add(1, std::memory_order_seq_cst);
        if (!gate_.reading_.load(std::memory_order_seq_cst)) return;
        gate_.filling_.fetch_sub(1, std::memory_order_seq_cst);
        while (gate_.reading_.load(std::memory_order_acquire)) SpinPolicy::Yield();
      }
    }
    ~Fill() { gate_.filling_.fetch_sub(1, std::memory_order_release); }
    Fill(const Fill&) = delete;
    Fill& operator=(const Fill&) = delete;

   private:
    FillGate& gate_;
  };

  // The reader, from before its read until what it read is marked.
  class Read {
   public:
    explicit Read(FillGate& gate) : gate_(gate) {
      gate_.reading_.store(true, std::memory_order_seq_cst);
      while (gate_.filling_.load(std::memory_order_seq_cst) > 0) SpinPolicy::Yield();
    }
    ~Read() { gate_.reading_.store(false, std::memory_order_release); }
    Read(const Read&) = delete;
    Read& operator=(const Read&) = delete;

   private:
    FillGate& gate_;
  };

 private:
  std::atomic<int> filling_{0};
  std::atomic<bool> reading_{false};
};
