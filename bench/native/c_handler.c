/*
 * c_handler: the plain C page-fault handler the library is measured against.
 *
 * It serves one Firecracker-style peer (test/fixtures/fc_peer.c, or Firecracker itself): it
 * accepts one connection, receives the handshake (a JSON array of regions, the userfaultfd as
 * SCM_RIGHTS) and resolves faults from the memory file in one thread: poll(), read() of up to
 * 64 messages, one ioctl per fault (BASELINE.md). Protocol: /work/shared/FIRECRACKER-PROTOCOL.md.
 *
 * Build: cc -O2 -Wall -Wextra -pthread -o c_handler c_handler.c
 * Output: one JSON line of counters on stdout when the peer hangs up; exit 0. Errors, including
 * an invalid handshake, go to stderr with exit status 2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HANDSHAKE_MAX (64u << 10)
#define MSGS_PER_READ 64
/* More than Firecracker sends (one), so that extra descriptors are seen rather than truncated */
#define FDS_MAX 8
#define JSON_DEPTH_MAX 32

struct region {
	uint64_t base, size, offset, page_size;
	uint64_t npages;
	bool *removed; /* pages dropped by UFFD_EVENT_REMOVE: they must come back as zeros */
};

struct fault {
	uint64_t addr, flags;
};

struct server {
	int uffd, sock;
	uint64_t host_page;
	const uint8_t *file;
	uint64_t file_size;
	const uint8_t *zeros; /* never written: reads as zeros, the source of zero-filled huge pages */
	struct region *regions;
	size_t nregions;
	struct fault *waiting; /* faults not yet resolved: read, or retried after EAGAIN */
	size_t nwaiting, waiting_cap;
	uint64_t readahead;
	bool zeropage;
	uint64_t spin_ns;
	struct {
		uint64_t faults, copies, eexist, removes, batches, messages;
	} stats;
};

