// The one message Firecracker sends a page-fault handler when it restores a
// snapshot with a UFFD memory backend (src/vmm/src/persist.rs,
// send_uffd_handshake): a single sendmsg whose data is a JSON array of guest
// memory regions, with the userfaultfd as the only SCM_RIGHTS descriptor.
// Everything in it comes from another process and is checked here; a bad
// message is refused with ERR_UFFD_BAD_HANDSHAKE and a reason, and every
// descriptor that came with it is closed.
import fs from 'node:fs';
import { native } from './binding';
import { UffdError } from './errors';
import { JsonError, parseJsonU64, type JsonValue } from './json-u64';
import { systemPageSize } from './memory';
import type { UnixConnection } from './unix-socket';

/** One guest memory region as Firecracker describes it. */
export interface GuestRegion {
  /** Start of the region in the VMM's address space: its faults fall in [base, base + size). */
  readonly base: bigint;
  readonly size: number;
  /** Where the region's bytes start in the memory file (regions are stored back to back). */
  readonly offset: number;
  /** The region's page size in bytes: the host's base page size, or a huge page size. */
  readonly pageSize: number;
}

export interface Handshake {
  /** The userfaultfd (the receiver owns it). */
  readonly uffdFd: number;
  readonly regions: GuestRegion[];
}

export interface HandshakeLimits {
  /** Bytes of the memory image the regions are served from: every region must lie inside. */
  sourceSize: number;
  /** Defaults to this system's page size. */
  hostPageSize?: number;
  /** Huge page sizes the host has (default: read from /sys/kernel/mm/hugepages). */
  hugePageSizes?: readonly number[];
}

// Bounds on what a peer may send. Firecracker sends one object per memory
// region (a handful, about 120 bytes each).
export const MAX_HANDSHAKE_BYTES = 1 << 20;
export const MAX_REGIONS = 4096;
// The Firecracker page size for ordinary memory, whatever the host's page size.
const FIRECRACKER_BASE_PAGE = 4096n;
// No user address space reaches beyond 57 bits (5-level paging).
const ADDRESS_LIMIT = 1n << 57n;
const U64_LIMIT = 1n << 64n;

export function badHandshake(reason: string): UffdError {
  return new UffdError('ERR_UFFD_BAD_HANDSHAKE', `ERR_UFFD_BAD_HANDSHAKE: ${reason}. The connection was closed; a Firecracker-compatible peer sends one JSON array of {base_host_virt_addr, size, offset, page_size} objects with its userfaultfd attached`);
}

function hostHugePageSizes(): number[] {
  try {
    return fs.readdirSync('/sys/kernel/mm/hugepages').map((name) => Number(/^hugepages-(\d+)kB$/.exec(name)?.[1] ?? 0) * 1024).filter((n) => n > 0);
  } catch {
    return [];
  }
}

function u64Field(entry: { [key: string]: JsonValue }, name: string, index: number, required: true): bigint;
function u64Field(entry: { [key: string]: JsonValue }, name: string, index: number, required: false): bigint | undefined;
function u64Field(entry: { [key: string]: JsonValue }, name: string, index: number, required: boolean): bigint | undefined {
  if (!Object.hasOwn(entry, name)) {
    if (required) throw badHandshake(`region ${index} has no "${name}"`);
    return undefined;
  }
  const value = entry[name];
  if (typeof value !== 'bigint' || value < 0n || value >= U64_LIMIT) {
    const shown = typeof value === 'bigint' ? value.toString() : JSON.stringify(value);
    throw badHandshake(`region ${index}: "${name}" must be an unsigned 64-bit integer, not ${shown}`);
  }
  return value;
}

const hex = (value: bigint): string => `0x${value.toString(16)}`;

