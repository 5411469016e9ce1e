// Unprivileged use: as root, each test runs its fixture as uid/gid 65534
// (setpriv); as any other user, directly. What the kernel allows depends on
// vm.unprivileged_userfaultfd and on /dev/userfaultfd's permissions, so each
// test states what it needs and skips, saying why, where that is not so.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SLOWDOWN } from './helpers';
import { findCommand } from './support/commands.mjs';

const NOBODY = 65534;
const root = process.getuid!() === 0;
const fixture = path.join(__dirname, 'fixtures', 'unprivileged.cjs');
const sysctl = (() => {
  try {
    return fs.readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim();
  } catch {
    return 'absent';
  }
})();
const SETPRIV = findCommand('setpriv');
const UNSHARE = findCommand('unshare');

/** Why this process cannot run fixtures unprivileged, or undefined when it can. */
function cannotDropPrivileges(): string | undefined {
  if (!root) return undefined; // already unprivileged
  if (!SETPRIV) return 'setpriv (util-linux) is not installed';
  // The unprivileged user must be able to read node, this checkout and its build.
  const probe = spawnSync(SETPRIV, [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, '-e', `require(${JSON.stringify(path.join(__dirname, '..', 'dist', 'index.js'))})`]);
  if (probe.error) return `setpriv could not be run (${probe.error.message})`;
  if (probe.status !== 0) return `setpriv --reuid=${NOBODY} could not load the library from this checkout (${probe.stderr.toString().trim().split('\n')[0]}); setpriv must be util-linux's, and the checkout readable to others`;
  return undefined;
}

/** Whether an unprivileged user may open a uffd without UFFD_USER_MODE_ONLY here, and why. */
function unprivilegedMayOpen(): string | undefined {
  if (sysctl === '1') return 'vm.unprivileged_userfaultfd is 1';
  if (!root) {
    try {
      fs.accessSync('/dev/userfaultfd', fs.constants.R_OK | fs.constants.W_OK);
      return 'this user has read-write access to /dev/userfaultfd';
    } catch {
      return undefined;
    }
  }
  const device = fs.statSync('/dev/userfaultfd', { throwIfNoEntry: false });
  if (device && (device.mode & 0o006) === 0o006) return '/dev/userfaultfd is read-write for everyone';
  return undefined;
}

const dropReason = cannotDropPrivileges();
if (dropReason) console.warn(`skipping the unprivileged tests: ${dropReason}`);

function runUnprivileged(mode: string, wrap: string[] = []): Record<string, unknown> {
  const command = [process.execPath, fixture, mode];
  const argv = root ? [...wrap, SETPRIV!, `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...command] : command;
  const out = execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 30_000 * SLOWDOWN, cwd: os.tmpdir() });
  return JSON.parse(out.trim().split('\n').pop()!) as Record<string, unknown>;
}

describe.skipIf(dropReason)('unprivileged use', () => {
  const mayOpen = unprivilegedMayOpen();
  if (mayOpen) console.warn(`skipping the denied-open test: ${mayOpen}, so open() is not refused`);

  it.skipIf(mayOpen)('a refused open() names the sysctl, /dev/userfaultfd and UFFD_USER_MODE_ONLY, and user-mode-only still opens', () => {
    const out = runUnprivileged('denied');
    expect(out.uid).not.toBe(0);
    const error = out.open as { code: string; errno: number; syscall: string; message: string };
    expect(error).toMatchObject({ code: 'EPERM', errno: -1, syscall: 'userfaultfd' });
    expect(error.message).toContain('the syscall (EPERM)');
    // The device was tried too, and why it failed is named.
    expect(error.message).toMatch(/\/dev\/userfaultfd \((EACCES|ENOENT|EPERM)\)/);
    expect(error.message).toContain('vm.unprivileged_userfaultfd=1');
    expect(error.message).toContain('read-write access to /dev/userfaultfd');
    expect(error.message).toContain('{ userModeOnly: true }');
    expect(error.message).toContain('UFFD_USER_MODE_ONLY');
    expect(out.userModeOnly).toBe('syscall');
  });

  it('user-mode-only: user-space faults are served, a read(2) into a missing page gets EFAULT', () => {
    const out = runUnprivileged('user-mode-only');
    expect(out.uid).not.toBe(0);
    // Two pages touched by the worker, served with 3s; the kernel's own access
    // (read(2) copying into page 3) is not reported and fails instead.
    expect(out).toMatchObject({ sum: 2 * 3, served: 2, readError: 'EFAULT' });
  });

  const noDevice = !root ? 'needs root to grant /dev/userfaultfd to another user in a private mount namespace'
    : !UNSHARE ? 'unshare (util-linux) is not installed'
    : spawnSync(UNSHARE, ['--mount', 'true']).status !== 0 ? 'cannot make a mount namespace here (no CAP_SYS_ADMIN, as in a container)'
    : !fs.existsSync('/dev/userfaultfd') ? 'this kernel has no /dev/userfaultfd (Linux 6.1+)'
    : undefined;
  if (noDevice) console.warn(`skipping the /dev/userfaultfd test: ${noDevice}`);

  it.skipIf(noDevice)('with read-write access to /dev/userfaultfd, open() opens through the device', () => {
    // The device node is granted to the user only inside a private mount
    // namespace: a copy of it, owned by that user, bind-mounted over the original.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-dev-'));
    try {
      const { rdev } = fs.statSync('/dev/userfaultfd');
      const [major, minor] = [Math.floor(rdev / 256) & 0xfff, (rdev & 0xff) | ((rdev >> 12) & ~0xff)];
      const node = path.join(dir, 'userfaultfd');
      const script = `mknod ${node} c ${major} ${minor} && chown ${NOBODY}:${NOBODY} ${node} && chmod 600 ${node} && mount --bind ${node} /dev/userfaultfd && exec "$@"`;
      const out = runUnprivileged('open', [UNSHARE!, '--mount', '--propagation', 'private', 'sh', '-c', script, 'sh']);
      expect(out).toMatchObject({ openedWith: sysctl === '1' ? 'syscall' : 'device', sum: 2 * 3, served: 2 });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    expect(fs.statSync('/dev/userfaultfd').uid).toBe(0); // the host's node is untouched
  });
});