__attribute__((noreturn, format(printf, 2, 3)))
static void fail(int err, const char *fmt, ...)
{
	va_list ap;

	fputs("c_handler: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (err)
		fprintf(stderr, ": %s", strerror(err));
	fputc('\n', stderr);
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t parse_number(const char *arg, const char *option)
{
	char *end;
	unsigned long long v;

	/* strtoull would accept a sign and negate it */
	if (*arg < '0' || *arg > '9')
		fail(0, "%s: '%s' is not an unsigned number", option, arg);
	errno = 0;
	v = strtoull(arg, &end, 10);
	if (errno || *end)
		fail(0, "%s: '%s' is not a valid number", option, arg);
	return v;
}

/* ---- the handshake ---- */

__attribute__((noreturn, format(printf, 1, 2)))
static void invalid(const char *fmt, ...)
{
	va_list ap;

	fputs("c_handler: invalid handshake: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

/* Just enough JSON: the handshake's numbers, and skipping whatever else a peer adds. */
struct json {
	const char *p, *end;
};

static void skip_ws(struct json *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static bool eat(struct json *j, char c)
{
	skip_ws(j);
	if (j->p < j->end && *j->p == c) {
		j->p++;
		return true;
	}
	return false;
}

/* A string's bytes between the quotes, escapes left as written (the keys we need have none). */
static bool parse_string(struct json *j, const char **s, size_t *n)
{
	if (!eat(j, '"'))
		return false;
	*s = j->p;
	while (j->p < j->end && *j->p != '"') {
		if ((unsigned char)*j->p < 0x20)
			return false;
		if (*j->p == '\\' && ++j->p == j->end)
			return false;
		j->p++;
	}
	if (j->p == j->end)
		return false;
	*n = (size_t)(j->p - *s);
	j->p++;
	return true;
}

/* An unsigned 64-bit integer as JSON writes it: no leading zero, fraction or exponent. */
static bool parse_u64(struct json *j, uint64_t *v)
{
	const char *start;
	uint64_t x = 0;

	skip_ws(j);
	start = j->p;
	for (; j->p < j->end && *j->p >= '0' && *j->p <= '9'; j->p++) {
		unsigned d = (unsigned)(*j->p - '0');

		if (x > (UINT64_MAX - d) / 10)
			return false;
		x = x * 10 + d;
	}
	if (j->p == start || (*start == '0' && j->p - start > 1))
		return false;
	if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
		return false;
	*v = x;
	return true;
}

static bool skip_value(struct json *j, int depth);

static bool skip_members(struct json *j, char close, int depth)
{
	if (eat(j, close))
		return true;
	do {
		const char *key;
		size_t n;

		if (close == '}' && (!parse_string(j, &key, &n) || !eat(j, ':')))
			return false;
		if (!skip_value(j, depth + 1))
			return false;
	} while (eat(j, ','));
	return eat(j, close);
}

static bool skip_value(struct json *j, int depth)
{
	static const char *const literals[] = { "true", "false", "null" };
	const char *s;
	size_t n;

	skip_ws(j);
	if (j->p == j->end || depth > JSON_DEPTH_MAX)
		return false;
	switch (*j->p) {
	case '"':
		return parse_string(j, &s, &n);
	case '{':
		j->p++;
		return skip_members(j, '}', depth);
	case '[':
		j->p++;
		return skip_members(j, ']', depth);
	}
	for (size_t i = 0; i < 3; i++) {
		n = strlen(literals[i]);
		if ((size_t)(j->end - j->p) >= n && !memcmp(j->p, literals[i], n)) {
			j->p += n;
			return true;
		}
	}
	/* Any other number: its characters, loosely (its value is never used) */
	s = j->p;
	while (j->p < j->end && *j->p && strchr("0123456789+-.eE", *j->p))
		j->p++;
	return j->p > s;
}

static void parse_region(struct server *s, struct json *j)
{
	enum { BASE, SIZE, OFFSET, PAGE_SIZE, PAGE_SIZE_KIB, NFIELDS };
	static const char *const names[NFIELDS] = {
		"base_host_virt_addr", "size", "offset", "page_size", "page_size_kib",
	};
	size_t i = s->nregions;
	uint64_t v[NFIELDS] = { 0 };
	bool seen[NFIELDS] = { false };
	struct region *r;

	if (!eat(j, '{'))
		invalid("region %zu is not a JSON object", i);
	if (!eat(j, '}')) {
		do {
			const char *key;
			size_t n;
			int f = -1;

			if (!parse_string(j, &key, &n) || !eat(j, ':'))
				invalid("region %zu: expected \"key\": value", i);
			for (int k = 0; k < NFIELDS; k++)
				if (strlen(names[k]) == n && !memcmp(key, names[k], n))
					f = k;
			if (f < 0) {
				/* Fields added by later Firecracker releases */
				if (!skip_value(j, 0))
					invalid("region %zu: bad JSON value for \"%.*s\"", i, (int)n, key);
				continue;
			}
			if (!parse_u64(j, &v[f]))
				invalid("region %zu: \"%s\" must be an unsigned 64-bit integer", i, names[f]);
			seen[f] = true;
		} while (eat(j, ','));
		if (!eat(j, '}'))
			invalid("region %zu: expected ',' or '}'", i);
	}
	for (int k = BASE; k <= OFFSET; k++)
		if (!seen[k])
			invalid("region %zu has no \"%s\"", i, names[k]);

	s->regions = realloc(s->regions, (i + 1) * sizeof *s->regions);
	if (!s->regions)
		fail(ENOMEM, "realloc");
	r = &s->regions[s->nregions++];
	/*
	 * page_size came with v1.12 and page_size_kib (in bytes, despite its name) with v1.7;
	 * v1.1-v1.6 send neither and use the host's page size.
	 */
	*r = (struct region){
		.base = v[BASE], .size = v[SIZE], .offset = v[OFFSET],
		.page_size = seen[PAGE_SIZE] ? v[PAGE_SIZE]
			   : seen[PAGE_SIZE_KIB] ? v[PAGE_SIZE_KIB] : s->host_page,
	};
}

static void check_regions(struct server *s)
{
	for (size_t i = 0; i < s->nregions; i++) {
		struct region *r = &s->regions[i];
		uint64_t ps = r->page_size;

		if (!ps || (ps & (ps - 1)) || ps % s->host_page)
			invalid("region %zu: page_size %" PRIu64
				" is not a power-of-two multiple of the host page size %" PRIu64,
				i, ps, s->host_page);
		if (!r->size || r->base % ps || r->size % ps)
			invalid("region %zu: base 0x%" PRIx64 " and size %" PRIu64
				" must be non-zero multiples of page_size %" PRIu64, i, r->base, r->size, ps);
		if (r->size > UINT64_MAX - r->base)
			invalid("region %zu: base + size overflows", i);
		if (r->offset > s->file_size || r->size > s->file_size - r->offset)
			invalid("region %zu: offset %" PRIu64 " + size %" PRIu64
				" lies beyond the memory file (%" PRIu64 " bytes)",
				i, r->offset, r->size, s->file_size);
		for (size_t k = 0; k < i; k++) {
			const struct region *o = &s->regions[k];

			if (r->base < o->base + o->size && o->base < r->base + r->size)
				invalid("regions %zu and %zu overlap", k, i);
		}
		r->npages = r->size / ps;
		r->removed = calloc(r->npages, sizeof *r->removed);
		if (!r->removed)
			fail(ENOMEM, "calloc");
	}
}

static void parse_handshake(struct server *s, const char *text, size_t len)
{
	struct json j = { text, text + len };

	if (!eat(&j, '['))
		invalid("the body is not a JSON array");
	if (!eat(&j, ']')) {
		do
			parse_region(s, &j);
		while (eat(&j, ','));
		if (!eat(&j, ']'))
			invalid("expected ',' or ']' after region %zu", s->nregions - 1);
	}
	skip_ws(&j);
	if (j.p != j.end)
		invalid("bytes after the JSON array");
	if (!s->nregions)
		invalid("no regions");
	check_regions(s);
}

static bool is_userfaultfd(int fd)
{
	char path[64], target[64];
	ssize_t n;

	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	n = readlink(path, target, sizeof target - 1);
	if (n < 0)
		return false;
	target[n] = '\0';
	return !strcmp(target, "anon_inode:[userfaultfd]");
}

/* One recvmsg, as Firecracker sends one sendmsg: the JSON, and the userfaultfd as SCM_RIGHTS. */
static void receive_handshake(struct server *s)
{
	static char text[HANDSHAKE_MAX];
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(FDS_MAX * sizeof(int))];
	} ctl;
	struct iovec iov = { .iov_base = text, .iov_len = sizeof text };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf,
	};
	size_t nfds = 0;
	ssize_t n;
	int flags;

	n = recvmsg(s->sock, &msg, MSG_CMSG_CLOEXEC);
	if (n < 0)
		fail(errno, "recvmsg");
	if (n == 0)
		invalid("the peer closed the connection without sending it");
	if ((size_t)n == sizeof text)
		invalid("larger than %u bytes", HANDSHAKE_MAX);
	if (msg.msg_flags & MSG_CTRUNC)
		invalid("more than %d file descriptors", FDS_MAX);
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); k++, nfds++)
			memcpy(&s->uffd, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
	}
	if (nfds != 1)
		invalid("%zu file descriptors attached; Firecracker sends exactly one, the userfaultfd", nfds);
	if (!is_userfaultfd(s->uffd))
		invalid("the attached file descriptor is not a userfaultfd");
	/*
	 * The status flags are shared with the peer's copy. Firecracker's is non-blocking already;
	 * the spin loop depends on it, so make sure.
	 */
	flags = fcntl(s->uffd, F_GETFL);
	if (flags < 0 || (!(flags & O_NONBLOCK) && fcntl(s->uffd, F_SETFL, flags | O_NONBLOCK)))
		fail(errno, "fcntl(userfaultfd, O_NONBLOCK)");
	parse_handshake(s, text, (size_t)n);
}

