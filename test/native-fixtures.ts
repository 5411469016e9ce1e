// Builds the C programs under test/fixtures once per test run, into build/fixtures.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const root = path.join(__dirname, '..');
const out = path.join(root, 'build', 'fixtures');

/** The path of the compiled fixture `name` (test/fixtures/<name>.c), built if missing or stale. */
export function fixture(name: string): string {
  const source = path.join(__dirname, 'fixtures', `${name}.c`);
  const binary = path.join(out, name);
  if (!fs.existsSync(binary) || fs.statSync(binary).mtimeMs < fs.statSync(source).mtimeMs) {
    fs.mkdirSync(out, { recursive: true });
    const temporary = `${binary}.${process.pid}`;
    execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-pthread', '-o', temporary, source], { stdio: 'inherit' });
    fs.renameSync(temporary, binary);
  }
  return binary;
}
