// Unix domain stream sockets that carry descriptors with their data
// (SCM_RIGHTS), driven by the event loop without blocking it. This is how a
// uffd (and a memfd) moves between processes; Node's net module cannot do it.
import fs from 'node:fs';
import { native, type WatchHandle } from './binding';
import { UffdError, argTypeError, argValueError, libraryError, systemError } from './errors';
import * as validate from './validate';

export interface Message {
  /** Bytes of one recvmsg (a stream socket may split or join the sender's messages). */
  readonly data: Buffer;
  /** Descriptors that arrived with the data; the receiver owns them (close or adopt them). */
  readonly fds: number[];
  /** The sender attached more descriptors than maxFds; the kernel dropped the rest. */
  readonly fdsTruncated: boolean;
}

export interface ReceiveOptions {
  /** Rejects with ERR_UFFD_TIMEOUT when nothing arrives within this many milliseconds. */
  timeoutMs?: number;
}

const MAX_BYTES = 64 * 1024;
const MAX_FDS = 16;
// Unread data beyond this stops reading until the receiver catches up.
const QUEUE_LIMIT = 1 << 20;

export class UnixConnection {
  readonly fd: number;
  readonly #watch: WatchHandle;
  #queue: Message[] = [];
  #queued = 0;
  #waiting: { resolve: (message: Message | null) => void; reject: (error: unknown) => void }[] = [];
  #ended = false;
  #closed = false;
  #error: unknown;
  #onEnd: (() => void)[] = [];

  /** @internal Use UnixConnection.connect() or UnixServer.accept(). */
  constructor(fd: number) {
    this.fd = fd;
    this.#watch = new native.WatchHandle(fd, (status, readable, hangup) => this.#onReady(status, readable, hangup));
    this.#watch.start();
  }

  static connect(path: string): UnixConnection {
    if (typeof path !== 'string') throw argTypeError('path', 'of type string', path);
    return new UnixConnection(native.socketConnect(path));
  }

  /** The peer process's credentials (SO_PEERCRED), as of connect(). */
  get peer(): { pid: number; uid: number; gid: number } {
    return native.socketPeer(this.fd);
  }

