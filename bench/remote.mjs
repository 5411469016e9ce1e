// npm run bench:remote — restore from an HTTP server at 0, 1, 6 and 20 ms of
// round-trip time: throughput and fault latency (p50 / p99) for sequential
// and random access, next to a plain bulk download of the whole image over
// the same link. The server is a private nginx on loopback; the latency comes
// from a delaying TCP proxy in a child process (tc netem is not available on
// these kernels). Writes its report as the last section of bench/RESULTS.md
// (replacing the one an earlier run wrote there) and bench/remote-throughput.svg.
//
// Environment: BENCH_REMOTE_MIB (image size, default 64), BENCH_REMOTE_RTTS
// (default "0,1,6,20"), BENCH_REMOTE_SAMPLE (random faults timed without
// background fill, default 200), BENCH_REMOTE_REPS (runs of the bulk download
// and of each restore compared with it, the median kept; default 3).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { startNginx, nginxMissing } from '../test/support/nginx.mjs';
import { DelayProxy } from '../test/support/delay-proxy.mjs';
import { serveFromSource, percentile } from '../test/support/serve-source.mjs';
import { writeRemoteSection } from './results-file.mjs';

const require = createRequire(import.meta.url);
const { FirecrackerServer, HttpPageSource, Mapping, PostcopyDestination, Userfaultfd, systemPageSize } = require('../dist/index.js');
const { Client } = require('undici');

const here = path.dirname(fileURLToPath(import.meta.url));
const MiB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_REMOTE_MIB ?? 64) * MiB;
const RTTS = (process.env.BENCH_REMOTE_RTTS ?? '0,1,6,20').split(',').map(Number);
const SAMPLE = Number(process.env.BENCH_REMOTE_SAMPLE ?? 200);
const REPS = Number(process.env.BENCH_REMOTE_REPS ?? 3);
// --out FILE: the report alone into FILE (npm run bench -- --only remote); by
// default it replaces the last section of bench/RESULTS.md.
const OUT = process.argv.includes('--out') ? process.argv[process.argv.indexOf('--out') + 1] : undefined;

// Whether every restore of a row (one RTT) left the right bytes.
const bytesRight = (row) => [row.seq, row.seqBg, row.randBg, row.rand, row.seqNative, row.randBgNative, row.randBgPostcopy, row.randFirecracker].every((x) => x.ok);

// Runs `once` REPS times, one after the other; the run with the median time.
// Every run's bytes must be right for the median's to count as right.
async function median(once) {
  const runs = [];
  for (let i = 0; i < REPS; i++) runs.push(await once());
  const sorted = [...runs].sort((a, b) => a.seconds - b.seconds);
  const middle = sorted[Math.floor((sorted.length - 1) / 2)];
  return { ...middle, ok: runs.every((r) => r.ok !== false), runs: runs.map((r) => r.seconds) };
}
const PAGE = systemPageSize();
const PAGES = SIZE / PAGE;

function image() {
  const shared = new SharedArrayBuffer(SIZE);
  const words = new Uint32Array(shared);
  for (let i = 0; i < words.length; i++) words[i] = Math.imul(i + 1, 2654435761);
  return shared;
}

