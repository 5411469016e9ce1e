// A TCP proxy on loopback that adds network latency (tc netem is not
// available on these kernels): every byte is held for half the round-trip
// time in each direction, and a new connection's first request waits one
// more round trip, as the TCP handshake would make it. It can also stall
// (hold every byte of the connections open now, forever) and drop (reset
// them). Used in-process by the tests, and as a child process by the bench
// (`node delay-proxy.mjs UPSTREAM_PORT RTT_MS` prints the port it listens on).
import net from 'node:net';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// Past this many unsent bytes towards one side, reading from the other pauses.
const HIGH_WATER = 16 * 1024 * 1024;

export class DelayProxy {
  #server;
  #upstream;
  #rttMs;
  #pairs = new Set();
  port = 0;
  connections = 0;

  constructor(upstreamPort, rttMs = 0) {
    this.#upstream = upstreamPort;
    this.#rttMs = rttMs;
    this.#server = net.createServer((client) => this.#accept(client));
  }

  static async start(upstreamPort, rttMs = 0) {
    const proxy = new DelayProxy(upstreamPort, rttMs);
    await new Promise((resolve, reject) => {
      proxy.#server.once('error', reject);
      proxy.#server.listen(0, '127.0.0.1', resolve);
    });
    proxy.port = proxy.#server.address().port;
    return proxy;
  }

  get rttMs() {
    return this.#rttMs;
  }

  set rttMs(ms) {
    this.#rttMs = ms;
  }

  /** Holds every byte of the connections open now, in both directions, for good; new connections are unaffected. */
  stallExisting() {
    for (const pair of this.#pairs) pair.stalled = true;
  }

  /** Resets every connection open now. */
  dropExisting() {
    for (const pair of this.#pairs) {
      pair.client.resetAndDestroy();
      pair.upstream.destroy();
    }
  }

  async close() {
    this.dropExisting();
    await new Promise((resolve) => this.#server.close(resolve));
  }

  #accept(client) {
    this.connections++;
    client.setNoDelay(true);
    const upstream = net.connect(this.#upstream, '127.0.0.1');
    upstream.setNoDelay(true);
    const pair = { client, upstream, stalled: false, acceptedAt: performance.now() };
    this.#pairs.add(pair);
    const end = () => {
      this.#pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', () => client.resetAndDestroy()).on('close', end);
    // Request direction: the handshake's round trip, then half an RTT.
    this.#pipe(pair, client, upstream, () => Math.max(performance.now(), pair.acceptedAt + this.#rttMs) + this.#rttMs / 2);
    this.#pipe(pair, upstream, client, () => performance.now() + this.#rttMs / 2);
  }

  #pipe(pair, from, to, dueOf) {
    const queue = [];
    let queued = 0;
    let timer;
    const flush = () => {
      timer = undefined;
      if (pair.stalled) return;
      // libuv's timers have millisecond resolution: send what is due within half of one.
      const now = performance.now() + 0.5;
      while (queue.length > 0 && queue[0].due <= now) {
        const { chunk } = queue.shift();
        queued -= chunk.length;
        to.write(chunk);
      }
      if (queued < HIGH_WATER && from.isPaused()) from.resume();
      if (queue.length > 0) timer = setTimeout(flush, queue[0].due - performance.now());
    };
    from.on('data', (chunk) => {
      if (pair.stalled) return;
      if (this.#rttMs === 0 && queue.length === 0) {
        if (!to.write(chunk)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
        return;
      }
      queue.push({ chunk, due: dueOf() });
      queued += chunk.length;
      if (queued >= HIGH_WATER) from.pause();
      if (!timer) timer = setTimeout(flush, queue[0].due - performance.now());
    });
    from.on('end', () => {
      const finish = () => (queue.length === 0 ? to.end() : setTimeout(finish, 1));
      finish();
    });
  }
}

/** Runs the proxy in a child process (so its work does not share the caller's event loop). */
export async function startProxyProcess(upstreamPort, rttMs) {
  const child = fork(fileURLToPath(import.meta.url), [String(upstreamPort), String(rttMs)], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const port = await new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (code) => reject(new Error(`the proxy exited with ${code}`)));
  });
  return {
    port,
    close: () => new Promise((resolve) => {
      child.once('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const proxy = await DelayProxy.start(Number(process.argv[2]), Number(process.argv[3] ?? 0));
  if (process.send) process.send(proxy.port);
  else process.stdout.write(`${proxy.port}\n`);
  process.once('SIGTERM', () => void proxy.close().then(() => process.exit(0)));
  process.once('disconnect', () => void proxy.close().then(() => process.exit(0)));
}
