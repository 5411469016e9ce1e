// The userfaultfd kernel ABI: the system header plus everything newer than it.
//
// The build host's headers may be as old as Linux 6.1; every definition below
// is guarded so a newer header wins, and the values are the kernel's published
// uapi values (include/uapi/linux/userfaultfd.h). Whether the running kernel
// supports any of them is decided at run time by UFFDIO_API and the ioctl mask
// UFFDIO_REGISTER returns, never by these definitions.
// See: man 2 userfaultfd, man 2 ioctl_userfaultfd.
#pragma once

#include <linux/types.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#ifndef USERFAULTFD_IOC
#define USERFAULTFD_IOC 0xAA
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

// Linux 6.2 .. 6.8 features.
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif

#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
struct uffdio_move {
  __u64 dst;
  __u64 src;
  __u64 len;
#define UFFDIO_MOVE_MODE_DONTWAKE ((__u64)1 << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((__u64)1 << 1)
  __u64 mode;
  __s64 move;  // written by the kernel: bytes moved, or -errno
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif

#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
struct uffdio_poison {
  struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
  __u64 mode;
  __s64 updated;  // written by the kernel: bytes poisoned, or -errno
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

// Linux 7.3: read-write protection (RWP). UFFDIO_REGISTER_MODE_RWP makes every
// access to a protected present page fault (UFFD_PAGEFAULT_FLAG_RWP);
// UFFDIO_RWPROTECT installs or removes the protection; with RWP_ASYNC the
// kernel restores access itself, and UFFDIO_SET_MODE switches between the two
// at run time. Checked against Debian's linux-libc-dev 7.3~rc7-1~exp1.
#ifndef UFFD_FEATURE_RWP
#define UFFD_FEATURE_RWP (1 << 17)
#endif
#ifndef UFFD_FEATURE_RWP_ASYNC
#define UFFD_FEATURE_RWP_ASYNC (1 << 18)
#endif
#ifndef UFFDIO_REGISTER_MODE_RWP
#define UFFDIO_REGISTER_MODE_RWP ((__u64)1 << 3)
#endif
#ifndef UFFD_PAGEFAULT_FLAG_RWP
#define UFFD_PAGEFAULT_FLAG_RWP (1 << 3)
#endif

#ifndef _UFFDIO_RWPROTECT
#define _UFFDIO_RWPROTECT (0x09)
struct uffdio_rwprotect {
  struct uffdio_range range;
#define UFFDIO_RWPROTECT_MODE_RWP ((__u64)1 << 0)
#define UFFDIO_RWPROTECT_MODE_DONTWAKE ((__u64)1 << 1)
  __u64 mode;
};
#define UFFDIO_RWPROTECT _IOWR(UFFDIO, _UFFDIO_RWPROTECT, struct uffdio_rwprotect)
#endif

#ifndef _UFFDIO_SET_MODE
#define _UFFDIO_SET_MODE (0x0A)
struct uffdio_set_mode {
  __u64 enable;   // features to turn on (today only UFFD_FEATURE_RWP_ASYNC)
  __u64 disable;  // features to turn off; must not overlap enable
};
#define UFFDIO_SET_MODE _IOW(UFFDIO, _UFFDIO_SET_MODE, struct uffdio_set_mode)
#endif

static_assert(sizeof(struct uffd_msg) == 32, "uffd_msg is 32 bytes in every kernel ABI");