function parseRegion(raw: JsonValue, index: number, limits: Required<HandshakeLimits>): GuestRegion {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw badHandshake(`region ${index} is not an object`);
  const base = u64Field(raw, 'base_host_virt_addr', index, true);
  const size = u64Field(raw, 'size', index, true);
  const offset = u64Field(raw, 'offset', index, true);
  // page_size since v1.12; page_size_kib (in bytes, despite its name) since
  // v1.7; neither in v1.1-v1.6, whose memory was always base pages.
  // Where both are there, page_size is the one to believe.
  const announced = u64Field(raw, 'page_size', index, false) ?? u64Field(raw, 'page_size_kib', index, false) ?? FIRECRACKER_BASE_PAGE;
  let pageSize: number;
  if (announced === FIRECRACKER_BASE_PAGE || announced === BigInt(limits.hostPageSize)) {
    // Firecracker says 4096 for ordinary memory even where base pages are larger.
    pageSize = limits.hostPageSize;
  } else if (limits.hugePageSizes.some((s) => BigInt(s) === announced)) {
    pageSize = Number(announced);
  } else {
    throw badHandshake(`region ${index}: page size ${announced} is neither 4096, this host's page size (${limits.hostPageSize}), nor one of its huge page sizes (${limits.hugePageSizes.join(', ') || 'none'})`);
  }
  const page = BigInt(pageSize);
  if (size === 0n) throw badHandshake(`region ${index} is empty (size 0)`);
  if (base % page !== 0n) throw badHandshake(`region ${index}: base_host_virt_addr ${hex(base)} is not aligned to its page size (${pageSize})`);
  if (size % page !== 0n) throw badHandshake(`region ${index}: size ${size} is not a multiple of its page size (${pageSize})`);
  if (offset % BigInt(limits.hostPageSize) !== 0n) throw badHandshake(`region ${index}: offset ${offset} is not a multiple of the page size (${limits.hostPageSize})`);
  if (base + size > U64_LIMIT) throw badHandshake(`region ${index}: ${hex(base)} + ${size} overflows 64 bits`);
  if (base + size > ADDRESS_LIMIT) throw badHandshake(`region ${index}: [${hex(base)}, ${hex(base + size)}) lies outside any user address space`);
  if (offset + size > BigInt(limits.sourceSize)) {
    throw badHandshake(`region ${index}: its bytes [${offset}, ${offset + size}) lie beyond the end of the ${limits.sourceSize}-byte memory file`);
  }
  return { base, size: Number(size), offset: Number(offset), pageSize };
}

/**
 * Checks one handshake: the JSON text and the descriptors that came with it.
 * Closes nothing; the caller owns the descriptors either way.
 */
export function parseHandshake(text: string, fds: readonly number[], limits: HandshakeLimits): Handshake {
  const full: Required<HandshakeLimits> = {
    sourceSize: limits.sourceSize,
    hostPageSize: limits.hostPageSize ?? systemPageSize(),
    hugePageSizes: limits.hugePageSizes ?? hostHugePageSizes(),
  };
  if (fds.length === 0) throw badHandshake('no descriptor came with the message; Firecracker attaches its userfaultfd with SCM_RIGHTS');
  if (fds.length > 1) throw badHandshake(`${fds.length} descriptors came with the message; Firecracker sends exactly one, the userfaultfd`);
  const kind = native.descriptorKind(fds[0]!);
  if (kind !== 'userfaultfd') throw badHandshake(`the descriptor sent is a ${kind}, not a userfaultfd`);
  let parsed: JsonValue;
  try {
    parsed = parseJsonU64(text);
  } catch (error) {
    if (!(error instanceof JsonError)) throw error;
    throw badHandshake(`the message is not valid JSON (${error.message}): ${JSON.stringify(text.slice(0, 80))}${text.length > 80 ? '...' : ''}`);
  }
  if (!Array.isArray(parsed)) throw badHandshake('the message must be a JSON array of guest memory regions');
  if (parsed.length === 0) throw badHandshake('the message lists no guest memory region');
  if (parsed.length > MAX_REGIONS) throw badHandshake(`the message lists ${parsed.length} regions, more than ${MAX_REGIONS}`);
  const regions = parsed.map((raw, index) => parseRegion(raw, index, full));
  const order = regions.map((region, index) => ({ region, index })).sort((a, b) => (a.region.base < b.region.base ? -1 : a.region.base > b.region.base ? 1 : 0));
  for (let i = 1; i < order.length; i++) {
    const previous = order[i - 1]!;
    const next = order[i]!;
    if (previous.region.base + BigInt(previous.region.size) > next.region.base) {
      throw badHandshake(`regions ${previous.index} [${hex(previous.region.base)}, +${previous.region.size}) and ${next.index} [${hex(next.region.base)}, +${next.region.size}) overlap`);
    }
  }
  return { uffdFd: fds[0]!, regions };
}

