// Every public function fed bad arguments: wrong types, negative, huge,
// unaligned, NaN, detached buffers. Each gets a clear error (a Node-style
// code and a message that names the argument or the syscall), never a crash
// and never a raw error from the addon, and the uffd goes on working.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  FilePageSource, Mapping, Memfd, UnixConnection, UnixServer, Userfaultfd, attachView, descriptorKind, scanWritten,
} from '../dist/index.js';
import { PAGE, SLOWDOWN, touch } from './helpers';

const CODE = /^(ERR_[A-Z0-9_]+|E[A-Z0-9]+)$/;

function detachedBuffer(): ArrayBuffer {
  const buffer = new ArrayBuffer(PAGE);
  structuredClone(buffer, { transfer: [buffer] });
  return buffer;
}

function detachedView(): Uint8Array {
  const view = new Uint8Array(new ArrayBuffer(PAGE));
  structuredClone(view.buffer, { transfer: [view.buffer] });
  return view;
}

// Values that are no valid address (a bigint in [0, 2^64)) and no valid size.
const NOT_AN_ADDRESS: unknown[] = [undefined, null, 'x', 4096, 1.5, Number.NaN, -1n, 1n << 64n, {}, [], Symbol('s'), () => 0];
const NOT_A_SIZE: unknown[] = [undefined, null, 'x', 1.5, Number.NaN, Infinity, -Infinity, -1, -1n, 2 ** 53, 1n << 64n, {}, [], Symbol('s')];
const NOT_OPTIONS: unknown[] = [null, 'x', 5, 5n, Symbol('s')];
const NOT_DATA: unknown[] = [undefined, null, 'x', 5, 5n, {}, [1, 2], detachedBuffer(), detachedView(), Symbol('s')];
const NOT_A_FD: unknown[] = [undefined, null, 'x', -1, 1.5, Number.NaN, 2 ** 31, 2 ** 53, -1n, {}, Symbol('s')];

interface Case { what: string; call: () => unknown }

/** The error a call throws or rejects with, or undefined when it succeeds. */
async function errorOf(call: () => unknown): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  try {
    // A promise must settle: an argument it ignores must not leave it waiting forever.
    const hung = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('HUNG: never settled')), 2000 * SLOWDOWN)));
    await Promise.race([call(), hung]);
  } catch (error) {
    return error;
  } finally {
    clearTimeout(timer);
  }
  return undefined;
}

function show(value: unknown): string {
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'symbol' || typeof value === 'function') return String(value);
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) return `${value.constructor.name}(${value.byteLength})`;
  return JSON.stringify(value, (_, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v)) ?? String(value);
}

async function expectClearErrors(cases: Case[]): Promise<void> {
  const unclear: string[] = [];
  for (const { what, call } of cases) {
    const error = await errorOf(call) as { code?: unknown; message?: unknown } | undefined;
    if (!(error instanceof Error)) unclear.push(`${what}: ${error === undefined ? 'did not throw' : `threw a non-Error ${String(error)}`}`);
    else if (typeof error.code !== 'string' || !CODE.test(error.code)) unclear.push(`${what}: no error code (${error.name}: ${error.message})`);
    else if (typeof error.message !== 'string' || error.message.length < 12 || /^argument \d/.test(error.message)) unclear.push(`${what}: unclear message '${error.message}'`);
  }
  expect(unclear).toEqual([]);
}

/** Runs call on a new uffd, closed afterwards. */
function fresh(call: (uffd: Userfaultfd) => unknown): unknown {
  const uffd = Userfaultfd.open();
  try {
    return call(uffd);
  } finally {
    uffd.close();
  }
}

