// Unix domain sockets that carry descriptors (SCM_RIGHTS): how a uffd moves
// from the process that owns the memory (a VMM, say) to the one that serves
// its faults. Node's net module cannot pass descriptors, so the addon does.
// Plain C++, no N-API; functions return -errno on failure. Thread: any.
// See: man 7 unix, man 3 cmsg.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>
#include <vector>

namespace unix_socket {

// SOCK_STREAM, O_NONBLOCK and O_CLOEXEC. Listen replaces a stale socket file;
// -EADDRINUSE when another socket listens on path, -EEXIST when a file that is
// not a socket is there.
int Listen(const std::string& path, int backlog);
// Returns the new connection, or -EAGAIN when none is pending.
int Accept(int listener);
int Connect(const std::string& path);

// One sendmsg: all of data, and fds as one SCM_RIGHTS message.
long Send(int fd, const void* data, size_t length, const std::vector<int>& fds);

struct Received {
  std::vector<char> data;
  std::vector<int> fds;
  // The sender attached more descriptors than asked for; the kernel dropped the rest.
  bool fds_truncated = false;
};
// One recvmsg. Returns the bytes read (0 at end of stream), or -errno
// (-EAGAIN: nothing yet). Received descriptors are O_CLOEXEC.
long Receive(int fd, size_t max_bytes, size_t max_fds, Received* out);

struct Credentials {
  pid_t pid;
  uid_t uid;
  gid_t gid;
};
int PeerCredentials(int fd, Credentials* out);
// A pidfd (O_CLOEXEC) for the process at the other end: SO_PEERPIDFD, which
// names the process itself rather than a pid number, so it works where the
// peer is in a pid namespace this process cannot see into. -ENOPROTOOPT
// before Linux 6.5.
int PeerPidfd(int fd);

// What kind of object a descriptor is, from /proc/self/fd: "userfaultfd" for a
// uffd, "memfd" for a memfd, "file", "socket", or another anon_inode name.
std::string DescriptorKind(int fd);

}  // namespace unix_socket