static int accept_peer(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int listener, sock;

	if (strlen(path) >= sizeof addr.sun_path)
		fail(0, "--socket: path longer than %zu bytes", sizeof addr.sun_path - 1);
	strcpy(addr.sun_path, path);
	if (unlink(path) && errno != ENOENT)
		fail(errno, "unlink(%s)", path);
	listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listener < 0)
		fail(errno, "socket(AF_UNIX)");
	if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 1))
		fail(errno, "bind/listen(%s)", path);
	sock = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
	if (sock < 0)
		fail(errno, "accept");
	/* One peer per run: stop listening and leave no socket file behind */
	close(listener);
	unlink(path);
	return sock;
}

/* ---- serving faults ---- */

static struct region *find_region(struct server *s, uint64_t addr)
{
	for (size_t i = 0; i < s->nregions; i++)
		if (addr - s->regions[i].base < s->regions[i].size)
			return &s->regions[i];
	return NULL;
}

static void mark_removed(struct server *s, uint64_t start, uint64_t end)
{
	for (size_t i = 0; i < s->nregions; i++) {
		struct region *r = &s->regions[i];
		uint64_t from = start > r->base ? start : r->base;
		uint64_t to = end < r->base + r->size ? end : r->base + r->size;

		if (from >= to)
			continue;
		for (uint64_t p = (from - r->base) / r->page_size;
		     p < (to - r->base + r->page_size - 1) / r->page_size; p++)
			r->removed[p] = true;
	}
}

