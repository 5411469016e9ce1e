// npm run demo: a post-copy live migration of a running workload's memory,
// from a source process to a destination process over TCP on loopback, then
// the same migration done stop-and-copy for comparison. See docs/postcopy.md.
// With --vm the workload is a KVM guest's vCPU (lib/demo/vm.ts, docs/vm.md).
import { parseArgs } from 'node:util';
import { count, killAll, migrate, MiB, ms, sourceReady, start, us } from './launcher';
import type { DestinationReport, SourceMessage, SourceSpec } from './messages';
import { runVmDemo } from './vm';
const USAGE = `Usage: npm run demo -- [options]

  --vm                  migrate a running KVM guest instead (the project's VMM, test/fixtures/vmm): its
                        vCPU is the workload, its memory the image; needs /dev/kvm (without it the
                        demo says so and exits 0)
  --size <MiB>          memory image size (default 128; with --vm 64)
  --bandwidth <MB/s>    link bandwidth the source paces itself to, or "unlimited" (default 125, i.e. 1 Gbit/s)
  --latency <ms>        one-way link latency, added to requests and to pages (default 0.5)
  --no-prefetch         post-copy without the background push: only pages the workload touches come
                        while it runs (the rest is fetched after it, so that the memory can be compared)
  --read-ahead <pages>  pages requested after each faulting page (default 8)
  --seed <n>            seed of the generated image (default 1)
  --kill-source-at <%>  kill the source (SIGKILL) once this share of pages has reached the post-copy
                        destination, to see how a lost source is reported
  --help                this text
`;

export interface Options {
  vm: boolean;
  killSourceAt: number | undefined;
  size: number;
  bandwidth: number;
  latencyMs: number;
  prefetch: boolean;
  readAhead: number;
  seed: number;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      vm: { type: 'boolean', default: false },
      size: { type: 'string' },
      bandwidth: { type: 'string', default: '125' },
      latency: { type: 'string', default: '0.5' },
      'no-prefetch': { type: 'boolean', default: false },
      'read-ahead': { type: 'string', default: '8' },
      seed: { type: 'string', default: '1' },
      'kill-source-at': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const number = (name: string, text: string, check: (n: number) => boolean, what: string): number => {
    const n = Number(text);
    if (text.trim() === '' || !Number.isFinite(n) || !check(n)) {
      process.stderr.write(`--${name} ${text}: must be ${what}\n\n${USAGE}`);
      process.exit(64);
    }
    return n;
  };
  const size = number('size', values.size ?? (values.vm ? '64' : '128'), (n) => Number.isInteger(n) && n >= 4 && n <= 16384, 'a whole number of MiB from 4 to 16384');
  const bandwidth = values.bandwidth === 'unlimited' ? Infinity
    : number('bandwidth', values.bandwidth, (n) => n > 0, 'a positive number of MB/s, or "unlimited"') * 1e6;
  const killText = values['kill-source-at'];
  return {
    vm: values.vm,
    killSourceAt: killText === undefined ? undefined : number('kill-source-at', killText, (n) => n >= 0 && n < 100, 'a percentage from 0 to 99'),
    size: size * MiB,
    bandwidth,
    latencyMs: number('latency', values.latency, (n) => n >= 0 && n < 10_000, 'a number of milliseconds from 0 to 10000'),
    prefetch: !values['no-prefetch'],
    readAhead: number('read-ahead', values['read-ahead'], (n) => Number.isInteger(n) && n >= 0 && n <= 4096, 'a whole number of pages from 0 to 4096'),
    seed: number('seed', values.seed, (n) => Number.isInteger(n) && n >= 0 && n < 2 ** 32, 'a whole number from 0 to 2^32 - 1'),
  };
}

