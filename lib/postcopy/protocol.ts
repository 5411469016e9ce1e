// The post-copy wire protocol between a PageServer (the source) and a
// PostcopyClient (the destination), over one TCP connection. Every frame is
//
//   u32 bodyLength | u8 type | body (bodyLength bytes)       little-endian
//
// and every field received is checked here before anyone acts on it: a peer
// that sends anything malformed gets an ERROR frame and the connection closes.
// docs/postcopy.md describes the exchange.
import type net from 'node:net';
import { UffdError } from '../errors';

export const MAGIC = 0x43504655; // 'UFPC' read as a little-endian u32
export const VERSION = 1;
export const HEADER_SIZE = 5;
/** The most payload one DATA frame carries; the server splits larger runs. */
export const MAX_DATA = 1 << 20;
const MAX_BODY = MAX_DATA + 16;
const MAX_MESSAGE = 1024;
/** Page sizes a hello may announce: powers of two from 4 KiB to 1 GiB. */
const MIN_PAGE = 4096;
const MAX_PAGE = 1 << 30;

export const FRAME = {
  HELLO: 1, // source -> destination: image geometry and checksum
  START: 2, // destination -> source: begin, with options
  REQUEST: 3, // destination -> source: send these pages
  DATA: 4, // source -> destination: page contents
  DONE: 5, // source -> destination: every page has been sent
  ERROR: 6, // either way: why the sender is closing
  ACK: 7, // destination -> source: page bytes received so far (flow control)
  ATTACH: 8, // destination -> source, on a second connection: make it the session's urgent channel
} as const;

export const START_PREFETCH = 1; // START flag: stream the pages nobody asked for
export const REQUEST_URGENT = 1; // REQUEST flag: a thread is blocked on it

export interface Hello {
  type: typeof FRAME.HELLO;
  pageSize: number;
  imageSize: number;
  /** sha256 of the whole image. */
  checksum: Buffer;
  /** Names this connection's session, for an ATTACH on a second connection. */
  token: Buffer;
}
export interface Attach {
  type: typeof FRAME.ATTACH;
  token: Buffer;
}
export interface Start {
  type: typeof FRAME.START;
  prefetch: boolean;
}
export interface Request {
  type: typeof FRAME.REQUEST;
  id: number;
  urgent: boolean;
  offset: number;
  length: number;
}
export interface Data {
  type: typeof FRAME.DATA;
  /** The request this answers, 0 for a background push. */
  id: number;
  offset: number;
  payload: Buffer;
}
export interface Done {
  type: typeof FRAME.DONE;
}
export interface ErrorFrame {
  type: typeof FRAME.ERROR;
  code: string;
  message: string;
}
export interface Ack {
  type: typeof FRAME.ACK;
  /** DATA payload bytes received on the main connection since the start. */
  received: number;
}
export type Frame = Hello | Start | Request | Data | Done | ErrorFrame | Ack | Attach;

/** The error for a peer that broke the protocol (or whose connection broke). */
export function protocolError(reason: string, syscall = 'postcopy'): UffdError {
  return new UffdError('ERR_UFFD_PROTOCOL', `ERR_UFFD_PROTOCOL: ${reason}`, { syscall });
}

function frame(type: number, bodyLength: number): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_SIZE + bodyLength);
  buf.writeUInt32LE(bodyLength, 0);
  buf.writeUInt8(type, 4);
  return buf;
}

function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeBigUInt64LE(BigInt(value), at);
}

function readU64(buf: Buffer, at: number, name: string): number {
  const value = buf.readBigUInt64LE(at);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw protocolError(`${name} ${value} is beyond 2^53`);
  return Number(value);
}

export const TOKEN_SIZE = 8;
const HELLO_SIZE = 52 + TOKEN_SIZE;

export function encodeHello(pageSize: number, imageSize: number, checksum: Uint8Array, token: Uint8Array): Buffer {
  const buf = frame(FRAME.HELLO, HELLO_SIZE);
  buf.writeUInt32LE(MAGIC, 5);
  buf.writeUInt16LE(VERSION, 9);
  buf.writeUInt16LE(0, 11);
  buf.writeUInt32LE(pageSize, 13);
  writeU64(buf, imageSize, 17);
  Buffer.from(checksum.buffer, checksum.byteOffset, checksum.byteLength).copy(buf, 25);
  Buffer.from(token.buffer, token.byteOffset, token.byteLength).copy(buf, 57);
  return buf;
}

export function encodeAttach(token: Uint8Array): Buffer {
  const buf = frame(FRAME.ATTACH, 4 + TOKEN_SIZE);
  buf.writeUInt16LE(VERSION, 5);
  buf.writeUInt16LE(0, 7);
  Buffer.from(token.buffer, token.byteOffset, token.byteLength).copy(buf, 9);
  return buf;
}

export function encodeStart(prefetch: boolean): Buffer {
  const buf = frame(FRAME.START, 4);
  buf.writeUInt16LE(VERSION, 5);
  buf.writeUInt16LE(prefetch ? START_PREFETCH : 0, 7);
  return buf;
}

