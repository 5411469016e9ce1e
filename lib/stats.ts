// What serving has done so far, for monitoring and benchmarks: one call into
// the addon that copies its counters (no allocation on the serving side).
import { LatencyHistogram } from './latency';

export interface SpinStats {
  /** Spin windows started (after a batch, before sleeping). */
  readonly windows: number;
  /** Windows that caught the next fault. */
  readonly hits: number;
  /** CPU time spent spinning, in ms. */
  readonly cpuMs: number;
}

export interface ServeStats {
  /** Faults the native fast path resolved without JavaScript. */
  readonly nativeFaults: number;
  /** Faults JavaScript handlers were given (serve(), serveSync(), or serveFrom's misses) through this object: a worker's serveSync counts on its borrowed object. */
  readonly jsFaults: number;
  /** Non-fault events read (remove, unmap, remap, fork). */
  readonly events: number;
  /** Pages the native fast path resolved, read-ahead included, and their bytes. */
  readonly pages: number;
  readonly bytes: number;
  /** Of those, pages filled ahead of any fault: by read-ahead, and by background fill. */
  readonly readAheadPages: number;
  readonly backgroundPages: number;
  /** Bytes the native path copied from the source (UFFDIO_COPY; zero pages and CONTINUE copy nothing). */
  readonly copiedBytes: number;
  /**
   * Pages of serveFrom's ranges not there yet: neither resolved (by the
   * native path, or by JavaScript through this object, a miss passed to it
   * included) nor removed. A page whose fault went to JavaScript counts until
   * the handler has resolved it. With background fill it reaches 0 once the
   * restore is complete: no thread waits on any of those pages.
   */
  readonly pagesLeft: number;
  readonly zeroPages: number;
  readonly continuedPages: number;
  /** Pages the native path found there already (EEXIST), and faults it retried after EAGAIN. */
  readonly eexist: number;
  readonly eagainRetries: number;
  /** Reads of the uffd that returned messages, messages read, resolving ioctls issued (native path). */
  readonly batches: number;
  readonly messages: number;
  readonly ioctls: number;
  /** Native path: time from reading a fault to its page being resolved, in µs (from a histogram, ±10%). */
  readonly serviceP50Us: number;
  readonly serviceP99Us: number;
  readonly serviceMaxUs: number;
  /**
   * The native path's service times, every fault it resolved, as a histogram
   * (its buckets are ±12%): read from the addon when first asked for (the
   * other counters are those of the stats() call).
   */
  readonly serviceLatency: LatencyHistogram;
  readonly spin: SpinStats;
}

/** What UffdHandle.stats(out) fills: the counters alone, or the counters and the histogram (ns, count) per bucket. */
export const COUNTERS_LENGTH = 24;
export const STATS_LENGTH = COUNTERS_LENGTH + 2 * 160; // 160: PageServer::Stats::kBuckets (the addon checks the length)

/**
 * Names the addon's counters (UffdHandle.stats(), read into v, which the
 * caller reuses: they are copied out here); jsFaults is counted on the
 * JavaScript side. full() reads the counters and the histogram, for
 * serviceLatency.
 */
export function readStats(v: Float64Array, jsFaults: number, full: () => Float64Array): ServeStats {
  // Built when asked for: stats() is polled (pagesLeft, page counts) far more often than the histogram is read.
  let histogram: LatencyHistogram | undefined;
  return {
    get serviceLatency(): LatencyHistogram {
      if (!histogram) {
        histogram = new LatencyHistogram();
        const h = full();
        for (let i = COUNTERS_LENGTH; i + 1 < h.length; i += 2) if (h[i + 1]! > 0) histogram.record(h[i]! / 1e3, h[i + 1]!);
      }
      return histogram;
    },
    nativeFaults: v[0]!, jsFaults, events: v[2]!, pages: v[3]!, bytes: v[4]!, readAheadPages: v[5]!,
    zeroPages: v[6]!, continuedPages: v[7]!, eexist: v[8]!, eagainRetries: v[9]!, batches: v[10]!,
    messages: v[11]!, ioctls: v[12]!, serviceP50Us: v[13]! / 1e3, serviceP99Us: v[14]! / 1e3, serviceMaxUs: v[15]! / 1e3,
    spin: { windows: v[16]!, hits: v[17]!, cpuMs: v[18]! / 1e6 },
    backgroundPages: v[20]!, copiedBytes: v[21]!, pagesLeft: v[22]!,
  };
}
