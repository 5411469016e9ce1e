// npm run bench [-- --quick] [-- --out FILE] [-- --only SECTION[,SECTION]]
//
// SECTION: workloads, floor, read-ahead, placements, busy, idle, rss, vcpu,
// remote. With --only, the run writes only those sections (to --out, by
// default a file in the temporary directory, so that bench/RESULTS.md keeps a
// whole run). remote is bench/remote.mjs (page sources over HTTP), run last:
// in a whole run it writes the last section of bench/RESULTS.md, with
// --only a file of its own.
//
// The library against a plain C page-fault handler on the same workloads, one
// after the other, and bench/RESULTS.md written from the run. The faulting
// side is always test/fixtures/fc_peer.c, a separate process with native
// faulting threads that times every first touch; the handlers are
// bench/native/c_handler.c (poll + read of up to 64 messages + one ioctl per
// fault, one thread; with --spin-us, a spinning variant) and
// bench/lib-handler.mjs (the library, in each of its handler styles). Both
// speak Firecracker's handshake, so each gets the uffd and the regions the
// same way. Ratios compare figures from the same repetition of the same run.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { remoteSection } from './results-file.mjs';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const SECTIONS = ['workloads', 'floor', 'read-ahead', 'placements', 'busy', 'idle', 'rss', 'vcpu', 'remote'];
const only = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : SECTIONS;
for (const section of only) {
  if (!SECTIONS.includes(section)) throw new Error(`--only: unknown section '${section}' (one of ${SECTIONS.join(', ')})`);
}
const wanted = (section) => only.includes(section);
const outFile = args.includes('--out')
  ? args[args.indexOf('--out') + 1]
  : only.length < SECTIONS.length ? path.join(os.tmpdir(), `uffd-bench-${only.join('-')}.md`) : path.join(root, 'bench', 'RESULTS.md');
const command = `npm run bench${args.length ? ` -- ${args.join(' ')}` : ''}`;

// Sizes: 64 MiB of 4 KiB pages in two regions (like a guest's memory around
// the MMIO gap); --quick: 16 MiB and one repetition.
const REGIONS = quick ? '12M,4M' : '48M,16M';
const IMAGE_MIB = quick ? 16 : 64;
const REPS = quick ? 1 : 2;
const RSS_REPEAT = quick ? 8 : 62; // passes over the image: 62 x 16384 pages > 1,000,000 faults
const SPIN_US_C = 50; // the C reference's spin window (research/handoff-measurements.md)

const build = path.join(root, 'build', 'bench');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-bench-'));
const image = `/dev/shm/uffd-bench-${process.pid}.bin`;
let socketNo = 0;

function log(line) {
  process.stderr.write(`${line}\n`);
}

function compile() {
  fs.mkdirSync(build, { recursive: true });
  for (const [name, source] of [['c_handler', 'bench/native/c_handler.c'], ['fc_peer', 'test/fixtures/fc_peer.c'], ['wake_latency', 'bench/native/wake_latency.c'], ['copy_cost', 'bench/native/copy_cost.c']]) {
    execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-pthread', '-o', path.join(build, name), path.join(root, source)], { stdio: 'inherit' });
  }
}

function makeImage() {
  // Random bytes: a misplaced page or offset shows up as a mismatch in fc_peer's check.
  const fd = fs.openSync(image, 'w');
  const chunk = Buffer.alloc(1 << 20);
  let state = 0x9e3779b9;
  for (let i = 0; i < IMAGE_MIB; i++) {
    for (let j = 0; j < chunk.length; j += 4) {
      state ^= state << 13; state ^= state >>> 17; state ^= state << 5;
      chunk.writeInt32LE(state | 0, j);
    }
    fs.writeSync(fd, chunk);
  }
  fs.closeSync(fd);
}

function run(cmd, argv, timeoutMs = 180_000) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      const line = out.trim().split('\n').pop();
      let json;
      try {
        json = line ? JSON.parse(line) : undefined;
      } catch {
        json = undefined;
      }
      resolve({ code, signal, json, out, err });
    });
  });
}

const pin = (cpu, cmd, argv) => (cpu === undefined ? [cmd, argv] : ['taskset', ['-c', String(cpu), cmd, ...argv]]);

