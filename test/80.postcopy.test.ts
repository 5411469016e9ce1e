// Post-copy migration end to end, small: a PageServer, a PostcopyClient and a
// PostcopyDestination over TCP on loopback, with a worker thread faulting on
// the destination's registered memory.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { BufferPageSource, FilePageSource, Mapping, PageServer, PostcopyClient, PostcopyDestination, Userfaultfd } from '../dist/index.js';
import { PAGE, pattern, shuffled, touch } from './helpers';

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

async function source(pages: number, options: Parameters<typeof PageServer.listen>[1] = {}) {
  const image = pattern(pages * PAGE, 7);
  const server = await PageServer.listen(new Uint8Array(image), options);
  cleanup.push(() => server.close());
  return { image, server };
}

async function destination(port: number, options: { prefetch?: boolean; readAhead?: number } = {}) {
  const client = await PostcopyClient.connect({ port, prefetch: options.prefetch });
  const mapping = Mapping.anonymous(client.size);
  const uffd = Userfaultfd.open({ features: ['THREAD_ID'] });
  uffd.register(mapping, { missing: true });
  const dest = new PostcopyDestination(uffd, mapping, client, { readAhead: options.readAhead });
  cleanup.push(() => client.close(), () => dest.close(), () => uffd.close(), () => mapping.unmap());
  return { client, mapping, uffd, dest };
}

/** A PageServer in a child process (fixtures/postcopy-source.cjs), killed after the test. */
async function sourceProcess(pages: number, bandwidth: number) {
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'postcopy-source.cjs'), JSON.stringify({ pages, seed: 7, bandwidth })], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  cleanup.push(() => child.kill('SIGKILL'));
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout!.once('data', (chunk: Buffer) => resolve(chunk.toString()));
    child.once('exit', (code) => reject(new Error(`the source exited with ${code}`)));
  });
  return { child, port: (JSON.parse(line) as { port: number }).port };
}

