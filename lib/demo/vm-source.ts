// `npm run demo -- --vm`, the source: runs the guest once uninterrupted (the
// reference result), then runs it again and pauses it part way, which writes
// its vCPU state and memory (the VMM's snapshot), and serves that memory to
// destinations over TCP on loopback with the link model asked for. The
// vCPU state goes to the launcher, which hands it to the destination: the
// part of a migration that has to cross before the guest can resume.
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Mapping, PageServer } from '../index';
import type { GuestResult, VmSourceMessage, VmSourceSpec } from './messages';
import { describeExit, runVmm } from './vmm';

const spec = JSON.parse(process.argv[2]!) as VmSourceSpec;
const send = (message: VmSourceMessage): void => void process.send!(message);

// The guest-physical pages below 64 KiB hold the page tables, the guest's
// code and its parameters: the first things a resumed vCPU touches.
const RESERVED_BYTES = 64 << 10;

async function main(): Promise<void> {
  const guest = ['--regions', `${spec.size / 1024}K`, '--seed', String(spec.seed), '--passes', String(spec.passes), '--progress-every', '0', '--timeout-s', String(spec.timeoutS)];
  const timeoutMs = (spec.timeoutS + 30) * 1000;
  let start = performance.now();
  const reference = await runVmm(spec.vmm, [...guest, '--verify'], timeoutMs);
  const referenceWallMs = performance.now() - start;
  if (reference.code !== 0 || reference.last?.done !== true) throw new Error(`the uninterrupted run failed: ${describeExit(reference)}`);

  const snapshotDir = path.join(spec.dir, 'source');
  start = performance.now();
  const paused = await runVmm(spec.vmm, [...guest, '--snapshot-after', String(spec.snapshotAfter), '--snapshot-dir', snapshotDir], timeoutMs);
  const ranMs = performance.now() - start;
  if (paused.code !== 0 || paused.last?.snapshot !== true) throw new Error(`the run to pause failed: ${describeExit(paused)}`);

  const memory = Mapping.file(path.join(snapshotDir, 'mem.bin'));
  const server = await PageServer.listen(memory.view(), {
    bandwidth: spec.bandwidth,
    latencyMs: spec.latencyMs,
    priority: [{ offset: 0, length: Math.min(RESERVED_BYTES, memory.length) }],
  });
  send({
    type: 'ready', port: server.port, reference: reference.last as unknown as GuestResult, referenceWallMs, ranMs,
    pausedAt: spec.snapshotAfter, chainPages: Number(reference.last.pages) / spec.passes,
    state: {
      vcpu: fs.readFileSync(path.join(snapshotDir, 'vcpu.bin')).toString('base64'),
      layout: fs.readFileSync(path.join(snapshotDir, 'layout.json'), 'utf8'),
    },
  });
  process.once('disconnect', () => void server.close().then(() => process.exit(0)));
}

main().catch((error: Error) => {
  send({ type: 'failed', message: error.message });
  process.exitCode = 1;
  process.disconnect();
});