/** The command line of one handler variant serving memFile on socket. */
function handlerCommand(handler, socket, memFile, { zero = false, cpu, rssEvery = 0 } = {}) {
  if (handler.kind === 'c') {
    return pin(cpu, path.join(build, 'c_handler'), [
      '--socket', socket, '--mem-file', memFile, '--readahead', String(handler.readAhead ?? 1),
      '--spin-us', String(handler.spin ? SPIN_US_C : 0), ...(zero ? ['--zeropage'] : []),
    ]);
  }
  return pin(cpu, process.execPath, [
    path.join(root, 'bench', 'lib-handler.mjs'), '--socket', socket, '--mem-file', memFile, '--style', handler.style,
    '--spin', handler.spin ? '1' : '0', '--readahead', String(handler.readAhead ?? 1), ...(zero ? ['--zeropage'] : []),
    '--busy-ms', String(handler.busyMs ?? 0), '--rss-every', String(rssEvery),
  ]);
}

/**
 * One measured run: a handler and fc_peer over the image. handler: { kind: 'c' | 'lib', ... }.
 * placement: 'unpinned' | 'split' (handler side on CPU 0, faulting threads on CPU 1) | 'same' (all on CPU 0).
 */
async function measure(workload, handler, placement = 'unpinned', extra = {}) {
  const socket = path.join(tmp, `s${socketNo++}.sock`);
  const handlerCpu = placement === 'unpinned' ? undefined : 0;
  const peerCpu = placement === 'split' ? 1 : placement === 'same' ? 0 : undefined;
  const hcmd = handlerCommand(handler, socket, image, { zero: workload.zero, cpu: handlerCpu, rssEvery: extra.rssEvery });
  // A CPU hog in a process of its own, for the C handler's row of the busy section.
  const hog = handler.hog ? spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' }) : undefined;
  try {
    const handlerRun = run(...hcmd);
    const peerArgs = [
      '--socket', socket, '--mem-file', image, '--regions', workload.regions ?? REGIONS, '--threads', String(workload.threads),
      '--order', workload.order, '--memory', workload.memory, '--mode', workload.mode,
      ...(workload.zero ? ['--expect-zero'] : []), ...(peerCpu === undefined ? [] : ['--cpu', String(peerCpu)]),
      ...(extra.repeat ? ['--repeat', String(extra.repeat)] : []),
    ];
    const peer = await run(path.join(build, 'fc_peer'), peerArgs);
    if (peer.code !== 0) {
      // A peer that failed before connecting leaves the handler waiting in accept().
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const h = await Promise.race([handlerRun, new Promise((resolve) => setTimeout(() => resolve(null), 30_000))]);
    if (!peer.json?.ok || !h?.json) {
      throw new Error(`run failed: ${JSON.stringify(workload)} ${JSON.stringify(handler)} ${placement}\npeer: ${peer.out}${peer.err}\nhandler: ${h?.out}${h?.err}`);
    }
    return {
      pagesPerSec: peer.json.pagesPerSec, mbPerSec: peer.json.mbPerSec, p50: peer.json.p50us, p99: peer.json.p99us,
      cpuUsPerFault: (h.json.cpuSeconds * 1e6) / Math.max(1, h.json.faults), handler: h.json,
    };
  } finally {
    hog?.kill('SIGKILL');
  }
}

async function floor(workload, cpu) {
  const r = await run(path.join(build, 'fc_peer'), ['--no-uffd', '--regions', REGIONS, '--threads', String(workload.threads), '--order', workload.order, '--memory', workload.memory, ...(cpu === undefined ? [] : ['--cpu', String(cpu)])]);
  if (!r.json?.ok) throw new Error(`floor failed: ${r.out}${r.err}`);
  return { pagesPerSec: r.json.pagesPerSec, mbPerSec: r.json.mbPerSec, p50: r.json.p50us, p99: r.json.p99us };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Runs every variant once per repetition, rotating their order; ratios are to variants[0] of the same repetition. */
async function compare(workload, variants, placement = 'unpinned') {
  const results = variants.map(() => []);
  for (let rep = 0; rep < REPS; rep++) {
    const order = variants.map((_, i) => (i + rep) % variants.length);
    const got = [];
    for (const i of order) {
      try {
        got[i] = await measure(workload, variants[i], placement);
      } catch (error) {
        // One failed (or timed-out) run must not lose the rest of the bench: it shows as "failed".
        log(`  ${error.message.split('\n')[0]}`);
        got[i] = undefined;
      }
    }
    for (let i = 0; i < variants.length; i++) {
      if (!got[i]) continue;
      results[i].push({ ...got[i], ratio: got[0] ? got[i].pagesPerSec / got[0].pagesPerSec : NaN, p99Ratio: got[0] ? got[i].p99 / got[0].p99 : NaN });
    }
  }
  return variants.map((v, i) => {
    const rs = results[i];
    if (rs.length === 0) {
      return { variant: v, pagesPerSec: NaN, mbPerSec: NaN, p50: NaN, p99: NaN, cpuUsPerFault: NaN, ratio: NaN, p99Ratio: NaN, last: { handler: { faults: 0, spin: undefined } } };
    }
    const m = (key) => median(rs.map((r) => r[key]));
    return { variant: v, pagesPerSec: m('pagesPerSec'), mbPerSec: m('mbPerSec'), p50: m('p50'), p99: m('p99'),
      cpuUsPerFault: m('cpuUsPerFault'), ratio: m('ratio'), p99Ratio: m('p99Ratio'), last: rs[rs.length - 1] };
  });
}

const fmt = (x, digits = 0) => (Number.isNaN(x) ? 'failed' : x >= 10000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(digits));
const name = (v) => v.label;

const C = { kind: 'c', label: 'C handler' };
const CSPIN = { kind: 'c', spin: true, label: `C handler + spin ${SPIN_US_C} µs` };
const NATIVE = { kind: 'lib', style: 'native', label: 'library native (serveFrom), no spin' };
const NATIVE_SPIN = { kind: 'lib', style: 'native', spin: true, label: 'library native + adaptive spin (default)' };
const JS = { kind: 'lib', style: 'js', label: 'library JS handler on the loop (serve)' };
const JS_SPIN = { kind: 'lib', style: 'js', spin: true, label: 'library JS on the loop + capped spin' };
const BATCH = { kind: 'lib', style: 'batch', label: 'library JS batch handler on the loop (serveBatch)' };
const BATCH_SPIN = { kind: 'lib', style: 'batch', spin: true, label: 'library JS batch on the loop + capped spin' };
const WORKER = { kind: 'lib', style: 'worker', label: 'library JS handler in a worker (serveSync), no spin' };
const WORKER_SPIN = { kind: 'lib', style: 'worker', spin: true, label: 'library worker + adaptive spin (default)' };

const workloads = [];
for (const [type, memory, mode, zero] of [
  ['anon MISSING+COPY', 'anon', 'missing', false], ['memfd MISSING+COPY', 'memfd', 'missing', false],
  ['memfd MINOR+CONTINUE', 'memfd', 'minor', false], ['anon MISSING+ZEROPAGE', 'anon', 'missing', true],
]) {
  for (const threads of [1, 2]) for (const order of ['seq', 'random']) workloads.push({ type, memory, mode, zero, threads, order });
}

// ---- issue 10: a vCPU as the faulting peer ----
// The VMM fixture (test/fixtures/vmm) restores a snapshot lazily, Firecracker's
// way: empty guest memory, its uffd handed to the handler over the socket, the
// vCPU resumed. Every page the guest walks is a KVM fault on that memory.
const VM_MIB = quick ? 8 : 64;
const VM_VARIANTS = [C, NATIVE, NATIVE_SPIN, JS];

/** Resolves once a handler listens on socket (the file exists); rejects if it exits first or takes over 60 s. */
async function listening(socket, handlerRun) {
  let exited = false;
  handlerRun.then(() => (exited = true), () => (exited = true));
  for (const deadline = Date.now() + 60_000; !fs.existsSync(socket);) {
    if (exited || Date.now() > deadline) throw new Error(`the handler did not listen on ${socket}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function vcpuSection() {
  const md = ['', `## A vCPU as the faulting peer: lazy restore of a KVM guest (${VM_MIB} MiB, anon MISSING+COPY)`, ''];
  const { buildVmm, kvmSkipReason } = await import('../dist/demo/vmm.js');
  const skip = kvmSkipReason();
  if (skip) {
    log(`vCPU workload skipped: ${skip}`);
    md.push(`Skipped: ${skip}.`);
    return md;
  }
  const { vmm } = buildVmm();
  const snapshot = path.join(tmp, 'vm-snapshot');
  // Paused after 16 page visits of 2 passes: the restored guest reads every chain page (the fixture's README).
  const paused = await run(vmm, ['--regions', `${VM_MIB}M`, '--seed', '1', '--passes', '2', '--progress-every', '0', '--snapshot-after', '16', '--snapshot-dir', snapshot, '--timeout-s', '120']);
  if (paused.code !== 0 || !paused.json?.snapshot) throw new Error(`the VMM's snapshot failed: ${paused.out}${paused.err}`);
  const memFile = path.join(snapshot, 'mem.bin');
  md.push(`The VMM fixture's guest (test/fixtures/vmm) walks a pointer chain through every page of its memory, twice; it was paused after 16 pages and is restored lazily: a new VMM maps empty anonymous memory, registers it MISSING (EVENT_REMOVE, as Firecracker), sends the uffd to the handler and resumes the vCPU, so every page is a KVM fault. faults/s: the handler's faults over the guest's run (first KVM_RUN to done); vCPU blocked µs/fault: the vCPU thread's time asleep in that run (schedstat), per fault, i.e. the mean fault latency the guest saw (KVM gives no per-fault times); service p50/p99: from the fault's read to its resolution, library only. Each run is checked: the guest's hash equals the host's computation. ${REPS} repetition(s), medians; ratios against the C handler from the same repetition.`, '');
  md.push('| handler | faults | faults/s | vCPU blocked µs/fault | service p50 / p99 µs | CPU µs/fault | faults/s vs C | blocked vs C |', '|---|---|---|---|---|---|---|---|');
  const results = VM_VARIANTS.map(() => []);
  for (let rep = 0; rep < REPS; rep++) {
    for (let k = 0; k < VM_VARIANTS.length; k++) {
      const i = (k + rep) % VM_VARIANTS.length;
      const socket = path.join(tmp, `vm${socketNo++}.sock`);
      const handlerRun = run(...handlerCommand(VM_VARIANTS[i], socket, memFile));
      // The VMM gives up connecting after 10 s; Node under emulation can take longer to listen.
      await listening(socket, handlerRun);
      const guest = await run(vmm, ['--restore', snapshot, '--uffd-socket', socket, '--verify', '--progress-every', '0', '--timeout-s', '120']);
      const h = await Promise.race([handlerRun, new Promise((resolve) => setTimeout(() => resolve(null), 30_000))]);
      if (guest.code !== 0 || !guest.json?.verified || !h?.json) {
        throw new Error(`vCPU run failed: ${name(VM_VARIANTS[i])}\nvmm: ${guest.out}${guest.err}\nhandler: ${h?.out}${h?.err}`);
      }
      const faults = h.json.faults;
      results[i].push({
        faults, faultsPerSec: faults / guest.json.seconds, blockedUs: ((guest.json.asleepSeconds ?? NaN) * 1e6) / faults,
        cpuUsPerFault: (h.json.cpuSeconds * 1e6) / faults, p50: h.json.serviceP50Us, p99: h.json.serviceP99Us,
      });
    }
  }
  const med = (i, key) => median(results[i].map((r) => r[key]));
  const ratio = (i, key) => median(results[i].map((r, rep) => r[key] / results[0][rep][key]));
  for (const [i, v] of VM_VARIANTS.entries()) {
    // The C handler keeps no service times, nor does the JS handler on the loop (uffd.stats() has them for the native thread).
    const service = v.kind === 'c' || !(med(i, 'p99') > 0) ? '-' : `${med(i, 'p50').toFixed(1)} / ${med(i, 'p99').toFixed(1)}`;
    md.push(`| ${name(v)} | ${results[i][0].faults.toLocaleString('en')} | ${fmt(med(i, 'faultsPerSec'))} | ${med(i, 'blockedUs').toFixed(1)} | ${service} | ${med(i, 'cpuUsPerFault').toFixed(1)} | ${ratio(i, 'faultsPerSec').toFixed(2)}x | ${ratio(i, 'blockedUs').toFixed(2)}x |`);
  }
  log(`  vCPU: ${VM_VARIANTS.map((v, i) => `${v.style ?? 'c'}${v.spin ? '+spin' : ''} ${fmt(med(i, 'faultsPerSec'))} faults/s (${ratio(i, 'faultsPerSec').toFixed(2)}x)`).join(', ')}`);
  return md;
}

function machine() {
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown CPU';
  return {
    cpu, cpus: os.cpus().length, kernel: os.release(), node: process.version, date: new Date().toISOString(),
    load: os.loadavg().map((l) => l.toFixed(2)).join(' '), memGiB: (os.totalmem() / 2 ** 30).toFixed(0),
  };
}

async function main() {
  const started = Date.now();
  const m = machine();
  compile();
  // The vCPU section serves the VMM's own snapshot, not the image.
  if (only.some((section) => section !== 'vcpu' && section !== 'remote')) makeImage();
  const md = [];
  md.push('# Benchmark results', '');
  md.push(`- Command: \`${command}\``, `- Date: ${m.date}`, `- Machine: ${m.cpu}, ${m.cpus} CPUs, ${m.memGiB} GiB; Linux ${m.kernel}; Node ${m.node}`);
  md.push(`- Load average when the run started: ${m.load} (other work on the machine moves every figure; compare ratios, which come from the same repetition)`);
  md.push(`- Workload: ${IMAGE_MIB} MiB of 4 KiB pages in two regions (${REGIONS}), every page touched once (1 byte read) by 1 or 2 native faulting threads (test/fixtures/fc_peer.c, a separate process), in sequential or random order; every byte checked against the image afterwards. ${REPS} repetition(s), medians; each repetition runs the variants in rotated order.`);
  md.push('- pages/s and MB/s: pages over the time from the first touch to the last touch returning; p50/p99: per-fault latency seen by the faulting thread (µs); CPU µs/fault: the handler process\'s CPU time (all its threads) over the run, per fault.');
  md.push('- Ratios: library figure / C handler figure from the same repetition (pages/s; p99 where marked).', '');

  // ---- issue 5: every workload, C vs library native vs library JS ----
  if (wanted('workloads')) {
    log('workloads: C handler vs library (native, JS, JS batch) ...');
    md.push('## Every workload: the library against the C handler (unpinned)', '');
    md.push('| workload | threads | order | handler | pages/s | MB/s | p50 µs | p99 µs | CPU µs/fault | pages/s vs C | p99 vs C |');
    md.push('|---|---|---|---|---|---|---|---|---|---|---|');
    for (const w of workloads) {
      const rows = await compare(w, [C, NATIVE, NATIVE_SPIN, JS, BATCH]);
      for (const r of rows) {
        md.push(`| ${w.type} | ${w.threads} | ${w.order} | ${name(r.variant)} | ${fmt(r.pagesPerSec)} | ${r.mbPerSec.toFixed(1)} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.cpuUsPerFault.toFixed(1)} | ${r.ratio.toFixed(2)}x | ${r.p99Ratio.toFixed(2)}x |`);
      }
      log(`  ${w.type} ${w.threads}t ${w.order}: ${rows.map((r) => `${r.variant.style ?? 'c'}${r.variant.spin ? '+spin' : ''} ${fmt(r.pagesPerSec)} (${r.ratio.toFixed(2)}x)`).join(', ')}`);
    }
  }
  if (wanted('floor')) {
    md.push('', '### The floor: first touch with no userfaultfd', '');
    md.push('| memory | threads | order | pages/s | MB/s | p50 µs | p99 µs |', '|---|---|---|---|---|---|---|');
    for (const memory of ['anon', 'memfd']) {
      for (const threads of [1, 2]) {
        for (const order of ['seq', 'random']) {
          const f = await floor({ memory, threads, order });
          md.push(`| ${memory} | ${threads} | ${order} | ${fmt(f.pagesPerSec)} | ${f.mbPerSec.toFixed(1)} | ${f.p50.toFixed(1)} | ${f.p99.toFixed(1)} |`);
        }
      }
    }

  }

  // bench/remote.mjs writes the last section of RESULTS.md: keep it.
  const remote = remoteSection(outFile) && `\n\n${remoteSection(outFile)}`;
  const save = () => fs.writeFileSync(outFile, `${md.join('\n')}\n\n(run in progress: later sections follow when it completes)\n${remote}`);
  save();

  // ---- read-ahead ----
  if (wanted('read-ahead')) {
    log('read-ahead ...');
    md.push('', '## Read-ahead: 16 pages per fault against page by page (anon MISSING+COPY, sequential)', '');
    md.push('| threads | handler | pages/s | MB/s | p50 µs | p99 µs | faults | pages/s vs page by page |', '|---|---|---|---|---|---|---|---|');
    for (const threads of [1, 2]) {
      const w = { type: 'anon MISSING+COPY', memory: 'anon', mode: 'missing', zero: false, threads, order: 'seq' };
      const rows = await compare(w, [
        { ...NATIVE_SPIN, label: 'library native, page by page' }, { ...NATIVE_SPIN, readAhead: 16, label: 'library native, readAhead 16' },
        { ...C, label: 'C handler, page by page' }, { ...C, readAhead: 16, label: 'C handler, --readahead 16' },
      ]);
      const cBase = rows[2].pagesPerSec;
      for (const [i, r] of rows.entries()) {
        const base = i < 2 ? rows[0].pagesPerSec : cBase;
        md.push(`| ${threads} | ${name(r.variant)} | ${fmt(r.pagesPerSec)} | ${r.mbPerSec.toFixed(1)} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.last.handler.faults} | ${(r.pagesPerSec / base).toFixed(2)}x |`);
      }
    }
    // What is left once read-ahead has taken the wake-ups away: the copy in
    // the handler's thread and the first touch in the faulting thread.
    const cost = (await run(path.join(build, 'copy_cost'), [])).json;
    const bound = cost ? 1e6 / Math.max(cost.filePreadUs, cost.touchAfterCopyUs) : NaN;
    const boundMapped = cost ? 1e6 / Math.max(cost.fileMappedUs, cost.touchAfterCopyUs) : NaN;
    if (cost) md.push('', `What bounds it on this machine, measured in this run (bench/native/copy_cost.c, 64 MiB, 16 KiB per ioctl, no handler): UFFDIO_COPY from anonymous memory costs ${cost.copyColdUs.toFixed(2)} µs a page when the kernel reads each source page for the first time in the process, ${cost.copyWarmUs.toFixed(2)} µs when it has read it before; the first touch of a page a copy has just mapped costs ${cost.touchAfterCopyUs.toFixed(2)} µs; MADV_POPULATE_WRITE ${cost.populateUs.toFixed(2)} µs a page. From a memory file (as here: the image is a file in /dev/shm), a copy costs ${cost.fileMappedUs.toFixed(2)} µs a page through a fresh mapping of it, ${cost.filePreadUs.toFixed(2)} µs when each piece is read with pread into a buffer the handler reuses, which is what the library's native thread does for a source with a file (FilePageSource, the remote sources' memfd caches); the C handler copies from its mapping. One copying thread and one reader, each doing its part of every page, can reach at most about ${fmt(bound)} pages/s${bound === boundMapped ? " (the reader's first touch is the slower of the two per page, whichever way the page is copied)" : ` with the library's copies, ${fmt(boundMapped)} with copies through the mapping (the slower of the two per page)`}. On a guest with shadow page tables (PVM) the cold copy is mostly the kernel's own first access to the source page, not the memcpy (docs/performance.md).`);

    // The copies alone: background fill of the whole image with no fault.
    const rate = (await run(process.execPath, [path.join(root, 'bench', 'fill-rate.mjs'), '--image', image, '--reps', String(REPS + 1)])).json;
    if (rate) md.push('', `Background fill with no faults (bench/fill-rate.mjs: serveFrom({ background: 'now' }) of the ${IMAGE_MIB} MiB image, the server's thread alone, median of ${rate.reps}): ${fmt(rate.filePagesPerSec)} pages/s reading the FilePageSource through its file, ${fmt(rate.mappedPagesPerSec)} pages/s through its mapping (${(rate.filePagesPerSec / rate.mappedPagesPerSec).toFixed(2)}x).`);

    save();
  }

  // ---- issue 12: spinning and placements ----
  if (wanted('placements')) {
    log('spinning and placements ...');
    md.push('', '## Spinning and thread placement (anon MISSING+COPY, sequential)', '');
    md.push('Placements: **unpinned** (the scheduler decides); **split** (faulting threads on CPU 1, every handler-side thread on CPU 0: each fault crosses CPUs twice); **same** (everything on CPU 0).', '');
    md.push('| placement | threads | handler | pages/s | p50 µs | p99 µs | CPU µs/fault | pages/s vs plain C | p99 vs plain C | spin hits / windows |');
    md.push('|---|---|---|---|---|---|---|---|---|---|');
    let splitC = NaN;
    for (const placement of ['unpinned', 'split', 'same']) {
      for (const threads of [1, 2]) {
        const w = { type: 'anon MISSING+COPY', memory: 'anon', mode: 'missing', zero: false, threads, order: 'seq' };
        const rows = await compare(w, [C, CSPIN, NATIVE, NATIVE_SPIN, JS, JS_SPIN, BATCH_SPIN, WORKER, WORKER_SPIN], placement);
        for (const r of rows) {
          const s = r.last.handler.spin;
          md.push(`| ${placement} | ${threads} | ${name(r.variant)} | ${fmt(r.pagesPerSec)} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.cpuUsPerFault.toFixed(1)} | ${r.ratio.toFixed(2)}x | ${r.p99Ratio.toFixed(2)}x | ${s ? `${s.hits} / ${s.windows}` : '-'} |`);
        }
        log(`  ${placement} ${threads}t: ${rows.map((r) => `${r.variant.style ?? 'c'}${r.variant.spin ? '+spin' : ''} ${r.ratio.toFixed(2)}x`).join(', ')}`);
        if (placement === 'split' && threads === 1) splitC = rows[0].pagesPerSec;
      }
    }
    // What spinning can win here: the wake-up it saves, against what a fault
    // costs with no userfaultfd at all.
    const wake = await run(path.join(build, 'wake_latency'), ['--cpus', '0,1']);
    const f = await floor({ memory: 'anon', threads: 1, order: 'seq' }, 1);
    if (wake.json) {
      md.push('', `What spinning can save on this machine, measured in this run: waking a sleeping thread from the other CPU takes ${wake.json.sleepingWakeUs.toFixed(1)} µs one way (bench/native/wake_latency.c, median; ${wake.json.spinningWakeUs.toFixed(2)} µs when the waiter spins). A fault crosses CPUs twice on the split placement; spinning removes the handler's wake-up only, since the faulting thread sleeps in the kernel. First touch with no userfaultfd at all (the floor), 1 thread on CPU 1: ${fmt(f.pagesPerSec)} pages/s; 2.5x the plain C handler's split figure would be ${fmt(2.5 * splitC)} pages/s.`);
    }

    save();
  }

  // ---- busy main thread ----
  if (wanted('busy')) {
    log('busy main thread ...');
    // 2 MiB for the handler on the loop, which serves about one fault per
    // 10 ms task when the loop is busy; 8 MiB for the others, so that their
    // p99 is the 21st slowest of 2048 faults rather than the 6th of 512 (on
    // a shared 2-vCPU VM a handful of scheduling delays decide the latter).
    md.push('', '## A busy main thread: 10 ms JavaScript tasks back to back while faults arrive (anon MISSING+COPY, 1 thread, random order; 8 MiB, the handler on the loop 2 MiB)', '');
    md.push('| handler | main thread | pages/s | p50 µs | p99 µs | p99 busy / idle |', '|---|---|---|---|---|---|');
    for (const v of [NATIVE_SPIN, JS, WORKER_SPIN, C]) {
      const w = { type: 'anon MISSING+COPY', memory: 'anon', mode: 'missing', zero: false, threads: 1, order: 'random', regions: v === JS ? '2M' : '8M' };
      const rows = await compare(w, [v, v === C ? { ...v, hog: true } : { ...v, busyMs: 10 }]);
      md.push(`| ${name(v)} | idle | ${fmt(rows[0].pagesPerSec)} | ${rows[0].p50.toFixed(1)} | ${rows[0].p99.toFixed(1)} | |`);
      md.push(`| ${name(v)} | ${v === C ? 'a CPU hog in another process' : 'busy (10 ms tasks)'} | ${fmt(rows[1].pagesPerSec)} | ${rows[1].p50.toFixed(1)} | ${rows[1].p99.toFixed(1)} | ${rows[1].p99Ratio.toFixed(2)}x |`);
    }
    md.push('', 'The C handler has no main thread; its second row runs a busy loop in a process of its own instead: what any handler gets on this 2-vCPU machine once one CPU is taken (the faulting thread and the handler then share the other, and either may wait for the busy one\'s time slice).');

    save();
  }

  // ---- idle CPU ----
  if (wanted('idle')) {
    log('idle CPU ...');
    md.push('', '## Idle: a served uffd with no faults for 1 s', '');
    md.push('| handler | CPU ms over 1 s | % of one CPU |', '|---|---|---|');
    for (const v of [{ style: 'none', label: 'Node with no uffd (the baseline)' }, NATIVE_SPIN, JS_SPIN, WORKER_SPIN]) {
      const r = await run(process.execPath, [path.join(root, 'bench', 'lib-handler.mjs'), '--style', v.style, '--spin', '1', '--idle-ms', '1000']);
      if (!r.json) throw new Error(`idle run failed: ${r.out}${r.err}`);
      md.push(`| ${name(v)} | ${r.json.cpuMs.toFixed(2)} | ${r.json.cpuPercent.toFixed(2)}% |`);
    }

    save();
  }

  // ---- resident memory over 1,000,000 faults ----
  if (wanted('rss')) {
    log('resident memory over many faults ...');
    const faultsPerPass = (IMAGE_MIB << 20) / 4096;
    md.push('', `## Resident memory over ${(RSS_REPEAT * faultsPerPass).toLocaleString('en')} faults (anon, 1 thread, sequential; after the first pass the peer drops its memory with MADV_DONTNEED and touches it again, ${RSS_REPEAT} passes)`, '');
    md.push('The resident set is sampled every two passes. One sample lands wherever the garbage collector happens to be (a JavaScript heap grows and shrinks by megabytes between collections), so growth compares the median of the last third of the samples with the median of the first third; the range over every sample is listed too.', '');
    md.push('| handler | faults | samples | RSS range (KiB) | median, first third (KiB) | median, last third (KiB) | growth (KiB) | pages/s (first pass) |', '|---|---|---|---|---|---|---|---|');
    for (const v of [NATIVE_SPIN, JS]) {
      const rw = { type: 'anon', memory: 'anon', mode: 'missing', zero: false, threads: 1, order: 'seq' };
      let r;
      try {
        r = await measure(rw, v, 'unpinned', { repeat: RSS_REPEAT, rssEvery: faultsPerPass * 2 });
      } catch (error) {
        log(`  ${error.message.split('\n')[0]}`);
        md.push(`| ${name(v)} | failed | | | | | | |`);
        continue;
      }
      const kib = r.handler.rss.map((s) => s.rssKiB);
      const third = Math.max(1, Math.floor(kib.length / 3));
      const early = kib.length ? median(kib.slice(0, third)) : undefined;
      const late = kib.length ? median(kib.slice(-third)) : undefined;
      const range = kib.length ? `${Math.min(...kib)}-${Math.max(...kib)}` : '-';
      md.push(`| ${name(v)} | ${r.handler.faults.toLocaleString('en')} | ${kib.length} | ${range} | ${early ?? '-'} | ${late ?? '-'} | ${early !== undefined ? late - early : '-'} | ${fmt(r.pagesPerSec)} |`);
    }

  }

  save();

  if (wanted('vcpu')) {
    log('vCPU workload ...');
    md.push(...await vcpuSection());
  }

  md.push('', `Run time: ${((Date.now() - started) / 1000).toFixed(0)} s.`, '');
  fs.writeFileSync(outFile, `${md.join('\n')}${remote}`);
  log(`wrote ${outFile} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

try {
  if (only.some((section) => section !== 'remote')) await main();
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.rmSync(image, { force: true });
}
if (wanted('remote')) {
  const out = only.length < SECTIONS.length ? ['--out', only.length === 1 ? outFile : outFile.replace(/\.md$/, '-remote.md')] : [];
  execFileSync(process.execPath, [path.join(root, 'bench', 'remote.mjs'), ...out], { stdio: 'inherit' });
}