static bool any_removed(const struct region *r, uint64_t first, uint64_t count)
{
	for (uint64_t p = first; p < first + count; p++)
		if (r->removed[p])
			return true;
	return false;
}

/*
 * Populates npages pages from page on with the ioctl they need: CONTINUE for a minor fault,
 * zeros for removed pages and --zeropage, else COPY from the memory file. Returns 0, or
 * EEXIST (a page is already there), EAGAIN (a REMOVE is queued: retry after reading it) or
 * ESRCH/ENOENT (the peer's memory is gone); *done counts the bytes populated.
 */
static int fill(struct server *s, const struct region *r, uint64_t page, uint64_t npages,
		bool minor, uint64_t *done)
{
	uint64_t dst = r->base + page * r->page_size, len = npages * r->page_size;
	bool zero = s->zeropage || r->removed[page];

	*done = 0;
	while (*done < len) {
		int64_t progress;
		int err;

		if (minor) {
			struct uffdio_continue a = { .range = { dst + *done, len - *done } };

			err = ioctl(s->uffd, UFFDIO_CONTINUE, &a) ? errno : 0;
			progress = a.mapped;
		} else if (zero && r->page_size == s->host_page) {
			struct uffdio_zeropage a = { .range = { dst + *done, len - *done } };

			err = ioctl(s->uffd, UFFDIO_ZEROPAGE, &a) ? errno : 0;
			progress = a.zeropage;
		} else {
			/* UFFDIO_ZEROPAGE is refused on hugetlb: copy zeros there instead */
			const uint8_t *src = zero ? s->zeros : s->file + r->offset + page * r->page_size;
			struct uffdio_copy a = {
				.dst = dst + *done, .src = (uintptr_t)(src + *done), .len = len - *done,
			};

			err = ioctl(s->uffd, UFFDIO_COPY, &a) ? errno : 0;
			progress = a.copy;
		}
		/* The result field holds the bytes done (or -errno): a short count means retry the rest */
		if (progress > 0) {
			*done += (uint64_t)progress;
			s->stats.copies++;
			continue;
		}
		if (err == EEXIST || err == EAGAIN || err == ESRCH || err == ENOENT)
			return err;
		fail(err, "%s at 0x%" PRIx64 " (%" PRIu64 " bytes)",
		     minor ? "UFFDIO_CONTINUE" : zero ? "zero fill" : "UFFDIO_COPY", dst + *done, len - *done);
	}
	return 0;
}

static void wake(struct server *s, const struct region *r, uint64_t page)
{
	uint64_t addr = r->base + page * r->page_size;
	struct uffdio_range range = { addr, r->page_size };

	if (ioctl(s->uffd, UFFDIO_WAKE, &range))
		fail(errno, "UFFDIO_WAKE at 0x%" PRIx64, addr);
}

