// `npx userfaultfd serve`: a Firecracker-compatible page-fault handler. Prints
// a progress line a second and a summary per VMM; exits 0 once the expected
// number of VMMs have hung up with every fault served.
import { parseArgs } from 'node:util';
import type { UffdError } from './errors';
import { FirecrackerServer, type FirecrackerSession, type SessionResult } from './firecracker';

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function summary(stats: SessionResult['stats']): string {
  const sorted = [...stats.latenciesUs].sort((a, b) => a - b);
  return `faults ${stats.faults}, pages on demand ${stats.pagesOnDemand}, pushed ${stats.pagesPushed}, zero ${stats.zeroPages}, ` +
    `${(stats.bytes / 1e6).toFixed(1)} MB, removes ${stats.removes}, latency p50 ${percentile(sorted, 50).toFixed(1)} µs p99 ${percentile(sorted, 99).toFixed(1)} µs`;
}

export async function serveCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      socket: { type: 'string' },
      'mem-file': { type: 'string' },
      prefetch: { type: 'boolean', default: false },
      peers: { type: 'string', default: '1' },
      quiet: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (!values.socket || !values['mem-file']) {
    process.stderr.write('usage: userfaultfd serve --socket PATH --mem-file FILE [--prefetch] [--peers N (0: forever)] [--quiet] [--json]\n');
    return 2;
  }
  const expected = Number(values.peers);
  if (!Number.isInteger(expected) || expected < 0) {
    process.stderr.write(`--peers must be a non-negative integer, not ${values.peers}\n`);
    return 2;
  }
  const out = (line: string): void => void (values.quiet || process.stdout.write(`${line}\n`));
  const results: SessionResult[] = [];
  let refused = 0;
  const started = Date.now();
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const active = new Set<FirecrackerSession>();
  const server = FirecrackerServer.listen(values.socket, {
    memFile: values['mem-file'],
    prefetch: values.prefetch,
    onSession: (session) => {
      active.add(session);
      out(`peer ${session.pid}: ${session.regions.length} region(s), ${session.regions.reduce((n, r) => n + r.size, 0) / 1e6} MB`);
      void session.done.then((result) => {
        active.delete(session);
        results.push(result);
        out(`peer ${result.pid} ${result.error ? `failed: ${result.error.message}` : 'closed'}: ${summary(result.stats)}`);
        if (values.json) process.stdout.write(`${JSON.stringify({ pid: result.pid, error: result.error?.code, ...result.stats, latenciesUs: undefined })}\n`);
        if (expected !== 0 && results.length >= expected) finish();
      });
    },
    onRefused: (error, pid) => {
      refused++;
      out(`peer ${pid ?? '?'} refused: ${(error as UffdError).message}`);
    },
  });
  out(`listening on ${server.path}`);
  let last = { faults: 0, pages: 0 };
  const ticker = setInterval(() => {
    const totals = [...active].reduce((t, s) => ({ faults: t.faults + s.stats.faults, pages: t.pages + s.stats.pagesOnDemand + s.stats.pagesPushed, bytes: t.bytes + s.stats.bytes, lat: t.lat.concat(s.stats.latenciesUs.slice(-10_000)) }), { faults: 0, pages: 0, bytes: 0, lat: [] as number[] });
    const sorted = totals.lat.sort((a, b) => a - b);
    out(`[${((Date.now() - started) / 1000).toFixed(0)}s] peers ${active.size}, faults ${totals.faults} (+${totals.faults - last.faults}/s), pages ${totals.pages} (+${totals.pages - last.pages}/s), ${(totals.bytes / 1e6).toFixed(1)} MB, p50 ${percentile(sorted, 50).toFixed(1)} µs p99 ${percentile(sorted, 99).toFixed(1)} µs`);
    last = { faults: totals.faults, pages: totals.pages };
  }, 1000);
  ticker.unref();
  const stop = (): void => finish();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  await finished;
  clearInterval(ticker);
  server.close();
  const failed = results.filter((r) => r.error).length;
  return failed > 0 || refused > 0 || results.length < expected ? 1 : 0;
}
