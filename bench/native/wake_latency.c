/*
 * How long one thread takes to wake another on this machine: the cost that
 * spinning in a page-fault handler can save (research/handoff-measurements.md
 * measured about 20 µs per cross-vCPU wake-up on the machine it was written
 * on; where wake-ups are cheaper, spinning has less to win).
 *
 * Two threads ping-pong through futexes: each waits (FUTEX_WAIT, sleeping)
 * until the other flips a word, flips it back and wakes the other. A round
 * trip is two sleeping wake-ups. Also measured, the same ping-pong with the
 * waiter spinning instead of sleeping (the floor: cache-line transfer only).
 *
 *   wake_latency [--cpus A,B] [--rounds N]
 * Output: one JSON line: {"sleepingWakeUs":..,"spinningWakeUs":..,"cpus":"A,B"}
 * with each figure the median one-way time over N round trips (spinning is
 * null when both threads are pinned to one CPU: a spinner there only waits
 * for the end of its time slice).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static _Atomic uint32_t word;
static int cpus[2] = { -1, -1 };
static unsigned rounds = 2000;
static int spinning;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set)) {
		perror("sched_setaffinity");
		exit(1);
	}
}

/* Waits until word == want, sleeping in the kernel or spinning. */
static void wait_for(uint32_t want)
{
	uint32_t v;

	while ((v = atomic_load(&word)) != want)
		if (!spinning)
			syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}

static void set_and_wake(uint32_t v)
{
	atomic_store(&word, v);
	if (!spinning)
		syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void *ponger(void *arg)
{
	(void)arg;
	pin(cpus[1]);
	for (unsigned i = 0; i < rounds; i++) {
		wait_for(2 * i + 1);
		set_and_wake(2 * i + 2);
	}
	return NULL;
}

static int compare(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

/* Median one-way time in µs. */
static double measure(int spin)
{
	pthread_t t;
	uint64_t *rt = calloc(rounds, sizeof *rt);

	spinning = spin;
	atomic_store(&word, 0);
	pin(cpus[0]);
	pthread_create(&t, NULL, ponger, NULL);
	for (unsigned i = 0; i < rounds; i++) {
		uint64_t t0 = now_ns();

		set_and_wake(2 * i + 1);
		wait_for(2 * i + 2);
		rt[i] = now_ns() - t0;
		/* Let the other side go back to sleep (as a handler between faults does). */
		if (!spin)
			usleep(50);
	}
	pthread_join(t, NULL);
	qsort(rt, rounds, sizeof *rt, compare);
	double us = (double)rt[rounds / 2] / 2e3;
	free(rt);
	return us;
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--cpus") && i + 1 < argc) {
			if (sscanf(argv[++i], "%d,%d", &cpus[0], &cpus[1]) != 2) {
				fprintf(stderr, "--cpus A,B\n");
				return 2;
			}
		} else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) {
			rounds = (unsigned)strtoul(argv[++i], NULL, 10);
		} else {
			fprintf(stderr, "usage: wake_latency [--cpus A,B] [--rounds N]\n");
			return 2;
		}
	}
	if (rounds == 0)
		rounds = 1;
	double sleeping = measure(0);
	char spin[32] = "null";
	if (cpus[0] < 0 || cpus[0] != cpus[1])
		snprintf(spin, sizeof spin, "%.2f", measure(1));
	printf("{\"sleepingWakeUs\":%.2f,\"spinningWakeUs\":%s,\"cpus\":\"%d,%d\"}\n", sleeping, spin, cpus[0], cpus[1]);
	return 0;
}
