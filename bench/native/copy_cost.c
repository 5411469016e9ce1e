/*
 * copy_cost: what one UFFDIO_COPY page and the first touch of a copied page
 * cost on this machine, with no handler and no faulting thread, so that the
 * read-ahead rows of the benchmark can be read against them.
 *
 * Read-ahead takes the wake-ups out of a sequential restore; what is left is
 * the copy itself (in the handler's thread) and the reader's first access to
 * each page (in the faulting thread). Both are measured here over 64 MiB:
 * - copy, cold: the kernel reads each source page for the first time in
 *   this process (a fresh handler process serving a fresh source);
 * - copy, warm: the same source copied again into a new registration;
 * - touch: the first read of each page a copy has just mapped;
 * - populate: MADV_POPULATE_WRITE of as much anonymous memory (allocation
 *   and zeroing without a copy), for scale;
 * - memory file, mapped: a memfd holding the image (a snapshot's memory
 *   file, a remote source's cache), copied from a fresh shared mapping of it;
 * - memory file, pread: the same, each piece read with pread into one
 *   buffer the handler reuses and copied from there, as the library's native
 *   thread does for a source with a file: the kernel reads the page cache
 *   directly and finds the buffer mapped, so no source page is faulted in.
 * On a guest with shadow page tables (PVM) the cold copy pays a shadow-page
 * fault for the kernel's own access to each source page: that cost, not the
 * memcpy, is what the handler's thread spends.
 *
 * Usage: copy_cost [--piece BYTES]   (default 16384: the library's read-ahead piece)
 * Prints one JSON line, microseconds per 4 KiB page.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static const size_t LEN = 64u << 20;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void fail(const char *what)
{
	fprintf(stderr, "copy_cost: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void *map(void)
{
	void *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		fail("mmap");
	return p;
}

/* Copies src (or, with file >= 0, the file through pread into a reused buffer) into a fresh registered mapping;
 * returns µs per page of the copies and, in *touch, of the first reads. */
static double copy_once(const char *src, int file, size_t piece, double *touch)
{
	static char *buffer;
	if (file >= 0 && buffer == NULL) {
		buffer = mmap(NULL, piece, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (buffer == MAP_FAILED)
			fail("mmap");
	}
	int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0)
		fail("userfaultfd");
	struct uffdio_api api = { .api = UFFD_API };
	if (ioctl(uffd, UFFDIO_API, &api))
		fail("UFFDIO_API");
	char *dst = map();
	struct uffdio_register reg = { .range = { (uintptr_t)dst, LEN }, .mode = UFFDIO_REGISTER_MODE_MISSING };
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		fail("UFFDIO_REGISTER");
	double t0 = now();
	for (size_t off = 0; off < LEN; off += piece) {
		uintptr_t from = (uintptr_t)src + off;
		if (file >= 0) {
			if (pread(file, buffer, piece, (off_t)off) != (ssize_t)piece)
				fail("pread");
			from = (uintptr_t)buffer;
		}
		struct uffdio_copy c = { .dst = (uintptr_t)dst + off, .src = from, .len = piece };
		if (ioctl(uffd, UFFDIO_COPY, &c))
			fail("UFFDIO_COPY");
	}
	double t1 = now();
	volatile char sum = 0;
	for (size_t off = 0; off < LEN; off += 4096)
		sum += dst[off];
	double t2 = now();
	munmap(dst, LEN);
	close(uffd);
	*touch = (t2 - t1) / (LEN / 4096) * 1e6;
	return (t1 - t0) / (LEN / 4096) * 1e6;
}

int main(int argc, char **argv)
{
	size_t piece = 16384;
	if (argc == 3 && !strcmp(argv[1], "--piece"))
		piece = strtoul(argv[2], NULL, 0);
	else if (argc != 1) {
		fputs("usage: copy_cost [--piece BYTES]\n", stderr);
		return 2;
	}
	if (piece < 4096 || piece % 4096 || LEN % piece) {
		fputs("copy_cost: --piece must be a multiple of 4096 that divides 64 MiB\n", stderr);
		return 2;
	}
	/* The source as a handler has it: written by user code, never read by the kernel yet. */
	char *src = map();
	memset(src, 0x5a, LEN);
	double touch_cold, touch_warm, touch_file;
	double cold = copy_once(src, -1, piece, &touch_cold);
	double warm = copy_once(src, -1, piece, &touch_warm);
	char *z = map();
	double t0 = now();
	if (madvise(z, LEN, MADV_POPULATE_WRITE))
		fail("MADV_POPULATE_WRITE");
	double populate = (now() - t0) / (LEN / 4096) * 1e6;
	/* A memory file: written through a mapping that is then dropped, as a snapshot's would be. */
	int file = memfd_create("copy_cost", MFD_CLOEXEC);
	if (file < 0 || ftruncate(file, (off_t)LEN))
		fail("memfd_create");
	char *w = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, file, 0);
	if (w == MAP_FAILED)
		fail("mmap");
	memset(w, 0x5a, LEN);
	munmap(w, LEN);
	char *mapped = mmap(NULL, LEN, PROT_READ, MAP_SHARED, file, 0);
	if (mapped == MAP_FAILED)
		fail("mmap");
	double file_mapped = copy_once(mapped, -1, piece, &touch_file);
	munmap(mapped, LEN);
	double file_pread = copy_once(NULL, file, piece, &touch_file);
	printf("{\"piece\":%zu,\"copyColdUs\":%.2f,\"copyWarmUs\":%.2f,\"touchAfterCopyUs\":%.2f,\"populateUs\":%.2f,"
	       "\"fileMappedUs\":%.2f,\"filePreadUs\":%.2f}\n",
	       piece, cold, warm, (touch_cold + touch_warm) / 2, populate, file_mapped, file_pread);
	return 0;
}
