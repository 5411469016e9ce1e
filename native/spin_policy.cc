#include "spin_policy.h"

#include <sched.h>
#include <sys/prctl.h>
#include <time.h>

#include <algorithm>

uint64_t SpinPolicy::NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

void SpinPolicy::Yield() { sched_yield(); }

int SpinPolicy::SleepFor(pollfd* fds, nfds_t count, uint64_t ns) {
  static thread_local bool precise = false;
  if (!precise) precise = prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0) == 0;
  timespec ts = {static_cast<time_t>(ns / 1'000'000'000u), static_cast<long>(ns % 1'000'000'000u)};
  return ppoll(fds, count, &ts, nullptr);
}

uint64_t SpinPolicy::Window() {
  if (!enabled_) return 0;
  if (deferred_at_ != 0) {
    // The sleep ended at its timeout: spin through the fault's due time.
    counters_.spins++;
    counters_.window_ns = 2 * lead_ns_;
    return 2 * lead_ns_;
  }
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

uint64_t SpinPolicy::Deferral() {
  deferred_at_ = 0;
  if (!enabled_ || skip_ > 0 || period_ns_ <= kMaxWindowNs || period_ns_ > kMaxPeriodNs) return 0;
  // Only a steady pace can be predicted: gaps that stray by a quarter of
  // themselves are a workload with pauses, for which sleeping is right.
  if (4 * period_dev_ns_ > period_ns_) return 0;
  lead_ns_ = kLeadNs + 2 * period_dev_ns_;
  if (period_ns_ <= lead_ns_ + kMinWindowNs) return 0;
  deferred_at_ = NowNs();
  return period_ns_ - lead_ns_;
}

void SpinPolicy::Observe(uint64_t gap_ns) {
  // An average over about 8 observations: follows a change of workload
  // within a few batches, ignores one odd gap. A sleep's length includes the
  // wake-up itself, so it overstates the gap; a long sleep says the workload
  // has pauses, which the cap on the window already handles, so do not let
  // one pause stop spinning for good.
  uint64_t capped = std::min(gap_ns, 2 * kMaxWindowNs);
  gap_ns_ = gap_ns_ == 0 ? capped : gap_ns_ - gap_ns_ / 8 + capped / 8;
  uint64_t paced = std::min(gap_ns, 2 * kMaxPeriodNs);
  uint64_t dev = paced > period_ns_ ? paced - period_ns_ : period_ns_ - paced;
  period_dev_ns_ = period_ns_ == 0 ? paced / 2 : period_dev_ns_ - period_dev_ns_ / 8 + dev / 8;
  period_ns_ = period_ns_ == 0 ? paced : period_ns_ - period_ns_ / 8 + paced / 8;
}

void SpinPolicy::Hit(uint64_t waited_ns) {
  counters_.hits++;
  counters_.spun_ns += waited_ns;
  backoff_ = 0;
  // After a Deferral the gap is the sleep and the spin together.
  Observe(deferred_at_ != 0 ? NowNs() - deferred_at_ : waited_ns);
  deferred_at_ = 0;
}

void SpinPolicy::Miss(uint64_t window_ns) {
  counters_.spun_ns += window_ns;
  backoff_ = backoff_ == 0 ? 1 : std::min(backoff_ * 2, kMaxBackoff);
  skip_ = backoff_;
  deferred_at_ = 0;
}

void SpinPolicy::Slept(uint64_t slept_ns) {
  deferred_at_ = 0;
  if (!enabled_) return;
  Observe(slept_ns);
}
