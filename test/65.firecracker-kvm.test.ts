// The real thing, where /dev/kvm exists: a KVM VMM (fixtures/vmm, Firecracker's
// restore path: anonymous guest memory registered MISSING with EVENT_REMOVE,
// the uffd sent in Firecracker's format) restores a snapshot lazily, and
// `userfaultfd serve` serves its vCPU's faults. The guest walks every page and
// checks a hash; the balloon run removes pages it has read, which must come
// back as zeros.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = path.join(__dirname, '..');
const cli = path.join(root, 'dist', 'cli.js');
const noKvm = fs.existsSync('/dev/kvm') ? undefined : 'this host has no /dev/kvm';
if (noKvm) console.warn(`skipping the KVM lazy-restore tests: ${noKvm}`);

function run(file: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

const lastJson = (text: string): Record<string, unknown> => JSON.parse(text.trim().split('\n').at(-1)!) as Record<string, unknown>;

describe.skipIf(noKvm)(`lazy restore of a KVM guest through \`userfaultfd serve\`${noKvm ? ` — skipped: ${noKvm}` : ''}`, () => {
  let dir: string;
  let vmm: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-kvm-'));
    const out = path.join(root, 'build', 'fixtures', 'vmm');
    execFileSync('make', ['-s', '-C', path.join(__dirname, 'fixtures', 'vmm'), `OUT=${out}`], { stdio: 'inherit' });
    vmm = path.join(out, 'vmm');
    const snapshot = execFileSync(vmm, ['--timeout-s', '120', '--seed', '42', '--passes', '2', '--regions', '32M,32M',
      '--snapshot-after', '5000', '--snapshot-dir', path.join(dir, 'snap')], { encoding: 'utf8' });
    expect(lastJson(snapshot)).toMatchObject({ snapshot: true });
  }, 120_000);
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const [name, extra] of [['every page', []], ['balloon: 256 pages removed and read again as zeros', ['--balloon-after', '3000', '--balloon-pages', '256']]] as [string, string[]][]) {
    it(`serves the vCPU's faults from the snapshot (${name}); the guest verifies its memory and the command exits 0`, async () => {
      const socket = path.join(dir, `${extra.length}.sock`);
      const serve = run(process.execPath, [cli, 'serve', '--socket', socket, '--mem-file', path.join(dir, 'snap', 'mem.bin'), '--connect-timeout', '60']);
      const guest = await run(vmm, ['--timeout-s', '120', '--restore', path.join(dir, 'snap'), '--uffd-socket', socket, '--verify', ...extra]);
      expect(guest.code, guest.stderr).toBe(0);
      expect(lastJson(guest.stdout)).toMatchObject({ done: true, verified: true });
      const served = await serve;
      expect(served.code, served.stderr).toBe(0);
      expect(served.stdout).toMatch(/^peer \d+ exited: faults \d+/m);
    }, 180_000);
  }
});