export function encodeRequest(id: number, offset: number, length: number, urgent: boolean): Buffer {
  const buf = frame(FRAME.REQUEST, 20);
  buf.writeUInt32LE(id, 5);
  buf.writeUInt32LE(urgent ? REQUEST_URGENT : 0, 9);
  writeU64(buf, offset, 13);
  buf.writeUInt32LE(length, 21);
  return buf;
}

/** The header of a DATA frame; the payload follows it on the wire (sent separately, not copied). */
export function encodeDataHeader(id: number, offset: number, payloadLength: number): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_SIZE + 12);
  buf.writeUInt32LE(12 + payloadLength, 0);
  buf.writeUInt8(FRAME.DATA, 4);
  buf.writeUInt32LE(id, 5);
  writeU64(buf, offset, 9);
  return buf;
}

export function encodeAck(received: number): Buffer {
  const buf = frame(FRAME.ACK, 8);
  writeU64(buf, received, 5);
  return buf;
}

export function encodeDone(): Buffer {
  return frame(FRAME.DONE, 0);
}

/** An ERROR frame: `code '\n' message`, cut to MAX_MESSAGE bytes without splitting a UTF-8 character. */
export function encodeError(code: string, message: string): Buffer {
  const text = Buffer.from(`${code}\n${message}`, 'utf8');
  let length = Math.min(text.length, MAX_MESSAGE);
  // A continuation byte (10xxxxxx) cannot start a character: cut before the one it belongs to.
  if (length < text.length) while (length > 0 && (text[length]! & 0xc0) === 0x80) length--;
  const buf = frame(FRAME.ERROR, length);
  text.copy(buf, HEADER_SIZE, 0, length);
  return buf;
}

/**
 * Sends ERROR and closes the connection: what either side does on a
 * violation (docs/postcopy.md). A peer that does not close its side within
 * a second is cut off.
 */
export function endWithError(socket: net.Socket, error: { code: string; message: string }): void {
  if (socket.destroyed || socket.writableEnded) return;
  // The connection is being closed for cause: a write that fails now (the peer is gone) changes nothing.
  socket.on('error', () => {});
  // What the peer still sends is read and dropped, so that its close is seen
  // and ours is a FIN, not a reset that could discard the ERROR.
  socket.resume();
  socket.end(encodeError(error.code, error.message));
  setTimeout(() => socket.destroy(), 1000).unref();
}

/** What the receiving side knows, to check frames against. */
export interface Geometry {
  pageSize: number;
  imageSize: number;
}

/** Checks that [offset, offset+length) is a non-empty page-aligned range inside the image. */
export function checkRange(what: string, offset: number, length: number, geometry: Geometry): void {
  const { pageSize, imageSize } = geometry;
  if (length === 0) throw protocolError(`${what}: empty range at ${offset}`);
  if (offset % pageSize !== 0 || length % pageSize !== 0) {
    throw protocolError(`${what}: [${offset}, +${length}) is not aligned to the ${pageSize}-byte page`);
  }
  if (offset >= imageSize || length > imageSize - offset) {
    throw protocolError(`${what}: [${offset}, +${length}) lies outside the ${imageSize}-byte image`);
  }
}

function expectLength(type: string, body: Buffer, length: number): void {
  if (body.length !== length) throw protocolError(`a ${type} frame has ${body.length} body bytes, not ${length}`);
}

// A reserved field must be 0, so that a later version can give it a meaning
// without an older peer silently misreading it.
function expectReserved(type: string, body: Buffer, at: number): void {
  const value = body.readUInt16LE(at);
  if (value !== 0) throw protocolError(`a ${type} frame's reserved u16 at body offset ${at} is ${value}, not 0`);
}

/**
 * Decodes one frame's body. `accept` lists the types this side may receive;
 * `geometry` (null before the hello) bounds every offset and length.
 */
