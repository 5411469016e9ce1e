// Finding the programs tests and benchmarks run (util-linux's setpriv and
// unshare, nginx) by searching PATH in this process, not with `command -v`:
// busybox's sh prefers its own applets to PATH (its setpriv has no --reuid
// and no --pdeathsig), and `command -v` names those applets too.
import fs from 'node:fs';
import path from 'node:path';

/**
 * The executable file `name` on PATH (or among `extra` directories after it),
 * or undefined.
 * @param {string} name
 * @param {string[]} [extra]
 * @returns {string | undefined}
 */
export function findCommand(name, extra = []) {
  return [...(process.env.PATH ?? '').split(':'), ...extra]
    .map((dir) => path.join(dir || '.', name))
    .find((file) => {
      try {
        fs.accessSync(file, fs.constants.X_OK);
        return fs.statSync(file).isFile();
      } catch {
        return false;
      }
    });
}
