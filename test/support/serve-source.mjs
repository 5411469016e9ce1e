// The fault handler the remote-source tests and the bench use: serve each
// fault of a registered range from a PageSource, awaiting the page when it is
// not present yet, and copying the run of present pages that follows it
// (up to maxRun pages) so that a sequential reader faults less often. A fault
// whose fetch fails is resolved by serve()'s failure policy: 'poison' by
// default, so the faulting thread gets SIGBUS rather than wrong bytes.
import { performance } from 'node:perf_hooks';

/**
 * uffd: a Userfaultfd; base: the address where offset 0 of the source is
 * registered; length: bytes registered. Returns { done, stats } where stats
 * holds faults, misses (faults that waited for the network), latencies (ms,
 * from the kernel read to the copy, every fault) and missLatencies.
 */
export function serveFromSource(uffd, base, length, source, options = {}) {
  const maxRun = options.maxRun ?? 16;
  const pageSize = source.pageSize;
  const pages = length / pageSize;
  const stats = { faults: 0, misses: 0, latencies: [], missLatencies: [], errors: [] };
  const present = source.present;
  const done = uffd.serve(async (fault) => {
    stats.faults++;
    const offset = Number(fault.pageAddress - base);
    const page = offset / pageSize;
    let missed = false;
    if (present && Atomics.load(present, page) === 0) {
      missed = true;
      stats.misses++;
      await source.fetch(offset, pageSize, { urgent: true });
      options.onMiss?.(page);
    }
    let run = 1;
    while (run < maxRun && page + run < pages && (!present || Atomics.load(present, page + run) !== 0)) run++;
    fault.copy(source.bytes.subarray(offset, offset + run * pageSize));
    const latency = performance.now() - fault.receivedAt;
    stats.latencies.push(latency);
    if (missed) stats.missLatencies.push(latency);
  }, {
    failure: options.failure ?? 'poison',
    onError: (error) => stats.errors.push(error),
  });
  return { done, stats };
}

export function percentile(values, p) {
  if (values.length === 0) return 0;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