export interface ReceiveHandshakeOptions extends HandshakeLimits {
  /** How long the peer may take to send its message after connecting (default 10 s). */
  timeoutMs?: number;
}

// complete: false while more reads may follow, when a character split
// between two reads is not an error (its first bytes are left out).
function decodeUtf8(chunks: Buffer[], complete: boolean): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Buffer.concat(chunks), { stream: !complete });
  } catch {
    throw badHandshake('the message is not UTF-8 text');
  }
}

// One sendmsg of a large message may arrive in several reads of a stream
// socket; the rest follows at once.
const CONTINUATION_TIMEOUT_MS = 1000;
// A read that brought text but no descriptor is dropped and the next one
// awaited, up to this many times, each for at most CONTINUATION_TIMEOUT_MS:
// Firecracker's reference handler does the same (five reads, a fd-less body
// discarded) for Firecracker before v1.12, whose handshakes were seen to
// arrive without their fd. A peer that sends nothing more is refused then.
const FDLESS_READS = 5;

/** Reads and checks the handshake of a new connection. On refusal, closes every descriptor received and throws. */
export async function receiveHandshake(connection: UnixConnection, options: ReceiveHandshakeOptions): Promise<Handshake> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const fds: number[] = [];
  try {
    // Nothing sent is not a malformed handshake: the peer (if it is
    // Firecracker at all) is not waiting on this handler, so it is not killed.
    const timedOut = (error: unknown): never => {
      if ((error as UffdError).code === 'ERR_UFFD_TIMEOUT') {
        throw new UffdError('ERR_UFFD_TIMEOUT', `ERR_UFFD_TIMEOUT: nothing arrived within ${timeoutMs} ms of connecting; the connection was closed`);
      }
      throw error;
    };
    let first = await connection.receive({ timeoutMs }).catch(timedOut);
    if (!first) throw new UffdError('ERR_UFFD_PEER_LOST', 'ERR_UFFD_PEER_LOST: the peer closed the connection without sending anything');
    for (let read = 1; first.fds.length === 0 && read < FDLESS_READS; read++) {
      const again = await connection.receive({ timeoutMs: CONTINUATION_TIMEOUT_MS }).catch(() => null);
      if (!again) break;
      first = again;
    }
    fds.push(...first.fds);
    if (first.fdsTruncated) throw badHandshake('more descriptors came than the one Firecracker sends (the kernel dropped those beyond 16)');
    const chunks = [first.data];
    let text = decodeUtf8(chunks, false);
    for (;;) {
      try {
        parseJsonU64(text);
        break;
      } catch (error) {
        // Wait for more only while the text is a valid beginning of JSON;
        // anything else is judged (and refused) by parseHandshake.
        if (!(error instanceof JsonError) || !error.incomplete || fds.length !== 1) break;
        if (text.length > MAX_HANDSHAKE_BYTES) throw badHandshake(`the message exceeds ${MAX_HANDSHAKE_BYTES} bytes`);
        const more = await connection.receive({ timeoutMs: CONTINUATION_TIMEOUT_MS }).catch(() => null);
        if (!more) break;
        fds.push(...more.fds);
        if (more.fds.length > 0) throw badHandshake(`${fds.length} descriptors came with the message; Firecracker sends exactly one, the userfaultfd`);
        chunks.push(more.data);
        text = decodeUtf8(chunks, false);
      }
    }
    return parseHandshake(decodeUtf8(chunks, true), fds, options);
  } catch (error) {
    for (const fd of fds) native.closeFd(fd);
    throw error;
  }
}
