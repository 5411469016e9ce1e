// Bad input gets a clear error, shaped like Node's, and changes nothing.
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { Mapping, Userfaultfd, type Fault } from '../dist/index.js';
import { PAGE, touch, registeredAnonymous } from './helpers';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup.splice(0).reverse()) fn();
});

const setup = registeredAnonymous;

/** After the bad calls, a worker touches every page: each must fault and get this handler's data. */
async function expectUntouched(uffd: Userfaultfd, mapping: Mapping): Promise<void> {
  const faults: Fault[] = [];
  void uffd.serve((fault) => {
    faults.push(fault);
    fault.copy(new Uint8Array(PAGE).fill(1));
  });
  const report = await touch({ address: mapping.address, length: mapping.length }).result;
  expect(report.sum).toBe(mapping.length / PAGE);
  expect(faults).toHaveLength(mapping.length / PAGE);
}

describe('bad input', () => {
  it('an unaligned address: EINVAL naming the ioctl and the page size', async () => {
    const { mapping, uffd } = setup(2);
    const error = { code: 'EINVAL', errno: -22, syscall: 'ioctl(UFFDIO_COPY)', message: expect.stringContaining(`page size of this range (${PAGE} bytes)`) };
    expect(() => uffd.copy(mapping.address + 8n, new Uint8Array(PAGE))).toThrow(expect.objectContaining(error));
    expect(() => uffd.zeroPage(mapping.address + 1n, PAGE)).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'ioctl(UFFDIO_ZEROPAGE)' }));
    expect(() => uffd.wake(mapping.address + 1n, PAGE)).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'ioctl(UFFDIO_WAKE)' }));
    expect(() => uffd.register({ address: mapping.address + 1n, length: PAGE })).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'ioctl(UFFDIO_REGISTER)' }));
    await expectUntouched(uffd, mapping);
  });

  it('a length that is not a page multiple, or zero', async () => {
    const { mapping, uffd } = setup(2);
    expect(() => uffd.zeroPage(mapping.address, PAGE + 1)).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringContaining('not a multiple of the page size') }));
    expect(() => uffd.continue(mapping.address, 0)).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringContaining('length is 0') }));
    // A buffer shorter than a page: the copy length is the buffer's.
    expect(() => uffd.copy(mapping.address, new Uint8Array(PAGE - 1))).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'ioctl(UFFDIO_COPY)' }));
    expect(() => uffd.copy(mapping.address, new Uint8Array(0))).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    await expectUntouched(uffd, mapping);
  });

  it('a range outside any registration: the kernel says ENOENT, and the memory is untouched', () => {
    const { uffd } = setup(1);
    const other = Mapping.anonymous(PAGE);
    cleanup.push(() => other.unmap());
    expect(() => uffd.copy(other.address, new Uint8Array(PAGE).fill(9))).toThrow(
      expect.objectContaining({ code: 'ENOENT', errno: -2, syscall: 'ioctl(UFFDIO_COPY)', message: expect.stringContaining('register it first') }),
    );
    expect(other.read().every((b) => b === 0)).toBe(true);
    expect(() => uffd.zeroPage(0n, PAGE)).toThrow(expect.objectContaining({ code: expect.stringMatching(/ENOENT|EINVAL/) }));
  });

  it('wrong types and out-of-range values', () => {
    const { mapping, uffd } = setup(1);
    expect(() => uffd.copy(Number(mapping.address) as never, new Uint8Array(PAGE))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => uffd.copy(mapping.address, 'data' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => uffd.copy(-4096n, new Uint8Array(PAGE))).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => uffd.copy(1n << 64n, new Uint8Array(PAGE))).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => uffd.zeroPage(mapping.address, Number.NaN)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => uffd.zeroPage(mapping.address, -PAGE)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => uffd.zeroPage(mapping.address, 2 ** 60)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    const registered = uffd.registrations.length;
    expect(() => uffd.register(mapping, {})).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringContaining('at least one of missing, minor, wp, rwp') }));
    expect(() => uffd.register(mapping, { missing: 'yes' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: expect.stringContaining('modes.missing') }));
    expect(uffd.registrations).toHaveLength(registered);

    expect(() => uffd.register(null as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => uffd.serve('handler' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  });

  it('fromFd of a descriptor that is not a userfaultfd: a clear error, and the descriptor left open', () => {
    const fd = fs.openSync('/dev/null', 'r');
    try {
      expect(() => Userfaultfd.fromFd(fd)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringContaining('must be a userfaultfd') }));
      expect(fs.fstatSync(fd).isCharacterDevice()).toBe(true);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('a detached buffer', () => {
    const { mapping, uffd } = setup(1);
    const buffer = new ArrayBuffer(PAGE);
    structuredClone(buffer, { transfer: [buffer] });
    const detached = expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringContaining('detached') });
    expect(() => uffd.copy(mapping.address, buffer)).toThrow(detached);
    const view = new Uint8Array(new ArrayBuffer(PAGE));
    structuredClone(view.buffer, { transfer: [view.buffer] });
    expect(() => uffd.copy(mapping.address, view)).toThrow(detached);
  });

  it('registering a range twice with another uffd: EBUSY', () => {
    const { mapping } = setup(1);
    const second = Userfaultfd.open();
    cleanup.push(() => second.close());
    expect(() => second.register(mapping)).toThrow(expect.objectContaining({ code: 'EBUSY', syscall: 'ioctl(UFFDIO_REGISTER)' }));
  });

  it('unregistering a range where nothing is mapped: EINVAL saying so, not an alignment problem', () => {
    const uffd = Userfaultfd.open();
    cleanup.push(() => uffd.close());
    const gone = Mapping.anonymous(2 * PAGE);
    const address = gone.address;
    gone.unmap();
    expect(() => uffd.unregister({ address, length: 2 * PAGE })).toThrow(expect.objectContaining({
      code: 'EINVAL', syscall: 'ioctl(UFFDIO_UNREGISTER)', message: expect.stringContaining('something must be mapped in it'),
    }));
  });

  it('MINOR mode on anonymous memory: EINVAL from the kernel with the reason', () => {
    const mapping = Mapping.anonymous(PAGE);
    const uffd = Userfaultfd.open();
    cleanup.push(() => mapping.unmap(), () => uffd.close());
    expect(() => uffd.register(mapping, { minor: true })).toThrow(
      expect.objectContaining({ code: 'EINVAL', syscall: 'ioctl(UFFDIO_REGISTER)', message: expect.stringContaining('MINOR needs shmem or hugetlbfs') }),
    );
  });

  it('COPY with writeProtect into a range not registered WP: EINVAL naming { wp: true }, and the page stays missing', () => {
    const mapping = Mapping.anonymous(PAGE);
    const uffd = Userfaultfd.open({ features: ['PAGEFAULT_FLAG_WP'] });
    cleanup.push(() => uffd.close(), () => mapping.unmap());
    uffd.register(mapping, { missing: true });
    expect(() => uffd.copy(mapping.address, new Uint8Array(PAGE).fill(1), { writeProtect: true })).toThrow(
      expect.objectContaining({ code: 'EINVAL', syscall: 'ioctl(UFFDIO_COPY)', message: expect.stringContaining('registered with { wp: true }') }),
    );
    // Nothing landed: a plain copy still fills the page.
    expect(uffd.copy(mapping.address, new Uint8Array(PAGE).fill(2))).toBe(PAGE);
  });
});
