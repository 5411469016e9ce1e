// bench/RESULTS.md holds a whole `npm run bench`: the local part (bench/run.mjs)
// first, then the remote part (bench/remote.mjs) as its last section, after a
// marker. Each script replaces only its own part.
import fs from 'node:fs';

const MARKER = '<!-- The section below is written by bench/remote.mjs. -->';

/** The remote section of `file` as it stands (with its marker), or '' if it has none. */
export function remoteSection(file) {
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  const at = text.indexOf(MARKER);
  return at < 0 ? '' : text.slice(at);
}

/** Replaces the remote section of `file` with `report` (a markdown document, its headings moved one level down). */
export function writeRemoteSection(file, report) {
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '# Benchmark results\n';
  const at = text.indexOf(MARKER);
  const local = (at < 0 ? text : text.slice(0, at)).trimEnd();
  fs.writeFileSync(file, `${local}\n\n${MARKER}\n\n${report.replace(/^(#+) /gm, '#$1 ')}`);
}
