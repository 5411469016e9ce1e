// A TCP proxy on loopback that adds network latency (tc netem is not
// available on these kernels) without limiting bandwidth: every byte is held
// for half the round-trip time in each direction, and a new connection's
// first request waits one round trip more, as the TCP handshake would make
// it. A real link at that RTT with a large window carries whatever the ends
// can send; so does this one, up to HIGH_WATER bytes in flight per direction
// (far above any bandwidth-delay product the tests and the bench reach).
//
// One thread, epoll (edge-triggered), and per direction of each connection a
// queue of chunks stamped with the time they may leave; one timerfd wakes the
// loop when the earliest chunk is due. Driven by test/support/delay-proxy.mjs:
//   delay-proxy UPSTREAM_PORT RTT_MS   prints the port it listens on, then
//   reads commands on stdin, one a line, and answers "ok" to each:
//     stall   hold every byte of the connections open now, forever
//     drop    reset every connection open now
//   and exits when stdin ends (so it never outlives its parent).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

// Bytes read per read(): each becomes one timestamped chunk.
#define CHUNK (256 * 1024)
// Bytes read from one socket per turn of the loop, so that due bytes are
// written on time while a fast sender keeps its socket readable.
#define TURN_BUDGET (1024 * 1024)
// Past this many queued bytes in one direction, reading from its source pauses.
#define HIGH_WATER (32u * 1024 * 1024)

struct chunk {
  struct chunk *next;
  uint64_t due;  // CLOCK_MONOTONIC ns
  size_t len, off;
  char data[];
};

struct pair;

// One socket of a pair, as epoll sees it.
struct end {
  struct pair *pair;
  int fd;
  int readable, writable;  // edge-triggered: set by epoll, cleared on EAGAIN
};

// Bytes from one end to the other.
struct dir {
  struct end *from, *to;
  struct chunk *head, *tail;
  size_t queued;
  int eof;        // the source end sent FIN
  int shut;       // FIN passed on
  int handshake;  // the client-to-server direction: the first bytes wait one RTT more
};

struct pair {
  struct pair *prev, *next;
  struct end client, upstream;
  struct dir up, down;
  uint64_t accepted;
  int stalled;
  int dropped;  // to be reset, once this turn's events are handled
};

static struct pair *pairs;
static int epfd, timerfd_, listenfd;
static uint64_t rtt_ns;
// Some socket is still readable after its turn's budget: poll again at once.
static int more;
static struct sockaddr_in upstream_addr;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void add(int fd, void *ptr, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.ptr = ptr};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
}

// Closes a socket with a TCP reset rather than a FIN.
static void reset_close(int fd) {
  struct linger linger = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof linger);
  close(fd);
}

static void free_queue(struct dir *d) {
  while (d->head) {
    struct chunk *c = d->head;
    d->head = c->next;
    free(c);
  }
  d->tail = NULL;
  d->queued = 0;
}

// reset: the client sees a connection reset (the server side failed or the
// test asked for it); otherwise both ends were closed in order.
static void end_pair(struct pair *p, int reset) {
  if (reset) reset_close(p->client.fd);
  else close(p->client.fd);
  close(p->upstream.fd);
  free_queue(&p->up);
  free_queue(&p->down);
  if (p->prev) p->prev->next = p->next;
  else pairs = p->next;
  if (p->next) p->next->prev = p->prev;
  free(p);
}

