#include "spin_policy.h"

#include <sched.h>
#include <time.h>

#include <algorithm>

uint64_t SpinPolicy::NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

void SpinPolicy::Yield() { sched_yield(); }

uint64_t SpinPolicy::Window() {
  if (!enabled_) return 0;
  if (skip_ > 0) {
    skip_--;
    return 0;
  }
  uint64_t window = kInitialWindowNs;
  if (gap_ns_ != 0) {
    // Faults further apart than the longest window: sleeping costs nothing
    // they would notice.
    if (gap_ns_ > kMaxWindowNs) return 0;
    window = std::clamp<uint64_t>(3 * gap_ns_, kMinWindowNs, kMaxWindowNs);
  }
  counters_.spins++;
  counters_.window_ns = window;
  return window;
}

void SpinPolicy::Observe(uint64_t gap_ns) {
  // An average over about 8 observations: follows a change of workload
  // within a few batches, ignores one odd gap.
  gap_ns_ = gap_ns_ == 0 ? gap_ns : gap_ns_ - gap_ns_ / 8 + gap_ns / 8;
}

void SpinPolicy::Hit(uint64_t waited_ns) {
  counters_.hits++;
  counters_.spun_ns += waited_ns;
  backoff_ = 0;
  Observe(waited_ns);
}

void SpinPolicy::Miss(uint64_t window_ns) {
  counters_.spun_ns += window_ns;
  backoff_ = backoff_ == 0 ? 1 : std::min(backoff_ * 2, kMaxBackoff);
  skip_ = backoff_;
}

void SpinPolicy::Slept(uint64_t slept_ns) {
  if (!enabled_) return;
  // A sleep's length includes the wake-up itself, so it overstates the gap;
  // a long sleep says the workload has pauses, which the cap on the window
  // already handles, so do not let one pause stop spinning for good.
  Observe(std::min(slept_ns, 2 * kMaxWindowNs));
}
