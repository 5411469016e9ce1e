// Adaptive spinning for the thread that resolves faults. After serving a
// batch, the resolver may keep reading the uffd without sleeping for a short
// window: on these 2-vCPU VMs a sleeping thread on an idle vCPU takes ~20 µs
// to wake, and the faulting thread's next fault usually comes ~15 µs after it
// was woken, so a window that outlasts that round trip saves one wake-up per
// fault (../shared/research/handoff-measurements.md: 2.3-3.2x when the
// faulting thread runs on the other vCPU).
//
// The window adapts to what the resolver sees:
// - the inter-arrival gap (an average of the gaps spins caught and of the
//   sleeps that ended in a message): the window is a few times the gap, and no
//   spin at all when faults come further apart than kMaxWindow;
// - whether spinning paid off: each window that expired empty doubles the
//   number of batches that skip spinning (up to kMaxBackoff), a caught message
//   resets it, so the tail of a burst costs one window, not one per batch;
// - whether the faulting threads share this CPU: every spin iteration yields
//   (sched_yield), so a faulting thread that is runnable here runs at once
//   instead of waiting for the spinner's time slice to end;
// - whether faults come at a steady pace further apart than kMaxWindow (a
//   sequential reader with read-ahead faults once per chunk pair, 100-300 µs
//   apart): a resolver that can sleep with a timeout (Deferral) sleeps until a
//   little before the next fault is due and spins from there, so the fault
//   finds it awake without it spinning through the whole gap. Measured with
//   read-ahead 16 (docs/performance.md): the fault at each chunk pair cost the
//   reader 110-150 µs when the resolver slept and 40-60 µs when it was awake.
// An idle resolver sleeps in poll(2): no faults, no CPU.
// No N-API. Thread: one resolver thread per policy object.
#pragma once

#include <poll.h>

#include <cstdint>

class SpinPolicy {
 public:
  // Longest window: beyond this the round trip is not a wake-up any more but
  // the faulting side doing real work, and sleeping is right.
  static constexpr uint64_t kMaxWindowNs = 100'000;
  static constexpr uint64_t kMinWindowNs = 10'000;
  // Before anything is known: the window the measurements found sufficient.
  static constexpr uint64_t kInitialWindowNs = 50'000;
  static constexpr uint32_t kMaxBackoff = 64;
  // Steady paces up to this long are slept through and caught by a spin.
  static constexpr uint64_t kMaxPeriodNs = 2'000'000;
  // How early the spin starts: covers a timer's own wake-up on these VMs
  // (20-40 µs), plus twice the pace's deviation.
  static constexpr uint64_t kLeadNs = 50'000;

  explicit SpinPolicy(bool enabled = false) : enabled_(enabled) {}

  void set_enabled(bool enabled) { enabled_ = enabled; }
  bool enabled() const { return enabled_; }

  // How long to spin before sleeping (0: sleep now). Right after a Deferral's
  // sleep ended with nothing read, the window that catches the due fault.
  uint64_t Window();
  // Before sleeping, for a resolver that can: how long to sleep before
  // spinning for the next message (0: sleep until one comes). The caller
  // then reads, and on nothing calls Window() and spins as after a batch.
  uint64_t Deferral();
  // A spin found a message after waited_ns.
  void Hit(uint64_t waited_ns);
  // A window of window_ns expired with nothing read.
  void Miss(uint64_t window_ns);
  // After a sleep, a message came slept_ns after the resolver went to sleep.
  void Slept(uint64_t slept_ns);

  struct Counters {
    uint64_t spins = 0;      // windows started
    uint64_t hits = 0;       // windows that caught a message
    uint64_t spun_ns = 0;    // time spent spinning
    uint64_t window_ns = 0;  // the current window
  };
  const Counters& counters() const { return counters_; }

  static uint64_t NowNs();
  // A Deferral's sleep: ppoll(2) for at most ns. The first call in a thread
  // sets that thread's timer slack to 1 µs (the default 50 µs would start
  // the spin that follows too late).
  static int SleepFor(pollfd* fds, nfds_t count, uint64_t ns);
  // One spin iteration's pause: lets a runnable thread on this CPU go first.
  static void Yield();

 private:
  void Observe(uint64_t gap_ns);

  bool enabled_;
  uint64_t gap_ns_ = 0;  // running average of inter-arrival gaps, 0: none seen
  // The pace as Deferral sees it: the same gaps, averaged without the cap
  // that keeps one pause from stopping ordinary spins, and how far they stray.
  uint64_t period_ns_ = 0, period_dev_ns_ = 0;
  uint64_t deferred_at_ = 0;  // when the current Deferral began, 0: none
  uint64_t lead_ns_ = 0;      // that Deferral's lead
  uint32_t backoff_ = 0;  // batches to skip spinning after a miss
  uint32_t skip_ = 0;
  Counters counters_;
};
