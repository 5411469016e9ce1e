#!/usr/bin/env node
// npx userfaultfd <command>: probe (what this host supports) and serve (a
// Firecracker-compatible page-fault handler).
import { formatProbe, probe } from './probe';

const USAGE = `usage: userfaultfd probe [--json]
       userfaultfd serve --socket PATH --mem-file FILE [--prefetch] [--quiet]`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'probe') {
    const report = probe();
    process.stdout.write(rest.includes('--json') ? `${JSON.stringify(report, null, 2)}\n` : `${formatProbe(report)}\n`);
    return 0;
  }
  if (command === 'serve') {
    const { serveCommand } = await import('./serve-command.js');
    return serveCommand(rest);
  }
  process.stderr.write(`${USAGE}\n`);
  return command === undefined || command === '--help' || command === '-h' ? 0 : 2;
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (error: unknown) => {
    process.stderr.write(`userfaultfd: ${(error as Error).message ?? String(error)}\n`);
    process.exitCode = 1;
  },
);
