// Builds the C programs under test/fixtures once per test run, into build/fixtures.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { buildVmm } from '../dist/demo/vmm.js';

const root = path.join(__dirname, '..');
const out = path.join(root, 'build', 'fixtures');

/** The path of the compiled fixture `name` (test/fixtures/<name>.c), built if missing or stale. */
export function fixture(name: string): string {
  const source = path.join(__dirname, 'fixtures', `${name}.c`);
  const binary = path.join(out, name);
  // Stale when the source or a header the fixtures share is newer.
  const inputs = [source, ...fs.readdirSync(path.join(__dirname, 'fixtures')).filter((f) => f.endsWith('.h')).map((f) => path.join(__dirname, 'fixtures', f))];
  const newest = Math.max(...inputs.map((file) => fs.statSync(file).mtimeMs));
  if (!fs.existsSync(binary) || fs.statSync(binary).mtimeMs < newest) {
    fs.mkdirSync(out, { recursive: true });
    const temporary = `${binary}.${process.pid}`;
    execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-pthread', '-o', temporary, source], { stdio: 'inherit' });
    fs.renameSync(temporary, binary);
  }
  return binary;
}

/**
 * The KVM VMM fixture (test/fixtures/vmm, see its README): `vmm` and
 * `uffd_mini_handler` built into build/fixtures/vmm (lib/demo/vmm.ts builds
 * it, for the demo too; warnings fail the build).
 */
export function vmmFixture(): { vmm: string; miniHandler: string } {
  return buildVmm(path.join(out, 'vmm'));
}
