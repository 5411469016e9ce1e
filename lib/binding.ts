// Loads the addon and describes it. Everything here is the raw binding: the
// public API (uffd.ts, memory.ts) validates arguments before calling it.
import path from 'node:path';
import { createRequire } from 'node:module';

export interface UffdHandle {
  readonly fd: number;
  register(start: bigint, length: bigint, mode: bigint, waits: boolean): bigint;
  unregister(start: bigint, length: bigint): void;
  // Addresses and lengths: a bigint, or a number that is a safe integer.
  copy(dst: bigint | number, source: ArrayBufferView | ArrayBuffer, mode: bigint): number;
  zeroPage(start: bigint | number, length: bigint | number, mode: bigint): number;
  continue(start: bigint | number, length: bigint | number, mode: bigint): number;
  poison(start: bigint, length: bigint, mode: bigint): number;
  move(dst: bigint, src: bigint, length: bigint, mode: bigint): number;
  wake(start: bigint | number, length: bigint | number): void;
  writeProtect(start: bigint | number, length: bigint | number, mode: bigint): void;
  rwProtect(start: bigint | number, length: bigint | number, mode: bigint): void;
  setMode(enable: bigint, disable: bigint): void;
  start(): void;
  stop(): void;
  setRef(ref: boolean): void;
  /** drain: read the uffd empty first, dropping what is queued (a uffd another process holds too). */
  close(drain?: boolean): void;
  /**
   * Starts the native fast path (native/page_server.h); ranges: [start, length, pageSize, sourceOffset, fill] per range;
   * backgroundPiece: bytes per background-fill ioctl, 0 for no background fill; fillThreads: helper threads that copy pieces;
   * backgroundNow: fill from the start rather than after the first fault.
   */
  serveNative(bytes: Uint8Array, present: Uint8Array | null, presentPage: number, ranges: BigUint64Array, readAhead: number, spin: boolean, backgroundPiece: number, fillThreads: number, backgroundNow: boolean, file: number, fileOffset: number): void;
  /** Fills out with the counters (COUNTERS_LENGTH numbers), or the counters and the histogram (STATS_LENGTH), in the order lib/stats.ts reads them. */
  stats(out: Float64Array): void;
  setSpin(enabled: boolean): void;
  /** The uffd has EVENT_UNMAP: an unmap() of its ranges on the serving thread is refused. */
  setEventWaits(remove: boolean, unmap: boolean): void;
  /** Blocks until messages are in the messages buffer: their count, 0 after timeoutMs, -1 once closed. */
  wait(timeoutMs: number, spin: boolean): number;
  /** An id another thread can share this uffd by (new UffdHandle(-1, ..., id)). */
  lend(): number;
}

export interface WatchHandle {
  start(): void;
  stop(): void;
  close(): void;
}

export interface Native {
  WatchHandle: new (fd: number, onReady: (status: number, readable: boolean, hangup: boolean) => void) => WatchHandle;
  socketListen(path: string, backlog: number): number;
  socketAccept(fd: number): number;
  socketConnect(path: string): number;
  socketSend(fd: number, data: ArrayBufferView, fds: number[]): number;
  socketReceive(fd: number, maxBytes: number, maxFds: number): { data: Buffer; fds: number[]; fdsTruncated: boolean } | null;
  socketPeer(fd: number): { pid: number; uid: number; gid: number };
  socketPeerPidfd(fd: number): number;
  descriptorKind(fd: number): string;
  pidfdOpen(pid: number): number;
  pidfdSignal(fd: number, signal: number): void;
  UffdHandle: new (fd: number, onMessages: (count: number) => void, messages: ArrayBuffer, lentId?: number) => UffdHandle;
  setErrorFactory(make: (errno: number, syscall: string, extra: Record<string, unknown>) => Error): void;
  open(userModeOnly: boolean): { fd: number; method: 'syscall' | 'device' };
  api(fd: number, features: bigint): { offered: bigint; ioctls: bigint };
  queryFeatures(userModeOnly: boolean): bigint;
  closeFd(fd: number): void;
  /** Closes every uffd this thread holds (at its exit). */
  closeAll(): void;
  memfdCreate(name: string, size: number, hugePageLog2: number): [number, number];
  filePageSize(fd: number): number;
  createGuestMemfd(size: number, wantedFlags: bigint): [number, number, bigint];
  systemPageSize(): number;
  mapShared(fd: number, offset: number, length: number, readOnly: boolean): bigint;
  mapAnonymous(length: number, hugePageLog2: number): bigint;
  unmap(address: bigint, length: number, detach: boolean): void;
  /** caller names the call in errors: 'view' or 'attachView'. */
  view(address: bigint, length: number, caller: 'view' | 'attachView'): ArrayBuffer;
  discard(address: bigint, length: number, remove: boolean): void;
  scanWritten(pid: number, start: bigint, length: number, rearm: boolean): BigUint64Array;
  scanAccessed(pid: number, start: bigint, length: number): BigUint64Array;
  read(address: bigint, length: number): Buffer;
  constants: Record<string, bigint | number>;
}

function load(): Native {
  if (process.platform !== 'linux') {
    throw Object.assign(new Error(`ERR_UFFD_UNSUPPORTED_PLATFORM: userfaultfd exists only on Linux, not ${process.platform}`), { code: 'ERR_UFFD_UNSUPPORTED_PLATFORM' });
  }
  const root = path.join(__dirname, '..');
  const require = createRequire(__filename);
  // An explicit build (a sanitizer build, say) wins over the default lookup.
  const explicit = process.env.USERFAULTFD_NATIVE;
  if (explicit) return require(path.resolve(explicit)) as Native;
  const gypBuild = require('node-gyp-build') as (dir: string) => Native;
  return gypBuild(root);
}

export const native: Native = load();