/* Returns EAGAIN to keep the fault for a retry, 0 when it needs nothing more. */
static int resolve(struct server *s, const struct fault *f)
{
	struct region *r = find_region(s, f->addr);
	bool minor = f->flags & UFFD_PAGEFAULT_FLAG_MINOR;
	uint64_t page, first, count, done;
	int err;

	if (!r)
		fail(0, "fault at 0x%" PRIx64 " lies outside every region", f->addr);
	page = (f->addr - r->base) / r->page_size;
	/* --readahead: the aligned chunk around the fault, clipped to the region */
	first = page - page % s->readahead;
	count = r->npages - first < s->readahead ? r->npages - first : s->readahead;
	/*
	 * CONTINUE has nothing to read ahead, and one ioctl cannot give zeros to removed pages and
	 * the file's bytes to the others: such faults get their own page only.
	 */
	if (minor || (!s->zeropage && any_removed(r, first, count))) {
		first = page;
		count = 1;
	}
	if (count > 1) {
		err = fill(s, r, first, count, minor, &done);
		if (err != EEXIST)
			return err == EAGAIN ? EAGAIN : 0;
		/* Page `first` is already there; the pages before it were just populated and woken */
		first += done / r->page_size;
		count -= done / r->page_size;
		if (page < first)
			return 0;
	}
	/*
	 * The faulting page alone. If it is already there, another fault's chunk brought it in,
	 * with the rest of the chunk: the faulting thread only needs waking.
	 */
	err = fill(s, r, page, 1, minor, &done);
	if (err == EEXIST) {
		s->stats.eexist++;
		wake(s, r, page);
		return 0;
	}
	if (err)
		return err == EAGAIN ? EAGAIN : 0;
	/* The rest of the chunk after the page found there, one by one */
	for (uint64_t p = first + 1; p < first + count; p++) {
		if (p == page)
			continue;
		err = fill(s, r, p, 1, minor, &done);
		if (err == EEXIST)
			s->stats.eexist++;
		else if (err)
			break; /* Readahead is best effort: a page left out faults on its own later */
	}
	return 0;
}

/* Reads one batch of messages (if any) and resolves every waiting fault; true if it read any. */
static bool read_and_resolve(struct server *s)
{
	struct uffd_msg msgs[MSGS_PER_READ];
	ssize_t n = read(s->uffd, msgs, sizeof msgs);
	size_t count = n > 0 ? (size_t)n / sizeof msgs[0] : 0, kept = 0;

	if (n < 0 && errno != EAGAIN && errno != EINTR)
		fail(errno, "read(userfaultfd)");
	if (count) {
		s->stats.batches++;
		s->stats.messages += count;
	}
	/*
	 * A REMOVE can be read after a later fault on the same range (the two come from different
	 * threads): apply all of the batch's REMOVEs before resolving any fault.
	 */
	for (size_t i = 0; i < count; i++) {
		if (msgs[i].event == UFFD_EVENT_REMOVE) {
			mark_removed(s, msgs[i].arg.remove.start, msgs[i].arg.remove.end);
			s->stats.removes++;
		} else if (msgs[i].event != UFFD_EVENT_PAGEFAULT) {
			fail(0, "unexpected userfaultfd event 0x%x", msgs[i].event);
		}
	}
	for (size_t i = 0; i < count; i++) {
		if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
			continue;
		if (s->nwaiting == s->waiting_cap) {
			s->waiting_cap = s->waiting_cap ? 2 * s->waiting_cap : MSGS_PER_READ;
			s->waiting = realloc(s->waiting, s->waiting_cap * sizeof *s->waiting);
			if (!s->waiting)
				fail(ENOMEM, "realloc");
		}
		s->waiting[s->nwaiting++] = (struct fault){ msgs[i].arg.pagefault.address,
							    msgs[i].arg.pagefault.flags };
		s->stats.faults++;
	}
	for (size_t i = 0; i < s->nwaiting; i++)
		if (resolve(s, &s->waiting[i]) == EAGAIN)
			s->waiting[kept++] = s->waiting[i];
	s->nwaiting = kept;
	return count > 0;
}

/* Firecracker never sends after the handshake: readable means it has hung up. */
static bool peer_gone(int sock)
{
	char buf[256];
	ssize_t n = read(sock, buf, sizeof buf);

	return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

static void serve(struct server *s)
{
	struct pollfd pfd[2] = {
		{ .fd = s->uffd, .events = POLLIN },
		{ .fd = s->sock, .events = POLLIN },
	};

	for (;;) {
		/* A fault that met EAGAIN is retried even if nothing new arrives */
		if (poll(pfd, 2, s->nwaiting ? 1 : -1) < 0) {
			if (errno == EINTR)
				continue;
			fail(errno, "poll");
		}
		if (pfd[1].revents && peer_gone(s->sock))
			return;
		if (pfd[0].revents & (POLLERR | POLLNVAL))
			fail(0, "poll reports an error on the userfaultfd");
		read_and_resolve(s);
		/* --spin-us: the next fault often comes sooner than a sleeping thread could wake */
		if (s->spin_ns)
			for (uint64_t until = now_ns() + s->spin_ns; now_ns() < until;)
				if (read_and_resolve(s))
					until = now_ns() + s->spin_ns;
	}
}

/* ---- main ---- */

static void usage(FILE *to)
{
	fputs("usage: c_handler --socket PATH --mem-file FILE [options]\n"
	      "  --readahead N   copy the aligned N-page chunk around each missing fault (default 1)\n"
	      "  --zeropage      resolve missing faults with zero pages instead of the file's bytes\n"
	      "  --spin-us N     after each batch, keep reading for up to N us before poll() (default 0)\n"
	      "  --cpu N         pin the handler to CPU N\n",
	      to);
}

static void map_mem_file(struct server *s, const char *path)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st))
		fail(errno, "open(%s)", path);
	if (!st.st_size)
		fail(0, "%s is empty", path);
	s->file_size = (uint64_t)st.st_size;
	/* MAP_POPULATE: reading the file in must not be part of any fault's time */
	s->file = mmap(NULL, s->file_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
	if (s->file == MAP_FAILED)
		fail(errno, "mmap(%s)", path);
	close(fd);
}

