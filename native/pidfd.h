// Process descriptors (pidfd): a stable handle on a peer process, found by its
// pid (SO_PEERCRED), that becomes readable when the process exits and can be
// signalled without the risk of hitting a recycled pid. A page-fault handler
// uses one to learn that the process whose faults it serves is gone (its
// socket may have closed long before), and to kill it when a fault cannot be
// served. Plain C++, no N-API; functions return -errno on failure.
// See: man 2 pidfd_open, man 2 pidfd_send_signal.
#pragma once

namespace pidfd {

// pidfd_open(pid, 0), O_CLOEXEC (the kernel sets it). -ENOSYS before Linux 5.3.
int Open(int pid);
// pidfd_send_signal(fd, signal, NULL, 0).
int SendSignal(int fd, int signal);

}  // namespace pidfd
