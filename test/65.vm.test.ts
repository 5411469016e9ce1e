// Real virtual machines as the faulting peer: the VMM fixture
// (test/fixtures/vmm) runs a one-vCPU KVM guest that walks a pointer chain
// through every page of its memory and hashes what it reads. A lazy restore
// hands its empty guest memory to this process over a Unix socket exactly as
// Firecracker does, and the library's page-fault handler (`userfaultfd serve`,
// run as a child process) serves every page the vCPU touches from the
// snapshot's memory file.
//
// Needs /dev/kvm (and root, or another way to a userfaultfd that receives
// kernel-mode faults); elsewhere every test here skips with the reason.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Memfd, Userfaultfd, type UffdError } from '../dist/index.js';
import { vmmFixture } from './native-fixtures';
import { describeExit, guestMemfdSkipReason, kernelFaultUffdSkipReason, kvmSkipReason, runVmm, serveSnapshot, startVmm, type PeerServed, type SnapshotHandler, type VmmExit } from './vmm';

// Two 2 MiB regions: guest-physical 0 and 1 GiB, so the memory has a gap.
// Small on purpose: nested KVM (and KVM under qemu's emulation) is slow.
const REGIONS = '2M,2M';
const TOTAL = 4 * 1024 * 1024;
const GUEST_PAGE = 4096; // the guest's page size: x86-64, whatever the host's base page size
// Every page but the 16 of the reserved area (page tables, code, stacks) holds a chain link.
const CHAIN_PAGES = TOTAL / GUEST_PAGE - 16;
const SEED = '11';
const PASSES = '2';
const SNAPSHOT_AT = 300;
const VMM_TIMEOUT_S = '60';
const TEST_TIMEOUT_MS = 120_000;

const kvmSkip = kvmSkipReason();
const restoreSkip = kvmSkip ?? kernelFaultUffdSkipReason();
const gmemSkip = kvmSkip ?? guestMemfdSkipReason();
for (const [what, reason] of [['VM tests', kvmSkip], ['lazy-restore VM tests', restoreSkip], ['guest_memfd VM tests', gmemSkip]] as const) {
  if (reason) console.warn(`${what} skipped: ${reason}`);
}

/** Does this kernel let userfaultfd register a guest_memfd mapping? (Linux 6.18, 7.2 and 7.3 refuse.) */
function guestMemfdRegisters(): { ok: true } | { ok: false; error: UffdError } {
  const memfd = Memfd.createGuestMemfd(GUEST_PAGE);
  const mapping = memfd.map();
  const uffd = Userfaultfd.open();
  try {
    uffd.register(mapping, { missing: true });
    return { ok: true };
  } catch (error) {
    return { ok: false, error: error as UffdError };
  } finally {
    uffd.close();
    mapping.unmap();
    memfd.close();
  }
}

describe.skipIf(process.arch !== 'x64')('the VMM fixture', () => {
  it('builds warning-free', () => {
    const { vmm, miniHandler } = vmmFixture();
    expect(fs.statSync(vmm).mode & 0o111).not.toBe(0);
    expect(fs.statSync(miniHandler).mode & 0o111).not.toBe(0);
  }, TEST_TIMEOUT_MS);
});