static double cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv)
{
	enum { OPT_SOCKET = 256, OPT_MEM_FILE, OPT_READAHEAD, OPT_ZEROPAGE, OPT_SPIN_US, OPT_CPU };
	static const struct option long_options[] = {
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "mem-file", required_argument, NULL, OPT_MEM_FILE },
		{ "readahead", required_argument, NULL, OPT_READAHEAD },
		{ "zeropage", no_argument, NULL, OPT_ZEROPAGE },
		{ "spin-us", required_argument, NULL, OPT_SPIN_US },
		{ "cpu", required_argument, NULL, OPT_CPU },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct server s = { .uffd = -1, .readahead = 1, .host_page = (uint64_t)sysconf(_SC_PAGESIZE) };
	const char *socket_path = NULL, *mem_file = NULL;
	uint64_t max_page = 0;
	double cpu0;
	int c;

	while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
		switch (c) {
		case OPT_SOCKET: socket_path = optarg; break;
		case OPT_MEM_FILE: mem_file = optarg; break;
		case OPT_READAHEAD:
			s.readahead = parse_number(optarg, "--readahead");
			if (s.readahead < 1 || s.readahead > 4096)
				fail(0, "--readahead: %" PRIu64 " is not between 1 and 4096", s.readahead);
			break;
		case OPT_ZEROPAGE: s.zeropage = true; break;
		case OPT_SPIN_US: s.spin_ns = parse_number(optarg, "--spin-us") * 1000; break;
		case OPT_CPU: {
			uint64_t cpu = parse_number(optarg, "--cpu");
			cpu_set_t set;

			if (cpu >= CPU_SETSIZE)
				fail(0, "--cpu: %" PRIu64 " is too large", cpu);
			CPU_ZERO(&set);
			CPU_SET(cpu, &set);
			if (sched_setaffinity(0, sizeof set, &set))
				fail(errno, "sched_setaffinity(CPU %" PRIu64 ")", cpu);
			break;
		}
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc)
		fail(0, "unexpected argument '%s'", argv[optind]);
	if (!socket_path || !mem_file)
		fail(0, "--socket and --mem-file are required (see --help)");

	map_mem_file(&s, mem_file);
	s.sock = accept_peer(socket_path);
	receive_handshake(&s);
	for (size_t i = 0; i < s.nregions; i++)
		max_page = s.regions[i].page_size > max_page ? s.regions[i].page_size : max_page;
	/* Anonymous memory never written reads as zeros without taking any */
	s.zeros = mmap(NULL, max_page * s.readahead, PROT_READ,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (s.zeros == MAP_FAILED)
		fail(errno, "mmap(zeros)");

	cpu0 = cpu_seconds();
	serve(&s);
	printf("{\"faults\":%" PRIu64 ",\"copies\":%" PRIu64 ",\"eexist\":%" PRIu64
	       ",\"removes\":%" PRIu64 ",\"batches\":%" PRIu64 ",\"avgBatch\":%.2f,\"cpuSeconds\":%.3f}\n",
	       s.stats.faults, s.stats.copies, s.stats.eexist, s.stats.removes, s.stats.batches,
	       s.stats.batches ? (double)s.stats.messages / (double)s.stats.batches : 0.0,
	       cpu_seconds() - cpu0);
	return 0;
}
