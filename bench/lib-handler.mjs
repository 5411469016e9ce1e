// The library as a Firecracker-style page-fault handler, for `npm run bench`:
// the counterpart of bench/native/c_handler.c, serving the same peer
// (test/fixtures/fc_peer.c) the same way: accept one connection, receive the
// handshake (regions as JSON, the uffd as SCM_RIGHTS), serve faults from the
// memory file until the peer hangs up, print one JSON line of counters.
//
// usage: node bench/lib-handler.mjs --socket PATH --mem-file FILE
//   --style native|js|batch|worker
//                              the native fast path (serveFrom), a JavaScript
//                              handler on the loop (serve, a Fault per fault;
//                              serveBatch, nothing allocated per fault), or a
//                              JavaScript handler in a worker blocked in the
//                              addon (serveSync)
//   --spin 0|1                 adaptive spinning (capped on the loop)
//   --readahead N              pages per fault (native style)
//   --fill-threads N           serveFrom's fillThreads (native style; default: the library's)
//   --zeropage                 resolve missing faults with zero pages
//   --busy-ms N                keep the main thread busy with N ms JavaScript tasks
//   --idle-ms N                no peer: open a uffd, serve it, measure CPU for N ms
//   --rss-every N              sample the resident set every N faults (native/js)
import { Worker } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import lib from '../dist/index.js';

const { Userfaultfd, UnixServer, FilePageSource, Mapping, BufferPageSource, systemPageSize } = lib;
const PAGE = systemPageSize();

const { values: opts } = parseArgs({
  options: {
    socket: { type: 'string' }, 'mem-file': { type: 'string' }, style: { type: 'string', default: 'native' },
    spin: { type: 'string', default: '0' }, readahead: { type: 'string', default: '1' }, 'fill-threads': { type: 'string' }, zeropage: { type: 'boolean', default: false },
    'busy-ms': { type: 'string', default: '0' }, 'idle-ms': { type: 'string', default: '0' }, 'rss-every': { type: 'string', default: '0' },
  },
});
const style = opts.style;
const spin = opts.spin === '1';
const readAhead = Number(opts.readahead);
const fillThreads = opts['fill-threads'] === undefined ? undefined : Number(opts['fill-threads']);
const busyMs = Number(opts['busy-ms']);
const rssEvery = Number(opts['rss-every']);

// The JavaScript handler both the loop and the worker styles run: what the
// native path does, written with the public API.
const handlerSource = `
  (regions, bytes, zeropage) => (fault) => {
    for (const r of regions) {
      const delta = fault.pageAddress - r.base;
      if (delta < 0n || delta >= r.size) continue;
      if (fault.kind === 'minor') fault.continue();
      else if (zeropage || r.removed.has(fault.pageAddress)) fault.zero();
      else {
        const at = r.offset + Number(delta);
        fault.copy(bytes.subarray(at, at + fault.pageSize));
      }
      return;
    }
    throw new Error('fault outside every region');
  }`;
const makeHandler = eval(handlerSource);

// The same for serveBatch: numbers, indexes, no allocation per fault.
function makeBatchHandler(regions, bytes, zeropage) {
  const spans = regions.map((r) => ({ base: Number(r.base), end: Number(r.base + r.size), offset: r.offset, removed: r.removed }));
  return (batch) => {
    for (let i = 0; i < batch.length; i++) {
      const page = batch.pageAddress(i);
      for (const r of spans) {
        if (page < r.base || page >= r.end) continue;
        if (batch.kind(i) === 'minor') batch.continue(i);
        else if (zeropage || (r.removed.size > 0 && r.removed.has(BigInt(page)))) batch.zero(i);
        else {
          const at = r.offset + (page - r.base);
          batch.copy(i, bytes.subarray(at, at + PAGE));
        }
        break;
      }
    }
  };
}

function markRemoved(regions, start, end, pageSize) {
  for (const r of regions) for (let a = start; a < end; a += BigInt(pageSize)) if (a >= r.base && a < r.base + r.size) r.removed.add(a);
}

function cpuMs() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e3;
}

function busyLoop() {
  // 10 ms tasks back to back, each a separate turn of the event loop.
  let stop = false;
  const task = () => {
    if (stop) return;
    const until = performance.now() + busyMs;
    while (performance.now() < until);
    setImmediate(task);
  };
  setImmediate(task);
  return () => (stop = true);
}

const workerSource = `
  const { parentPort, workerData } = require('node:worker_threads');
  const { Userfaultfd, FilePageSource, systemPageSize } = require(${JSON.stringify(new URL('../dist/index.js', import.meta.url).pathname)});
  const makeHandler = eval(workerData.handlerSource);
  const source = new FilePageSource(workerData.memFile);
  const page = systemPageSize();
  for (let i = 0; i < source.bytes.length; i += page) source.bytes[i];
  parentPort.postMessage('ready');
  parentPort.once('message', ({ loan, regions }) => {
    const uffd = Userfaultfd.borrow(loan);
    for (const r of regions) r.removed = new Set();
    const handle = makeHandler(regions, source.bytes, workerData.zeropage);
    const cpu0 = process.cpuUsage();
    uffd.serveSync(handle, { spin: workerData.spin, onEvent: (e) => {
      if (e.type === 'remove') for (const r of regions) for (let a = e.start; a < e.end; a += BigInt(page)) if (a >= r.base && a < r.base + r.size) r.removed.add(a);
    } });
    const cpu = process.cpuUsage(cpu0);
    parentPort.postMessage({ stats: uffd.stats(), cpuMs: (cpu.user + cpu.system) / 1e3 });
  });
`;

