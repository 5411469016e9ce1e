// What HttpPageSource takes from an HTTP answer (RFC 9110), and what it
// fails with: Content-Range and its 416 form, content codings, Retry-After
// and the retry delays, redirects, the object's pin (ETag / Last-Modified),
// and the source's errors. Pure functions of an answer's status and headers;
// the transport and the cache are lib/http-source.ts.
import type { Dispatcher } from 'undici';
import { UffdError } from './errors';

export interface Pin {
  etag: string | undefined;
  lastModified: string | undefined;
  /** The precondition header sent with every request after the first. */
  condition: Record<string, string>;
}

export interface Response {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
}

// An error that retrying cannot fix: the object changed, or the server refused.
export class Fatal extends Error {
  constructor(readonly error: UffdError) {
    super(error.message);
  }
}

// A status worth retrying (5xx, 408, 429), with the wait the server asked for (Retry-After).
export class Transient extends Error {
  constructor(status: number, readonly retryAfterMs: number | undefined) {
    super(`HTTP ${status}${retryAfterMs !== undefined ? ` (Retry-After ${Math.round(retryAfterMs)} ms)` : ''}`);
  }
}

// Redirects open() follows before it pins the object.
export const MAX_REDIRECTS = 5;
export const REDIRECTS = new Set([301, 302, 303, 307, 308]);
// Headers a redirect to another origin must not carry (as fetch drops them): they were meant for the first server.
export const ORIGIN_BOUND_HEADERS = ['authorization', 'proxy-authorization', 'cookie'];

export function header(headers: Response['headers'], name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

// An error as the log and the source's errors show it, with its cause.
export function describeError(error: unknown): string {
  const e = error as { code?: string; message?: string; cause?: { code?: string; message?: string } };
  const cause = e?.cause?.message && e.cause.message !== e.message ? ` (${e.cause.message})` : '';
  return `${e?.message ?? String(error)}${cause}`;
}

// Ends a response whose body is not (or no longer) wanted. Destroying it
// emits an AbortError, which is expected here.
export function discard(response: Response): void {
  response.body.on('error', () => {});
  response.body.destroy();
}

// Range units are case-insensitive (RFC 9110 §14.1).
export function parseContentRange(value: string | undefined): { start: number; end: number; total: number | undefined } | undefined {
  const match = value === undefined ? null : /^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/i.exec(value.trim());
  if (!match) return undefined;
  return { start: Number(match[1]), end: Number(match[2]), total: match[3] === '*' ? undefined : Number(match[3]) };
}

// A 416's Content-Range: "bytes */size" (RFC 9110 §14.4).
export function unsatisfiedTotal(value: string | undefined): number | undefined {
  const match = value === undefined ? null : /^bytes\s+\*\/(\d+)$/i.exec(value.trim());
  return match ? Number(match[1]) : undefined;
}

// Every request asks for the object's own bytes (RFC 9110 §12.5.3): no
// request without Accept-Encoding, which allows any coding.
export const IDENTITY = { 'accept-encoding': 'identity' } as const;

// A coded answer's bytes are not the object's, and a range of a compressed
// representation cannot be decoded: refused before a byte lands. S3 sends
// the Content-Encoding an object was stored with whatever was asked for.
export function checkCoding(headers: Response['headers'], shown: string): void {
  const codings = (name: string, allowed: string[]): string | undefined => {
    const value = header(headers, name);
    if (value === undefined) return undefined;
    return value.split(',').map((token) => token.trim().toLowerCase()).some((token) => token !== '' && !allowed.includes(token)) ? value : undefined;
  };
  const content = codings('content-encoding', ['identity']);
  const transfer = codings('transfer-encoding', ['chunked', 'identity']);
  if (content === undefined && transfer === undefined) return;
  throw new Fatal(httpError(shown, `answered with ${content !== undefined ? `Content-Encoding: ${content}` : `Transfer-Encoding: ${transfer}`}, so its bytes are not the image's and a range of them cannot be decoded; ` +
    'store the object without a content coding (S3: no Content-Encoding metadata), or serve it from a server that honours Accept-Encoding: identity'));
}

// Retry-After (RFC 9110 §10.2.3): seconds, or an HTTP date.
export function retryAfterMs(headers: Response['headers']): number | undefined {
  const value = header(headers, 'retry-after')?.trim();
  if (value === undefined || value === '') return undefined;
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

export function redirectTarget(location: string | undefined, from: URL, shown: string): URL {
  let next: URL;
  try {
    if (location === undefined) throw new Error('no Location');
    next = new URL(location, from);
  } catch {
    throw new Fatal(httpError(shown, 'redirected without a usable Location'));
  }
  if (next.protocol !== 'http:' && next.protocol !== 'https:') throw new Fatal(httpError(shown, `redirected to a ${next.protocol} URL`));
  return next;
}

export function pinOf(response: Pick<Response, 'headers'>, shown: string): Pin {
  const etag = header(response.headers, 'etag');
  const lastModified = header(response.headers, 'last-modified');
  // If-Match compares strongly: a weak ETag never matches, so pin those by date.
  if (etag !== undefined && !etag.startsWith('W/')) return { etag, lastModified, condition: { 'if-match': etag } };
  if (lastModified !== undefined) return { etag, lastModified, condition: { 'if-unmodified-since': lastModified } };
  throw new Fatal(new UffdError('ERR_UFFD_SOURCE_UNPINNED',
    `ERR_UFFD_SOURCE_UNPINNED: ${shown} sends neither a strong ETag nor Last-Modified, so a change of the object mid-restore could not be detected and pages of two versions could mix; serve it from a server that sends either`,
    { syscall: 'HTTP GET' }));
}

export function isTransientStatus(status: number): boolean {
  return status >= 500 || status === 408 || status === 429;
}

export function statusHint(status: number): string {
  if (status === 401 || status === 403) return ': access refused (a presigned URL that expired, or a missing or wrong credentials header)';
  if (status === 404) return ': no such object';
  return '';
}

// The delay before retry attempt + 1: doubling, or what the server asked for
// in Retry-After, up to stallTimeoutMs (a fault waits through it).
export function backoff(attempt: number, options: { retryDelayMs: number; retryDelayMaxMs: number; stallTimeoutMs: number }, error: unknown): number {
  const doubling = Math.min(options.retryDelayMaxMs, options.retryDelayMs * 2 ** attempt);
  const asked = error instanceof Transient ? error.retryAfterMs : undefined;
  return asked === undefined ? doubling : Math.round(Math.max(doubling, Math.min(asked, options.stallTimeoutMs)));
}

export function changed(shown: string, reason: string): UffdError {
  return new UffdError('ERR_UFFD_SOURCE_CHANGED',
    `ERR_UFFD_SOURCE_CHANGED: ${shown} changed during the restore: ${reason}. Pages already served came from the version pinned at open; no page of the new version was used. Restore again from the start`,
    { syscall: 'HTTP GET' });
}

export function httpError(shown: string, reason: string): UffdError {
  return new UffdError('ERR_UFFD_SOURCE_HTTP', `ERR_UFFD_SOURCE_HTTP: ${shown} ${reason}`, { syscall: 'HTTP GET' });
}

export function unavailable(shown: string, range: string, attempts: number, error: unknown): UffdError {
  return new UffdError('ERR_UFFD_SOURCE_UNAVAILABLE',
    `ERR_UFFD_SOURCE_UNAVAILABLE: GET ${range} of ${shown} failed ${attempts} time(s), the last with: ${describeError(error)}. The pages it held cannot be served`,
    { syscall: 'HTTP GET' });
}
