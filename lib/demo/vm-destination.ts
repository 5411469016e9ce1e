// `npm run demo -- --vm`, the destination. Post-copy: connect to the source,
// take the paused vCPU's state, and resume it at once in a new VMM process
// whose guest memory is empty anonymous memory registered with userfaultfd
// (the VMM hands its uffd over a Unix socket, in Firecracker's format). The
// vCPU's faults are served from the source through a PostcopyDestination,
// which also installs the pages pushed in the background as they land.
// Stop-and-copy: receive every page first, then restore the VMM from them.
// Either way the VMM checks the guest's result against the host's own
// computation (--verify), and the launcher compares it with the source's.
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { PostcopyDestination, UnixServer, Userfaultfd, receiveHandshake, type UffdError } from '../index';
import { connectDestination, type GuestResult, type VmDestinationMessage, type VmDestinationReport, type VmDestinationSpec } from './messages';
import { describeExit, startVmm, type VmmExit, type VmmRun } from './vmm';

const spec = JSON.parse(process.argv[2]!) as VmDestinationSpec;
const send = (message: VmDestinationMessage): void => void process.send!(message);

async function main(): Promise<void> {
  let destination: PostcopyDestination | undefined;
  let uffd: Userfaultfd | undefined;
  let vmm: VmmRun | undefined;
  let server: UnixServer | undefined;
  const { start, cpuAtStart, client, progress, ticker } = await connectDestination(spec, send, () => destination);
  const cleanup = (): void => {
    clearInterval(ticker);
    vmm?.kill();
    server?.close();
    destination?.close();
    uffd?.close();
    client.close();
  };

  const dir = path.join(spec.dir, spec.mode);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'vcpu.bin'), Buffer.from(spec.state.vcpu, 'base64'));
  fs.writeFileSync(path.join(dir, 'layout.json'), spec.state.layout);
  const vmmArgs = ['--restore', dir, '--verify', '--progress-every', '0', '--timeout-s', String(spec.timeoutS)];
  const timeoutMs = (spec.timeoutS + 30) * 1000;

  let switchoverMs: number;
  let transferMs: number | null = null;
  let exit: VmmExit;
  try {
    if (spec.mode === 'postcopy') {
      const socket = path.join(dir, 'uffd.sock');
      server = UnixServer.listen(socket);
      switchoverMs = performance.now() - start;
      vmm = startVmm(spec.vmm, [...vmmArgs, '--uffd-socket', socket], { timeoutMs });
      const gone = vmm.exited.then((early) => {
        throw new Error(`the VMM exited before handing over its userfaultfd: ${describeExit(early)}`);
      });
      const connection = await Promise.race([server.accept(), gone]);
      if (!connection) throw new Error('the socket closed before the VMM connected');
      const handshake = await Promise.race([receiveHandshake(connection, { sourceSize: client.size }), gone]);
      if (handshake.regions.length !== 1 || handshake.regions[0]!.offset !== 0 || handshake.regions[0]!.size !== client.size) {
        throw new Error(`expected one region covering the whole image, the VMM sent ${JSON.stringify(handshake.regions.map((r) => ({ ...r, base: `0x${r.base.toString(16)}` })))}`);
      }
      const region = handshake.regions[0]!;
      // The VMM enabled exactly EVENT_REMOVE, as Firecracker does.
      uffd = Userfaultfd.fromFd(handshake.uffdFd, { features: ['EVENT_REMOVE'], ranges: [{ address: region.base, length: region.size, pageSize: region.pageSize }] });
      // A page the source can no longer send is poisoned: the VMM fails
      // visibly instead of its guest reading made-up zeros.
      destination = new PostcopyDestination(uffd, { address: region.base, length: region.size }, client, { readAhead: spec.readAhead, failure: 'poison' });
      // Pages still on their way when the guest finishes are not needed any more:
      // the end of the VMM, not the last page, ends the migration.
      destination.complete.then(() => (transferMs = performance.now() - start), () => {});
      exit = await vmm.exited;
      connection.close();
    } else {
      await client.complete;
      transferMs = switchoverMs = performance.now() - start;
      fs.writeFileSync(path.join(dir, 'mem.bin'), client.bytes);
      vmm = startVmm(spec.vmm, vmmArgs, { timeoutMs });
      exit = await vmm.exited;
    }
  } catch (error) {
    const e = error as UffdError;
    send({ type: 'failed', code: e.code ?? 'ERR_DEMO', message: e.message, progress: progress() });
    cleanup();
    process.exitCode = 2;
    return;
  }
  const totalMs = performance.now() - start;
  const cpu = process.cpuUsage(cpuAtStart);
  if (exit.code !== 0 || exit.last?.done !== true) {
    const why = destination?.error ? ` (${destination.error.message})` : '';
    send({ type: 'failed', code: destination?.error?.code ?? 'ERR_DEMO_VMM', message: `the restored VMM failed${why}: ${describeExit(exit)}`, progress: progress() });
    cleanup();
    process.exitCode = 2;
    return;
  }
  const guest = exit.last as unknown as GuestResult;
  const latency = destination?.stats.latency;
  const report: VmDestinationReport = {
    mode: spec.mode, guest, totalMs, switchoverMs, transferMs, cpuMs: (cpu.user + cpu.system) / 1000,
    downtimeMs: destination ? (guest.asleepSeconds ?? destination.stats.blockedMs / 1000) * 1000 : switchoverMs,
    handlerBlockedMs: destination?.stats.blockedMs ?? 0,
    progress: progress(),
    faultsFetched: destination?.stats.faultsFetched ?? 0,
    faultP50Us: latency?.percentile(50) ?? 0, faultP99Us: latency?.percentile(99) ?? 0, faultMaxUs: latency?.maxUs ?? 0,
  };
  send({ type: 'done', report });
  cleanup();
  process.disconnect();
}

main().catch((error: Error & { code?: string }) => {
  send({ type: 'failed', code: error.code ?? 'ERR_DEMO', message: error.message, progress: { pages: 0, pageSize: 0, present: 0, installed: 0, pagesOnDemand: 0, pagesPushed: 0, bytes: 0, elapsedMs: 0, faults: 0, faultP50Us: 0, faultP99Us: 0, blockedMs: 0 } });
  process.exitCode = 1;
  process.disconnect();
});
