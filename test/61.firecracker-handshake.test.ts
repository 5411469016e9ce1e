// Firecracker's handshake: one sendmsg, a JSON array of regions, the uffd
// attached. Every field is checked; each way a message can be wrong gets its
// own clear ERR_UFFD_BAD_HANDSHAKE, closes that connection only, and leaves
// the server serving the next peer.
import fs from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  FilePageSource, FirecrackerServer, UnixConnection, UnixServer, Userfaultfd, parseHandshake, receiveHandshake, systemPageSize,
  type FirecrackerSession, type UffdError,
} from '../dist/index.js';
import { parseJsonU64 } from '../dist/json-u64.js';
import { openFds, scratch, startFcPeer, type Scratch } from './fc-helpers';

const PAGE = systemPageSize();
const MiB = 1024 * 1024;
const HUGE = 2 * MiB;
const limits = { sourceSize: 64 * MiB, hugePageSizes: [HUGE] };

// A real uffd for the checks that need one; parseHandshake never takes ownership.
let uffd: Userfaultfd;
beforeAll(() => (uffd = Userfaultfd.open()));
afterAll(() => uffd.close());

const region = (fields: Record<string, unknown>): string => JSON.stringify(fields).replace(/"(\d+)n"/g, '$1');
const parse = (text: string, fds = [uffd.fd]) => parseHandshake(text, fds, limits);
const refusal = (text: string, fds = [uffd.fd]): string => {
  try {
    parse(text, fds);
  } catch (error) {
    expect((error as UffdError).code).toBe('ERR_UFFD_BAD_HANDSHAKE');
    return (error as Error).message;
  }
  throw new Error('the handshake was accepted');
};

describe('parseJsonU64', () => {
  it('keeps u64 integers exact, beyond 2^53', () => {
    expect(parseJsonU64('[18446744073709551615, 9007199254740993, 0, -1]')).toEqual([18446744073709551615n, 9007199254740993n, 0n, -1n]);
    expect(parseJsonU64('{"a": 1.5, "b": "x\\u0041", "c": [true, false, null]}')).toEqual({ a: 1.5, b: 'xA', c: [true, false, null] });
  });

  it('refuses what RFC 8259 refuses, says where, and tells a cut-off text from a wrong one', () => {
    for (const [text, incomplete] of [['[1,]', false], ['{"a":1,"a":2}', false], ['[01]', false], ["['x']", false], ['[1] x', false],
      ['[{"a":', true], ['[12', true], ['["abc', true], ['[tr', true], ['[' + '['.repeat(40) + ']'.repeat(41), false]] as const) {
      expect(() => parseJsonU64(text), text).toThrow(expect.objectContaining({ name: 'JsonError', incomplete }));
    }
  });
});

