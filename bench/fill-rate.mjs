// node bench/fill-rate.mjs --image FILE [--reps N]
//
// How fast serveFrom's background fill copies a whole image with no faults at
// all (background: 'now', one thread: the server's own), from a FilePageSource
// read through its file (pread into the thread's buffer: what the library
// does) and from the same source without its file (UFFDIO_COPY reads the
// mapping). The rate of the copies alone, without wake-ups or first touches.
// Prints one JSON line: median pages/s of each over the repetitions.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { FilePageSource, Mapping, Userfaultfd } = require('../dist/index.js');

const args = process.argv.slice(2);
const arg = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const imagePath = arg('--image');
const reps = Number(arg('--reps', 3));
if (!imagePath || !(reps > 0)) {
  console.error('usage: node bench/fill-rate.mjs --image FILE [--reps N]');
  process.exit(2);
}

async function fill(throughFile) {
  // A fresh source each time: the mapping has never been read by the kernel.
  const file = new FilePageSource(imagePath);
  const source = throughFile ? file : { size: file.size, pageSize: file.pageSize, bytes: file.bytes, present: null, fetch: () => Promise.resolve(), close() {} };
  const memory = Mapping.anonymous(file.size);
  const uffd = Userfaultfd.open();
  try {
    uffd.register(memory, { missing: true });
    const started = process.hrtime.bigint();
    void uffd.serveFrom(source, { background: 'now', fillThreads: 0 });
    while (uffd.stats().pagesLeft > 0) await new Promise((resolve) => setImmediate(resolve));
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    return file.size / file.pageSize / seconds;
  } finally {
    uffd.close();
    memory.unmap();
    file.close();
  }
}

const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const file = [];
const mapped = [];
for (let i = 0; i < reps; i++) {
  mapped.push(await fill(false));
  file.push(await fill(true));
}
console.log(JSON.stringify({ reps, filePagesPerSec: median(file), mappedPagesPerSec: median(mapped) }));
