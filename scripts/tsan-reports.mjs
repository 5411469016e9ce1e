// Picks the addon's own reports out of ThreadSanitizer logs (test:sanitize:thread).
//
// node is not built with ThreadSanitizer, so libtsan sees only what its
// interceptors see of it (malloc, free, pthread_*): V8's and libuv's own
// synchronisation through atomics is invisible and shows up as races inside
// node, some of them with the addon further down the stack (V8 starting a job
// while the addon defines a class). Those are not findings about this code.
// A report is the addon's when, for one of its two accesses, the first frame
// outside libtsan is in userfaultfd.node: the racing load or store (or the
// memcpy / free it called) was the addon's.
//
//   node scripts/tsan-reports.mjs <log>...   prints the addon's reports, exits 1 if any
import { readFileSync } from 'node:fs';

const ownFrame = /\(userfaultfd\.node\+0x[0-9a-f]+\)$/;
const tsanFrame = /\(libtsan\.so[^)]*\)$/;

function accessIsOurs(lines) {
  for (const line of lines) {
    if (!/^\s+#\d+ /.test(line)) continue;
    if (tsanFrame.test(line)) continue;
    return ownFrame.test(line);
  }
  return false;
}

export function addonReports(text) {
  const reports = text.split(/^={18}$/m).filter((r) => r.includes('WARNING: ThreadSanitizer'));
  return reports.filter((report) => {
    // Each access starts with a line like "  Write of size 8 at ... by thread T5:"
    // or "  Previous atomic read of size 1 at ... by main thread ...:", and its
    // frames follow up to the next blank line.
    const blocks = report.split(/\n\s*\n/);
    return blocks.some((block) => {
      const [head, ...frames] = block.trim().split('\n');
      return / of size \d+ at /.test(head ?? '') && accessIsOurs(frames);
    });
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  let found = 0;
  for (const file of process.argv.slice(2)) {
    for (const report of addonReports(readFileSync(file, 'utf8'))) {
      found++;
      process.stdout.write(`== ${file}\n${report.trim()}\n`);
    }
  }
  process.exit(found > 0 ? 1 : 0);
}