describe('parseHandshake', () => {
  const base = 0x7f0000000000n;

  it('reads every Firecracker format: v1.1 (no page size), v1.7 (page_size_kib, in bytes), v1.12 (page_size and page_size_kib)', () => {
    const v11 = parse(`[${region({ base_host_virt_addr: `${base}n`, size: `${4 * MiB}n`, offset: '0n' })}]`);
    const v17 = parse(`[${region({ base_host_virt_addr: `${base}n`, size: `${4 * MiB}n`, offset: '0n', page_size_kib: '4096n' })}]`);
    const v112 = parse(`[${region({ base_host_virt_addr: `${base}n`, size: `${4 * MiB}n`, offset: '0n', page_size: '4096n', page_size_kib: '4096n' })}]`);
    for (const handshake of [v11, v17, v112]) {
      expect(handshake.uffdFd).toBe(uffd.fd);
      expect(handshake.regions).toEqual([{ base, size: 4 * MiB, offset: 0, pageSize: PAGE }]);
    }
  });

  it('takes several regions with gaps, 2 MiB huge pages, addresses above 2^53, and ignores unknown fields', () => {
    const high = (1n << 56n) - 64n * BigInt(MiB);
    const text = `[${region({ base_host_virt_addr: `${high}n`, size: `${2 * HUGE}n`, offset: '0n', page_size: `${HUGE}n`, future_field: { x: 1 } })},` +
      `${region({ base_host_virt_addr: `${high + 8n * BigInt(HUGE)}n`, size: `${HUGE}n`, offset: `${2 * HUGE}n`, page_size: `${HUGE}n` })}]`;
    expect(parse(text).regions).toEqual([
      { base: high, size: 2 * HUGE, offset: 0, pageSize: HUGE },
      { base: high + 8n * BigInt(HUGE), size: HUGE, offset: 2 * HUGE, pageSize: HUGE },
    ]);
  });

  const one = (fields: Record<string, unknown>): string => `[${region({ base_host_virt_addr: `${base}n`, size: `${MiB}n`, offset: '0n', page_size: '4096n', ...fields })}]`;

  it('refuses malformed JSON', () => expect(refusal('[{"base_host_virt_addr":1,"size":}')).toMatch(/not valid JSON.*position/));
  it('refuses a message that is not an array', () => expect(refusal(one({}).slice(1, -1))).toMatch(/must be a JSON array/));
  it('refuses an empty array', () => expect(refusal('[]')).toMatch(/no guest memory region/));
  it('refuses an entry that is not an object', () => expect(refusal('[1]')).toMatch(/region 0 is not an object/));
  it('refuses a missing field', () => {
    for (const field of ['base_host_virt_addr', 'size', 'offset']) {
      const text = `[${JSON.stringify({ base_host_virt_addr: 0x7f0000000000, size: MiB, offset: 0, [field]: undefined })}]`;
      expect(refusal(text)).toMatch(new RegExp(`region 0 has no "${field}"`));
    }
  });
  it('refuses fields that are not unsigned 64-bit integers', () => {
    expect(refusal(one({ size: -4096 }))).toMatch(/"size" must be an unsigned 64-bit integer, not -4096/);
    expect(refusal(one({ offset: 1.5 }))).toMatch(/"offset" must be an unsigned 64-bit integer/);
    expect(refusal(one({ page_size: '4096' }))).toMatch(/"page_size" must be an unsigned 64-bit integer, not "4096"/);
    expect(refusal(one({ base_host_virt_addr: '18446744073709551616n' }))).toMatch(/unsigned 64-bit integer, not 18446744073709551616/);
  });
  it('refuses a region that overflows 64 bits or leaves the user address space', () => {
    expect(refusal(one({ base_host_virt_addr: `${(1n << 64n) - 4096n}n` }))).toMatch(/overflows 64 bits/);
    expect(refusal(one({ base_host_virt_addr: `${1n << 60n}n` }))).toMatch(/outside any user address space/);
  });
  it('refuses regions that overlap', () => {
    const text = `[${region({ base_host_virt_addr: `${base}n`, size: `${MiB}n`, offset: '0n' })},${region({ base_host_virt_addr: `${base + BigInt(MiB) - 4096n}n`, size: `${MiB}n`, offset: '0n' })}]`;
    expect(refusal(text)).toMatch(/regions 0 .* and 1 .* overlap/);
  });
  it('refuses unaligned addresses, sizes and offsets, and empty regions', () => {
    expect(refusal(one({ base_host_virt_addr: `${base + 2048n}n` }))).toMatch(/not aligned to its page size/);
    expect(refusal(one({ size: '6000n' }))).toMatch(/size 6000 is not a multiple/);
    expect(refusal(one({ offset: '100n' }))).toMatch(/offset 100 is not a multiple/);
    expect(refusal(one({ size: '0n' }))).toMatch(/empty/);
    expect(refusal(one({ page_size: `${HUGE}n`, base_host_virt_addr: `${base + 4096n}n` }))).toMatch(/not aligned to its page size \(2097152\)/);
  });
  it('refuses page sizes the host does not have; where page_size and page_size_kib disagree, page_size wins', () => {
    expect(refusal(one({ page_size: '8192n' }))).toMatch(/page size 8192 is neither 4096/);
    expect(parse(one({ page_size: '4096n', page_size_kib: '4n' })).regions[0]!.pageSize).toBe(systemPageSize());
    expect(refusal(one({ page_size: '8192n', page_size_kib: '4096n' }))).toMatch(/page size 8192 is neither 4096/);
  });
  it('refuses a region beyond the end of the memory file', () => {
    expect(refusal(one({ offset: `${64 * MiB - 4096}n` }))).toMatch(/beyond the end of the 67108864-byte memory file/);
  });
  it('refuses no descriptor, two descriptors, and a descriptor that is not a uffd', () => {
    const text = one({});
    expect(refusal(text, [])).toMatch(/no descriptor came/);
    expect(refusal(text, [uffd.fd, uffd.fd])).toMatch(/2 descriptors came/);
    const file = fs.openSync('/dev/null', 'r');
    try {
      expect(refusal(text, [file])).toMatch(/the descriptor sent is a file, not a userfaultfd/);
    } finally {
      fs.closeSync(file);
    }
  });
});

