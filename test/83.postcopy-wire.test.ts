// The post-copy wire protocol at its edges (docs/postcopy.md, "Wire
// protocol"): a PageServer or a PostcopyClient facing a peer written here
// with raw TCP frames, that breaks one rule at a time or checks what the
// library sends.
import { createHash } from 'node:crypto';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { PageServer, PostcopyClient, type PageSession } from '../dist/index.js';
import { PAGE, SLOWDOWN, pattern } from './helpers';

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

const HELLO = 1, START = 2, REQUEST = 3, DATA = 4, DONE = 5, ERROR = 6, ACK = 7, ATTACH = 8;
const WAIT_MS = 3000 * SLOWDOWN;

function header(type: number, bodyLength: number): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32LE(bodyLength, 0);
  head.writeUInt8(type, 4);
  return head;
}

function frame(type: number, body: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([header(type, body.length), body]);
}

function helloFrame(geometry: { pageSize: number; imageSize: number; checksum: Buffer }, token: Buffer, fields: { magic?: number; reserved?: number } = {}): Buffer {
  const body = Buffer.alloc(60);
  body.writeUInt32LE(fields.magic ?? 0x43504655, 0);
  body.writeUInt16LE(1, 4);
  body.writeUInt16LE(fields.reserved ?? 0, 6);
  body.writeUInt32LE(geometry.pageSize, 8);
  body.writeBigUInt64LE(BigInt(geometry.imageSize), 12);
  geometry.checksum.copy(body, 20);
  token.copy(body, 52);
  return frame(HELLO, body);
}

function startFrame(prefetch: boolean): Buffer {
  const body = Buffer.alloc(4);
  body.writeUInt16LE(1, 0);
  body.writeUInt16LE(prefetch ? 1 : 0, 2);
  return frame(START, body);
}

function attachFrame(token: Buffer, reserved = 0): Buffer {
  const body = Buffer.alloc(12);
  body.writeUInt16LE(1, 0);
  body.writeUInt16LE(reserved, 2);
  token.copy(body, 4);
  return frame(ATTACH, body);
}

function requestFrame(id: number, offset: number, length: number, urgent: boolean): Buffer {
  const body = Buffer.alloc(20);
  body.writeUInt32LE(id, 0);
  body.writeUInt32LE(urgent ? 1 : 0, 4);
  body.writeBigUInt64LE(BigInt(offset), 8);
  body.writeUInt32LE(length, 16);
  return frame(REQUEST, body);
}

function dataFrame(id: number, offset: number, payload: Uint8Array): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt32LE(id, 0);
  head.writeBigUInt64LE(BigInt(offset), 4);
  return frame(DATA, Buffer.concat([head, payload]));
}

function errorFrame(code: string, message: string): Buffer {
  return frame(ERROR, Buffer.from(`${code}\n${message}`));
}

function within<T>(promise: Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** One raw TCP connection: the frames it received, in order, and whether it has closed. */
class Wire {
  readonly frames: { type: number; body: Buffer }[] = [];
  readonly closed: Promise<void>;
  #buffer = Buffer.alloc(0);
  #changed: (() => void)[] = [];
  #isClosed = false;

  constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      while (this.#buffer.length >= 5 && this.#buffer.length >= 5 + this.#buffer.readUInt32LE(0)) {
        const length = this.#buffer.readUInt32LE(0);
        this.frames.push({ type: this.#buffer.readUInt8(4), body: this.#buffer.subarray(5, 5 + length) });
        this.#buffer = this.#buffer.subarray(5 + length);
      }
      this.#notify();
    });
    // A peer that resets the connection is one of the outcomes the tests look at.
    socket.on('error', () => {});
    this.closed = new Promise((resolve) => socket.once('close', () => {
      this.#isClosed = true;
      this.#notify();
      resolve();
    }));
    cleanup.push(() => socket.destroy());
  }

  static connect(port: number): Wire {
    return new Wire(net.connect({ port, host: '127.0.0.1' }));
  }

  send(...buffers: Buffer[]): void {
    this.socket.write(Buffer.concat(buffers));
  }

  /** The index-th frame received; rejects if the connection closes first. */
  async frame(index: number): Promise<{ type: number; body: Buffer }> {
    await within(this.#until(() => this.frames.length > index || this.#isClosed), `frame ${index}`);
    const received = this.frames[index];
    if (!received) throw new Error(`the connection closed after ${this.frames.length} frames, before frame ${index}`);
    return received;
  }

  /** The token of the HELLO a PageServer sends first. */
  async token(): Promise<Buffer> {
    const hello = await this.frame(0);
    expect(hello.type).toBe(HELLO);
    return hello.body.subarray(52, 60);
  }

  /** Waits for the connection to close (it must), and returns the texts of the ERROR frames it received. */
  async errors(): Promise<string[]> {
    await within(this.closed, 'the connection to close');
    return this.frames.filter((f) => f.type === ERROR).map((f) => f.body.toString());
  }

  #until(condition: () => boolean): Promise<void> {
    if (condition()) return Promise.resolve();
    return new Promise((resolve) => {
      const check = (): void => {
        if (condition()) resolve();
        else this.#changed.push(check);
      };
      this.#changed.push(check);
    });
  }

  #notify(): void {
    for (const check of this.#changed.splice(0)) check();
  }
}