static void tune(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void accept_all(void) {
  for (;;) {
    int fd = accept4(listenfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      if (errno == ECONNABORTED) continue;
      die("accept4");
    }
    // Loopback: the connect completes (or is refused) at once.
    int up = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (up < 0) die("socket");
    if (connect(up, (struct sockaddr *)&upstream_addr, sizeof upstream_addr) < 0) {
      // The server is gone: so is the client's connection.
      close(up);
      reset_close(fd);
      continue;
    }
    if (fcntl(up, F_SETFL, O_NONBLOCK) < 0) die("fcntl");
    struct pair *p = calloc(1, sizeof *p);
    if (!p) die("calloc");
    p->accepted = now_ns();
    p->client = (struct end){.pair = p, .fd = fd};
    p->upstream = (struct end){.pair = p, .fd = up};
    p->up = (struct dir){.from = &p->client, .to = &p->upstream, .handshake = 1};
    p->down = (struct dir){.from = &p->upstream, .to = &p->client};
    tune(fd);
    tune(up);
    p->next = pairs;
    if (pairs) pairs->prev = p;
    pairs = p;
    add(fd, &p->client, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
    add(up, &p->upstream, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
  }
}

// Moves what it can in one direction: reads while there is room (each read
// stamped with the time it may leave), writes what is due. Returns -1 when
// the pair failed (a socket error), 1 when this direction is finished.
static int pump(struct pair *p, struct dir *d, uint64_t now) {
  size_t budget = TURN_BUDGET;
  while (d->from->readable && !d->eof && d->queued < HIGH_WATER) {
    if (budget == 0) {
      more = 1;
      break;
    }
    struct chunk *c = malloc(sizeof *c + CHUNK);
    if (!c) die("malloc");
    ssize_t n = read(d->from->fd, c->data, CHUNK);
    if (n <= 0) {
      free(c);
      if (n == 0) d->eof = 1;
      else if (errno == EAGAIN) d->from->readable = 0;
      else if (errno != EINTR) return -1;
      continue;
    }
    if (n < CHUNK / 2) {
      struct chunk *smaller = realloc(c, sizeof *c + (size_t)n);
      if (smaller) c = smaller;
    }
    uint64_t from = now;
    if (d->handshake && from < p->accepted + rtt_ns) from = p->accepted + rtt_ns;
    *c = (struct chunk){.due = from + rtt_ns / 2, .len = (size_t)n};
    if (d->tail) d->tail->next = c;
    else d->head = c;
    d->tail = c;
    d->queued += (size_t)n;
    budget = (size_t)n >= budget ? 0 : budget - (size_t)n;
  }
  while (d->head && d->head->due <= now && d->to->writable) {
    struct chunk *c = d->head;
    ssize_t n = write(d->to->fd, c->data + c->off, c->len - c->off);
    if (n < 0) {
      if (errno == EAGAIN) d->to->writable = 0;
      else if (errno != EINTR) return -1;
      continue;
    }
    c->off += (size_t)n;
    d->queued -= (size_t)n;
    if (c->off == c->len) {
      d->head = c->next;
      if (!d->head) d->tail = NULL;
      free(c);
    }
  }
  if (d->eof && !d->head && !d->shut) {
    shutdown(d->to->fd, SHUT_WR);
    d->shut = 1;
  }
  return d->shut;
}

// Returns 0 when the pair was ended.
static int service(struct pair *p, uint64_t now) {
  if (p->dropped) {
    end_pair(p, 1);
    return 0;
  }
  if (p->stalled) return 1;
  int up = pump(p, &p->up, now);
  int down = up < 0 ? -1 : pump(p, &p->down, now);
  if (up < 0 || down < 0) {
    end_pair(p, 1);
    return 0;
  }
  if (up && down) {
    end_pair(p, 0);
    return 0;
  }
  return 1;
}

// Arms the timer for the earliest chunk that waits only for its time.
static void arm(void) {
  uint64_t next = UINT64_MAX;
  for (struct pair *p = pairs; p; p = p->next) {
    if (p->stalled || p->dropped) continue;
    if (p->up.head && p->up.to->writable && p->up.head->due < next) next = p->up.head->due;
    if (p->down.head && p->down.to->writable && p->down.head->due < next) next = p->down.head->due;
  }
  struct itimerspec its = {0};
  if (next != UINT64_MAX) {
    its.it_value.tv_sec = (time_t)(next / 1000000000u);
    its.it_value.tv_nsec = (long)(next % 1000000000u);
  }
  if (timerfd_settime(timerfd_, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");
}

static void command(void) {
  static char line[256];
  static size_t used;
  ssize_t n = read(0, line + used, sizeof line - 1 - used);
  if (n <= 0) {
    if (n < 0 && errno == EINTR) return;
    exit(0);  // the parent is gone
  }
  used += (size_t)n;
  char *nl;
  while ((nl = memchr(line, '\n', used))) {
    *nl = 0;
    if (strcmp(line, "stall") == 0) {
      for (struct pair *p = pairs; p; p = p->next) p->stalled = 1;
    } else if (strcmp(line, "drop") == 0) {
      // Not freed here: later events of this turn may name the pair.
      for (struct pair *p = pairs; p; p = p->next) p->dropped = 1;
    } else {
      fprintf(stderr, "delay-proxy: unknown command '%s'\n", line);
      exit(2);
    }
    fputs("ok\n", stdout);
    fflush(stdout);
    size_t rest = used - (size_t)(nl + 1 - line);
    memmove(line, nl + 1, rest);
    used = rest;
  }
  if (used == sizeof line - 1) used = 0;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: delay-proxy UPSTREAM_PORT RTT_MS\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  // Chunks come and go at the link's rate: keep them on the heap, never
  // mmap and munmap each one.
  mallopt(M_MMAP_THRESHOLD, 64 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
  rtt_ns = (uint64_t)(strtod(argv[2], NULL) * 1e6);
  upstream_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

  listenfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listenfd < 0) die("socket");
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(listenfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
  if (listen(listenfd, 128) < 0) die("listen");
  socklen_t len = sizeof addr;
  if (getsockname(listenfd, (struct sockaddr *)&addr, &len) < 0) die("getsockname");

  epfd = epoll_create1(EPOLL_CLOEXEC);
  timerfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (epfd < 0 || timerfd_ < 0) die("epoll/timerfd");
  static int tags[3];  // distinct addresses for the listener, the timer and stdin
  add(listenfd, &tags[0], EPOLLIN);
  add(timerfd_, &tags[1], EPOLLIN);
  add(0, &tags[2], EPOLLIN);
  printf("%d\n", ntohs(addr.sin_port));
  fflush(stdout);

  struct epoll_event events[64];
  for (;;) {
    int n = epoll_wait(epfd, events, 64, more ? 0 : -1);
    more = 0;
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
      void *ptr = events[i].data.ptr;
      if (ptr == &tags[0]) {
        accept_all();
      } else if (ptr == &tags[1]) {
        uint64_t expirations;
        if (read(timerfd_, &expirations, sizeof expirations) < 0 && errno != EAGAIN) die("read timerfd");
      } else if (ptr == &tags[2]) {
        command();
      } else {
        struct end *e = ptr;
        if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) e->readable = 1;
        if (events[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) e->writable = 1;
      }
    }
    // Few connections: look at each of them every turn.
    uint64_t now = now_ns();
    for (struct pair *p = pairs, *next; p; p = next) {
      next = p->next;
      service(p, now);
    }
    arm();
  }
}
