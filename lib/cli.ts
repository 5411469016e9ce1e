#!/usr/bin/env node
// npx userfaultfd <command>: probe (what this host supports) and serve (a
// Firecracker-compatible page-fault handler).
import { parseArgs } from 'node:util';
import { formatProbe, probe } from './probe';

const USAGE = `usage: userfaultfd probe [--json]
       userfaultfd serve --socket PATH (--mem-file FILE | --mem-url URL) [--prefetch] [--peers N] [--on-failure kill|sigbus] [--quiet] [--json]
       (userfaultfd serve --help for every option)`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'probe') {
    let values;
    try {
      ({ values } = parseArgs({ args: rest, options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false }));
    } catch (error) {
      process.stderr.write(`userfaultfd probe: ${(error as Error).message}\n${USAGE}\n`);
      return 2;
    }
    if (values.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    const report = probe();
    process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatProbe(report)}\n`);
    return 0;
  }
  if (command === 'serve') {
    const { serveCommand, SERVE_USAGE } = await import('./serve-command.js');
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(`${SERVE_USAGE}\n`);
      return 0;
    }
    return serveCommand(rest);
  }
  if (command === '--help' || command === '-h') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  process.stderr.write(`userfaultfd: ${command === undefined ? 'no command given' : `unknown command '${command}'`}\n${USAGE}\n`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (error: unknown) => {
    process.stderr.write(`userfaultfd: ${(error as Error).message ?? String(error)}\n`);
    process.exitCode = 1;
  },
);
