import { describe, expect, it } from 'vitest';
import { FEATURES, Userfaultfd } from '../dist/index.js';
import { PAGE } from './helpers';

describe('Userfaultfd.open()', () => {
  it('opens a uffd and reports the features the kernel offers and those enabled', () => {
    const uffd = Userfaultfd.open({ features: ['THREAD_ID', 'EXACT_ADDRESS'] });
    try {
      expect(uffd.fd).toBeGreaterThan(2);
      expect(['syscall', 'device']).toContain(uffd.openedWith);
      expect(uffd.offeredFeatures.has('MISSING_SHMEM')).toBe(true);
      expect([...uffd.enabledFeatures].sort()).toEqual(['EXACT_ADDRESS', 'THREAD_ID']);
      // The offered set is what UFFDIO_API answered: every name is a known feature.
      for (const name of uffd.offeredFeatures) expect(Object.keys(FEATURES)).toContain(name);
    } finally {
      uffd.close();
    }
  });

  const probe = Userfaultfd.open();
  const wpAsync = probe.offeredFeatures.has('WP_ASYNC');
  probe.close();
  if (!wpAsync) console.warn('skipping the WP_ASYNC feature report test: this kernel does not offer WP_ASYNC (Linux 6.7)');
  it.skipIf(!wpAsync)('reports WP_UNPOPULATED as enabled with WP_ASYNC, as the kernel turns it on', () => {
    const uffd = Userfaultfd.open({ features: ['WP_ASYNC'] });
    expect([...uffd.enabledFeatures].sort()).toEqual(['WP_ASYNC', 'WP_UNPOPULATED']);
    uffd.close();
  });

  it('enables no feature unless asked (SIGBUS in particular)', () => {
    const uffd = Userfaultfd.open();
    expect(uffd.enabledFeatures.size).toBe(0);
    uffd.close();
  });

  it('opens in user-mode-only mode', () => {
    const uffd = Userfaultfd.open({ userModeOnly: true });
    expect(uffd.fd).toBeGreaterThan(2);
    uffd.close();
  });

  it('rejects an unknown feature name before touching the kernel', () => {
    expect(() => Userfaultfd.open({ features: ['NOT_A_FEATURE' as never] })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }),
    );
  });

  it('makes every method throw ERR_UFFD_CLOSED after close(), which is idempotent', () => {
    const uffd = Userfaultfd.open();
    uffd.close();
    uffd.close();
    expect(uffd.closed).toBe(true);
    const closed = expect.objectContaining({ code: 'ERR_UFFD_CLOSED', syscall: 'ioctl(UFFDIO_WAKE)' });
    expect(() => uffd.wake(0n, PAGE)).toThrow(closed);
    expect(() => uffd.register({ address: 0n, length: PAGE })).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    expect(() => uffd.copy(0n, new Uint8Array(PAGE))).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    expect(() => uffd.events()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    // As Node orders them: argument errors first, then the closed uffd, then what the kernel would refuse.
    expect(() => uffd.copy('x' as never, new Uint8Array(PAGE))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => uffd.copy(0n, 'x' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => uffd.zeroPage(0n, -1)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => uffd.register({ address: 0n, length: PAGE }, { missing: 'yes' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => uffd.setMode({ enable: ['NOPE' as never] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => uffd.zeroPage(1n, PAGE)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED', syscall: 'ioctl(UFFDIO_ZEROPAGE)' }));
  });
});