describe('hostile input', () => {
  it('thousands of random corruptions of a valid message are each accepted or refused with ERR_UFFD_BAD_HANDSHAKE, never anything else', () => {
    const valid = `[{"base_host_virt_addr":${0x7f0000000000},"size":${MiB},"offset":0,"page_size":4096,"page_size_kib":4096},` +
      `{"base_host_virt_addr":${0x7f0000200000},"size":${MiB},"offset":${MiB},"page_size":4096,"page_size_kib":4096}]`;
    const alphabet = '[]{}",:-.0123456789eE+truefalsn \\u\u0000\u00ff';
    let state = 12345;
    const random = (n: number): number => {
      state = (Math.imul(state, 1103515245) + 12345) >>> 0;
      return state % n;
    };
    let accepted = 0;
    for (let i = 0; i < 3000; i++) {
      const chars = [...valid];
      for (let edits = 1 + random(4); edits > 0; edits--) {
        const at = random(chars.length + 1);
        const what = random(3);
        if (what === 0) chars.splice(at, 1);
        else if (what === 1) chars.splice(at, 0, alphabet[random(alphabet.length)]!);
        else chars[at] = alphabet[random(alphabet.length)]!;
      }
      try {
        parse(chars.join(''));
        accepted++;
      } catch (error) {
        expect((error as UffdError).code, chars.join('')).toBe('ERR_UFFD_BAD_HANDSHAKE');
      }
    }
    // Some corruptions leave a valid message (a digit changed in an offset, say); most do not.
    expect(accepted).toBeLessThan(3000);
  });
});