const each = (name: string, values: unknown[], call: (value: never) => unknown): Case[] =>
  values.map((value) => ({ what: `${name}(${show(value)})`, call: () => call(value as never) }));

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-bad-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('bad arguments to every public function', () => {
  it('Userfaultfd: open, fromFd, register, unregister, the resolving ioctls, serve, events', async () => {
    const mapping = Mapping.anonymous(4 * PAGE);
    const uffd = Userfaultfd.open();
    uffd.register(mapping);
    const a = mapping.address;
    await expectClearErrors([
      ...each('open', NOT_OPTIONS, (v) => Userfaultfd.open(v)),
      ...each('open features', ['THREAD_ID', 5, {}, [5], ['NOPE'], [null]], (v) => Userfaultfd.open({ features: v })),
      ...each('fromFd', NOT_A_FD, (v) => Userfaultfd.fromFd(v)),
      ...each('fromFd options', NOT_OPTIONS, (v) => Userfaultfd.fromFd(1_000_000, v)),
      ...each('fromFd ranges', [5, 'x', [null], [{ address: 'x', length: PAGE }], [{ address: a, length: -1 }], [{ address: a, length: PAGE, pageSize: 0 }],
        [{ address: a, length: PAGE, pageSize: 3 }], [{ address: a + 1n, length: PAGE }]], (v) => Userfaultfd.fromFd(1_000_000, { ranges: v })),
      ...each('register target', [undefined, null, 5, 'x', a, {}, { address: a }, { length: PAGE }], (v) => uffd.register(v)),
      ...each('register address', NOT_AN_ADDRESS, (v) => uffd.register({ address: v, length: PAGE })),
      ...each('register length', NOT_A_SIZE, (v) => uffd.register({ address: a, length: v })),
      ...each('register pageSize', [0, -1, 3, PAGE + 1, 1.5, Number.NaN, 'x'], (v) => uffd.register({ address: a, length: PAGE, pageSize: v })),
      ...each('register modes', [...NOT_OPTIONS, {}, { missing: false }], (v) => uffd.register(mapping, v)),
      ...each('unregister', [undefined, null, 5, 'x', {}], (v) => uffd.unregister(v)),
      ...each('unregister unaligned', [1n, BigInt(PAGE - 1)], (v) => uffd.unregister({ address: a + v, length: PAGE })),
      ...each('copy address', [...NOT_AN_ADDRESS, a + 1n], (v) => uffd.copy(v, new Uint8Array(PAGE))),
      ...each('copy data', [...NOT_DATA, new Uint8Array(PAGE + 1), new Uint8Array(0)], (v) => uffd.copy(a, v)),
      ...each('copy options', NOT_OPTIONS, (v) => uffd.copy(a, new Uint8Array(PAGE), v)),
      ...each('copy huge', [1n << 63n, (1n << 64n) - BigInt(PAGE)], (v) => uffd.copy(v, new Uint8Array(PAGE))),
      ...each('zeroPage address', NOT_AN_ADDRESS, (v) => uffd.zeroPage(v, PAGE)),
      ...each('zeroPage length', [...NOT_A_SIZE, 0, 1, PAGE + 1, 2 ** 52], (v) => uffd.zeroPage(a, v)),
      ...each('zeroPage options', NOT_OPTIONS, (v) => uffd.zeroPage(a, PAGE, v)),
      ...each('continue', NOT_A_SIZE, (v) => uffd.continue(a, v)),
      ...each('continue options', NOT_OPTIONS, (v) => uffd.continue(a, PAGE, v)),
      ...each('poison', NOT_AN_ADDRESS, (v) => uffd.poison(v, PAGE)),
      ...each('writeProtect', NOT_A_SIZE, (v) => uffd.writeProtect(a, v, true)),
      ...each('move src', [...NOT_AN_ADDRESS, a + 1n], (v) => uffd.move(a, v, PAGE)),
      ...each('move length', NOT_A_SIZE, (v) => uffd.move(a, a + BigInt(PAGE), v)),
      ...each('wake', NOT_AN_ADDRESS, (v) => uffd.wake(v, PAGE)),
      ...each('wake wrapping', [(1n << 64n) - BigInt(PAGE)], (v) => uffd.wake(v, 2 * PAGE)),
      // Each on a uffd of its own: one that wrongly started serving would make the next ones ERR_UFFD_BUSY.
      ...each('serve handler', [undefined, null, 'x', 5, {}], (v) => fresh((u) => u.serve(v))),
      ...each('serve options', NOT_OPTIONS, (v) => fresh((u) => u.serve(() => {}, v))),
      ...each('serve failure', ['explode', 5, null], (v) => fresh((u) => u.serve(() => {}, { failure: v }))),
      ...each('serve onError', ['x', 5, {}], (v) => fresh((u) => u.serve(() => {}, { onError: v }))),
      ...each('serve onEvent', ['x', 5, {}], (v) => fresh((u) => u.serve(() => {}, { onEvent: v }))),
    ]);
    // Nothing above changed the registration or claimed the event stream.
    expect(uffd.registrations).toHaveLength(1);
    void uffd.serve((fault) => void fault.copy(new Uint8Array(PAGE).fill(2)));
    expect((await touch({ address: a, length: mapping.length }).result).sum).toBe(8);
    uffd.close();
    mapping.unmap();
  });

  it('memory: Memfd, Mapping, attachView, scanWritten', async () => {
    const memfd = Memfd.create(2 * PAGE);
    const mapping = Mapping.anonymous(2 * PAGE);
    const file = path.join(dir, 'file');
    fs.writeFileSync(file, Buffer.alloc(2 * PAGE, 1));
    await expectClearErrors([
      ...each('Memfd.create', [...NOT_A_SIZE, 0, 1, PAGE + 1], (v) => Memfd.create(v)),
      ...each('Memfd.create options', NOT_OPTIONS, (v) => Memfd.create(PAGE, v)),
      ...each('Memfd.create name', [5, {}, 'x'.repeat(300)], (v) => Memfd.create(PAGE, { name: v })),
      ...each('Memfd.create hugePages', ['x', -1, 1.5, 3, 1, 2, PAGE, 2 ** 40, Number.NaN], (v) => Memfd.create(PAGE, { hugePages: v })),
      ...each('memfd.map', NOT_OPTIONS, (v) => memfd.map(v)),
      ...each('memfd.map offset', [...NOT_A_SIZE.filter((v) => v !== undefined && v !== null), 1, 4 * PAGE], (v) => memfd.map({ offset: v })),
      ...each('memfd.map length', [...NOT_A_SIZE.filter((v) => v !== undefined && v !== null), 0, 1, 4 * PAGE], (v) => memfd.map({ length: v })),
      ...each('Mapping.anonymous', [...NOT_A_SIZE, 0, 1, PAGE + 1, 2 ** 52], (v) => Mapping.anonymous(v)),
      ...each('Mapping.anonymous hugePages', ['x', -1, 1.5, 3, 1, 2, PAGE, 2 ** 40], (v) => Mapping.anonymous(PAGE, { hugePages: v })),
      ...each('Mapping.file path', [undefined, null, 5, {}, path.join(dir, 'missing'), dir], (v) => Mapping.file(v)),
      ...each('Mapping.file options', NOT_OPTIONS, (v) => Mapping.file(file, v)),
      ...each('Mapping.file offset', [-1, 1, Number.NaN, 'x', 4 * PAGE], (v) => Mapping.file(file, { offset: v })),
      ...each('Mapping.file length', [-1, 0, Number.NaN, 'x', 4 * PAGE], (v) => Mapping.file(file, { length: v })),
      ...each('mapping.view offset', [...NOT_A_SIZE.filter((v) => v !== undefined), 3 * PAGE], (v) => mapping.view(v)),
      ...each('mapping.view length', [...NOT_A_SIZE.filter((v) => v !== undefined), 3 * PAGE], (v) => mapping.view(0, v)),
      ...each('mapping.read', [...NOT_A_SIZE.filter((v) => v !== undefined), 3 * PAGE], (v) => mapping.read(v)),
      ...each('mapping.discard', [1, PAGE + 1, -1, Number.NaN, 'x', 3 * PAGE], (v) => mapping.discard(v)),
      ...each('attachView address', [...NOT_AN_ADDRESS, 0n, 8n], (v) => attachView(v, PAGE)),
      ...each('attachView length', [...NOT_A_SIZE, 3 * PAGE], (v) => attachView(mapping.address, v)),
      ...each('scanWritten address', NOT_AN_ADDRESS, (v) => scanWritten(v, PAGE)),
      ...each('scanWritten length', NOT_A_SIZE, (v) => scanWritten(mapping.address, v)),
      ...each('scanWritten options', NOT_OPTIONS, (v) => scanWritten(mapping.address, PAGE, v)),
      ...each('scanWritten pid', [-1, 1.5, 'x', 2 ** 31, 2 ** 40], (v) => scanWritten(mapping.address, PAGE, { pid: v })),
      ...each('FilePageSource', [undefined, 5, path.join(dir, 'missing')], (v) => new FilePageSource(v)),
    ]);
    // The memory is as it was.
    expect(mapping.read().every((b) => b === 0)).toBe(true);
    expect(memfd.map().read().length).toBe(2 * PAGE);
    mapping.unmap();
    memfd.close();
  });

  it('Unix sockets and descriptorKind', async () => {
    const socketPath = path.join(dir, 'sock');
    const server = UnixServer.listen(socketPath);
    const client = UnixConnection.connect(socketPath);
    const accepted = (await server.accept())!;
    await expectClearErrors([
      ...each('UnixServer.listen', [undefined, 5, {}, path.join(dir, 'no', 'such', 'dir'), 'x'.repeat(200)], (v) => UnixServer.listen(v)),
      ...each('UnixServer.listen backlog', ['x', -1, 1.5, Number.NaN, 2 ** 40], (v) => UnixServer.listen(path.join(dir, 'other'), { backlog: v })),
      ...each('UnixServer.listen options', NOT_OPTIONS, (v) => UnixServer.listen(path.join(dir, 'other2'), v)),
      ...each('UnixConnection.connect', [undefined, 5, {}, path.join(dir, 'missing'), 'x'.repeat(200)], (v) => UnixConnection.connect(v)),
      ...each('send data', [undefined, null, 5, {}, detachedView()], (v) => client.send(v)),
      ...each('send fds', ['x', [-1], [1.5], ['x'], [2 ** 31], [1_000_000]], (v) => client.send('x', v)),
      ...each('receive options', NOT_OPTIONS, (v) => accepted.receive(v)),
      ...each('receive timeoutMs', [-1, Number.NaN, 'x', Infinity, 2 ** 40], (v) => accepted.receive({ timeoutMs: v })),
      ...each('descriptorKind', NOT_A_FD, (v) => descriptorKind(v)),
    ]);
    client.send('still works');
    expect((await accepted.receive({ timeoutMs: 10_000 }))!.data.toString()).toBe('still works');
    client.close();
    accepted.close();
    server.close();
  });

  it('writeProtect refuses an enable that is not a boolean, and leaves the protection as it was', () => {
    const mapping = Mapping.anonymous(PAGE);
    mapping.view().fill(1);
    const uffd = Userfaultfd.open({ features: ['WP_ASYNC', 'WP_UNPOPULATED'] });
    uffd.register(mapping, { wp: true });
    // The page is present and unprotected: PAGEMAP_SCAN counts it as written.
    const written = [{ start: mapping.address, end: mapping.end }];
    expect(scanWritten(mapping.address, PAGE, { rearm: false })).toEqual(written);
    for (const enable of ['false', 1, 0, null, undefined]) {
      expect(() => uffd.writeProtect(mapping.address, PAGE, enable as never)).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }));
    }
    expect(scanWritten(mapping.address, PAGE, { rearm: false })).toEqual(written);
    uffd.close();
    mapping.unmap();
  });

  it('view, read and discard refuse a range beyond the mapping as Node refuses one beyond a Buffer: RangeError ERR_OUT_OF_RANGE, before ERR_UFFD_NOT_MAPPED', () => {
    const mapping = Mapping.anonymous(2 * PAGE);
    const outOfRange = expect.objectContaining({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
    for (const call of [(o: number, l?: number) => mapping.view(o, l), (o: number, l?: number) => mapping.read(o, l), (o: number, l?: number) => mapping.discard(o, l)]) {
      expect(() => call(3 * PAGE)).toThrow(outOfRange);
      expect(() => call(0, 3 * PAGE)).toThrow(outOfRange);
      expect(() => call(PAGE, 2 * PAGE)).toThrow(outOfRange);
    }
    mapping.unmap();
    expect(() => mapping.view(0, 3 * PAGE)).toThrow(outOfRange);
    expect(() => mapping.view()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_NOT_MAPPED' }));
  });

  it('Memfd.create refuses a name that is not a string with ERR_INVALID_ARG_TYPE, and one memfd_create cannot take with ERR_INVALID_ARG_VALUE', () => {
    expect(() => Memfd.create(PAGE, { name: 5 as never })).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }));
    for (const name of ['\u00e9'.repeat(200), 'a\u0000b']) {
      expect(() => Memfd.create(PAGE, { name })).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' }));
    }
    expect(Memfd.create(PAGE, { name: 'x'.repeat(249) }).name).toHaveLength(249);
  });
});
