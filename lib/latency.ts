// Fault latencies, kept as a log-linear histogram: fixed memory however many
// faults a session serves, percentiles within about 3 %.

// 32 buckets per power of two from 0.1 µs up to 2^24 × 0.1 µs (about 1.7 s).
const PER_OCTAVE = 32;
const OCTAVES = 24;
const UNIT_US = 0.1;

export class LatencyHistogram {
  readonly #counts = new Float64Array(PER_OCTAVE * OCTAVES + 1);
  #count = 0;
  #max = 0;

  get count(): number {
    return this.#count;
  }

  get maxUs(): number {
    return this.#max;
  }

  /** Records one latency, or `times` equal ones. */
  record(us: number, times = 1): void {
    const scaled = us / UNIT_US;
    const index = scaled <= 1 ? 0 : Math.min(this.#counts.length - 1, Math.floor(Math.log2(scaled) * PER_OCTAVE) + 1);
    this.#counts[index]! += times;
    this.#count += times;
    if (us > this.#max) this.#max = us;
  }

  /** The latency, in microseconds, below which p percent of the recorded ones lie (0 when empty). */
  percentile(p: number): number {
    if (this.#count === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.#count));
    let seen = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      seen += this.#counts[i]!;
      if (seen >= rank) return Math.min(this.#max, i === 0 ? UNIT_US : UNIT_US * 2 ** (i / PER_OCTAVE));
    }
    return this.#max;
  }

  /** Adds another histogram's counts to this one. */
  add(other: LatencyHistogram): void {
    for (let i = 0; i < this.#counts.length; i++) this.#counts[i]! += other.#counts[i]!;
    this.#count += other.#count;
    if (other.#max > this.#max) this.#max = other.#max;
  }

  clone(): LatencyHistogram {
    const copy = new LatencyHistogram();
    copy.add(this);
    return copy;
  }

  /** The latencies recorded in this histogram since `earlier`, a clone taken of it before (max: this one's). */
  minus(earlier: LatencyHistogram): LatencyHistogram {
    const result = this.clone();
    for (let i = 0; i < result.#counts.length; i++) result.#counts[i]! -= earlier.#counts[i]!;
    result.#count -= earlier.#count;
    return result;
  }

  reset(): void {
    this.#counts.fill(0);
    this.#count = 0;
    this.#max = 0;
  }
}