/** A source written here: each connection made to it is handed to serve(wire, index). */
async function rawSource(serve: (wire: Wire, index: number) => void): Promise<number> {
  let connections = 0;
  const listening = net.createServer((socket) => serve(new Wire(socket), connections++));
  await new Promise<void>((resolve) => listening.listen(0, '127.0.0.1', resolve));
  cleanup.push(() => new Promise((resolve) => listening.close(resolve)));
  return (listening.address() as net.AddressInfo).port;
}

/** An image of `pages` pages, as a source written here announces it. */
function image(pages: number, seed = 3) {
  const bytes = Buffer.from(pattern(pages * PAGE, seed));
  return { bytes, pageSize: PAGE, imageSize: bytes.length, checksum: createHash('sha256').update(bytes).digest() };
}

const TOKEN = Buffer.from('rawtoken');

interface Session {
  session: PageSession;
  /** Resolves when the session ends, with its error (undefined if it ended normally). */
  end: Promise<{ code: string; message: string } | undefined>;
}

async function server(pages: number, options: Parameters<typeof PageServer.listen>[1] = {}) {
  const sessions: Session[] = [];
  const listening = await PageServer.listen(new Uint8Array(pattern(pages * PAGE, 7)), {
    ...options,
    onSession: (session) => sessions.push({ session, end: new Promise((resolve) => session.once('end', (_stats, error) => resolve(error))) }),
  });
  cleanup.push(() => listening.close());
  return { server: listening, sessions };
}

/** A main connection of a session started with START, without prefetch: nothing flows unless asked for. */
async function started(port: number, sessions: Session[]) {
  const before = sessions.length;
  const wire = Wire.connect(port);
  const token = await wire.token();
  wire.send(startFrame(false));
  await within((async () => {
    while (sessions.length === before) await new Promise((resolve) => setTimeout(resolve, 1));
  })(), 'the session to start');
  return { wire, token, ...sessions[sessions.length - 1]! };
}

