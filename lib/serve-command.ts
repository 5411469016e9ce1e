// `npx userfaultfd serve`: a Firecracker-compatible page-fault handler. Prints
// a progress line a second and a summary per peer; exits 0 once the expected
// number of peers have gone with every fault served, 1 when a peer's faults
// could not all be served (a VM killed because the command was stopped
// included), 2 on bad arguments.
import { parseArgs } from 'node:util';
import { FirecrackerServer, type FailurePolicy, type FirecrackerSession, type SessionResult } from './firecracker';
import { LatencyHistogram } from './latency';
import { HEADERS_ENV, HttpPageSource, parseHeaderLines } from './http-source';
import { FilePageSource, type PageSource } from './page-source';

export const SERVE_USAGE = `usage: userfaultfd serve --socket PATH (--mem-file FILE | --mem-url URL) [options]
  --socket PATH            listen here for Firecracker (its mem_backend backend_path)
  --mem-file FILE          the snapshot's memory file
  --mem-url URL            the memory file on an HTTP(S) server with byte ranges (S3, GCS, a CDN, nginx):
                           pages fetched as faults ask, the rest in the background; credentials in a
                           presigned URL, or as "Name: value" lines in ${HEADERS_ENV}
  --mem-url-header 'N: V'  a request header for --mem-url (repeatable; visible in ps: prefer the variable)
  --prefetch               after the first fault, push every other page in the background
  --read-ahead N           resolve the aligned chunk of N pages around each fault (default 1)
  --peers N                exit after N peers have gone (default 1; 0: serve until killed)
  --on-failure kill|sigbus what to do with a fault that cannot be served (default kill)
  --handshake-timeout S    seconds a connection may take to send its handshake (default 10)
  --connect-timeout S      give up (exit 1) if no peer connects within S seconds (default 60;
                           0: wait; --peers 0 waits unless this is given)
  --quiet                  nothing on stdout (what goes wrong still goes to stderr)
  --json                   every stdout line as a JSON object (docs/firecracker.md lists the fields)`;

class UsageError extends Error {}

// Decimal seconds; zero, however spelled (0, 0.0, 00), only where it means something: `zero` says what.
function seconds(value: string | undefined, name: string, fallback: number, zero?: string): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value) || !Number.isFinite(n) || (n === 0 && zero === undefined)) {
    throw new UsageError(`${name} must be ${zero === undefined ? 'a positive number of seconds' : `a number of seconds (0: ${zero})`}, not '${value}'`);
  }
  return n;
}

// A handler is started for a restore that is about to begin: one that no VM
// ever connects to must not wait forever (a daemon, --peers 0, does).
const DEFAULT_CONNECT_TIMEOUT_S = 60;

function connectTimeout(value: string | undefined, peers: number): number {
  return seconds(value, '--connect-timeout', peers === 0 ? 0 : DEFAULT_CONNECT_TIMEOUT_S, 'wait');
}

interface Arguments {
  socket: string;
  memFile: string | undefined;
  memUrl: string | undefined;
  headers: Record<string, string>;
  prefetch: boolean;
  readAhead: number;
  peers: number;
  failure: FailurePolicy;
  handshakeTimeoutMs: number;
  connectTimeoutMs: number;
  quiet: boolean;
  json: boolean;
}

const OPTIONS = {
  socket: { type: 'string' },
  'mem-file': { type: 'string' },
  'mem-url': { type: 'string' },
  'mem-url-header': { type: 'string', multiple: true },
  prefetch: { type: 'boolean', default: false },
  'read-ahead': { type: 'string' },
  peers: { type: 'string' },
  'on-failure': { type: 'string' },
  'handshake-timeout': { type: 'string' },
  'connect-timeout': { type: 'string' },
  quiet: { type: 'boolean', default: false },
  json: { type: 'boolean', default: false },
} as const;

// parseArgs takes the '-1' of `--peers -1` for an option and calls the value
// ambiguous: joined to its option, a negative number gets the option's own message.
function joinNegativeValues(args: string[]): string[] {
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const takesValue = arg.startsWith('--') && OPTIONS[arg.slice(2) as keyof typeof OPTIONS]?.type === 'string';
    if (takesValue && /^-[\d.]/.test(args[i + 1] ?? '')) joined.push(`${arg}=${args[++i]}`);
    else joined.push(arg);
  }
  return joined;
}