describe('receiveHandshake', () => {
  let s: Scratch;
  afterEach(() => s.remove());

  async function pair(): Promise<{ client: UnixConnection; accepted: UnixConnection; server: UnixServer }> {
    s = scratch(4 * MiB);
    const server = UnixServer.listen(s.socket);
    const client = UnixConnection.connect(s.socket);
    return { client, accepted: (await server.accept())!, server };
  }

  it('waits for the rest of a message that a stream socket delivered in two reads', async () => {
    const { client, accepted, server } = await pair();
    const own = Userfaultfd.open();
    const text = `[{"base_host_virt_addr":${0x7f0000000000},"size":${MiB},"offset":0,"page_size":4096}]`;
    client.send(text.slice(0, 20), [own.fd]);
    const received = receiveHandshake(accepted, { sourceSize: 4 * MiB });
    setImmediate(() => client.send(text.slice(20)));
    const handshake = await received;
    expect(handshake.regions).toHaveLength(1);
    expect(handshake.uffdFd).not.toBe(own.fd);
    fs.closeSync(handshake.uffdFd);
    own.close();
    client.close();
    accepted.close();
    server.close();
  });

  it('waits for the rest of a character that two reads split (a UTF-8 field name is valid JSON)', async () => {
    const { client, accepted, server } = await pair();
    const own = Userfaultfd.open();
    const bytes = Buffer.from(`[{"base_host_virt_addr":${0x7f0000000000},"size":${MiB},"offset":0,"note_\u00e9\u20ac":1}]`);
    const split = bytes.indexOf(0xe2) + 1; // inside the three bytes of the euro sign
    client.send(bytes.subarray(0, split), [own.fd]);
    const received = receiveHandshake(accepted, { sourceSize: 4 * MiB });
    setImmediate(() => client.send(bytes.subarray(split)));
    const handshake = await received;
    expect(handshake.regions).toHaveLength(1);
    fs.closeSync(handshake.uffdFd);
    own.close();
    client.close();
    accepted.close();
    server.close();
  });

  it('refuses a message that is not UTF-8, closing the descriptor that came with it', async () => {
    const { client, accepted, server } = await pair();
    const own = Userfaultfd.open();
    const before = openFds();
    client.send(Buffer.from([0x5b, 0xff, 0xfe, 0x5d]), [own.fd]);
    await expect(receiveHandshake(accepted, { sourceSize: 4 * MiB })).rejects.toThrow(/not UTF-8 text/);
    expect(openFds()).toBe(before);
    own.close();
    client.close();
    accepted.close();
    server.close();
  });

  it('refuses a message that grows beyond 1 MiB without ending', async () => {
    const { client, accepted, server } = await pair();
    const own = Userfaultfd.open();
    client.send('[{"size":"', [own.fd]);
    let settled = false;
    const received = receiveHandshake(accepted, { sourceSize: 4 * MiB }).then(() => null, (error: unknown) => error).finally(() => (settled = true));
    const chunk = Buffer.alloc(16 * 1024, 0x61);
    while (!settled) {
      try {
        client.send(chunk);
      } catch {
        // The socket buffer is full: let the receiver read.
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(await received).toMatchObject({ code: 'ERR_UFFD_BAD_HANDSHAKE', message: expect.stringMatching(/exceeds 1048576 bytes/) });
    own.close();
    client.close();
    accepted.close();
    server.close();
  });

  it('gives up on a peer that connects and sends nothing, or hangs up first', async () => {
    const { client, accepted, server } = await pair();
    await expect(receiveHandshake(accepted, { sourceSize: 4 * MiB, timeoutMs: 50 })).rejects.toMatchObject({
      code: 'ERR_UFFD_TIMEOUT', message: expect.stringMatching(/nothing arrived within 50 ms/),
    });
    client.close();
    await expect(receiveHandshake(accepted, { sourceSize: 4 * MiB })).rejects.toMatchObject({
      code: 'ERR_UFFD_PEER_LOST', message: expect.stringMatching(/closed the connection without sending anything/),
    });
    accepted.close();
    server.close();
  });
});

// The same refusals, from a separate process speaking the protocol over the socket.
describe('FirecrackerServer refuses malformed handshakes from a peer process', () => {
  let s: Scratch;
  let server: FirecrackerServer;
  let source: FilePageSource;
  const refused: { error: UffdError; pid: number; killed: boolean }[] = [];
  const sessions: FirecrackerSession[] = [];
  let fdsBefore: number;

  beforeAll(() => {
    s = scratch(8 * MiB);
    source = new FilePageSource(s.memFile);
    fdsBefore = openFds();
    server = FirecrackerServer.listen(s.socket, { source, onRefused: (error, pid, killed) => refused.push({ error, pid, killed }), onSession: (x) => sessions.push(x) });
  });
  afterAll(() => {
    server.close();
    source.close();
    s.remove();
  });

  const cases: [string, RegExp][] = [
    ['bad-json', /not valid JSON/],
    ['missing-field', /region 0 has no "size"/],
    ['overlap', /regions .* overlap/],
    ['overflow', /overflows 64 bits/],
    ['no-fd', /no descriptor came/],
    ['two-fds', /2 descriptors came/],
    ['not-uffd', /the descriptor sent is a file, not a userfaultfd/],
    ['unaligned', /not aligned to its page size/],
    ['not-array', /must be a JSON array/],
    ['empty', /no guest memory region/],
  ];
  for (const [kind, message] of cases) {
    it(`${kind}: a clear error, the peer killed (it would wait for its faults forever), that connection closed, nothing leaked`, async () => {
      const count = refused.length;
      const peer = startFcPeer(['--socket', s.socket, '--mem-file', s.memFile, '--regions', '1M,1M', '--malformed', kind]);
      const { signal, stderr } = await peer.exited;
      expect(stderr).toBe('');
      expect(signal).toBe('SIGKILL');
      expect(refused).toHaveLength(count + 1);
      expect(refused.at(-1)!.error.code).toBe('ERR_UFFD_BAD_HANDSHAKE');
      expect(refused.at(-1)!.error.message).toMatch(message);
      expect(refused.at(-1)!.pid).toBe(peer.child.pid);
      expect(refused.at(-1)!.killed).toBe(true);
      expect(sessions).toHaveLength(0);
      // The received descriptors and the connection are closed: only the listener remains.
      expect(openFds()).toBe(fdsBefore + 1);
    });
  }

  it('a connection that closes without sending anything is dropped, its process left alone', async () => {
    const count = refused.length;
    UnixConnection.connect(s.socket).close();
    await expect.poll(() => refused.length, { timeout: 10_000 }).toBe(count + 1);
    expect(refused.at(-1)).toMatchObject({ error: { code: 'ERR_UFFD_PEER_LOST' }, pid: process.pid, killed: false });
  });

  it('after all of them, serves a valid peer', async () => {
    const peer = startFcPeer(['--socket', s.socket, '--mem-file', s.memFile, '--regions', '1M,1M']);
    const { code, report } = await peer.exited;
    expect(report).toMatchObject({ ok: true, mismatches: 0 });
    expect(code).toBe(0);
    expect(sessions).toHaveLength(1);
    expect((await sessions[0]!.done).error).toBeUndefined();
  });

  it('reads again after a read that brought the text without the descriptor, as Firecracker\'s own handler does, and serves the peer', async () => {
    const count = refused.length;
    const peer = startFcPeer(['--socket', s.socket, '--mem-file', s.memFile, '--regions', '1M,1M', '--fd-late']);
    const { code, report } = await peer.exited;
    expect(report).toMatchObject({ ok: true, mismatches: 0 });
    expect(code).toBe(0);
    expect(refused).toHaveLength(count);
    expect(sessions).toHaveLength(2);
    expect((await sessions[1]!.done).error).toBeUndefined();
  });
});