describe.skipIf(kvmSkip !== undefined)(`a KVM guest as the faulting peer${kvmSkip ? ` — skipped: ${kvmSkip}` : ''}`, () => {
  let vmm: string;
  let dir: string;
  let snapshot: string;
  let reference: VmmExit;
  let handler: SnapshotHandler | undefined;
  // Handshakes the handler refused: the VMM's must never be.
  const refused: unknown[] = [];

  const common = ['--timeout-s', VMM_TIMEOUT_S, '--progress-every', '0'];

  beforeAll(async () => {
    vmm = vmmFixture().vmm;
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-vm-'));
    snapshot = path.join(dir, 'snapshot');
    reference = await runVmm(vmm, [...common, '--regions', REGIONS, '--seed', SEED, '--passes', PASSES, '--verify']);
    const snap = await runVmm(vmm, [...common, '--regions', REGIONS, '--seed', SEED, '--passes', PASSES,
      '--snapshot-after', String(SNAPSHOT_AT), '--snapshot-dir', snapshot]);
    expect(snap.code, describeExit(snap)).toBe(0);
    expect(snap.last).toEqual({ snapshot: true, pages: SNAPSHOT_AT });
  }, TEST_TIMEOUT_MS);

  afterAll(async () => {
    await stopHandler();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    expect(refused).toEqual([]);
  });

  async function stopHandler(): Promise<void> {
    if (!handler) return;
    refused.push(...handler.refused);
    const stopped = await handler.close();
    handler = undefined;
    // Stopped by SIGTERM with no VMM left, or exited by itself before: 1 if a session had failed (the killed VMM's may have).
    expect([0, 1], stopped.stderr).toContain(stopped.code);
  }

  /** `userfaultfd serve` on a fresh socket, serving the snapshot (to `peers` VMMs, 0: until stopped). */
  async function listen(options: { prefetch?: boolean; peers?: number } = {}): Promise<{ socket: string; handler: SnapshotHandler }> {
    await stopHandler();
    const socket = path.join(dir, `fc-${Math.random().toString(36).slice(2)}.sock`);
    handler = await serveSnapshot(socket, path.join(snapshot, 'mem.bin'), options);
    return { socket, handler };
  }

  /** Restores the snapshot lazily through the handler; resolves with the VMM's exit and what the handler did for it. */
  async function lazyRestore(extra: string[], options: { prefetch?: boolean } = {}): Promise<{ exit: VmmExit; served: PeerServed }> {
    const { socket, handler: h } = await listen({ ...options, peers: 1 });
    const run = startVmm(vmm, [...common, '--restore', snapshot, '--uffd-socket', socket, '--verify', ...extra]);
    const exit = await run.exited;
    expect(exit.code, describeExit(exit)).toBe(0);
    // The VMM connected (it sends the uffd before its first KVM_RUN), so the handler knows it.
    const served = await h.served(run.pid);
    // One peer gone with every fault served: the command exits 0 by itself.
    const stopped = await h.exited;
    expect(stopped.code, stopped.stderr).toBe(0);
    return { exit, served };
  }

  it('an uninterrupted run: the guest walks every page of two regions with a gap and its hash matches the host\'s computation', () => {
    expect(reference.code, describeExit(reference)).toBe(0);
    expect(reference.last).toMatchObject({ done: true, pages: 2 * CHAIN_PAGES, verified: true, memory: 'anon', regions: 2 });
    expect(reference.last!.hash).toBe(reference.last!.expectedHash);
  });

  it('memfd-backed guest memory gives the same result', async () => {
    const run = await runVmm(vmm, [...common, '--regions', REGIONS, '--seed', SEED, '--passes', PASSES, '--memory', 'memfd', '--verify']);
    expect(run.code, describeExit(run)).toBe(0);
    expect(run.last).toMatchObject({ done: true, verified: true, memory: 'memfd', hash: reference.last!.hash });
  }, TEST_TIMEOUT_MS);

  it('snapshot files: vCPU state, the regions back to back in mem.bin, and their layout', () => {
    expect(fs.statSync(path.join(snapshot, 'mem.bin')).size).toBe(TOTAL);
    expect(JSON.parse(fs.readFileSync(path.join(snapshot, 'layout.json'), 'utf8'))).toEqual([
      { gpa: 0, size: TOTAL / 2, offset: 0 },
      { gpa: 1024 * 1024 * 1024, size: TOTAL / 2, offset: TOTAL / 2 },
    ]);
    expect(fs.readFileSync(path.join(snapshot, 'vcpu.bin')).subarray(0, 8).toString()).toBe('UFVMMSN1');
  });

  it('an eager restore (mem.bin read into guest memory) finishes with the uninterrupted run\'s hash', async () => {
    const run = await runVmm(vmm, [...common, '--restore', snapshot, '--verify']);
    expect(run.code, describeExit(run)).toBe(0);
    expect(run.last).toMatchObject({ done: true, verified: true, hash: reference.last!.hash });
  }, TEST_TIMEOUT_MS);

  describe.skipIf(restoreSkip !== undefined)(`lazy restore${restoreSkip ? ` — skipped: ${restoreSkip}` : ''}`, () => {
    it('Firecracker-style: empty anonymous memory, every page the vCPU touches served on demand, same hash as the uninterrupted run', async () => {
      const { exit, served } = await lazyRestore([]);
      expect(exit.last).toMatchObject({ done: true, verified: true, hash: reference.last!.hash, pages: 2 * CHAIN_PAGES });
      expect(served.error).toBeUndefined();
      // Pass 2 reads every chain page, each faulting once; the vCPU also
      // needs a few reserved pages (page tables, code, parameters, stack).
      expect(served.faults).toBeGreaterThanOrEqual(CHAIN_PAGES);
      expect(served.faults).toBeLessThanOrEqual(CHAIN_PAGES + 16);
      expect(served.pagesOnDemand + served.eexist).toBe(served.faults);
      expect(served.pagesPushed).toBe(0);
    }, TEST_TIMEOUT_MS);

    it('with prefetch: the pages nobody asked for are pushed, and the result is the same', async () => {
      const { exit, served } = await lazyRestore([], { prefetch: true });
      expect(exit.last).toMatchObject({ done: true, verified: true, hash: reference.last!.hash });
      expect(served.error).toBeUndefined();
      expect(served.pagesPushed).toBeGreaterThan(0);
      expect(served.faults).toBeLessThan(CHAIN_PAGES + 16);
    }, TEST_TIMEOUT_MS);

    it('balloon: pages already served and then dropped (MADV_DONTNEED) read as zeros when the guest touches them again', async () => {
      const { exit, served } = await lazyRestore(['--balloon-after', '200', '--balloon-pages', '16']);
      // The VMM checks the guest's hash against its own computation with those 16 pages zero.
      expect(exit.last).toMatchObject({ done: true, verified: true, balloonPages: 16, balloonZeroPages: 16 });
      expect(exit.last!.hash).not.toBe(reference.last!.hash);
      expect(served.error).toBeUndefined();
      expect(served.removes).toBeGreaterThan(0);
      expect(served.zeroPages).toBe(16);
    }, TEST_TIMEOUT_MS);

    it('a VMM killed mid-restore is reported, and the handler goes on serving its other peer', async () => {
      const { socket, handler: h } = await listen({ peers: 2 });
      const args = [...common, '--restore', snapshot, '--uffd-socket', socket, '--verify'];
      // The first progress report after the restore point: the vCPU is running
      // on lazily served memory, with most of its pages still to come.
      const victim = startVmm(vmm, [...args, '--progress-every', '64'], {
        onLine: (line) => {
          if ('progress' in line) victim.kill('SIGKILL');
        },
      });
      const survivor = startVmm(vmm, args);
      const killed = await victim.exited;
      expect(killed.signal, describeExit(killed)).toBe('SIGKILL');
      const victimResult = await h.served(victim.pid);
      expect(victimResult.pid).toBe(victim.pid);
      expect(victimResult.faults).toBeGreaterThan(0);
      expect(victimResult.faults).toBeLessThan(CHAIN_PAGES);
      // Its end is reported; a fault in flight when the VMM died as ESRCH.
      expect(victimResult.end).toMatch(/exited|hangup|failed/);
      if (victimResult.error) expect(victimResult.error).toMatch(/ESRCH/);
      const finished = await survivor.exited;
      expect(finished.code, describeExit(finished)).toBe(0);
      expect(finished.last).toMatchObject({ done: true, verified: true, hash: reference.last!.hash });
      const survivorResult = await h.served(survivor.pid);
      expect(survivorResult.error).toBeUndefined();
      expect(survivorResult.faults).toBeGreaterThanOrEqual(CHAIN_PAGES);
      expect(h.active).toBe(0);
      // Both peers gone: the command exits by itself, 1 if the killed VMM left a fault unserved.
      const stopped = await h.exited;
      expect(stopped.code, stopped.stderr).toBe(victimResult.error ? 1 : 0);
    }, TEST_TIMEOUT_MS);
  });

  describe.skipIf(gmemSkip !== undefined)(`guest_memfd-backed guests${gmemSkip ? ` — skipped: ${gmemSkip}` : ''}`, () => {
    it('run on guest_memfd memory (KVM_CREATE_GUEST_MEMFD with MMAP | INIT_SHARED, KVM_SET_USER_MEMORY_REGION2) with the same result', async () => {
      const run = await runVmm(vmm, [...common, '--regions', REGIONS, '--seed', SEED, '--passes', PASSES, '--memory', 'guest_memfd', '--verify']);
      expect(run.code, describeExit(run)).toBe(0);
      expect(run.last).toMatchObject({ done: true, verified: true, memory: 'guest_memfd', hash: reference.last!.hash });
    }, TEST_TIMEOUT_MS);

    it('an eager restore into guest_memfd memory (mem.bin written through the host mapping) finishes with the same hash', async () => {
      const run = await runVmm(vmm, [...common, '--restore', snapshot, '--memory', 'guest_memfd', '--verify']);
      expect(run.code, describeExit(run)).toBe(0);
      expect(run.last).toMatchObject({ done: true, verified: true, memory: 'guest_memfd', hash: reference.last!.hash });
    }, TEST_TIMEOUT_MS);

    it('a lazy restore into guest_memfd is not possible: the kernel refuses the registration, or the vCPU bypasses userfaultfd', async () => {
      const registers = guestMemfdRegisters();
      const { socket, handler: h } = await listen();
      const started = startVmm(vmm, [...common, '--restore', snapshot, '--memory', 'guest_memfd', '--uffd-socket', socket]);
      const run = await started.exited;
      if (!registers.ok) {
        // Linux 6.18, 7.2, 7.3: UFFDIO_REGISTER answers EINVAL, and the library says why.
        expect(registers.error.code).toBe('EINVAL');
        expect(registers.error.message).toMatch(/lacks userfaultfd support for guest_memfd/);
        expect(run.code, describeExit(run)).toBe(3);
        expect(run.last).toEqual({ error: 'uffd-register-guest_memfd', errno: 22 });
        return;
      }
      // A kernel that registers guest_memfd mappings still never reports the
      // vCPU's own accesses: KVM takes guest_memfd pages directly
      // (kvm_gmem_get_pfn), so the guest reads zeros and fails, and the
      // handler sees no fault at all.
      expect(run.stderr).toMatch(/UFFDIO_REGISTER accepted guest_memfd/);
      expect(run.code, describeExit(run)).toBe(1);
      expect((await h.served(started.pid)).faults).toBe(0);
    }, TEST_TIMEOUT_MS);
  });
});
