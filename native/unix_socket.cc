#include "unix_socket.h"

#include <cerrno>
#include <climits>
#include <cstring>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace unix_socket {
namespace {

int Errno() { return -errno; }

int Address(const std::string& path, sockaddr_un* addr) {
  if (path.empty() || path.size() >= sizeof(addr->sun_path)) return -ENAMETOOLONG;
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  std::memcpy(addr->sun_path, path.data(), path.size());
  return 0;
}

// What is at path already. A socket file nobody listens on (an earlier run's:
// connect() is refused) is removed, or bind would fail with EADDRINUSE. A
// live listener is never taken over (EADDRINUSE), and a file that is not a
// socket is not ours to remove (EEXIST).
int ClearStale(const std::string& path, const sockaddr_un& addr) {
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) return 0;  // nothing there; bind reports anything else
  if (!S_ISSOCK(st.st_mode)) return -EEXIST;
  // Non-blocking: a listener whose backlog is full answers EAGAIN instead of making this wait.
  int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (probe < 0) return Errno();
  int err = connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) < 0 ? errno : 0;
  close(probe);
  if (err == 0 || err == EAGAIN) return -EADDRINUSE;
  if (err == ECONNREFUSED) unlink(path.c_str());
  // Gone meanwhile, or removed: bind. Otherwise (EACCES) whether it lives cannot be told.
  return err == ECONNREFUSED || err == ENOENT ? 0 : -err;
}

}  // namespace

int Listen(const std::string& path, int backlog) {
  sockaddr_un addr;
  int r = Address(path, &addr);
  if (r < 0) return r;
  r = ClearStale(path, addr);
  if (r < 0) return r;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno();
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0 || listen(fd, backlog) < 0) {
    int err = Errno();
    close(fd);
    return err;
  }
  return fd;
}

int Accept(int listener) {
  int fd;
  do {
    fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  return fd < 0 ? Errno() : fd;
}

int Connect(const std::string& path) {
  sockaddr_un addr;
  int r = Address(path, &addr);
  if (r < 0) return r;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno();
  // Connecting a Unix stream socket completes at once or fails: no need to
  // wait for it. The socket becomes non-blocking afterwards.
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
    int err = Errno();
    close(fd);
    return err;
  }
  return fd;
}

long Send(int fd, const void* data, size_t length, const std::vector<int>& fds) {
  iovec iov{const_cast<void*>(data), length};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  long n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n < 0 ? Errno() : n;
}

long Receive(int fd, size_t max_bytes, size_t max_fds, Received* out) {
  out->data.assign(max_bytes, 0);
  out->fds.clear();
  out->fds_truncated = false;
  iovec iov{out->data.data(), max_bytes};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (max_fds == 0 ? 1 : max_fds)), 0);
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  long n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Errno();
  out->data.resize(static_cast<size_t>(n));
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int received;
      std::memcpy(&received, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
      out->fds.push_back(received);
    }
  }
  out->fds_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  return n;
}

int PeerCredentials(int fd, Credentials* out) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return Errno();
  *out = {cred.pid, cred.uid, cred.gid};
  return 0;
}

int PeerPidfd(int fd) {
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77  // Linux 6.5; the system headers are older
#endif
  int pidfd = -1;
  socklen_t len = sizeof(pidfd);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0) return Errno();
  return pidfd;
}

std::string DescriptorKind(int fd) {
  char link[64];
  char target[PATH_MAX];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  if (n < 0) return "closed";
  target[n] = '\0';
  std::string kind(target);
  if (kind == "anon_inode:[userfaultfd]") return "userfaultfd";
  if (kind.rfind("/memfd:", 0) == 0) return "memfd";
  if (kind.rfind("socket:", 0) == 0) return "socket";
  if (kind.rfind("anon_inode:", 0) == 0) return kind.substr(11);
  return "file";
}

}  // namespace unix_socket
