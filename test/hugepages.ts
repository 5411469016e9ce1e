// Huge pages for tests: none are reserved on these machines. As root, a test
// file adds the pages it needs to the pool for as long as it runs and takes
// them back after. Test files run in parallel processes and the pool is one
// sysctl, so every change is relative (add count, later subtract it) and made
// under a lock: setting an absolute value, or using pages another file
// reserved, lets one file's restore pull the pages from under another.
import fs from 'node:fs';

export interface HugePageReservation {
  /** Why the tests that need huge pages cannot run, or undefined when they can. */
  skipReason: string | undefined;
  pageSize: number;
  restore(): void;
}

const LOCK = '/tmp/userfaultfd-tests-hugepages.lock';
const pause = new Int32Array(new SharedArrayBuffer(4));

// A directory as a lock between processes; a lock whose holder has died is broken.
function locked<T>(work: () => T): T {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      fs.mkdirSync(LOCK);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      let holder = 0;
      try {
        holder = Number(fs.readFileSync(`${LOCK}/pid`, 'utf8'));
      } catch {
        // Being created or removed right now.
      }
      if (holder > 0 && !fs.existsSync(`/proc/${holder}`)) fs.rmSync(LOCK, { recursive: true, force: true });
      if (Date.now() > deadline) throw new Error(`${LOCK} held for 30 s (by pid ${holder})`);
      Atomics.wait(pause, 0, 0, 5);
    }
  }
  try {
    fs.writeFileSync(`${LOCK}/pid`, String(process.pid));
    return work();
  } finally {
    fs.rmSync(LOCK, { recursive: true, force: true });
  }
}

export function reserveHugePages(count: number, pageSize = 2 * 1024 * 1024): HugePageReservation {
  const dir = `/sys/kernel/mm/hugepages/hugepages-${pageSize / 1024}kB`;
  const none = (skipReason: string): HugePageReservation => ({ skipReason, pageSize, restore() {} });
  if (!fs.existsSync(dir)) return none(`this kernel has no ${pageSize / 1024} kB huge pages (${dir} is missing)`);
  const read = (file: string): number => Number(fs.readFileSync(`${dir}/${file}`, 'utf8'));
  const adjust = (delta: number): void => fs.writeFileSync(`${dir}/nr_hugepages`, String(Math.max(0, read('nr_hugepages') + delta)));
  return locked(() => {
    const before = read('nr_hugepages');
    try {
      adjust(count);
    } catch (error) {
      return none(`cannot reserve ${count} huge pages: ${(error as Error).message} (run as root)`);
    }
    const granted = read('nr_hugepages') - before;
    let restored = false;
    const restore = (): void => {
      if (restored) return;
      restored = true;
      locked(() => adjust(-granted));
    };
    // A test process that ends without its afterAll (a crash, a worker that
    // is torn down) still gives the pages back; only SIGKILL leaves them.
    process.once('exit', restore);
    if (granted < count) {
      restore();
      return none(`the kernel granted only ${granted} of ${count} huge pages (memory too fragmented?)`);
    }
    return { skipReason: undefined, pageSize, restore };
  });
}
