import { describe, expect, it } from 'vitest';
import { Mapping, Memfd, attachView, systemPageSize } from '../dist/index.js';

const PAGE = systemPageSize();

describe('memory', () => {
  it('creates a memfd and maps it shared at an offset: both mappings see the same pages', () => {
    const memfd = Memfd.create(8 * PAGE, { name: 'test' });
    const whole = memfd.map();
    const tail = memfd.map({ offset: 4 * PAGE, length: 4 * PAGE });
    whole.view()[4 * PAGE + 5] = 99;
    expect(tail.view()[5]).toBe(99);
    expect(typeof tail.address).toBe('bigint');
    whole.unmap();
    tail.unmap();
    memfd.close();
  });

  it('makes anonymous private mappings and reaches them by address', () => {
    const mapping = Mapping.anonymous(4 * PAGE);
    mapping.view()[PAGE] = 7;
    expect(attachView(mapping.address + BigInt(PAGE), PAGE)[0]).toBe(7);
    mapping.unmap();
    expect(mapping.mapped).toBe(false);
    expect(() => attachView(mapping.address, PAGE)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_NOT_MAPPED' }));
  });

  it('refuses new Mapping() with ERR_ILLEGAL_CONSTRUCTOR: a Mapping over memory the library did not map would take it away', () => {
    const real = Mapping.anonymous(PAGE);
    const Constructor = Mapping as unknown as new (...args: unknown[]) => Mapping;
    expect(() => new Constructor(real.address, PAGE, PAGE, 'anonymous')).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_ILLEGAL_CONSTRUCTOR' }));
    expect(attachView(real.address, PAGE)).toHaveLength(PAGE);
    real.unmap();
  });

  it('refuses a view that reaches past the mapping', () => {
    const mapping = Mapping.anonymous(2 * PAGE);
    expect(() => attachView(mapping.address, 3 * PAGE)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_NOT_MAPPED' }));
    expect(() => mapping.view(PAGE, 2 * PAGE)).toThrow(expect.objectContaining({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }));
    mapping.unmap();
  });

  it('keeps memory valid for a view that outlives unmap(): it reads zeros', () => {
    const mapping = Mapping.anonymous(PAGE);
    const view = mapping.view();
    view[0] = 1;
    mapping.unmap();
    expect(view[0]).toBe(0);
  });

  it('rejects sizes that are not page multiples, and bad types', () => {
    expect(() => Mapping.anonymous(PAGE + 1)).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'mmap' }));
    expect(() => Mapping.anonymous(-1)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => Mapping.anonymous(Number.NaN)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => Mapping.anonymous('4096' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    const memfd = Memfd.create(4 * PAGE);
    expect(() => memfd.map({ offset: 1 })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => memfd.map({ offset: 2 * PAGE, length: 4 * PAGE })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    memfd.close();
    expect(() => memfd.map()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
  });
});