/** Waits until condition() holds, checking each millisecond or so; fails after timeoutMs. */
async function until(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

describe('post-copy migration', () => {
  it('migrates an image byte for byte while a worker reads it in random order', async () => {
    const pages = 1024;
    const { image, server } = await source(pages, { bandwidth: 16e6 });
    const { client, mapping, dest } = await destination(server.port, { readAhead: 4 });
    const reader = touch({ address: mapping.address, length: mapping.length, order: shuffled(pages, 3), expected: image });
    expect(await reader.result).toMatchObject({ ok: true, mismatches: 0 });
    await dest.complete;
    await client.complete;
    expect(Buffer.compare(mapping.read(), Buffer.from(image))).toBe(0);
    expect(client.stats.pagesOnDemand + client.stats.pagesPushed).toBe(pages);
    expect(dest.stats.pagesByFault + dest.stats.pagesInstalled).toBe(pages);
  });

  it('without prefetch, moves only the pages the workload touches', async () => {
    const pages = 256;
    const { image, server } = await source(pages);
    const { client, mapping, dest } = await destination(server.port, { prefetch: false });
    const touched = Array.from({ length: pages / 4 }, (_, i) => i * 4);
    const reader = touch({ address: mapping.address, length: mapping.length, order: touched });
    await reader.result;
    expect(client.presentCount).toBe(touched.length);
    expect(client.stats.pagesPushed).toBe(0);
    expect(dest.stats.faults).toBe(touched.length);
    expect(dest.stats.faultsFetched).toBe(touched.length);
    expect(dest.stats.latency.count).toBe(touched.length);
    expect(dest.stats.blockedMs).toBeGreaterThan(0);
    expect(Buffer.compare(mapping.read(PAGE * 8, PAGE), Buffer.from(image, PAGE * 8, PAGE))).toBe(0);
  });

  it.each([
    ['on the urgent channel', true],
    ['on the main connection, without an urgent channel', false],
  ])('sends a demanded page ahead of the background stream, %s', async (_, urgentChannel) => {
    const pages = 1024;
    // 4 MiB at 4 MB/s: the background needs about a second to reach the last page.
    const { server } = await source(pages, { bandwidth: 4e6 });
    const client = await PostcopyClient.connect({ port: server.port, urgentChannel });
    cleanup.push(() => client.close());
    await client.fetch((pages - 1) * PAGE, PAGE, { urgent: true });
    expect([...server.sessions].map((s) => s.hasUrgentChannel)).toEqual([urgentChannel]);
    expect(client.present[pages - 1]).toBe(1);
    expect(client.presentCount).toBeLessThan(pages / 2);
    expect(client.stats.pagesOnDemand).toBe(1);
  });

  it('honours the link model: bandwidth bounds the transfer, latency each round trip', async () => {
    const pages = 512; // 2 MiB with 4 KiB pages
    const bandwidth = 8e6;
    const latencyMs = 40;
    const { server } = await source(pages, { bandwidth, latencyMs });
    const start = performance.now();
    const client = await PostcopyClient.connect({ port: server.port, prefetch: false });
    cleanup.push(() => client.close());
    const asked = performance.now();
    await client.fetch(100 * PAGE, PAGE, { urgent: true });
    // A request crosses the link, its answer crosses back.
    expect(performance.now() - asked).toBeGreaterThanOrEqual(2 * latencyMs - 1);
    await client.fetch(0, pages * PAGE);
    await client.complete;
    const seconds = (performance.now() - start) / 1000;
    expect(seconds).toBeGreaterThanOrEqual((pages * PAGE) / bandwidth * 0.9);
  });

  it('reports a source that dies mid-migration, and the faulting worker finishes instead of hanging', async () => {
    const pages = 2048;
    const { child, port } = await sourceProcess(pages, 2e6);
    const { client, mapping, dest } = await destination(port);
    const reader = touch({ address: mapping.address, length: mapping.length });
    await until(() => client.presentCount > 64);
    child.kill('SIGKILL');
    await expect(dest.complete).rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_LOST' });
    await expect(client.complete).rejects.toThrow(/ERR_UFFD_SOURCE_LOST: the (source closed the connection|connection failed .*) before every page arrived/);
    // Pages that never came read as zeros (the 'fill' policy); the worker is not left waiting.
    expect((await reader.result).touched).toBe(pages);
    expect(client.presentCount).toBeLessThan(pages);
    await expect(client.fetch((pages - 1) * PAGE, PAGE, { urgent: true })).rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_LOST' });
  });

  it('serves from any PageSource: a memory file, every page present from the start', async () => {
    const pages = 64;
    const image = pattern(pages * PAGE, 11);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postcopy-'));
    const file = path.join(dir, 'memory');
    fs.writeFileSync(file, new Uint8Array(image));
    const fileSource = new FilePageSource(file);
    const mapping = Mapping.anonymous(pages * PAGE);
    const uffd = Userfaultfd.open();
    uffd.register(mapping);
    const dest = new PostcopyDestination(uffd, mapping, fileSource);
    cleanup.push(() => fs.rmSync(dir, { recursive: true }), () => fileSource.close(), () => mapping.unmap(), () => uffd.close(), () => dest.close());
    expect(await touch({ address: mapping.address, length: mapping.length, order: shuffled(pages, 5), expected: image }).result).toMatchObject({ ok: true });
    await dest.complete;
    expect(dest.stats.faultsFetched).toBe(0);
    expect(dest.stats.pagesByFault + dest.stats.pagesInstalled).toBe(pages);
  });

  it('with a source of one\'s own: its page size checked against a plain target\'s registration, and timeoutMs bounding a fetch that never settles', async () => {
    const pages = 8;
    const memory = Mapping.anonymous(pages * PAGE);
    const uffd = Userfaultfd.open();
    uffd.register(memory, { missing: true });
    cleanup.push(() => uffd.close(), () => memory.unmap());
    const target = { address: memory.address, length: memory.length };
    const wrong = new BufferPageSource(new Uint8Array(pages * PAGE), { pageSize: 4 * PAGE, present: new Uint8Array(pages / 4) });
    expect(() => new PostcopyDestination(uffd, target, wrong)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE', message: expect.stringContaining('target.pageSize') }));
    const present = new Uint8Array(pages).fill(1);
    present[3] = 0;
    const stuck = new BufferPageSource(new Uint8Array(pattern(pages * PAGE, 3)), { present, fetch: () => new Promise(() => {}) });
    const dest = new PostcopyDestination(uffd, target, stuck, { timeoutMs: 200 });
    cleanup.push(() => dest.close());
    const expected = pattern(pages * PAGE, 3);
    new Uint8Array(expected).fill(0, 3 * PAGE, 4 * PAGE);
    expect(await touch({ address: memory.address, length: memory.length, expected }).result).toMatchObject({ ok: true });
    await expect(dest.complete).rejects.toMatchObject({ code: 'ERR_UFFD_TIMEOUT' });
  });

  it('complete settles when the destination or its uffd is closed before every page is in', async () => {
    for (const closing of ['uffd', 'destination'] as const) {
      const pages = 8;
      const mapping = Mapping.anonymous(pages * PAGE);
      const uffd = Userfaultfd.open();
      uffd.register(mapping);
      // A source that never gets its pages: nothing completes by itself.
      const source = new BufferPageSource(new Uint8Array(pages * PAGE), { present: new Uint8Array(pages), fetch: () => new Promise<void>(() => {}) });
      const dest = new PostcopyDestination(uffd, mapping, source);
      cleanup.push(() => mapping.unmap(), () => uffd.close(), () => dest.close());
      if (closing === 'uffd') uffd.close();
      else dest.close();
      await expect(dest.complete).rejects.toMatchObject({ code: 'ERR_UFFD_CLOSED', message: expect.stringContaining(`closed with 0 of ${pages} pages in`) });
    }
  });

  it('gives up on a source that stops answering, after stallTimeoutMs', async () => {
    const pages = 2048;
    const { child, port } = await sourceProcess(pages, 1e6);
    const client = await PostcopyClient.connect({ port, stallTimeoutMs: 300 });
    cleanup.push(() => client.close());
    await until(() => client.presentCount > 16);
    child.kill('SIGSTOP');
    await expect(client.fetch((pages - 1) * PAGE, PAGE, { urgent: true })).rejects.toMatchObject({ code: 'ERR_UFFD_TIMEOUT' });
    await expect(client.complete).rejects.toThrow(/the source sent nothing for \d+ ms while 1 pages were awaited/);
  });

  it('refuses a peer that is not a page server', async () => {
    // It reads what it is sent (the client's ERROR), or the client's close would never reach it.
    const impostor = net.createServer((socket) => socket.resume().end(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n')));
    await new Promise<void>((resolve) => impostor.listen(0, '127.0.0.1', resolve));
    cleanup.push(() => new Promise((resolve) => impostor.close(resolve)));
    const port = (impostor.address() as net.AddressInfo).port;
    await expect(PostcopyClient.connect({ port })).rejects.toMatchObject({ code: 'ERR_UFFD_PROTOCOL' });
  });

  it('ends the session of a destination that asks for pages outside the image, telling it why', async () => {
    const { server } = await source(16);
    const socket = net.connect({ port: server.port, host: '127.0.0.1' });
    cleanup.push(() => socket.destroy());
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    const start = Buffer.alloc(9);
    start.writeUInt32LE(4, 0); start.writeUInt8(2, 4); start.writeUInt16LE(1, 5); start.writeUInt16LE(1, 7);
    const request = Buffer.alloc(25);
    request.writeUInt32LE(20, 0); request.writeUInt8(3, 4); request.writeUInt32LE(1, 5); request.writeUInt32LE(1, 9);
    request.writeBigUInt64LE(BigInt(16 * PAGE), 13); request.writeUInt32LE(PAGE, 21);
    socket.write(Buffer.concat([start, request]));
    await new Promise((resolve) => socket.once('close', resolve));
    const all = Buffer.concat(received);
    const hello = 5 + 60;
    expect(all.readUInt8(hello + 4)).toBe(6); // an ERROR frame after the hello
    expect(all.subarray(hello + 5).toString()).toMatch(/ERR_UFFD_PROTOCOL\n.*outside the .*-byte image/);
  });

  it('refuses an urgent channel that names no session', async () => {
    const { server } = await source(16);
    const socket = net.connect({ port: server.port, host: '127.0.0.1' });
    cleanup.push(() => socket.destroy());
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    const attach = Buffer.alloc(17);
    attach.writeUInt32LE(12, 0); attach.writeUInt8(8, 4); attach.writeUInt16LE(1, 5);
    attach.write('notatokn', 9, 'latin1');
    socket.write(attach);
    await new Promise((resolve) => socket.once('close', resolve));
    const all = Buffer.concat(received);
    const hello = 5 + 60;
    expect(all.readUInt8(hello + 4)).toBe(6);
    expect(all.subarray(hello + 5).toString()).toMatch(/ERR_UFFD_PROTOCOL\n.*ATTACH names no session/);
    expect(server.sessions.size).toBe(0);
  });

  it('rejects bad arguments before doing anything', async () => {
    await expect(PageServer.listen(new Uint8Array(PAGE + 1))).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    await expect(PageServer.listen(new Uint8Array(PAGE), { bandwidth: 0 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    const { server } = await source(4);
    const client = await PostcopyClient.connect({ port: server.port, prefetch: false });
    cleanup.push(() => client.close());
    expect(() => client.fetch(1, PAGE)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => client.fetch(0, 5 * PAGE)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    const uffd = Userfaultfd.open();
    const wrong = Mapping.anonymous(8 * PAGE);
    cleanup.push(() => uffd.close(), () => wrong.unmap());
    uffd.register(wrong);
    expect(() => new PostcopyDestination(uffd, wrong, client)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    const unregistered = Mapping.anonymous(4 * PAGE);
    cleanup.push(() => unregistered.unmap());
    expect(() => new PostcopyDestination(uffd, unregistered, client)).toThrow(expect.objectContaining({ code: 'ENOENT' }));
  });
});
