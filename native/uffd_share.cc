#include "uffd_share.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <mutex>

#include "mapping_table.h"
#include "uffd.h"

namespace {

struct Lent {
  std::mutex mutex;
  uint64_t next_id = 1;
  std::map<uint64_t, std::weak_ptr<UffdShare>> shares;
};

Lent& Table() {
  // Never destroyed: workers may borrow during process exit.
  static Lent* table = new Lent();
  return *table;
}

}  // namespace

std::shared_ptr<UffdShare> UffdShare::Adopt(int fd, int* error) {
  int stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd < 0) {
    *error = -errno;
    return nullptr;
  }
  return std::shared_ptr<UffdShare>(new UffdShare(fd, stop_fd));
}

UffdShare::~UffdShare() {
  // The deadlock guard's record of the registrations is the uffd's, shared
  // by its lender and borrowers: it ends when the descriptor closes.
  MappingTable::Get().ForgetUffd(this);
  uffd::Close(fd_);
  close(stop_fd_);
}

void UffdShare::Shutdown() {
  if (shut_down_.exchange(true, std::memory_order_acq_rel)) return;
  uint64_t one = 1;
  (void)!write(stop_fd_, &one, sizeof one);
  Lent& table = Table();
  std::lock_guard<std::mutex> lock(table.mutex);
  for (auto it = table.shares.begin(); it != table.shares.end();) {
    auto share = it->second.lock();
    if (share == nullptr || share.get() == this) {
      it = table.shares.erase(it);
    } else {
      ++it;
    }
  }
}

int UffdShare::DupShutdownFd() const {
  // The eventfd is written once and never read: readable for good after Shutdown().
  int fd = fcntl(stop_fd_, F_DUPFD_CLOEXEC, 0);
  return fd < 0 ? -errno : fd;
}

// Reads messages for as long as spin's window lasts: how many were read, 0 when
// the window ran out empty, -ECANCELED after Shutdown(), or -errno.
long UffdShare::Spin(uffd_msg* out, size_t max, SpinPolicy* spin) {
  uint64_t window = spin != nullptr ? spin->Window() : 0;
  if (window == 0) return 0;
  for (uint64_t start = SpinPolicy::NowNs(), now = start; now - start < window; now = SpinPolicy::NowNs()) {
    long n = uffd::ReadMessages(fd_, out, max);
    if (n > 0) {
      spin->Hit(SpinPolicy::NowNs() - start);
      return n;
    }
    if (n < 0 && n != -EAGAIN) return n;
    if (shut_down()) return -ECANCELED;
    SpinPolicy::Yield();
  }
  spin->Miss(window);
  return 0;
}

long UffdShare::Wait(uffd_msg* out, size_t max, int timeout_ms, SpinPolicy* spin) {
  if (shut_down()) return -ECANCELED;
  long n = Spin(out, max, spin);
  if (n != 0) return n;
  uint64_t slept_from = SpinPolicy::NowNs();
  pollfd fds[2] = {{fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
  // Faults at a steady pace beyond the window: sleep until shortly before
  // the next is due, then spin (the same as the native thread), where that
  // sleep and its spin fit in the wait's bound.
  bool room = timeout_ms < 0 || static_cast<uint64_t>(timeout_ms) * 1'000'000u > 2 * SpinPolicy::kMaxPeriodNs;
  uint64_t deferral = spin != nullptr && room ? spin->Deferral() : 0;
  int r;
  if (deferral > 0) {
    r = SpinPolicy::SleepFor(fds, 2, deferral);
    if (r == 0) {
      n = Spin(out, max, spin);
      if (n != 0) return n;
      if (timeout_ms >= 0) timeout_ms = std::max(0, timeout_ms - static_cast<int>((SpinPolicy::NowNs() - slept_from) / 1'000'000u));
      r = poll(fds, 2, timeout_ms);
    }
  } else {
    r = poll(fds, 2, timeout_ms);
  }
  if (r < 0) return errno == EINTR ? 0 : -errno;
  if (fds[1].revents != 0 || shut_down()) return -ECANCELED;
  if (r == 0) return 0;
  n = uffd::ReadMessages(fd_, out, max);
  if (n == -EAGAIN) return 0;
  if (n > 0 && spin != nullptr) spin->Slept(SpinPolicy::NowNs() - slept_from);
  return n;
}

uint64_t UffdShare::Lend(const std::shared_ptr<UffdShare>& share) {
  Lent& table = Table();
  std::lock_guard<std::mutex> lock(table.mutex);
  if (share->lent_id_ == 0) {
    share->lent_id_ = table.next_id++;
    table.shares[share->lent_id_] = share;
  }
  return share->lent_id_;
}

std::shared_ptr<UffdShare> UffdShare::Borrow(uint64_t id) {
  Lent& table = Table();
  std::lock_guard<std::mutex> lock(table.mutex);
  auto it = table.shares.find(id);
  if (it == table.shares.end()) return nullptr;
  auto share = it->second.lock();
  if (share == nullptr || share->shut_down()) return nullptr;
  return share;
}
