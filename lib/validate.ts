// Argument checks, in one place: addresses are bigint, lengths and offsets
// are safe non-negative integers (number or bigint), ranges are aligned to
// the page size that governs them.
import { native } from './binding';
import { FEATURES, type Feature } from './constants';
import { argRangeError, argTypeError, argValueError, invalid } from './errors';

const MAX_ADDRESS = (1n << 64n) - 1n;

export function address(value: unknown, name: string): bigint {
  if (typeof value !== 'bigint') throw argTypeError(name, 'of type bigint', value);
  if (value < 0n || value > MAX_ADDRESS) throw argRangeError(name, '>= 0n and < 2n ** 64n', value);
  return value;
}

export function size(value: unknown, name: string): number {
  if (typeof value === 'bigint') {
    if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) throw argRangeError(name, '>= 0 and <= 2 ** 53 - 1', value);
    return Number(value);
  }
  if (typeof value !== 'number') throw argTypeError(name, 'of type number or bigint', value);
  if (!Number.isSafeInteger(value) || value < 0) throw argRangeError(name, 'a non-negative safe integer', value);
  return value;
}

/** A file descriptor: an integer in [0, 2^31) (the kernel's int). */
export function fd(value: unknown, name: string): number {
  if (typeof value !== 'number') throw argTypeError(name, 'a file descriptor (of type number)', value);
  if (!Number.isInteger(value) || value < 0 || value > 0x7fffffff) throw argRangeError(name, 'an integer >= 0 and < 2 ** 31', value);
  return value;
}

/** A page size: a power of two, at least the system's base page size. */
export function pageSize(value: unknown, name: string): number {
  const bytes = size(value, name);
  const base = native.systemPageSize();
  if (bytes < base || !Number.isInteger(Math.log2(bytes))) {
    throw argValueError(name, `must be a power of two of at least the system page size (${base} bytes). Received ${bytes}`);
  }
  return bytes;
}

/** Feature names as UFFDIO_API knows them (UFFD_FEATURE_ minus the prefix); undefined is none. */
export function features(value: unknown, name: string): Feature[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw argTypeError(name, 'an array of feature names', value);
  for (const feature of value) {
    if (typeof feature !== 'string' || !Object.hasOwn(FEATURES, feature)) {
      throw argValueError(name, `holds an unknown feature ${String(feature)}; known: ${Object.keys(FEATURES).join(', ')}`);
    }
  }
  return value as Feature[];
}

/** An optional flag: undefined (the caller's default) or a boolean, never a truthy stand-in. */
export function flag(value: unknown, name: string): boolean | undefined {
  if (value !== undefined && typeof value !== 'boolean') throw argTypeError(name, 'of type boolean', value);
  return value;
}

/** A timeout in milliseconds that setTimeout can honour. */
export function timeout(value: unknown, name: string): number {
  if (typeof value !== 'number') throw argTypeError(name, 'of type number', value);
  if (!(value >= 0 && value <= 0x7fffffff)) throw argRangeError(name, '>= 0 and <= 2 ** 31 - 1 (milliseconds)', value);
  return value;
}

export function isAligned(value: bigint | number, pageSize: number): boolean {
  return BigInt(value) % BigInt(pageSize) === 0n;
}

export function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}

/** Checks [start, start+length) for an ioctl: non-empty, aligned, inside the address space. */
export function range(syscall: string, start: bigint, length: number, pageSize: number): void {
  if (length === 0) throw invalid(syscall, 'the length is 0; give at least one page');
  if (!isAligned(start, pageSize)) {
    throw invalid(syscall, `address ${hex(start)} is not aligned to the page size of this range (${pageSize} bytes)`);
  }
  if (!isAligned(length, pageSize)) {
    throw invalid(syscall, `length ${length} is not a multiple of the page size of this range (${pageSize} bytes)`);
  }
  if (start + BigInt(length) > MAX_ADDRESS) throw invalid(syscall, `the range ${hex(start)} + ${length} wraps around`);
}

export function options<T extends object>(value: unknown, name: string): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object') throw argTypeError(name, 'an object', value);
  return value as Partial<T>;
}