export function decode(type: number, body: Buffer, accept: ReadonlySet<number>, geometry: Geometry | null): Frame {
  if (!accept.has(type)) throw protocolError(`unexpected frame type ${type} here`);
  switch (type) {
    case FRAME.HELLO: {
      expectLength('HELLO', body, HELLO_SIZE);
      if (body.readUInt32LE(0) !== MAGIC) throw protocolError('the peer is not a post-copy page server (bad magic)');
      const version = body.readUInt16LE(4);
      if (version !== VERSION) throw protocolError(`the page server speaks protocol version ${version}; this client speaks ${VERSION}`);
      expectReserved('HELLO', body, 6);
      const pageSize = body.readUInt32LE(8);
      if (pageSize < MIN_PAGE || pageSize > MAX_PAGE || (pageSize & (pageSize - 1)) !== 0) {
        throw protocolError(`the hello announces a page size of ${pageSize} bytes: not a power of two between 4 KiB and 1 GiB`);
      }
      const imageSize = readU64(body, 12, 'the image size');
      if (imageSize === 0 || imageSize % pageSize !== 0) {
        throw protocolError(`the hello announces an image of ${imageSize} bytes: not a non-zero multiple of the page size (${pageSize})`);
      }
      return { type, pageSize, imageSize, checksum: Buffer.from(body.subarray(20, 52)), token: Buffer.from(body.subarray(52, HELLO_SIZE)) };
    }
    case FRAME.ATTACH: {
      expectLength('ATTACH', body, 4 + TOKEN_SIZE);
      const version = body.readUInt16LE(0);
      if (version !== VERSION) throw protocolError(`the client speaks protocol version ${version}; this server speaks ${VERSION}`);
      expectReserved('ATTACH', body, 2);
      return { type, token: Buffer.from(body.subarray(4)) };
    }
    case FRAME.START: {
      expectLength('START', body, 4);
      const version = body.readUInt16LE(0);
      if (version !== VERSION) throw protocolError(`the client speaks protocol version ${version}; this server speaks ${VERSION}`);
      const flags = body.readUInt16LE(2);
      if ((flags & ~START_PREFETCH) !== 0) throw protocolError(`START carries unknown flags 0x${flags.toString(16)}`);
      return { type, prefetch: (flags & START_PREFETCH) !== 0 };
    }
    case FRAME.REQUEST: {
      expectLength('REQUEST', body, 20);
      const flags = body.readUInt32LE(4);
      if ((flags & ~REQUEST_URGENT) !== 0) throw protocolError(`REQUEST carries unknown flags 0x${flags.toString(16)}`);
      // DATA id 0 marks a push: an answer to request 0 could not be told from one.
      const id = body.readUInt32LE(0);
      if (id === 0) throw protocolError('REQUEST id 0: request ids are non-zero (DATA id 0 is a push)');
      const offset = readU64(body, 8, 'a request offset');
      const length = body.readUInt32LE(16);
      checkRange('REQUEST', offset, length, geometry!);
      return { type, id, urgent: (flags & REQUEST_URGENT) !== 0, offset, length };
    }
    case FRAME.DATA: {
      if (body.length < 12) throw protocolError(`a DATA frame has ${body.length} body bytes, fewer than its 12-byte header`);
      const offset = readU64(body, 4, 'a data offset');
      const payload = body.subarray(12);
      checkRange('DATA', offset, payload.length, geometry!);
      return { type, id: body.readUInt32LE(0), offset, payload };
    }
    case FRAME.ACK:
      expectLength('ACK', body, 8);
      return { type, received: readU64(body, 0, 'an acknowledged byte count') };
    case FRAME.DONE:
      expectLength('DONE', body, 0);
      return { type };
    case FRAME.ERROR: {
      if (body.length > MAX_MESSAGE) throw protocolError(`an ERROR frame of ${body.length} body bytes is longer than the ${MAX_MESSAGE} allowed`);
      const text = body.toString('utf8');
      const newline = text.indexOf('\n');
      const code = newline < 0 ? 'ERR_UFFD_PEER' : text.slice(0, newline);
      return { type, code: /^[A-Z_]{1,64}$/.test(code) ? code : 'ERR_UFFD_PEER', message: newline < 0 ? text : text.slice(newline + 1) };
    }
    default:
      throw protocolError(`unknown frame type ${type}`);
  }
}

/**
 * Splits a byte stream into frames. Chunks are kept as they arrive and joined
 * only for a frame that spans several of them.
 */
export class FrameReader {
  #chunks: Buffer[] = [];
  #buffered = 0;
  #returned: [number, Buffer][] = [];

  /** Appends a chunk and returns the complete frames it finished, as [type, body]. */
  push(chunk: Buffer): [number, Buffer][] {
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
    }
    const frames: [number, Buffer][] = this.#returned;
    this.#returned = [];
    for (;;) {
      if (this.#buffered < HEADER_SIZE) break;
      const head = this.#peek(HEADER_SIZE);
      const bodyLength = head.readUInt32LE(0);
      if (bodyLength > MAX_BODY) throw protocolError(`a frame announces ${bodyLength} body bytes, more than the ${MAX_BODY} allowed`);
      if (this.#buffered < HEADER_SIZE + bodyLength) break;
      const whole = this.#take(HEADER_SIZE + bodyLength);
      frames.push([whole.readUInt8(4), whole.subarray(HEADER_SIZE)]);
    }
    return frames;
  }

  /** Puts whole frames back, to be returned first by the next push. */
  unshift(frames: [number, Buffer][]): void {
    this.#returned.unshift(...frames);
  }

  /** Bytes received that do not yet form a whole frame. */
  get buffered(): number {
    return this.#buffered;
  }

  #peek(length: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= length) return first;
    this.#chunks = [Buffer.concat(this.#chunks)];
    return this.#chunks[0]!;
  }

  #take(length: number): Buffer {
    const first = this.#peek(length);
    this.#buffered -= length;
    if (first.length === length) {
      this.#chunks.shift();
      return first;
    }
    this.#chunks[0] = first.subarray(length);
    return first.subarray(0, length);
  }
}