function parse(args: string[]): Arguments {
  let values;
  try {
    ({ values } = parseArgs({ args: joinNegativeValues(args), options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (!values.socket) throw new UsageError('--socket PATH is required');
  if (!values['mem-file'] && !values['mem-url']) throw new UsageError('--mem-file FILE is required, or --mem-url URL');
  if (values['mem-file'] && values['mem-url']) throw new UsageError('give --mem-file FILE or --mem-url URL, not both');
  if (values['mem-url-header'] && !values['mem-url']) throw new UsageError('--mem-url-header goes with --mem-url');
  let headers: Record<string, string>;
  try {
    headers = parseHeaderLines(process.env[HEADERS_ENV] ?? '');
    for (const header of values['mem-url-header'] ?? []) Object.assign(headers, parseHeaderLines(header, '--mem-url-header'));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const peers = values.peers === undefined ? 1 : Number(values.peers);
  if (!/^\d+$/.test(values.peers ?? '1') || !Number.isSafeInteger(peers)) throw new UsageError(`--peers must be a positive integer, or 0 to serve until killed, not '${values.peers}'`);
  const readAhead = values['read-ahead'] === undefined ? 1 : Number(values['read-ahead']);
  if (!/^\d+$/.test(values['read-ahead'] ?? '1') || readAhead < 1 || readAhead > 1024) {
    throw new UsageError(`--read-ahead must be a number of pages from 1 to 1024, not '${values['read-ahead']}'`);
  }
  const failure = values['on-failure'] ?? 'kill';
  if (failure !== 'kill' && failure !== 'sigbus') throw new UsageError(`--on-failure must be kill or sigbus, not '${failure}'`);
  return {
    socket: values.socket,
    memFile: values['mem-file'],
    memUrl: values['mem-url'],
    headers,
    prefetch: values.prefetch === true,
    readAhead,
    peers,
    failure,
    handshakeTimeoutMs: seconds(values['handshake-timeout'], '--handshake-timeout', 10) * 1000,
    connectTimeoutMs: connectTimeout(values['connect-timeout'], peers) * 1000,
    quiet: values.quiet === true,
    json: values.json === true,
  };
}

const us = (value: number): string => `${value.toFixed(1)} µs`;
const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;

function summary(result: SessionResult): Record<string, unknown> {
  const { stats } = result;
  return {
    pid: result.pid, end: result.end, error: result.error?.message,
    faults: stats.faults, pagesOnDemand: stats.pagesOnDemand, pagesPushed: stats.pagesPushed, zeroPages: stats.zeroPages,
    bytes: stats.bytes, removes: stats.removes, eexist: stats.eexist, eagain: stats.eagain, pagesMissing: result.pagesMissing,
    p50us: stats.latency.percentile(50), p99us: stats.latency.percentile(99), maxus: stats.latency.maxUs,
  };
}

export async function serveCommand(args: string[]): Promise<number> {
  let options: Arguments;
  try {
    options = parse(args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`userfaultfd serve: ${error.message}\n${SERVE_USAGE}\n`);
    return 2;
  }
  let source: PageSource;
  let remote: HttpPageSource | undefined;
  if (options.memUrl !== undefined) {
    try {
      // Retries and the failure are reported as they happen; the URL is printed without credentials.
      remote = await HttpPageSource.open(options.memUrl, {
        headers: options.headers,
        log: (text) => void (options.quiet || process.stderr.write(`userfaultfd serve: ${text}\n`)),
      });
    } catch (error) {
      process.stderr.write(`userfaultfd serve: cannot open --mem-url: ${(error as Error).message}\n`);
      return (error as { code?: string }).code?.startsWith('ERR_INVALID_ARG') ? 2 : 1;
    }
    source = remote;
  } else {
    try {
      source = new FilePageSource(options.memFile!);
    } catch (error) {
      process.stderr.write(`userfaultfd serve: cannot map --mem-file ${options.memFile}: ${(error as Error).message}\n`);
      return 2;
    }
  }
  const serving = remote ? remote.url : options.memFile!;
  const line = (text: string, json: Record<string, unknown>): void => {
    if (options.quiet) return;
    process.stdout.write(options.json ? `${JSON.stringify(json)}\n` : `${text}\n`);
  };
  const results: SessionResult[] = [];
  const active = new Set<FirecrackerSession>();
  let connected = false;
  let finish!: (code: number) => void;
  const finished = new Promise<number>((resolve) => (finish = resolve));
  const exitCode = (): number => (results.some((r) => r.error) ? 1 : 0);

  const seen = new Map<FirecrackerSession, LatencyHistogram>();
  const done = { faults: 0, pushed: 0, bytes: 0 };
  let server: FirecrackerServer;
  try {
    server = FirecrackerServer.listen(options.socket, {
      source,
      prefetch: options.prefetch,
      readAhead: options.readAhead,
      failure: options.failure,
      handshakeTimeoutMs: options.handshakeTimeoutMs,
      onSession: (session) => {
        connected = true;
        active.add(session);
        const bytes = session.regions.reduce((n, r) => n + r.size, 0);
        line(`peer ${session.pid}: ${session.regions.length} region(s), ${mb(bytes)}, page size ${[...new Set(session.regions.map((r) => r.pageSize))].join('/')}`,
          { event: 'session', pid: session.pid, regions: session.regions.length, bytes });
        void session.done.then((result) => {
          active.delete(session);
          seen.delete(session);
          results.push(result);
          // Sessions that ended keep counting in the totals.
          done.faults += result.stats.faults;
          done.pushed += result.stats.pagesPushed;
          done.bytes += result.stats.bytes;
          const s = summary(result);
          line(`peer ${result.pid} ${result.error ? `failed (${result.end}): ${result.error.message}` : result.end}: faults ${result.stats.faults}, ` +
            `pages on demand ${result.stats.pagesOnDemand}, pushed ${result.stats.pagesPushed}, zero ${result.stats.zeroPages}, ${mb(result.stats.bytes)}, ` +
            `removes ${result.stats.removes}, latency p50 ${us(result.stats.latency.percentile(50))} p99 ${us(result.stats.latency.percentile(99))}`,
          { event: 'end', ...s });
          if (result.error) process.stderr.write(`userfaultfd serve: peer ${result.pid}: ${result.error.message}\n`);
          if (options.peers !== 0 && results.length >= options.peers) finish(exitCode());
        });
      },
      onRefused: (error, pid, killed) => {
        // A refused handshake does not count as a peer: the server waits on for a valid one.
        process.stderr.write(`userfaultfd serve: refused a connection from pid ${pid || '?'}${killed ? ' and killed it' : ''}: ${error.message}\n`);
        line(`refused pid ${pid || '?'}${killed ? ' (killed)' : ''}: ${error.code}`, { event: 'refused', pid, killed, code: error.code, error: error.message });
      },
    });
  } catch (error) {
    source.close();
    process.stderr.write(`userfaultfd serve: cannot listen on --socket ${options.socket}: ${(error as Error).message}\n`);
    return 2;
  }
  line(`listening on ${server.path}, serving ${serving} (${mb(source.size)})${options.prefetch ? ', prefetch on' : ''}`,
    { event: 'listening', socket: server.path, ...(remote ? { memUrl: remote.url } : { memFile: options.memFile }), bytes: source.size });

  // Progress: totals, what changed in the last second, and the latency of that second's faults.
  const started = Date.now();
  let last = { faults: 0, pushed: 0, bytes: 0 };
  const ticker = setInterval(() => {
    const total = { ...done };
    const second = new LatencyHistogram();
    for (const session of active) {
      const s = session.stats;
      total.faults += s.faults;
      total.pushed += s.pagesPushed;
      total.bytes += s.bytes;
      // The latencies of this second: this snapshot minus the last one.
      const snapshot = s.latency.clone();
      const previous = seen.get(session);
      second.add(previous ? snapshot.minus(previous) : snapshot);
      seen.set(session, snapshot);
    }
    const elapsed = (Date.now() - started) / 1000;
    // A remote source: how much of the image is local, and whether it is failing.
    const fetched = remote?.stats;
    const failing = remote?.error;
    line(`[${elapsed.toFixed(0)}s] peers ${active.size}, faults served ${total.faults} (+${total.faults - last.faults}/s), ` +
      `pages pushed ${total.pushed} (+${total.pushed - last.pushed}/s), ${mb(total.bytes)} (+${mb(total.bytes - last.bytes)}/s), ` +
      `latency p50 ${us(second.percentile(50))} p90 ${us(second.percentile(90))} p99 ${us(second.percentile(99))}` +
      (fetched ? `, remote ${fetched.presentPages}/${fetched.pages} pages local, ${fetched.inFlight} requests in flight, ${fetched.retries} retries${failing ? `, FAILED: ${failing.code}` : ''}` : ''),
    { event: 'progress', seconds: elapsed, peers: active.size, faults: total.faults, pagesPushed: total.pushed, bytes: total.bytes,
      p50us: second.percentile(50), p90us: second.percentile(90), p99us: second.percentile(99),
      ...(fetched ? { remote: { presentPages: fetched.presentPages, pages: fetched.pages, inFlight: fetched.inFlight, retries: fetched.retries, error: failing?.code } } : {}) });
    last = total;
  }, 1000);
  const connectTimer = options.connectTimeoutMs > 0 ? setTimeout(() => {
    if (connected) return;
    process.stderr.write(`userfaultfd serve: no peer connected within ${options.connectTimeoutMs / 1000} s\n`);
    finish(1);
  }, options.connectTimeoutMs) : undefined;
  // Nobody serves a peer's faults once this process has gone: a peer with
  // pages missing would wait for them forever.
  const stop = (signal: NodeJS.Signals): void => {
    const ends = [...active].map((session) => session.abandon());
    const count = (end: string): number => ends.filter((e) => e === end).length;
    process.stderr.write(`userfaultfd serve: ${signal}: stopped: ${count('failed')} peer(s) killed (memory not all served), ` +
      `${count('served')} let go (every page in, ranges unregistered)\n`);
    // A supervisor's stop is not a failure: 1 only if a VM had to be killed (or one failed before).
    finish(count('failed') > 0 ? 1 : exitCode());
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);

  const code = await finished;
  clearInterval(ticker);
  if (connectTimer) clearTimeout(connectTimer);
  process.removeListener('SIGINT', stop);
  process.removeListener('SIGTERM', stop);
  server.close();
  source.close();
  return code;
}