describe('post-copy wire protocol: the source', () => {
  it('refuses REQUEST id 0 (ids are non-zero; DATA id 0 is a push)', async () => {
    const { server: source, sessions } = await server(16);
    const { wire, end } = await started(source.port, sessions);
    wire.send(requestFrame(0, 3 * PAGE, PAGE, false));
    expect(await wire.errors()).toEqual([expect.stringMatching(/^ERR_UFFD_PROTOCOL\n.*REQUEST id 0/)]);
    expect(wire.frames.filter((f) => f.type === DATA)).toEqual([]);
    expect(await within(end, 'the session to end')).toMatchObject({ code: 'ERR_UFFD_PROTOCOL' });
  });

  it('refuses an ATTACH whose reserved field is not 0', async () => {
    const { server: source, sessions } = await server(16);
    const { token, session } = await started(source.port, sessions);
    const urgent = Wire.connect(source.port);
    await urgent.token();
    urgent.send(attachFrame(token, 1));
    expect(await urgent.errors()).toEqual([expect.stringMatching(/^ERR_UFFD_PROTOCOL\n.*ATTACH frame's reserved u16 .* is 1, not 0/)]);
    expect(session.hasUrgentChannel).toBe(false);
  });

  it('refuses an ERROR frame longer than 1 KiB', async () => {
    const { server: source, sessions } = await server(16);
    const { wire, end } = await started(source.port, sessions);
    wire.send(errorFrame('ERR_DEST', 'x'.repeat(1024 - 'ERR_DEST\n'.length + 1)));
    expect(await wire.errors()).toEqual([expect.stringMatching(/^ERR_UFFD_PROTOCOL\n.*ERROR frame of 1025 body bytes/)]);
    expect(await within(end, 'the session to end')).toMatchObject({ code: 'ERR_UFFD_PROTOCOL' });
  });

  it("ends a session whose destination sent ERROR with ERR_UFFD_PEER_LOST, whatever code the destination chose, and does not answer it", async () => {
    const { server: source, sessions } = await server(16);
    for (const code of ['ERR_UFFD_TIMEOUT', 'ERR_UFFD_PROTOCOL']) {
      const { wire, end } = await started(source.port, sessions);
      wire.send(errorFrame(code, 'not really'));
      expect(await wire.errors()).toEqual([]);
      expect(await within(end, 'the session to end')).toMatchObject({ code: 'ERR_UFFD_PEER_LOST', message: expect.stringContaining(`(${code}: not really)`) });
    }
    const client = await PostcopyClient.connect({ port: source.port, prefetch: false });
    const { end } = sessions[sessions.length - 1]!;
    client.close('operator cancelled');
    expect(await within(end, 'the session to end')).toMatchObject({ code: 'ERR_UFFD_PEER_LOST', message: expect.stringContaining('(ERR_UFFD_CLOSED: operator cancelled)') });
  });

  it.each([
    ['an ACK (main connection only)', () => frame(ACK, Buffer.alloc(8)), /unexpected frame type 7/],
    ['an unaligned REQUEST', () => requestFrame(1, 100, PAGE, true), /not aligned/],
    ['a frame over 1 MiB + 16 bytes', () => header(REQUEST, 2 << 20), /a frame announces 2097152 body bytes/],
  ])('answers %s on the urgent channel with ERROR on that connection, and closes both', async (_, violation, reason) => {
    const { server: source, sessions } = await server(16);
    const { wire: main, token, session, end } = await started(source.port, sessions);
    const urgent = Wire.connect(source.port);
    await urgent.token();
    urgent.send(attachFrame(token));
    await within((async () => {
      while (!session.hasUrgentChannel) await new Promise((resolve) => setTimeout(resolve, 1));
    })(), 'the urgent channel to attach');
    urgent.send(violation());
    const errors = await urgent.errors();
    expect(errors).toEqual([expect.stringMatching(/^ERR_UFFD_PROTOCOL\n/)]);
    expect(errors[0]).toMatch(reason);
    expect(await main.errors()).toEqual([]);
    expect(await within(end, 'the session to end')).toMatchObject({ code: 'ERR_UFFD_PROTOCOL', message: expect.stringMatching(reason) });
  });

  /** Two connections with their hellos; the second's ATTACH names the first, which has not sent START yet. */
  async function attachFirst(port: number): Promise<{ named: Wire; urgent: Wire }> {
    const named = Wire.connect(port);
    const token = await named.token();
    const urgent = Wire.connect(port);
    await urgent.token();
    urgent.send(attachFrame(token));
    await new Promise((resolve) => setTimeout(resolve, 50));
    return { named, urgent };
  }

  it('attaches an urgent channel whose ATTACH came before the START of the connection it names', async () => {
    const { server: source, sessions } = await server(16);
    const { named: main, urgent } = await attachFirst(source.port);
    main.send(startFrame(false));
    urgent.send(requestFrame(9, 5 * PAGE, PAGE, true));
    const answer = await urgent.frame(1);
    expect(answer.type).toBe(DATA);
    expect(answer.body.readUInt32LE(0)).toBe(9);
    expect(sessions.map((s) => s.session.hasUrgentChannel)).toEqual([true]);
  });

  it.each([
    ['closes', (wire: Wire) => wire.socket.end()],
    ['breaks the protocol', (wire: Wire) => wire.send(frame(99))],
    ['sends ERROR', (wire: Wire) => wire.send(errorFrame('ERR_DEST', 'going away'))],
    ['sends an ATTACH itself', (wire: Wire) => wire.send(attachFrame(Buffer.from('notatokn')))],
  ])('refuses an ATTACH waiting for the START of a connection that %s instead', async (_, instead) => {
    const { server: source, sessions } = await server(16);
    const { named, urgent } = await attachFirst(source.port);
    instead(named);
    expect(await urgent.errors()).toEqual([expect.stringMatching(/^ERR_UFFD_PROTOCOL\n.*ATTACH names a connection that did not start a session/)]);
    await within(named.closed, 'the named connection to close');
    expect(sessions).toEqual([]);
  });

  it.each([
    ['unlimited bandwidth, no latency: 1 MiB', {}, 1 << 20, 2 << 20],
    ['100 MB/s, 10 ms each way: 2 x 100 MB/s x 20 ms', { bandwidth: 100e6, latencyMs: 10 }, 4e6, 8 << 20],
    ['1 GB/s, 10 ms each way: capped at 16 MiB', { bandwidth: 1e9, latencyMs: 10 }, 16 << 20, 20 << 20],
  ])('holds pushes back once the window of unacknowledged page bytes is reached (%s)', async (_, link, window, size) => {
    const { server: source } = await server(size / PAGE, link);
    const wire = Wire.connect(source.port);
    await wire.token();
    wire.send(startFrame(true));
    const pushed = (): number => wire.frames.reduce((sum, f) => sum + (f.type === DATA ? f.body.length - 12 : 0), 0);
    // Until nothing more comes for a while.
    let last = -1;
    await within((async () => {
      while (pushed() !== last || last <= 0) {
        last = pushed();
        await new Promise((resolve) => setTimeout(resolve, 300 * SLOWDOWN));
      }
    })(), 'the pushes to stop', 10_000 * SLOWDOWN);
    const frameBytes = 16 * PAGE; // pushChunkPages' default
    expect(last).toBeGreaterThanOrEqual(window);
    expect(last).toBeLessThan(window + frameBytes);
    // It is the window: acknowledged, the pushes go on.
    const ack = Buffer.alloc(8);
    ack.writeBigUInt64LE(BigInt(last));
    wire.send(frame(ACK, ack));
    await within((async () => {
      while (pushed() === last) await new Promise((resolve) => setTimeout(resolve, 5));
    })(), 'the pushes to resume');
  });
});

describe('post-copy wire protocol: the destination', () => {
  it('refuses a HELLO whose reserved field is not 0', async () => {
    const geometry = image(4);
    const port = await rawSource((wire) => wire.send(helloFrame(geometry, TOKEN, { reserved: 0xbeef })));
    await expect(PostcopyClient.connect({ port, urgentChannel: false, connectTimeoutMs: WAIT_MS }))
      .rejects.toMatchObject({ code: 'ERR_UFFD_PROTOCOL', message: expect.stringMatching(/HELLO frame's reserved u16 .* is 48879, not 0/) });
  });

  it('sends an ERROR of at most 1 KiB, cut between UTF-8 characters', async () => {
    const geometry = image(4);
    let source!: Wire;
    const port = await rawSource((wire) => {
      source = wire;
      wire.send(helloFrame(geometry, TOKEN));
    });
    const client = await PostcopyClient.connect({ port, urgentChannel: false, prefetch: false });
    await source.frame(0);
    // 17 bytes before the first 'é': the 1024th byte is the first half of one.
    client.close('x' + 'é'.repeat(1000));
    const [text] = await source.errors();
    const body = source.frames.find((f) => f.type === ERROR)!.body;
    expect(body.length).toBe(1023);
    expect(new TextDecoder('utf-8', { fatal: true }).decode(body)).toBe(text);
    expect(text).toBe(`ERR_UFFD_CLOSED\nx${'é'.repeat(503)}`);
  });

  it('takes an ERROR of up to 1 KiB as the source giving up, and refuses a longer one', async () => {
    const geometry = image(4);
    for (const [length, code] of [[1024, 'ERR_UFFD_SOURCE_LOST'], [1025, 'ERR_UFFD_PROTOCOL']] as const) {
      const port = await rawSource((wire) => {
        wire.send(helloFrame(geometry, TOKEN));
        void wire.frame(0).then(() => wire.send(errorFrame('ERR_SRC', 'y'.repeat(length - 'ERR_SRC\n'.length))));
      });
      const client = await PostcopyClient.connect({ port, urgentChannel: false });
      cleanup.push(() => client.close());
      await expect(within(client.complete, 'complete to settle')).rejects.toMatchObject({ code });
    }
  });

  it("rejects connect with ERR_UFFD_SOURCE_LOST when the source sends ERROR instead of its hello, whatever code it chose", async () => {
    const port = await rawSource((wire) => wire.send(errorFrame('ERR_UFFD_TIMEOUT', 'not really a timeout')));
    await expect(PostcopyClient.connect({ port, connectTimeoutMs: WAIT_MS }))
      .rejects.toMatchObject({ code: 'ERR_UFFD_SOURCE_LOST', message: expect.stringContaining('refused the connection before its hello (ERR_UFFD_TIMEOUT: not really a timeout)') });
  });

  it('keeps the first copy of a page that comes twice, in a DATA spanning present and absent pages', async () => {
    const geometry = image(3);
    const port = await rawSource((wire) => {
      wire.send(helloFrame(geometry, TOKEN));
      void wire.frame(0).then(() => {
        const second = Buffer.from(geometry.bytes);
        second.fill(0xaa, PAGE, 2 * PAGE);
        wire.send(dataFrame(0, PAGE, geometry.bytes.subarray(PAGE, 2 * PAGE)), dataFrame(0, 0, second));
      });
    });
    const client = await PostcopyClient.connect({ port, urgentChannel: false });
    cleanup.push(() => client.close());
    // complete checks the image's sha256: a second copy written over the first would fail it.
    await within(client.complete, 'complete');
    expect(Buffer.compare(Buffer.from(client.bytes), geometry.bytes)).toBe(0);
    expect(client.stats.pagesPushed).toBe(3);
  });

  const geometry = image(4);
  it.each([
    ['a bad magic', helloFrame(geometry, TOKEN, { magic: 0x43504656 }), /bad magic/],
    ['a page size that is not a power of two', helloFrame({ ...geometry, pageSize: 3000, imageSize: 3000 * 4 }, TOKEN), /page size of 3000 bytes/],
    ['an image size that is not a multiple of the page size', helloFrame({ ...geometry, imageSize: geometry.imageSize + 1 }, TOKEN), /image of \d+ bytes: not a non-zero multiple/],
    ['DATA as the first frame', dataFrame(0, 0, geometry.bytes.subarray(0, PAGE)), /unexpected frame type 4/],
    ['bytes that are not frames', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), /a frame announces \d+ body bytes, more than/],
    ['a frame over 1 MiB + 16 bytes', header(HELLO, 2 << 20), /a frame announces 2097152 body bytes/],
  ])('answers a main connection that starts with %s with ERROR, and closes it', async (_, first, reason) => {
    let source!: Wire;
    const port = await rawSource((wire) => {
      source = wire;
      wire.send(first);
    });
    await expect(PostcopyClient.connect({ port, connectTimeoutMs: WAIT_MS })).rejects.toMatchObject({ code: 'ERR_UFFD_PROTOCOL', message: expect.stringMatching(reason) });
    const errors = await source.errors();
    expect(errors).toEqual([expect.stringMatching(/^ERR_UFFD_PROTOCOL\n/)]);
    expect(errors[0]).toMatch(reason);
  });

  it.each([
    ['a HELLO describing another image', helloFrame({ ...geometry, checksum: Buffer.alloc(32, 0x22) }, TOKEN), /another image/],
    ['bytes that are not frames', Buffer.from('\x00\x01\x02garbage'.repeat(8), 'latin1'), /a frame announces \d+ body bytes/],
  ])('answers an urgent channel that starts with %s with ERROR on that connection, and closes both', async (_, first, reason) => {
    const wires: Wire[] = [];
    const port = await rawSource((wire, index) => {
      wires.push(wire);
      wire.send(index === 0 ? helloFrame(geometry, TOKEN) : first);
    });
    await expect(PostcopyClient.connect({ port, connectTimeoutMs: WAIT_MS })).rejects.toMatchObject({ code: 'ERR_UFFD_PROTOCOL', message: expect.stringMatching(reason) });
    expect(wires).toHaveLength(2);
    expect(await wires[1]!.errors()).toEqual([expect.stringMatching(/^ERR_UFFD_PROTOCOL\n/)]);
    expect(await wires[0]!.errors()).toEqual([]);
  });

  it.each([
    ['a DONE (main connection only)', () => frame(DONE), /unexpected frame type 5/],
    ['DATA answering a request never made', () => dataFrame(77, 0, geometry.bytes.subarray(0, PAGE)), /request 77, which was never made/],
    ['a frame over 1 MiB + 16 bytes', () => header(DATA, 2 << 20), /a frame announces 2097152 body bytes/],
  ])('answers %s on the urgent channel with ERROR on that connection, and closes both', async (_, violation, reason) => {
    const wires: Wire[] = [];
    const port = await rawSource((wire, index) => {
      wires.push(wire);
      wire.send(helloFrame(geometry, TOKEN));
      // After the ATTACH.
      if (index === 1) void wire.frame(0).then(() => wire.send(violation()));
    });
    const client = await PostcopyClient.connect({ port, prefetch: false });
    cleanup.push(() => client.close());
    await expect(within(client.complete, 'complete to settle')).rejects.toMatchObject({ code: 'ERR_UFFD_PROTOCOL', message: expect.stringMatching(reason) });
    const errors = await wires[1]!.errors();
    expect(errors).toEqual([expect.stringMatching(/^ERR_UFFD_PROTOCOL\n/)]);
    expect(errors[0]).toMatch(reason);
    expect(await wires[0]!.errors()).toEqual([]);
  });
});
