// Unix domain sockets that carry descriptors (SCM_RIGHTS) with their data:
// how a uffd and a memfd reach the process that serves them.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Memfd, UnixConnection, UnixServer, Userfaultfd, descriptorKind, systemPageSize } from '../dist/index.js';
import { openFds } from './fc-helpers';

let dir: string;
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
function socketPath(): string {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-sock-'));
  return path.join(dir, 'test.sock');
}

describe('Unix sockets with descriptors', () => {
  it('receives a uffd and a memfd from another process with its message, and serves that process\'s fault through the uffd', async () => {
    const where = socketPath();
    const server = UnixServer.listen(where);
    const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'fd-sender.cjs'), where], { stdio: ['ignore', 'inherit', 'inherit'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      const connection = (await server.accept())!;
      expect(connection.peer.pid).toBe(child.pid);
      const message = (await connection.receive({ timeoutMs: 10_000 }))!;
      const info = JSON.parse(message.data.toString()) as { pid: number; address: string; length: number };
      expect(info.pid).toBe(child.pid);
      expect(message.fds).toHaveLength(2);
      expect(message.fdsTruncated).toBe(false);
      const [uffdFd, memfdFd] = message.fds as [number, number];
      expect(descriptorKind(uffdFd)).toBe('userfaultfd');
      expect(descriptorKind(memfdFd)).toBe('memfd');
      // The memfd is the sender's file: its bytes are the sender's.
      const head = Buffer.alloc(21);
      fs.readSync(memfdFd, head, 0, head.length, 0);
      expect(head.toString()).toBe('written by the sender');
      fs.closeSync(memfdFd);
      // The uffd is the sender's: its fault is served from here.
      const uffd = Userfaultfd.fromFd(uffdFd, { ranges: [{ address: BigInt(info.address), length: info.length }] });
      void uffd.serve((fault) => {
        const page = Buffer.alloc(fault.pageSize);
        page.write('served across processes');
        fault.copy(page);
      });
      connection.send('read');
      const reply = (await connection.receive({ timeoutMs: 10_000 }))!;
      expect(reply.data.toString()).toBe('served across processes');
      uffd.close();
      connection.close();
      expect(await exited).toBe(0);
    } finally {
      server.close();
      child.kill('SIGKILL');
    }
  });

  it('fromFd() checks its options before it takes the descriptor: a refused call leaves it open and the caller\'s', async () => {
    const server = UnixServer.listen(socketPath());
    const client = UnixConnection.connect(path.join(dir, 'test.sock'));
    const accepted = (await server.accept())!;
    const uffd = Userfaultfd.open();
    client.send('uffd', [uffd.fd]);
    const fd = (await accepted.receive({ timeoutMs: 10_000 }))!.fds[0]!;
    expect(() => Userfaultfd.fromFd(fd, { features: ['NOPE' as never] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringContaining("'options.features'") }));
    expect(() => Userfaultfd.fromFd(fd, { ranges: [{ address: 1n, length: 1 }] })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => Userfaultfd.fromFd(fd, { ranges: 5 as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringContaining('"options.ranges"') }));
    // Had a refused call adopted it, collecting that object would close it
    // (and, later, whatever file reused the number).
    const gc = (globalThis as { gc?: () => void }).gc!;
    for (let i = 0; i < 5; i++) {
      gc();
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(descriptorKind(fd)).toBe('userfaultfd');
    Userfaultfd.fromFd(fd).close();
    uffd.close();
    client.close();
    accepted.close();
    server.close();
  });

  it('sends one message with several descriptors in one sendmsg, and the receiver gets them in order', async () => {
    const server = UnixServer.listen(socketPath());
    const client = UnixConnection.connect(server.path);
    const accepted = (await server.accept())!;
    const uffd = Userfaultfd.open();
    const memfd = Memfd.create(systemPageSize());
    client.send('two descriptors', [uffd.fd, memfd.fd]);
    const message = (await accepted.receive({ timeoutMs: 5000 }))!;
    expect(message.data.toString()).toBe('two descriptors');
    expect(message.fds.map(descriptorKind)).toEqual(['userfaultfd', 'memfd']);
    // They are new descriptors for the same objects.
    expect(message.fds).not.toContain(uffd.fd);
    message.fds.forEach((fd) => fs.closeSync(fd));
    uffd.close();
    memfd.close();
    client.close();
    accepted.close();
    server.close();
  });

  it('reports descriptors beyond the 16 it accepts as truncated (the kernel drops them)', async () => {
    const server = UnixServer.listen(socketPath());
    const client = UnixConnection.connect(server.path);
    const accepted = (await server.accept())!;
    const fds = Array.from({ length: 20 }, () => fs.openSync('/dev/null', 'r'));
    client.send('many', fds);
    const message = (await accepted.receive({ timeoutMs: 5000 }))!;
    expect(message.fdsTruncated).toBe(true);
    expect(message.fds.length).toBeLessThan(20);
    message.fds.forEach((fd) => fs.closeSync(fd));
    fds.forEach((fd) => fs.closeSync(fd));
    client.close();
    accepted.close();
    server.close();
  });

  it('receive() gives null at end of stream, times out with ERR_UFFD_TIMEOUT, and close() frees descriptors nobody took', async () => {
    const before = openFds();
    const server = UnixServer.listen(socketPath());
    const client = UnixConnection.connect(server.path);
    const accepted = (await server.accept())!;
    await expect(accepted.receive({ timeoutMs: 50 })).rejects.toMatchObject({ code: 'ERR_UFFD_TIMEOUT', syscall: 'recvmsg' });
    client.send('last words');
    client.close();
    expect((await accepted.receive())!.data.toString()).toBe('last words');
    expect(await accepted.receive()).toBeNull();
    accepted.close();
    // A message left unread, with its descriptor, is freed by close().
    const second = UnixConnection.connect(server.path);
    const secondAccepted = (await server.accept())!;
    const memfd = Memfd.create(systemPageSize());
    second.send('unread', [memfd.fd]);
    memfd.close();
    second.close();
    await secondAccepted.waitEnd();
    secondAccepted.close();
    server.close();
    expect(openFds()).toBe(before);
  });

  it('refuses bad arguments and unreachable paths with clear errors', () => {
    expect(() => UnixConnection.connect(path.join(socketPath(), 'absent'))).toThrow(expect.objectContaining({ code: 'ENOENT', syscall: 'connect' }));
    expect(() => UnixConnection.connect(`/tmp/${'x'.repeat(200)}`)).toThrow(expect.objectContaining({ code: 'ENAMETOOLONG' }));
    const server = UnixServer.listen(path.join(dir, 'ok.sock'));
    const client = UnixConnection.connect(server.path);
    expect(() => client.send('x', [-1])).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => client.send(42 as unknown as string)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    client.close();
    expect(() => client.send('after close')).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    server.close();
    expect(fs.existsSync(server.path)).toBe(false);
  });

  it('listen() takes over a stale socket file, but never a path another listener holds (EADDRINUSE) or a file that is not a socket (EEXIST)', () => {
    const where = socketPath();
    const live = UnixServer.listen(where);
    expect(() => UnixServer.listen(where)).toThrow(expect.objectContaining({ code: 'EADDRINUSE', syscall: 'listen', message: expect.stringMatching(/another process is listening on this path/) }));
    // The listener still owns its path: a client reaches it.
    const client = UnixConnection.connect(where);
    client.close();
    live.close();
    // A socket file nobody listens on (its process exited without removing it) is replaced.
    const stale = path.join(dir, 'stale.sock');
    execFileSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.exit(0))`]);
    UnixServer.listen(stale).close();
    const file = path.join(dir, 'file');
    fs.writeFileSync(file, 'keep me');
    expect(() => UnixServer.listen(file)).toThrow(expect.objectContaining({ code: 'EEXIST', syscall: 'listen', message: expect.stringMatching(/not a socket/) }));
    expect(fs.readFileSync(file, 'utf8')).toBe('keep me');
  });

  it('close() removes only the socket file it bound: one that has replaced it at the path is left alone', async () => {
    const where = socketPath();
    const first = UnixServer.listen(where);
    // Someone removed first's file and listens there now.
    fs.unlinkSync(where);
    const second = UnixServer.listen(where);
    first.close();
    const client = UnixConnection.connect(where);
    const accepted = (await second.accept())!;
    accepted.close();
    client.close();
    second.close();
    expect(fs.existsSync(where)).toBe(false);
  });
});
