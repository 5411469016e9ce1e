// A TCP proxy on loopback that adds network latency (tc netem is not
// available on these kernels): every byte is held for half the round-trip
// time in each direction, and a new connection's first request waits one
// more round trip, as the TCP handshake would make it; bandwidth is not
// limited. It can also stall (hold every byte of the connections open now,
// forever) and drop (reset them). The proxy is a small C program
// (delay-proxy.c, built here into build/fixtures like the tests' other C
// fixtures) in a child process, so that moving bytes costs neither the
// caller's event loop nor a JavaScript callback per chunk; used by the tests
// and by the bench.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const source = path.join(here, 'delay-proxy.c');
const binary = path.join(here, '..', '..', 'build', 'fixtures', 'delay-proxy');

/** The compiled proxy, built if missing or older than its source. */
export function delayProxyBinary() {
  if (!fs.existsSync(binary) || fs.statSync(binary).mtimeMs < fs.statSync(source).mtimeMs) {
    fs.mkdirSync(path.dirname(binary), { recursive: true });
    // Test files run in parallel: each builds its own copy and renames it in place.
    const temporary = `${binary}.${process.pid}`;
    execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-o', temporary, source], { stdio: 'inherit' });
    fs.renameSync(temporary, binary);
  }
  return binary;
}

export class DelayProxy {
  #child;
  #acks = [];
  #exited;
  #rttMs;
  port = 0;

  constructor(child, rttMs) {
    this.#child = child;
    this.#rttMs = rttMs;
  }

  /** Starts a proxy to 127.0.0.1:upstreamPort adding rttMs of round trip; resolves once it listens. */
  static async start(upstreamPort, rttMs = 0) {
    const child = spawn(delayProxyBinary(), [String(upstreamPort), String(rttMs)], { stdio: ['pipe', 'pipe', 'inherit'] });
    const proxy = new DelayProxy(child, rttMs);
    // A proxy that died is reported by its exit; writes to it after that are moot.
    child.stdin.on('error', () => {});
    let exitCode;
    proxy.#exited = new Promise((resolve) => child.once('exit', (code, signal) => {
      exitCode = code ?? signal;
      // With the proxy gone, so are the connections a stall or a drop was for.
      for (const ack of proxy.#acks.splice(0)) ack.resolve();
      resolve();
    }));
    const lines = readline.createInterface({ input: child.stdout });
    proxy.port = await new Promise((resolve, reject) => {
      lines.once('line', (line) => resolve(Number(line)));
      child.once('error', reject);
      void proxy.#exited.then(() => reject(new Error(`the delay proxy exited (${exitCode}) before listening`)));
    });
    lines.on('line', () => proxy.#acks.shift()?.resolve());
    return proxy;
  }

  get rttMs() {
    return this.#rttMs;
  }

  /** Holds every byte of the connections open now, in both directions, for good; new connections are unaffected. */
  stallExisting() {
    return this.#command('stall');
  }

  /** Resets every connection open now. */
  dropExisting() {
    return this.#command('drop');
  }

  /** Ends the proxy (and with it every connection through it); bounded. */
  async close() {
    this.#child.stdin.end();
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 2000);
    await this.#exited;
    clearTimeout(timer);
  }

  // The command is written at once; the promise resolves when the proxy has applied it.
  #command(name) {
    return new Promise((resolve) => {
      this.#acks.push({ resolve });
      this.#child.stdin.write(`${name}\n`);
    });
  }
}
