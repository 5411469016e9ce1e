// Huge pages for tests: none are reserved on these machines. As root, a test
// file raises the reservation for as long as it runs and restores it after.
import fs from 'node:fs';

export interface HugePageReservation {
  /** Why the tests that need huge pages cannot run, or undefined when they can. */
  skipReason: string | undefined;
  pageSize: number;
  restore(): void;
}

export function reserveHugePages(count: number, pageSize = 2 * 1024 * 1024): HugePageReservation {
  const dir = `/sys/kernel/mm/hugepages/hugepages-${pageSize / 1024}kB`;
  const none = (skipReason: string): HugePageReservation => ({ skipReason, pageSize, restore() {} });
  if (!fs.existsSync(dir)) return none(`this kernel has no ${pageSize / 1024} kB huge pages (${dir} is missing)`);
  const read = (file: string): number => Number(fs.readFileSync(`${dir}/${file}`, 'utf8'));
  // Test files run in parallel and each reserves its own pages: always add
  // `count` and take back only what was added, so that one file's restore
  // never takes pages another file still counts on.
  const before = read('nr_hugepages');
  try {
    fs.writeFileSync(`${dir}/nr_hugepages`, String(before + count));
  } catch (error) {
    return none(`cannot reserve ${count} huge pages: ${(error as Error).message} (run as root)`);
  }
  const added = read('nr_hugepages') - before;
  let restored = false;
  const restore = (): void => {
    if (restored) return;
    restored = true;
    fs.writeFileSync(`${dir}/nr_hugepages`, String(Math.max(0, read('nr_hugepages') - added)));
  };
  if (added < count) {
    restore();
    return none(`the kernel granted only ${added} of ${count} huge pages (memory too fragmented?)`);
  }
  return { skipReason: undefined, pageSize, restore };
}