async function idle() {
  // No faults for idleMs: what does a served uffd cost?
  const memory = Mapping.anonymous(16 * systemPageSize());
  const uffd = Userfaultfd.open();
  uffd.register(memory);
  let worker;
  if (style === 'none') uffd.close();
  else if (style === 'native') void uffd.serveFrom(new BufferPageSource(new Uint8Array(memory.length)), { spin });
  else if (style === 'js') void uffd.serve((f) => f.zero(), { spin });
  else if (style === 'worker') {
    worker = new Worker(`
      const { parentPort, workerData } = require('node:worker_threads');
      const { Userfaultfd } = require(${JSON.stringify(new URL('../dist/index.js', import.meta.url).pathname)});
      const uffd = Userfaultfd.borrow(workerData.loan);
      parentPort.postMessage('serving');
      uffd.serveSync((f) => f.zero(), { spin: workerData.spin });
    `, { eval: true, workerData: { loan: uffd.lend(), spin } });
    // Its start (loading the library, compiling) is not what is measured.
    await new Promise((resolve) => worker.once('message', resolve));
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const ms = Number(opts['idle-ms']);
  const c0 = cpuMs();
  const t0 = performance.now();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const cpu = cpuMs() - c0;
  const wall = performance.now() - t0;
  uffd.close();
  if (worker) await worker.terminate();
  console.log(JSON.stringify({ idle: true, style, spin, wallMs: wall, cpuMs: cpu, cpuPercent: (100 * cpu) / wall }));
}

async function serve() {
  const source = new FilePageSource(opts['mem-file']);
  // Like c_handler's MAP_POPULATE: reading the file in is not a fault's cost.
  for (let i = 0; i < source.bytes.length; i += PAGE) source.bytes[i];
  let worker;
  let workerReady;
  if (style === 'worker') {
    worker = new Worker(workerSource, {
      eval: true, workerData: { handlerSource, memFile: opts['mem-file'], spin, zeropage: opts.zeropage },
    });
    workerReady = new Promise((resolve) => worker.once('message', resolve));
    await workerReady;
  }
  const server = UnixServer.listen(opts.socket);
  const connection = await server.accept();
  server.close();
  const message = await connection.receive({ timeoutMs: 10_000 });
  if (!message || message.fds.length !== 1) throw new Error('no handshake');
  const regions = JSON.parse(message.data.toString()).map((r) => ({
    base: BigInt(r.base_host_virt_addr), size: BigInt(r.size), offset: r.offset, pageSize: r.page_size ?? systemPageSize(), removed: new Set(),
  }));
  const uffd = Userfaultfd.fromFd(message.fds[0], {
    ranges: regions.map((r) => ({ address: r.base, length: r.size, pageSize: r.pageSize })),
  });
  const cpu0 = cpuMs();
  const stopBusy = busyMs > 0 ? busyLoop() : () => {};
  const rss = [];
  let sampler;
  if (rssEvery > 0) {
    let next = rssEvery;
    sampler = setInterval(() => {
      const s = uffd.stats();
      const faults = s.nativeFaults + s.jsFaults;
      if (faults >= next) {
        rss.push({ faults, rssKiB: Math.round(process.memoryUsage.rss() / 1024) });
        next = faults + rssEvery;
      }
    }, 20);
  }
  let workerDone;
  if (style === 'native') {
    void uffd.serveFrom(opts.zeropage ? null : source, {
      ranges: regions.map((r) => ({ address: r.base, length: r.size, offset: r.offset, zero: opts.zeropage })),
      readAhead, spin, fillThreads,
    });
  } else if (style === 'js') {
    void uffd.serve(makeHandler(regions, source.bytes, opts.zeropage), {
      spin, onEvent: (e) => e.type === 'remove' && markRemoved(regions, e.start, e.end, systemPageSize()),
    });
  } else if (style === 'batch') {
    void uffd.serveBatch(makeBatchHandler(regions, source.bytes, opts.zeropage), {
      spin, onEvent: (e) => e.type === 'remove' && markRemoved(regions, e.start, e.end, systemPageSize()),
    });
  } else {
    workerDone = new Promise((resolve) => worker.once('message', resolve));
    worker.postMessage({ loan: uffd.lend(), regions: regions.map(({ removed, ...r }) => r) });
  }
  await connection.waitEnd();
  stopBusy();
  if (sampler) clearInterval(sampler);
  const cpu = cpuMs() - cpu0;
  uffd.close();
  connection.close();
  let stats = uffd.stats();
  if (worker) {
    const done = await workerDone;
    stats = done.stats;
    await worker.terminate();
  }
  const faults = stats.nativeFaults + stats.jsFaults;
  console.log(JSON.stringify({
    faults, nativeFaults: stats.nativeFaults, jsFaults: stats.jsFaults, pages: stats.pages, readAheadPages: stats.readAheadPages,
    serviceP50Us: stats.serviceP50Us, serviceP99Us: stats.serviceP99Us, spin: stats.spin, cpuSeconds: cpu / 1e3, rss,
  }));
}

await (Number(opts['idle-ms']) > 0 ? idle() : serve());
