#!/usr/bin/env node
// Turns the results of scripts/test-kernels.sh (test/kernels/results/<id>/:
// run.json, uname.txt, pagesize.txt, probe.json, vitest.json) into the kernel
// matrix: markdown on stdout, or, with --write FILE, between the
// kernel-matrix markers of FILE.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const resultsDir = path.join(root, 'test', 'kernels', 'results');
const args = process.argv.slice(2);
const option = (name) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const BEGIN = '<!-- kernel-matrix:begin -->';
const END = '<!-- kernel-matrix:end -->';

const readJson = (file) => {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
};
const readText = (file) => {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
};
const versionKey = (release) => (release ?? '').split(/[^0-9]+/).filter(Boolean).slice(0, 3).map(Number);
const compareVersions = (a, b) => {
  const [x, y] = [versionKey(a), versionKey(b)];
  for (let i = 0; i < 3; i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
  return 0;
};

const SKIP = ' — skipped: ';
function skipReason(test) {
  for (const title of [test.title, ...[...(test.ancestorTitles ?? [])].reverse()]) {
    const at = title.indexOf(SKIP);
    if (at >= 0) return title.slice(at + SKIP.length);
  }
  return 'no reason given';
}

const runs = fs.existsSync(resultsDir) ? fs.readdirSync(resultsDir).map((id) => {
  const dir = path.join(resultsDir, id);
  const run = readJson(path.join(dir, 'run.json'));
  if (!run) return undefined;
  const vitest = readJson(path.join(dir, 'vitest.json'));
  const files = new Map();
  for (const file of vitest?.testResults ?? []) {
    const name = path.basename(file.name).replace(/\.test\.ts$/, '');
    const counts = { passed: 0, skipped: 0, failed: 0, reasons: new Map(), error: undefined };
    for (const test of file.assertionResults) {
      if (test.status === 'passed') counts.passed++;
      else if (test.status === 'failed') counts.failed++;
      else {
        counts.skipped++;
        const reason = skipReason(test);
        counts.reasons.set(reason, (counts.reasons.get(reason) ?? 0) + 1);
      }
    }
    // A file that failed to load has no tests but a message.
    if (file.status === 'failed' && counts.failed === 0) {
      counts.failed = 1;
      counts.error = (file.message ?? '').split('\n')[0];
    }
    files.set(name, counts);
  }
  return {
    id, run, dir,
    release: readText(path.join(dir, 'uname.txt')) ?? '?',
    pageSize: readText(path.join(dir, 'pagesize.txt')) ?? '?',
    probe: readJson(path.join(dir, 'probe.json')),
    vitest, files,
  };
}).filter(Boolean) : [];
runs.sort((a, b) => compareVersions(a.release, b.release));

function label(r) {
  return r.id === 'host' ? `host ${r.release}` : `${r.id} (${r.release})`;
}

function outcome(r) {
  if (r.run.timedOut) return `**timed out** after ${r.run.timeoutSeconds} s`;
  if (!r.vitest) return `**no test results** (exit ${r.run.exitStatus})`;
  let passed = 0;
  let skipped = 0;
  let failed = 0;
  for (const c of r.files.values()) {
    passed += c.passed;
    skipped += c.skipped;
    failed += c.failed;
  }
  return `${passed} passed, ${skipped} skipped, ${failed ? `**${failed} failed**` : '0 failed'}`;
}

const lines = [];
const commands = [...new Set(runs.map((r) => r.run.command ?? 'npm run test:kernels'))];
lines.push(`Produced by ${commands.map((c) => `\`${c}\``).join(' and ')} on this project's development machine (x86-64, 2 cores, no KVM: every kernel but the machine's own runs under qemu's software emulation, with the machine's userland), written by the script itself. Each kernel's run is bounded (\`UFFD_KERNEL_TIMEOUT\`); its raw results (with timings, which vary from run to run and are left out here) are in \`test/kernels/results/<kernel>/\`.`);
lines.push('');
lines.push('| kernel | Debian package | how it ran | run (UTC) | page size | tests |');
lines.push('|---|---|---|---|---|---|');
for (const r of runs) {
  const pkg = r.run.package ? `${r.run.package} ${r.run.packageVersion} (${r.run.suite})` : 'this machine\'s own kernel';
  lines.push(`| ${label(r)} | ${pkg} | ${r.run.qemu ? 'qemu-system-x86_64 (TCG)' : 'directly on the host'} | ${r.run.date.slice(0, 16).replace('T', ' ')} | ${r.pageSize} | ${outcome(r)} |`);
}
lines.push('');
lines.push('**Features the probe found** (`npx userfaultfd probe --json` inside each kernel; yes = `UFFDIO_API` offers it):');
lines.push('');
const featureNames = [...new Set(runs.flatMap((r) => Object.keys(r.probe?.features ?? {})))];
lines.push(`| feature | ${runs.map((r) => r.release).join(' | ')} |`);
lines.push(`|---|${runs.map(() => '---').join('|')}|`);
for (const name of featureNames) {
  lines.push(`| ${name} | ${runs.map((r) => (r.probe ? (r.probe.features[name] ? 'yes' : '**no**') : '?')).join(' | ')} |`);
}
lines.push(`| modes on anonymous memory | ${runs.map((r) => (r.probe ? Object.entries(r.probe.memory.anonymous.modes).filter(([, o]) => o.ok).map(([m]) => m).join(' ') : '?')).join(' | ')} |`);
lines.push(`| UFFDIO_MOVE into anonymous memory | ${runs.map((r) => (r.probe ? (r.probe.memory.anonymous.move?.ok ? 'yes' : '**no**') : '?')).join(' | ')} |`);
lines.push('');
lines.push('**Tests per file** (passed / skipped / failed):');
lines.push('');
const fileNames = [...new Set(runs.flatMap((r) => [...r.files.keys()]))].sort();
lines.push(`| test file | ${runs.map((r) => r.release).join(' | ')} |`);
lines.push(`|---|${runs.map(() => '---').join('|')}|`);
for (const name of fileNames) {
  lines.push(`| ${name} | ${runs.map((r) => {
    const c = r.files.get(name);
    return c ? `${c.passed} / ${c.skipped} / ${c.failed ? `**${c.failed}**` : 0}` : '–';
  }).join(' | ')} |`);
}
lines.push('');
lines.push('**Why tests were skipped**, in the probe\'s words (count of tests):');
lines.push('');
for (const r of runs) {
  const reasons = [];
  for (const [file, c] of r.files) {
    for (const [reason, count] of c.reasons) reasons.push(`${file}: ${reason} (${count})`);
    if (c.error) reasons.push(`${file}: **failed to load**: ${c.error}`);
  }
  lines.push(`- ${label(r)}: ${reasons.length ? '' : 'nothing skipped'}`);
  for (const reason of reasons) lines.push(`  - ${reason}`);
}
const markdown = `${lines.join('\n')}\n`;

const target = option('--write');
if (target) {
  const file = path.resolve(target);
  const text = fs.readFileSync(file, 'utf8');
  const begin = text.indexOf(BEGIN);
  const end = text.indexOf(END);
  if (begin < 0 || end < begin) {
    console.error(`${file} has no ${BEGIN} ... ${END} markers`);
    process.exit(2);
  }
  fs.writeFileSync(file, `${text.slice(0, begin + BEGIN.length)}\n${markdown}${text.slice(end)}`);
  console.error(`kernel matrix written into ${file} (${runs.length} kernels)`);
} else {
  process.stdout.write(markdown);
}
