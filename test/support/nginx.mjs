// A private nginx (Debian's, installed by .ci/run) for tests and benchmarks:
// its own generated config, port, document root and pid/log files in a temp
// directory, in the foreground as one process (no daemon, no master), so that
// stop() and kill() end it for certain. It serves static files with byte
// ranges, ETags and If-Match, as an object store does.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { findCommand } from './commands.mjs';

// util-linux's setpriv (not busybox's) sets PR_SET_PDEATHSIG before it execs.
const SETPRIV = findCommand('setpriv');
let pdeathsig;
function deathSignal() {
  pdeathsig ??= SETPRIV !== undefined && spawnSync(SETPRIV, ['--pdeathsig', 'KILL', 'true']).status === 0;
  return pdeathsig;
}

/** The nginx binary, or undefined (Debian's is in /usr/sbin, which a user's PATH may lack). */
export function findNginx() {
  return findCommand('nginx', ['/usr/sbin', '/usr/local/sbin', '/usr/local/nginx/sbin']);
}

/** Why tests that need nginx cannot run here, or undefined when they can. */
export function nginxMissing() {
  return findNginx() ? undefined : 'nginx is not installed (apt-get install -y nginx; .ci/run does it)';
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function connectOnce(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Starts nginx serving `root` (a new temp dir by default). Options:
 * requireHeader: { name, value } answers 403 to requests without it.
 * Returns { port, root, dir, origin, accessLog(), stop(), kill() }.
 */
export async function startNginx(options = {}) {
  const binary = findNginx();
  if (!binary) throw new Error(nginxMissing());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-nginx-'));
  const root = options.root ?? path.join(dir, 'www');
  fs.mkdirSync(root, { recursive: true });
  const log = path.join(dir, 'access.log');
  const guard = options.requireHeader
    ? `if ($http_${options.requireHeader.name.toLowerCase().replace(/-/g, '_')} != "${options.requireHeader.value}") { return 403; }`
    : '';
  for (let tries = 0; ; tries++) {
    const port = await freePort();
    const conf = path.join(dir, 'nginx.conf');
    fs.writeFileSync(conf, `
daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
${process.getuid?.() === 0 ? 'user root;' : ''}
events { worker_connections 1024; }
http {
  log_format ranges '$request_method $uri $status "$http_range" $body_bytes_sent "$http_if_match" "$http_authorization"';
  access_log ${log} ranges;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  types { application/octet-stream bin; }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:${port};
    root ${root};
    location / { ${guard} }
    # As servers without ETags answer: only Last-Modified identifies the object.
    location /no-etag/ { etag off; }
    # A slow link: 1 MB/s per connection, so that a restore takes seconds.
    location /slow/ { ${guard} limit_rate 1m; }
  }
}
`);
    const args = ['-p', dir, '-c', conf, '-e', path.join(dir, 'error.log')];
    // Dies with the test process that started it, even one that never gets to stop() it.
    const child = deathSignal() ? spawn(SETPRIV, ['--pdeathsig', 'KILL', binary, ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
      : spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk) => (stderr += chunk));
    let exited = false;
    const exit = new Promise((resolve) => child.once('exit', () => {
      exited = true;
      resolve();
    }));
    // Ready once it accepts a connection; bounded.
    const deadline = Date.now() + 10_000;
    let ready = false;
    while (!exited && Date.now() < deadline) {
      if (await connectOnce(port)) {
        ready = true;
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    if (!ready) {
      child.kill('SIGKILL');
      await exit;
      const errors = fs.existsSync(path.join(dir, 'error.log')) ? fs.readFileSync(path.join(dir, 'error.log'), 'utf8') : '';
      // Another process may have taken the port between probe and bind.
      if (/Address already in use/.test(errors + stderr) && tries < 5) continue;
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`nginx did not start: ${stderr}${errors}`);
    }
    const stop = async (signal = 'SIGTERM') => {
      if (!exited) child.kill(signal);
      await exit;
    };
    return {
      port,
      root,
      dir,
      origin: `http://127.0.0.1:${port}`,
      pid: child.pid,
      /** Lines of the access log: method, uri, status, "range", bytes sent, "if-match", "authorization". */
      accessLog() {
        return fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').filter(Boolean) : [];
      },
      /** Dies at once, mid-response: connections reset, new ones refused. */
      kill: () => stop('SIGKILL'),
      async stop() {
        await stop('SIGTERM');
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  }
}
