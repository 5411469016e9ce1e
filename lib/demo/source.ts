// The demo's source process: generates the image, runs the workload on it
// once (the reference result, and the time it takes with all memory local),
// then serves it to destinations over TCP on loopback with the link model
// asked for. It reports to the launcher over the IPC channel and exits when
// the launcher goes away.
import { performance } from 'node:perf_hooks';
import { Mapping, PageServer, systemPageSize } from '../index';
import { generate, hashImage, runWorkload } from './image';
import type { SourceMessage, SourceSpec } from './messages';

const spec = JSON.parse(process.argv[2]!) as SourceSpec;
const send = (message: SourceMessage): void => void process.send!(message);

async function main(): Promise<void> {
  const memory = Mapping.anonymous(spec.size);
  const image = memory.view();
  let start = performance.now();
  const layout = generate(image, spec.seed, systemPageSize());
  const generateMs = performance.now() - start;
  start = performance.now();
  const result = runWorkload(image, spec.seed);
  const workloadMs = performance.now() - start;
  start = performance.now();
  const hash = hashImage(image);
  const hashMs = performance.now() - start;
  const server = await PageServer.listen(image, {
    bandwidth: spec.bandwidth,
    latencyMs: spec.latencyMs,
    checksum: Buffer.from(hash, 'hex'),
    // The header and chunk directory are what every run of the workload reads first.
    priority: [{ offset: 0, length: layout.indexOffset }],
    onSession: (session) => session.once('end', (stats, error) => send({ type: 'session', stats, error: error?.message })),
  });
  send({ type: 'ready', port: server.port, layout, result, hash, generateMs, workloadMs, hashMs });
  process.once('disconnect', () => void server.close().then(() => process.exit(0)));
}

main().catch((error: Error) => {
  send({ type: 'failed', message: error.message });
  process.exitCode = 1;
  process.disconnect();
});