  /**
   * A pidfd for the peer process, which the caller closes: SO_PEERPIDFD
   * (Linux 6.5; it names the process itself, so it works when the peer is in
   * a pid namespace this process cannot see), else pidfd_open() of the pid
   * SO_PEERCRED gives. Throws when the peer is gone or cannot be named.
   */
  openPeerPidfd(): number {
    try {
      return native.socketPeerPidfd(this.fd);
    } catch (error) {
      if ((error as { code?: string }).code !== 'ENOPROTOOPT') throw error;
    }
    return native.pidfdOpen(this.peer.pid);
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** One sendmsg: all of data, with fds attached. */
  send(data: string | ArrayBufferView, fds: number[] = []): void {
    if (this.#closed) throw libraryError('ERR_UFFD_CLOSED', 'sendmsg', 'this connection is closed');
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    if (!ArrayBuffer.isView(bytes)) throw argTypeError('data', 'a string, Buffer or TypedArray', data);
    if (bytes.byteLength === 0 && isDetached(bytes)) throw argValueError('data', 'is detached (transferred or destroyed); pass a live buffer');
    if (!Array.isArray(fds)) throw argTypeError('fds', 'an array of descriptors', fds);
    for (const fd of fds) validate.fd(fd, 'fds[]');
    const sent = native.socketSend(this.fd, bytes, fds);
    if (sent !== bytes.byteLength) {
      throw new UffdError('EAGAIN', `EAGAIN: only ${sent} of ${bytes.byteLength} bytes fit in the socket buffer, sendmsg — send smaller messages`, { syscall: 'sendmsg' });
    }
  }

  /** The next recvmsg's data and descriptors, or null at end of stream. */
  receive(options?: ReceiveOptions): Promise<Message | null> {
    const opts = validate.options<ReceiveOptions>(options, 'options');
    const timeoutMs = opts.timeoutMs === undefined ? undefined : validate.timeout(opts.timeoutMs, 'options.timeoutMs');
    const message = this.#queue.shift();
    if (message) {
      this.#queued -= message.data.length;
      this.#watch.start();
      return Promise.resolve(message);
    }
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended || this.#closed) return Promise.resolve(null);
    return new Promise<Message | null>((resolve, reject) => {
      const waiter = { resolve, reject };
      this.#waiting.push(waiter);
      if (timeoutMs !== undefined) {
        const timer = setTimeout(() => {
          const at = this.#waiting.indexOf(waiter);
          if (at < 0) return;
          this.#waiting.splice(at, 1);
          reject(libraryError('ERR_UFFD_TIMEOUT', 'recvmsg', `nothing arrived within ${timeoutMs} ms`));
        }, timeoutMs);
        const settle = (): void => clearTimeout(timer);
        waiter.resolve = (m) => (settle(), resolve(m));
        waiter.reject = (e) => (settle(), reject(e));
      }
    });
  }

  /** Resolves when the peer hangs up or the connection is closed. */
  waitEnd(): Promise<void> {
    if (this.#ended || this.#closed) return Promise.resolve();
    return new Promise((resolve) => this.#onEnd.push(resolve));
  }

  /** Whether this connection keeps the process alive while open (default true). */
  unref(): this {
    this.#watch.stop();
    return this;
  }

  /** Closes the socket and every received descriptor nobody took. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watch.close();
    native.closeFd(this.fd);
    for (const message of this.#queue.splice(0)) for (const fd of message.fds) native.closeFd(fd);
    this.#finish();
  }

  #onReady(status: number, readable: boolean, hangup: boolean): void {
    if (status < 0) {
      this.#error = systemError(status, 'recvmsg');
      this.#finish();
      return;
    }
    if (!readable && !hangup) return;
    for (;;) {
      let message: Message | null;
      try {
        message = native.socketReceive(this.fd, MAX_BYTES, MAX_FDS);
      } catch (error) {
        this.#error = error;
        this.#finish();
        return;
      }
      if (message === null) break;
      if (message.data.length === 0 && message.fds.length === 0) {
        this.#ended = true;
        this.#finish();
        return;
      }
      this.#deliver(message);
      if (this.#queued > QUEUE_LIMIT) {
        this.#watch.stop();
        break;
      }
    }
  }

  #deliver(message: Message): void {
    const waiter = this.#waiting.shift();
    if (waiter) {
      waiter.resolve(message);
      return;
    }
    this.#queue.push(message);
    this.#queued += message.data.length;
  }

  #finish(): void {
    if (!this.#closed) this.#watch.stop();
    for (const waiter of this.#waiting.splice(0)) {
      if (this.#error) waiter.reject(this.#error);
      else waiter.resolve(null);
    }
    for (const ended of this.#onEnd.splice(0)) ended();
  }
}

export class UnixServer {
  readonly path: string;
  readonly fd: number;
  readonly #watch: WatchHandle;
  #pending: UnixConnection[] = [];
  #waiting: { resolve: (c: UnixConnection | null) => void; reject: (error: unknown) => void }[] = [];
  #closed = false;
  // The file bind() made: close() removes that file, never one that has replaced it.
  readonly #file: { dev: number; ino: number } | undefined;

  private constructor(path: string, fd: number) {
    this.path = path;
    this.fd = fd;
    this.#file = identity(path);
    this.#watch = new native.WatchHandle(fd, (status) => this.#onReady(status));
    this.#watch.start();
  }

  /** Listens on path. A stale socket file there (nobody listens on it) is replaced; a path another socket listens on throws EADDRINUSE, a file that is not a socket EEXIST. */
  static listen(path: string, options?: { backlog?: number }): UnixServer {
    if (typeof path !== 'string') throw argTypeError('path', 'of type string', path);
    const backlog = validate.options<{ backlog: number }>(options, 'options').backlog ?? 16;
    // listen(2) caps the backlog at net.core.somaxconn itself.
    if (!Number.isSafeInteger(backlog) || backlog < 0 || backlog > 0x7fffffff) throw argTypeError('options.backlog', 'an integer >= 0 and < 2 ** 31', backlog);
    return new UnixServer(path, native.socketListen(path, backlog));
  }

  /** The next connection, or null once the server is closed. */
  accept(): Promise<UnixConnection | null> {
    const next = this.#pending.shift();
    if (next) return Promise.resolve(next);
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve, reject) => this.#waiting.push({ resolve, reject }));
  }

  async *connections(): AsyncGenerator<UnixConnection> {
    for (;;) {
      const connection = await this.accept();
      if (!connection) return;
      yield connection;
    }
  }

  unref(): this {
    this.#watch.stop();
    return this;
  }

  /** Stops listening and removes the socket file it bound, unless another file has replaced it at the path. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watch.close();
    native.closeFd(this.fd);
    const file = identity(this.path);
    if (file && file.dev === this.#file?.dev && file.ino === this.#file.ino) {
      try {
        fs.unlinkSync(this.path);
      } catch {
        // Gone meanwhile.
      }
    }
    for (const waiter of this.#waiting.splice(0)) waiter.resolve(null);
    for (const connection of this.#pending.splice(0)) connection.close();
  }

  #onReady(status: number): void {
    if (status < 0) {
      const error = systemError(status, 'accept');
      for (const waiter of this.#waiting.splice(0)) waiter.reject(error);
      return;
    }
    for (;;) {
      const fd = native.socketAccept(this.fd);
      if (fd < 0) return;
      const connection = new UnixConnection(fd);
      const waiter = this.#waiting.shift();
      if (waiter) waiter.resolve(connection);
      else this.#pending.push(connection);
    }
  }
}

// The file at path (not followed), or undefined when there is none to be seen.
function identity(path: string): { dev: number; ino: number } | undefined {
  try {
    const stat = fs.lstatSync(path);
    return { dev: stat.dev, ino: stat.ino };
  } catch {
    return undefined;
  }
}

/** What a descriptor is, from /proc/self/fd: 'userfaultfd', 'memfd', 'file', 'socket', 'closed', or an anon_inode name. */
export function descriptorKind(fd: number): string {
  return native.descriptorKind(validate.fd(fd, 'fd'));
}

function isDetached(view: ArrayBufferView): boolean {
  try {
    new Uint8Array(view.buffer);
    return false;
  } catch {
    return true;
  }
}