function shuffled(count, seed) {
  const order = Array.from({ length: count }, (_, i) => i);
  let state = seed >>> 0;
  for (let i = count - 1; i > 0; i--) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const j = state % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

const now = () => performance.timeOrigin + performance.now();

// The round trip as the client sees it: one-byte range GETs on a warm connection.
async function measureRtt(port) {
  const client = new Client(`http://127.0.0.1:${port}`);
  const times = [];
  for (let i = 0; i < 8; i++) {
    const t0 = performance.now();
    const { body } = await client.request({ path: '/image.bin', method: 'GET', headers: { range: 'bytes=0-0' } });
    await body.arrayBuffer();
    if (i > 0) times.push(performance.now() - t0);
  }
  await client.close();
  return percentile(times, 50);
}

// A plain download of the whole image into memory, on a new connection,
// through undici's dispatch API (each chunk copied as the socket delivers it,
// as the page source does; request()'s stream body would cost more CPU and
// flatter the restore).
async function bulk(port) {
  const client = new Client(`http://127.0.0.1:${port}`);
  const target = Buffer.allocUnsafe(SIZE);
  const cpu0 = process.cpuUsage();
  const t0 = now();
  let at = 0;
  await new Promise((resolve, reject) => client.dispatch({ path: '/image.bin', method: 'GET' }, {
    // (undici takes the controller-style handler only when it has onRequestStart.)
    onRequestStart: () => {},
    onResponseStart: (controller, status) => {
      if (status !== 200) controller.abort(new Error(`bulk download: HTTP ${status}`));
    },
    onResponseData: (_controller, chunk) => {
      chunk.copy(target, at);
      at += chunk.length;
    },
    onResponseEnd: resolve,
    onResponseError: (_controller, error) => reject(error),
  }));
  const seconds = (now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  await client.close();
  if (at !== SIZE) throw new Error(`bulk download got ${at} bytes`);
  return { seconds, cpuMs: (cpu.user + cpu.system) / 1000 };
}

// The library's native fast path (uffd.serveFrom): an addon thread resolves
// every fault whose page is present, 16 pages a fault; the misses come to
// JavaScript, which awaits the page and copies it.
function serveNative(uffd, mapping, source) {
  const stats = { faults: 0, misses: 0, latencies: [], missLatencies: [], errors: [] };
  uffd.serveFrom(source, {
    readAhead: 16,
    failure: 'poison',
    onError: (error) => stats.errors.push(error),
    onMiss: async (fault, miss) => {
      stats.misses++;
      await source.fetch(miss.offset, PAGE, { urgent: true });
      fault.copy(source.bytes.subarray(miss.offset, miss.offset + PAGE));
      stats.missLatencies.push(performance.now() - fault.receivedAt);
    },
  });
  return stats;
}

// The Firecracker handler on its native path (what `npx userfaultfd serve
// --mem-url URL --prefetch` runs: a FirecrackerServer over an HttpPageSource).
// The VMM is fc_peer, a separate process that sends its uffd and regions over
// the socket (Firecracker's protocol) and touches every page in random order.
// Timed from opening the source to the peer's last touch (its CLOCK_MONOTONIC
// time, which process.hrtime shares), as the worker restores are; the peer's
// start and handshake are in the time, its final byte check is not.
async function restoreFirecracker(port, imageFile, peerBinary) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-remote-fc-'));
  const socket = path.join(dir, 'uffd.sock');
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const source = await HttpPageSource.open(`http://127.0.0.1:${port}/image.bin`, { backgroundFill: true });
  const started = new Promise((resolve) => {
    const server = FirecrackerServer.listen(socket, { source, prefetch: true, onSession: (s) => resolve([server, s]) });
  });
  const peer = spawn(peerBinary, ['--socket', socket, '--mem-file', imageFile, '--regions', `${SIZE / MiB}M`, '--order', 'random', '--seed', '17'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  peer.stdout.on('data', (chunk) => (out += chunk));
  const code = await new Promise((resolve) => peer.once('close', resolve));
  const cpu = process.cpuUsage(cpu0);
  const [server, s] = await started;
  const session = await s.done;
  server.close();
  source.close();
  fs.rmSync(dir, { recursive: true, force: true });
  const report = JSON.parse(out.trim().split('\n').at(-1) ?? '{}');
  const seconds = Number(BigInt(Math.round(report.touchEndNs ?? 0)) - t0) / 1e9;
  const { stats } = session;
  return {
    seconds, cpuMs: (cpu.user + cpu.system) / 1000, ok: code === 0 && report.ok === true && !session.error,
    faults: stats.faults, pushed: stats.pagesPushed, p50: stats.latency.percentile(50) / 1e3, p99: stats.latency.percentile(99) / 1e3,
  };
}

// One restore: register memory, start the worker (not timed), then open the
// source and let the worker touch `order`.
async function restore(port, order, expected, options, handler = 'js') {
  const mapping = Mapping.anonymous(SIZE);
  const uffd = Userfaultfd.open({ features: ['POISON'] });
  uffd.register(mapping);
  const go = new SharedArrayBuffer(4);
  const worker = new Worker(path.join(here, 'remote-toucher.cjs'), {
    workerData: { address: mapping.address, length: SIZE, pageSize: PAGE, order, expected, go },
  });
  const messages = [];
  let notify = () => {};
  worker.on('message', (message) => {
    messages.push(message);
    notify();
  });
  const failed = new Promise((_, reject) => worker.once('error', reject));
  const next = () => Promise.race([failed, new Promise((resolve) => {
    if (messages.length > 0) resolve(messages.shift());
    else notify = () => resolve(messages.shift());
  })]);
  if ((await next()) !== 'ready') throw new Error('the toucher did not start');
  const cpu0 = process.cpuUsage();
  const t0 = now();
  const source = await HttpPageSource.open(`http://127.0.0.1:${port}/image.bin`, options);
  // 'postcopy': the library's whole restore, PostcopyDestination (native
  // fast path for faults, and every page installed as it lands).
  const destination = handler === 'postcopy' ? new PostcopyDestination(uffd, mapping, source) : undefined;
  const stats = destination
    ? { faults: 0, misses: 0, latencies: [], missLatencies: [], errors: [] }
    : handler === 'native' ? serveNative(uffd, mapping, source) : serveFromSource(uffd, mapping.address, SIZE, source).stats;
  Atomics.store(new Int32Array(go), 0, 1);
  Atomics.notify(new Int32Array(go), 0);
  const report = await next();
  await worker.terminate();
  const seconds = (report.finishedAt - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const native = handler === 'native' ? uffd.stats() : undefined;
  if (destination) {
    stats.faults = destination.stats.faults;
    stats.misses = destination.stats.faultsFetched;
    if (destination.error) stats.errors.push(destination.error);
    destination.close();
  }
  const result = {
    seconds,
    nativeP50: native?.serviceP50Us,
    nativeP99: native?.serviceP99Us,
    cpuMs: (cpu.user + cpu.system) / 1000,
    ok: report.ok && stats.errors.length === 0,
    faults: stats.faults,
    misses: stats.misses,
    p50: percentile(stats.latencies, 50),
    p99: percentile(stats.latencies, 99),
    missP50: percentile(stats.missLatencies, 50),
    missP99: percentile(stats.missLatencies, 99),
    requests: source.stats.requests,
    split: source.stats.split,
    fetchedMiB: source.stats.bytesFetched / MiB,
  };
  uffd.close();
  source.close();
  mapping.unmap();
  return result;
}

const fmt = (n, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '-');

function svg(rows) {
  const width = 700;
  const height = 380;
  const left = 70;
  const right = 230;
  const top = 30;
  const bottom = 50;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const minLog = 0; // 1 MB/s
  const maxLog = 4; // 10 GB/s
  const x = (i) => left + (RTTS.length === 1 ? plotW / 2 : (i * plotW) / (RTTS.length - 1));
  const y = (mbps) => top + plotH - ((Math.log10(Math.max(mbps, 1)) - minLog) / (maxLog - minLog)) * plotH;
  const series = [
    { name: 'bulk download', color: '#555', key: 'bulkMBps' },
    { name: 'sequential, on demand', color: '#1f77b4', key: 'seqMBps' },
    { name: 'sequential + background', color: '#2ca02c', key: 'seqBgMBps' },
    { name: 'sequential, native path', color: '#17becf', key: 'seqNativeMBps' },
    { name: 'random + bg, native path', color: '#ff7f0e', key: 'randBgNativeMBps' },
    { name: 'random + bg, post-copy dest.', color: '#8c564b', key: 'randBgPostcopyMBps' },
    { name: 'random + background', color: '#d62728', key: 'randBgMBps' },
    { name: 'random, on demand', color: '#9467bd', key: 'randMBps' },
  ];
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${left}" y="18" font-size="14">Restore throughput from HTTP vs round-trip time (${SIZE / MiB} MiB image)</text>`,
  ];
  for (let e = minLog; e <= maxLog; e++) {
    parts.push(`<line x1="${left}" x2="${left + plotW}" y1="${y(10 ** e)}" y2="${y(10 ** e)}" stroke="#ddd"/>`);
    parts.push(`<text x="${left - 8}" y="${y(10 ** e) + 4}" text-anchor="end">${10 ** e >= 1000 ? `${10 ** (e - 3)} GB/s` : `${10 ** e} MB/s`}</text>`);
  }
  RTTS.forEach((rtt, i) => parts.push(`<text x="${x(i)}" y="${top + plotH + 20}" text-anchor="middle">${rtt} ms</text>`));
  parts.push(`<text x="${left + plotW / 2}" y="${height - 10}" text-anchor="middle">round-trip time</text>`);
  // The published figure for a userfaultfd handler over a network: userfaultfd-go, one request per fault.
  const published = RTTS.map((rtt, i) => (rtt === 0 ? [i, 450] : rtt === 6 ? [i, 1] : undefined)).filter(Boolean);
  if (published.length === 2) {
    parts.push(`<polyline fill="none" stroke="#999" stroke-dasharray="4 3" points="${published.map(([i, v]) => `${x(i)},${y(v)}`).join(' ')}"/>`);
    for (const [i, v] of published) parts.push(`<circle cx="${x(i)}" cy="${y(v)}" r="3" fill="#999"/>`);
  }
  series.forEach((s, k) => {
    const points = rows.map((r, i) => [x(i), y(r[s.key])]);
    parts.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${points.map((p) => p.join(',')).join(' ')}"/>`);
    for (const [px, py] of points) parts.push(`<circle cx="${px}" cy="${py}" r="3" fill="${s.color}"/>`);
    parts.push(`<line x1="${left + plotW + 15}" x2="${left + plotW + 35}" y1="${top + 10 + k * 20}" y2="${top + 10 + k * 20}" stroke="${s.color}" stroke-width="2"/>`);
    parts.push(`<text x="${left + plotW + 40}" y="${top + 14 + k * 20}">${s.name}</text>`);
  });
  parts.push(`<line x1="${left + plotW + 15}" x2="${left + plotW + 35}" y1="${top + 10 + series.length * 20}" y2="${top + 10 + series.length * 20}" stroke="#999" stroke-dasharray="4 3"/>`);
  parts.push(`<text x="${left + plotW + 40}" y="${top + 14 + series.length * 20}">userfaultfd-go (published)</text>`);
  parts.push('</svg>');
  return parts.join('\n');
}

async function main() {
  const missing = nginxMissing();
  if (missing) {
    console.error(`bench:remote needs nginx: ${missing}`);
    process.exitCode = 1;
    return;
  }
  const expected = image();
  const nginx = await startNginx();
  fs.writeFileSync(path.join(nginx.root, 'image.bin'), new Uint8Array(expected));
  // The Firecracker restore's peer checks every byte against this copy.
  const imageFile = path.join(nginx.root, 'image.copy');
  fs.copyFileSync(path.join(nginx.root, 'image.bin'), imageFile);
  const peerBinary = path.join(here, '..', 'build', 'bench', 'fc_peer');
  fs.mkdirSync(path.dirname(peerBinary), { recursive: true });
  execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-pthread', '-o', peerBinary, path.join(here, '..', 'test', 'fixtures', 'fc_peer.c')], { stdio: 'inherit' });
  const rows = [];
  try {
    // Untimed: the first download in a process runs cold code (undici, the
    // JIT) and would flatter the restores at the first RTT against it.
    await bulk(nginx.port);
    for (const rtt of RTTS) {
      const proxy = await DelayProxy.start(nginx.port, rtt);
      try {
        const measured = await measureRtt(proxy.port);
        const best = await median(() => bulk(proxy.port));
        const bulkSeconds = best.seconds;
        const sequential = Array.from({ length: PAGES }, (_, i) => i);
        const seq = await restore(proxy.port, sequential, expected, { backgroundFill: false });
        const seqBg = await restore(proxy.port, sequential, expected, { backgroundFill: true });
        const randBg = await median(() => restore(proxy.port, shuffled(PAGES, 17), expected, { backgroundFill: true }));
        const seqNative = await restore(proxy.port, sequential, expected, { backgroundFill: false }, 'native');
        const randBgNative = await median(() => restore(proxy.port, shuffled(PAGES, 17), expected, { backgroundFill: true }, 'native'));
        const randBgPostcopy = await median(() => restore(proxy.port, shuffled(PAGES, 17), expected, { backgroundFill: true }, 'postcopy'));
        const randFirecracker = await median(() => restoreFirecracker(proxy.port, imageFile, peerBinary));
        const rand = await restore(proxy.port, shuffled(PAGES, 23).slice(0, SAMPLE), expected, { backgroundFill: false });
        const row = {
          rtt, measured, bulkSeconds, bulkCpuMs: best.cpuMs, bulkRuns: best.runs,
          bulkMBps: SIZE / 1e6 / bulkSeconds,
          seq, seqMBps: SIZE / 1e6 / seq.seconds,
          seqBg, seqBgMBps: SIZE / 1e6 / seqBg.seconds,
          randBg, randBgMBps: SIZE / 1e6 / randBg.seconds,
          seqNative, seqNativeMBps: SIZE / 1e6 / seqNative.seconds,
          randBgNative, randBgNativeMBps: SIZE / 1e6 / randBgNative.seconds,
          randBgPostcopy, randBgPostcopyMBps: SIZE / 1e6 / randBgPostcopy.seconds,
          randFirecracker,
          rand, randMBps: (SAMPLE * PAGE) / 1e6 / rand.seconds,
        };
        rows.push(row);
        console.log(`RTT ${rtt} ms (measured ${fmt(measured, 2)} ms): bulk ${fmt(row.bulkMBps)} MB/s (${fmt(bulkSeconds, 3)} s); ` +
          `sequential ${fmt(row.seqMBps)} MB/s p50 ${fmt(seq.p50, 3)} p99 ${fmt(seq.p99, 2)} ms; ` +
          `sequential+bg ${fmt(row.seqBgMBps)} MB/s; random+bg ${fmt(randBg.seconds, 3)} s = ${fmt(randBg.seconds / bulkSeconds, 2)}x bulk, p50 ${fmt(randBg.p50, 3)} p99 ${fmt(randBg.p99, 2)} ms; ` +
          `native path: sequential ${fmt(row.seqNativeMBps)} MB/s, random+bg ${fmt(randBgNative.seconds / bulkSeconds, 2)}x bulk; ` +
          `post-copy destination: random+bg ${fmt(randBgPostcopy.seconds / bulkSeconds, 2)}x bulk; ` +
          `serve --mem-url --prefetch (Firecracker peer): random ${fmt(randFirecracker.seconds / bulkSeconds, 2)}x bulk; ` +
          `random on demand p50 ${fmt(rand.p50, 2)} p99 ${fmt(rand.p99, 2)} ms` +
          `${bytesRight(row) ? '' : ' — BYTES DIFFER'}`);
      } finally {
        await proxy.close();
      }
    }
  } finally {
    await nginx.stop();
  }
  if (OUT) {
    fs.writeFileSync(OUT, `${report(rows)}\n`);
    console.log(`wrote ${OUT}`);
  } else {
    fs.writeFileSync(path.join(here, 'remote-throughput.svg'), `${svg(rows)}\n`);
    writeRemoteSection(path.join(here, 'RESULTS.md'), report(rows));
    console.log(`wrote the remote section of bench/RESULTS.md and bench/remote-throughput.svg`);
  }
  if (!rows.every(bytesRight)) process.exitCode = 1;
}

function report(rows) {
  const at6 = rows.find((r) => r.rtt === 6);
  const lines = [
    '# Remote page source: restore from HTTP at real network latencies',
    '',
    `Generated by \`npm run bench:remote\` on ${new Date().toISOString().slice(0, 10)}: ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? 'unknown'}), Linux ${os.release()}, Node ${process.version}, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')} at the end.`,
    '',
    `A ${SIZE / MiB} MiB image served by nginx on loopback through a delaying TCP proxy (test/support/delay-proxy.c in a child process; each direction holds bytes for half the RTT, a new connection's first request one RTT more, like a TCP handshake; no bandwidth limit). "measured" is the median time of a one-byte range GET on a warm connection through the proxy (timer resolution adds up to about 1 ms). Every restore opens the source (its first ranged GET is part of the time), registers anonymous memory, and a worker thread touches one byte per page; the handler (test/support/serve-source.mjs) awaits absent pages and copies up to 16 present pages per fault. Every restore's bytes are checked against the image (all ${rows.every(bytesRight) ? 'equal' : 'NOT equal'}).`,
    '',
    `- bulk: one GET of the whole image on a new connection, into memory. The bulk download and every random + bg restore compared with it run ${REPS} times each; the tables show the median run.`,
    '- sequential: pages in order, on demand only (background fill off): read-ahead does the work.',
    '- sequential + bg / random + bg: background fill on; random touches every page in a shuffled order.',
    `- random on demand: ${SAMPLE} pages in a shuffled order, background fill off (each miss waits about one round trip).`,
    '- latency: from the kernel\'s report of a fault (as read by the handler) to its UFFDIO_COPY, in ms, over all faults; "miss" counts only faults that waited for the network.',
    '',
    '![throughput vs RTT](remote-throughput.svg)',
    '',
    '| RTT (ms) | measured (ms) | bulk MB/s | sequential MB/s | p50 / p99 (ms) | seq + bg MB/s | random + bg (s) | vs bulk | p50 / p99 (ms) | random on demand: miss p50 / p99 (ms) |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.rtt} | ${fmt(r.measured, 2)} | ${fmt(r.bulkMBps, 0)} | ${fmt(r.seqMBps, 0)} | ${fmt(r.seq.p50, 3)} / ${fmt(r.seq.p99, 2)} | ${fmt(r.seqBgMBps, 0)} | ${fmt(r.randBg.seconds, 3)} | ${fmt(r.randBg.seconds / r.bulkSeconds, 2)}x | ${fmt(r.randBg.p50, 3)} / ${fmt(r.randBg.p99, 2)} | ${fmt(r.rand.missP50, 2)} / ${fmt(r.rand.missP99, 2)} |`),
    '',
    'CPU time of the bench process (the handler\'s thread, the toucher worker and the HTTP client; not nginx nor the proxy), in ms per MiB of image: a measure of the work done that load on the machine does not change much.',
    '',
    '| RTT (ms) | bulk | sequential | sequential + bg | random + bg |',
    '| ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.rtt} | ${fmt(r.bulkCpuMs / (SIZE / MiB), 2)} | ${fmt(r.seq.cpuMs / (SIZE / MiB), 2)} | ${fmt(r.seqBg.cpuMs / (SIZE / MiB), 2)} | ${fmt(r.randBg.cpuMs / (SIZE / MiB), 2)} |`),
    '',
    'The library\'s native fast path (`uffd.serveFrom(source, { readAhead: 16, failure: \'poison\' })`: an addon thread resolves every fault whose page is present; the misses come to JavaScript, which awaits the page and copies it), same link and image:',
    '',
    '| RTT (ms) | sequential MB/s | native p50 / p99 (µs) | miss p50 / p99 (ms) | random + bg (s) | vs bulk | post-copy destination: random + bg (s) | vs bulk |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.rtt} | ${fmt(r.seqNativeMBps, 0)} | ${fmt(r.seqNative.nativeP50, 1)} / ${fmt(r.seqNative.nativeP99, 1)} | ${fmt(r.seqNative.missP50, 2)} / ${fmt(r.seqNative.missP99, 2)} | ${fmt(r.randBgNative.seconds, 3)} | ${fmt(r.randBgNative.seconds / r.bulkSeconds, 2)}x | ${fmt(r.randBgPostcopy.seconds, 3)} | ${fmt(r.randBgPostcopy.seconds / r.bulkSeconds, 2)}x |`),
    '',
    'The post-copy destination (`new PostcopyDestination(uffd, memory, source)`) is the library\'s whole restore: the native fast path serves faults on pages in the cache, and every page is installed into the registered memory as it lands, so the workload stops faulting on pages background fill brought.',
    '',
    'The Firecracker handler, as `npx userfaultfd serve --mem-url URL --prefetch` runs it (a FirecrackerServer over an HttpPageSource, on the native fast path with background fill): the VMM is test/fixtures/fc_peer.c, a separate process that sends its uffd and one region over the socket and touches every page in random order. Timed from opening the source to the peer\'s last touch, as the restores above are; the peer\'s start and handshake count too (the worker restores start their toucher untimed). Latency is the session\'s own (read to resolved, native and JavaScript faults together).',
    '',
    '| RTT (ms) | random + prefetch (s) | vs bulk | faults | pages pushed | p50 / p99 (ms) |',
    '| ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.rtt} | ${fmt(r.randFirecracker.seconds, 3)} | ${fmt(r.randFirecracker.seconds / r.bulkSeconds, 2)}x | ${r.randFirecracker.faults} | ${r.randFirecracker.pushed} | ${fmt(r.randFirecracker.p50, 3)} / ${fmt(r.randFirecracker.p99, 2)} |`),
    '',
    'Requests sent (urgent / read-ahead / background) and faults:',
    '',
    ...rows.map((r) => `- ${r.rtt} ms: sequential ${r.seq.requests.urgent}/${r.seq.requests.readahead}/${r.seq.requests.background} requests, ${r.seq.faults} faults (${r.seq.misses} waited); random + bg ${r.randBg.requests.urgent}/${r.randBg.requests.readahead}/${r.randBg.requests.background} requests (${r.randBg.split} background transfers cut short for a fault), ${r.randBg.faults} faults (${r.randBg.misses} waited), ${fmt(r.randBg.fetchedMiB)} MiB written to the cache`),
    '',
    '## Targets',
    '',
    at6 ? `- Sequential at 6 ms RTT: ${fmt(at6.seqMBps, 0)} MB/s on demand, ${fmt(at6.seqBgMBps, 0)} MB/s with background fill, ${fmt(at6.seqNativeMBps, 0)} MB/s on demand with the native fast path (target: at least 100 MB/s; userfaultfd-go's published figure is below 1 MB/s at 6 ms).` : '- (6 ms RTT not measured in this run.)',
    ...rows.map((r) => `- Random with background fill at ${r.rtt} ms: ${fmt(r.randBg.seconds, 3)} s (native path ${fmt(r.randBgNative.seconds, 3)} s, post-copy destination ${fmt(r.randBgPostcopy.seconds, 3)} s, \`serve --mem-url --prefetch\` ${fmt(r.randFirecracker.seconds, 3)} s) against ${fmt(r.bulkSeconds, 3)} s for the bulk download, ${fmt(r.randBg.seconds / r.bulkSeconds, 2)}x (${fmt(r.randBgNative.seconds / r.bulkSeconds, 2)}x, ${fmt(r.randBgPostcopy.seconds / r.bulkSeconds, 2)}x, ${fmt(r.randFirecracker.seconds / r.bulkSeconds, 2)}x) (target: at most 1.5x).`),
    ...rows.map((r) => `- Every run at ${r.rtt} ms, in s (bulk; JS path; native path; post-copy destination; serve --mem-url --prefetch): ${[r.bulkRuns, r.randBg.runs, r.randBgNative.runs, r.randBgPostcopy.runs, r.randFirecracker.runs].map((runs) => runs.map((x) => fmt(x, 3)).join(', ')).join('; ')}.`),
    '',
    'Figures from a machine whose CPUs are shared with other work are noisy; the bulk download, the proxy and the restore share the same cores.',
    '',
  ];
  return lines.join('\n');
}

await main();
