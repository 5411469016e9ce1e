// A faulting peer process (fixtures/uffd-peer.cjs) and the handshake with it.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UnixServer, Userfaultfd, type Feature, type UnixConnection } from '../dist/index.js';

export interface PeerSpec {
  pages: number;
  memory?: 'anon' | 'memfd';
  hugePages?: number;
  modes?: { missing?: boolean; minor?: boolean; wp?: boolean };
  features?: Feature[];
  fill?: number;
  /** The peer keeps its own copy of the uffd open (as Firecracker does) instead of closing it. */
  keepUffd?: boolean;
  script: object[];
}

export interface Peer {
  uffd: Userfaultfd;
  address: bigint;
  length: number;
  pageSize: number;
  child: ChildProcess;
  connection: UnixConnection;
  /** Lets the peer run its script; resolves with its report and how it exited. */
  go(): Promise<{ report: { sums: number[]; checks: number[] } | undefined; code: number | null; signal: NodeJS.Signals | null }>;
  close(): void;
}

export async function startPeer(spec: PeerSpec): Promise<Peer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-peer-'));
  const socketPath = path.join(dir, 'peer.sock');
  const server = UnixServer.listen(socketPath);
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'uffd-peer.cjs'), JSON.stringify({ ...spec, socket: socketPath })], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let stdout = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const connection = await Promise.race([server.accept(), exited.then(() => null)]);
  server.close();
  if (!connection) throw new Error(`the peer exited before connecting: ${stdout}`);
  const message = await connection.receive({ timeoutMs: 10_000 });
  if (!message || message.fds.length !== 1) throw new Error('the peer sent no uffd');
  const info = JSON.parse(message.data.toString()) as { address: string; length: number; pageSize: number };
  const address = BigInt(info.address);
  const uffd = Userfaultfd.fromFd(message.fds[0]!, {
    features: spec.features ?? [],
    ranges: [{ address, length: info.length, pageSize: info.pageSize, modes: spec.modes }],
  });
  return {
    uffd, address, length: info.length, pageSize: info.pageSize, child, connection,
    async go() {
      connection.send('go');
      const { code, signal } = await exited;
      const line = stdout.trim().split('\n').pop();
      return { report: line ? JSON.parse(line) : undefined, code, signal };
    },
    close() {
      uffd.close();
      connection.close();
      child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
