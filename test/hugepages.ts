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
  const before = read('nr_hugepages');
  const free = read('free_hugepages');
  if (free >= count) return { skipReason: undefined, pageSize, restore() {} };
  try {
    fs.writeFileSync(`${dir}/nr_hugepages`, String(before + count - free));
  } catch (error) {
    return none(`cannot reserve ${count} huge pages: ${(error as Error).message} (run as root)`);
  }
  const restore = (): void => fs.writeFileSync(`${dir}/nr_hugepages`, String(before));
  if (read('free_hugepages') < count) {
    restore();
    return none(`the kernel granted only ${read('free_hugepages')} of ${count} huge pages (memory too fragmented?)`);
  }
  return { skipReason: undefined, pageSize, restore };
}