async function main(): Promise<number> {
  const options = parseOptions();
  if (options.vm) return runVmDemo(options);
  const link = `${options.bandwidth === Infinity ? 'unlimited bandwidth' : `${options.bandwidth / 1e6} MB/s`}, ${options.latencyMs} ms one-way latency`;
  process.stdout.write(`Post-copy live migration demo: ${options.size / MiB} MiB image, link ${link}, prefetch ${options.prefetch ? 'on' : 'off'}, read-ahead ${options.readAhead} pages\n`);
  process.stdout.write('source: generating the image and running the workload on it locally ...\n');
  const sourceSpec: SourceSpec = { size: options.size, seed: options.seed, bandwidth: options.bandwidth, latencyMs: options.latencyMs };
  const source = start('source.js', sourceSpec);
  const ready = await sourceReady<SourceMessage>(source);
  const { layout } = ready;
  process.stdout.write(
    `source: ${count(layout.orders)} orders in ${count(layout.chunks)} zlib chunks, a ${count(layout.indexCapacity)}-slot customer index, ` +
    `${count(layout.series)} sensor series; generated in ${ms(ready.generateMs)}, workload on local memory ${ms(ready.workloadMs)}; ` +
    `serving on 127.0.0.1:${ready.port}\n`);

  const base = { port: ready.port, seed: options.seed, readAhead: options.readAhead, prefetch: options.prefetch };
  const killAt = options.killSourceAt;
  const post = await migrate<DestinationReport>('post-copy', 'destination.js', { ...base, mode: 'postcopy' }, killAt === undefined ? undefined : (progress) => {
    if (progress.present * 100 >= killAt * progress.pages && source.exitCode === null && source.signalCode === null) {
      process.stdout.write(`\nkilling the source (SIGKILL) at ${(progress.present * 100 / progress.pages).toFixed(0)} % of the pages, as asked\n`);
      source.kill('SIGKILL');
    }
  });
  const stop = await migrate<DestinationReport>('stop-and-copy', 'destination.js', { ...base, mode: 'stop-and-copy' });
  source.disconnect();

  const same = (report: DestinationReport): { result: boolean; hash: boolean } => ({
    result: JSON.stringify(report.result) === JSON.stringify(ready.result),
    hash: report.hash === ready.hash,
  });
  const postSame = same(post);
  const stopSame = same(stop);
  const rows: [string, string, string][] = [
    ['total time', ms(post.totalMs), ms(stop.totalMs)],
    ['downtime', ms(post.downtimeMs), ms(stop.downtimeMs)],
    ['  of it, fault read -> page in place', ms(post.handlerBlockedMs), '-'],
    ['workload started after', ms(post.switchoverMs), ms(stop.switchoverMs)],
    ['workload ran for', ms(post.workloadMs), ms(stop.workloadMs)],
    ['every page in place after', ms(post.transferMs), ms(stop.transferMs)],
    ['destination CPU time', ms(post.cpuMs), ms(stop.cpuMs)],
    ['pages on demand / pushed', `${count(post.progress.pagesOnDemand)} / ${count(post.progress.pagesPushed)}`, `${count(stop.progress.pagesOnDemand)} / ${count(stop.progress.pagesPushed)}`],
    ['faults (waited on the network)', `${count(post.progress.faults)} (${count(post.faultsFetched)})`, '-'],
    ['fault latency p50 / p99 / max', post.progress.faults === 0 ? '- (no faults)' : `${us(post.faultP50Us)} / ${us(post.faultP99Us)} / ${us(post.faultMaxUs)}`, '-'],
    ['results equal the source\'s', postSame.result ? 'yes' : 'NO', stopSame.result ? 'yes' : 'NO'],
    ['memory sha256 equals the source\'s', postSame.hash ? 'yes' : 'NO', stopSame.hash ? 'yes' : 'NO'],
  ];
  const width = Math.max(...rows.map((r) => r[0].length)) + 2;
  process.stdout.write(`\n${''.padEnd(width)}${'post-copy'.padStart(22)}${'stop-and-copy'.padStart(22)}\n`);
  for (const [name, a, b] of rows) process.stdout.write(`${name.padEnd(width)}${a.padStart(22)}${b.padStart(22)}\n`);
  process.stdout.write(
    `\ndowntime: for post-copy, the time the workload's thread was blocked on page faults (QEMU's postcopy blocktime), from the kernel's side: ` +
    `its wall time neither on a CPU nor waiting for one (/proc/thread-self/schedstat)${post.asleepMs === null ? ' - not available here, so the next line stands in for it' : ''}. ` +
    `The next line is the part from each fault's read by the serving thread to its page being in place; the rest is faults waiting to be read. ` +
    `For stop-and-copy, downtime is the copy, during which the workload cannot run` +
    `${stop.asleepMs === null ? '' : ` (its workload, which never faults, was asleep ${ms(stop.asleepMs)}: the measure's noise)`}.\n` +
    `source's result: ${ready.result.orders} orders, revenue ${ready.result.revenueCents} cents, top city ${ready.result.topCity}, ` +
    `${ready.result.found}/${ready.result.lookups} lookups found; memory sha256 ${ready.hash}\n`);
  const ok = postSame.result && postSame.hash && stopSame.result && stopSame.hash;
  process.stdout.write(ok ? 'OK: both destinations computed the source\'s results on identical memory.\n'
    : 'FAILED: a destination\'s results or memory differ from the source\'s.\n');
  return ok ? 0 : 1;
}

main().then((code) => {
  process.exitCode = code;
}, (error: Error) => {
  process.stderr.write(`\ndemo failed: ${error.message}\n`);
  killAll();
  process.exitCode = 2;
});
