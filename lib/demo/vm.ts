// `npm run demo -- --vm`: the post-copy migration of lib/demo/main.ts with a
// running KVM guest as the workload. The source runs the project's VMM
// (test/fixtures/vmm) once uninterrupted for the reference result, then
// again, pausing the guest part way through its walk of memory; its vCPU
// state crosses to the destination, where a new VMM resumes the vCPU at once
// on empty memory and every page the guest touches is a vCPU fault served
// over the network (lib/demo/vm-destination.ts). Then the same done
// stop-and-copy. Needs /dev/kvm; without it the demo says why and exits 0.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { count, killAll, migrate, MiB, ms, sourceReady, start, us } from './launcher';
import type { Options } from './main';
import type { VmDestinationReport, VmDestinationSpec, VmSourceMessage, VmSourceSpec } from './messages';
import { buildVmm, kvmSkipReason } from './vmm';

// The VMM's guest pages are 4 KiB whatever the host's page size; its first 16 hold page tables and code (the fixture's README).
const GUEST_PAGE = 4096;
const RESERVED_PAGES = 16;
// The guest walks its memory twice, and is paused half way through the first walk.
const PASSES = 2;
// The VMM's own watchdog, per run: generous, since a nested guest under emulation takes milliseconds per fault.
const VMM_TIMEOUT_S = 300;

export async function runVmDemo(options: Options): Promise<number> {
  const skip = kvmSkipReason();
  if (skip) {
    process.stdout.write(`VM demo skipped: ${skip}\n`);
    return 0;
  }
  const { vmm } = buildVmm();
  const chainPages = options.size / GUEST_PAGE - RESERVED_PAGES;
  const pauseAt = Math.floor(chainPages / 2);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-vm-demo-'));
  try {
    const link = `${options.bandwidth === Infinity ? 'unlimited bandwidth' : `${options.bandwidth / 1e6} MB/s`}, ${options.latencyMs} ms one-way latency`;
    process.stdout.write(`Post-copy live migration of a running KVM guest: ${options.size / MiB} MiB of guest memory, link ${link}, ` +
      `prefetch ${options.prefetch ? 'on' : 'off'}, read-ahead ${options.readAhead} pages\n`);
    process.stdout.write(`source: the guest walks a pointer chain through all ${count(chainPages)} pages of its memory ${PASSES} times, hashing what it reads; ` +
      `running it once uninterrupted, then again, paused after ${count(pauseAt)} pages ...\n`);
    const sourceSpec: VmSourceSpec = {
      vmm, dir, size: options.size, seed: options.seed, passes: PASSES, snapshotAfter: pauseAt,
      bandwidth: options.bandwidth, latencyMs: options.latencyMs, timeoutS: VMM_TIMEOUT_S,
    };
    const source = start('vm-source.js', sourceSpec);
    const ready = await sourceReady<VmSourceMessage>(source);
    const reference = ready.reference;
    process.stdout.write(`source: uninterrupted run ${ms(reference.seconds * 1000)} of guest time, hash ${reference.hash} (host's computation ${reference.verified ? 'agrees' : 'DISAGREES'}); ` +
      `paused run: vCPU state ${count(Buffer.from(ready.state.vcpu, 'base64').length)} bytes; serving guest memory on 127.0.0.1:${ready.port}\n`);

    const base = {
      vmm, dir, port: ready.port, prefetch: options.prefetch, readAhead: options.readAhead, timeoutS: VMM_TIMEOUT_S, state: ready.state,
    } satisfies Omit<VmDestinationSpec, 'mode'>;
    const killAt = options.killSourceAt;
    const post = await migrate<VmDestinationReport>('post-copy', 'vm-destination.js', { ...base, mode: 'postcopy' } satisfies VmDestinationSpec,
      killAt === undefined ? undefined : (progress) => {
        if (progress.present * 100 >= killAt * progress.pages && source.exitCode === null && source.signalCode === null) {
          process.stdout.write(`\nkilling the source (SIGKILL) at ${(progress.present * 100 / progress.pages).toFixed(0)} % of the pages, as asked\n`);
          source.kill('SIGKILL');
        }
      });
    const stop = await migrate<VmDestinationReport>('stop-and-copy', 'vm-destination.js', { ...base, mode: 'stop-and-copy' } satisfies VmDestinationSpec);
    source.disconnect();

    const same = (report: VmDestinationReport): boolean => report.guest.hash === reference.hash && report.guest.pages === reference.pages;
    const rows: [string, string, string][] = [
      ['total time', ms(post.totalMs), ms(stop.totalMs)],
      ['downtime', ms(post.downtimeMs), ms(stop.downtimeMs)],
      ['  of it, fault read -> page in place', ms(post.handlerBlockedMs), '-'],
      ['vCPU resumed after', ms(post.switchoverMs), ms(stop.switchoverMs)],
      ['guest ran for (first KVM_RUN to done)', ms(post.guest.seconds * 1000), ms(stop.guest.seconds * 1000)],
      ['every page in guest memory after', post.transferMs === null ? 'guest done first' : ms(post.transferMs), stop.transferMs === null ? '-' : ms(stop.transferMs)],
      ['destination CPU time (handler)', ms(post.cpuMs), ms(stop.cpuMs)],
      ['pages on demand / pushed', `${count(post.progress.pagesOnDemand)} / ${count(post.progress.pagesPushed)}`, `${count(stop.progress.pagesOnDemand)} / ${count(stop.progress.pagesPushed)}`],
      ['vCPU faults (waited on the network)', `${count(post.progress.faults)} (${count(post.faultsFetched)})`, '-'],
      ['fault latency p50 / p99 / max', post.faultsFetched === 0 ? '- (none waited)' : `${us(post.faultP50Us)} / ${us(post.faultP99Us)} / ${us(post.faultMaxUs)}`, '-'],
      ['guest hash equals the uninterrupted run\'s', same(post) ? 'yes' : 'NO', same(stop) ? 'yes' : 'NO'],
      ['VMM: equals the host\'s computation', post.guest.verified ? 'yes' : 'NO', stop.guest.verified ? 'yes' : 'NO'],
    ];
    const width = Math.max(...rows.map((r) => r[0].length)) + 2;
    process.stdout.write(`\n${''.padEnd(width)}${'post-copy'.padStart(22)}${'stop-and-copy'.padStart(22)}\n`);
    for (const [name, a, b] of rows) process.stdout.write(`${name.padEnd(width)}${a.padStart(22)}${b.padStart(22)}\n`);
    process.stdout.write(
      `\ndowntime: for post-copy, the time the vCPU thread was blocked on its page faults (QEMU's postcopy blocktime), from the kernel's side: ` +
      `its wall time in the guest run neither on a CPU nor waiting for one (/proc/thread-self/schedstat, read by the VMM)` +
      `${post.guest.asleepSeconds === undefined ? ' - not available here, so the handler\'s own measure (next line) stands in for it' : ''}. ` +
      `The next line is the part from each network fault's read to its page being in place. For stop-and-copy, downtime is the copy, ` +
      `during which the guest cannot run. Faults on pages already received are served by the library's native thread.\n` +
      `uninterrupted run: ${count(reference.pages)} page visits, hash ${reference.hash}\n`);
    const ok = same(post) && same(stop) && post.guest.verified && stop.guest.verified;
    process.stdout.write(ok ? 'OK: the migrated guest finished with the uninterrupted run\'s result, post-copy and stop-and-copy.\n'
      : 'FAILED: a migrated guest\'s result differs from the uninterrupted run\'s.\n');
    return ok ? 0 : 1;
  } catch (error) {
    killAll();
    throw error;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
