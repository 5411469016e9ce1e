// The stream of one uffd's events to its one consumer: an events() iterator
// or one of the serving functions (serve.ts), for the uffd's whole life. The
// addon copies each batch it reads into the uffd's message buffer and calls
// receive(count) on the uffd's thread; the stream decodes the batch and hands
// it on. It ends when the uffd closes, with the read error that closed it if
// one did.
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { libraryError, systemError, type UffdError } from './errors';
import { decode, type DecodeContext, type UffdEvent } from './events';

const LENDER_CLOSED = -os.constants.errno.ECANCELED;

/** The uffd a stream belongs to, as the stream sees it. */
export interface StreamOwner {
  readonly closed: boolean;
  close(): void;
}

export class EventStream<U> {
  readonly #view: DataView;
  readonly #owner: StreamOwner;
  readonly #context: () => DecodeContext<U>;
  /** Who reads the events: at most one consumer, for the uffd's whole life. */
  #consumer: 'none' | 'iterator' | 'serve' = 'none';
  #deliver: (batch: UffdEvent<U>[]) => void = () => {};
  #batchHandler: ((count: number) => void) | undefined;
  #queue: UffdEvent<U>[] = [];
  #waiting: ((result: IteratorResult<UffdEvent<U>>) => void)[] = [];
  #failure: UffdError | undefined;
  #ended: (() => void)[] = [];

  constructor(view: DataView, owner: StreamOwner, context: () => DecodeContext<U>) {
    this.#view = view;
    this.#owner = owner;
    this.#context = context;
  }

  /** Takes the stream for consumer; ERR_UFFD_BUSY if it has one already. */
  claim(consumer: 'iterator' | 'serve'): void {
    if (this.#consumer !== 'none') {
      throw libraryError('ERR_UFFD_BUSY', 'userfaultfd',
        `this userfaultfd's events are already consumed by ${this.#consumer === 'serve' ? 'serve()' : 'an events() iterator'}; a uffd has one consumer for its whole life`);
    }
    this.#consumer = consumer;
  }

  /** Undoes a claim whose consumer failed to start (nothing was read yet): the uffd takes a consumer again. */
  release(): void {
    this.#consumer = 'none';
    this.#deliver = () => {};
    this.#batchHandler = undefined;
    this.#ended = [];
  }

  /** Where each batch read goes, decoded. */
  setDeliver(deliver: (batch: UffdEvent<U>[]) => void): void {
    this.#deliver = deliver;
  }

  /** Where each batch read goes instead, as the count of raw messages in the buffer (serveBatch). */
  setBatchHandler(handler: (count: number) => void): void {
    this.#batchHandler = handler;
  }

  /**
   * The addon's callback: count messages are in the buffer, or (negative)
   * -errno of a failed read; -ECANCELED: the owner of this borrowed uffd
   * closed it, which ends the stream as close() does.
   */
  receive(count: number): void {
    if (count === LENDER_CLOSED) {
      this.#owner.close();
      return;
    }
    if (count < 0) {
      this.#failure = systemError(count, 'read');
      this.#owner.close();
      return;
    }
    if (this.#batchHandler) {
      this.#batchHandler(count);
      return;
    }
    const context = this.#context();
    context.receivedAt = performance.now();
    const batch: UffdEvent<U>[] = [];
    for (let i = 0; i < count; i++) {
      const event = decode(this.#view, i, context);
      if (event) batch.push(event);
    }
    this.#deliver(batch);
  }

  /** The events one by one, for Userfaultfd.events(); the stream must be claimed for 'iterator'. */
  iterator(): AsyncIterableIterator<UffdEvent<U>> {
    this.#deliver = (batch) => {
      for (const event of batch) {
        const waiter = this.#waiting.shift();
        if (waiter) waiter({ value: event, done: false });
        else this.#queue.push(event);
      }
    };
    const iterator: AsyncIterableIterator<UffdEvent<U>> = {
      next: () => {
        const event = this.#queue.shift();
        if (event) return Promise.resolve({ value: event, done: false });
        if (this.#failure) {
          const failure = this.#failure;
          this.#failure = undefined;
          return Promise.reject(failure);
        }
        if (this.#owner.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => this.#waiting.push(resolve));
      },
      return: () => {
        this.#owner.close();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  /** Settles when the stream ends: rejects with the read error that closed the uffd, if one did. */
  ended(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#ended.push(() => (this.#failure ? reject(this.#failure) : resolve()));
    });
  }

  /** Ends the stream (the uffd has closed): drops what was not read, ends the iterator and the serving. */
  end(): void {
    this.#queue = [];
    for (const waiter of this.#waiting.splice(0)) {
      if (this.#failure) {
        const failure = this.#failure;
        this.#failure = undefined;
        waiter(Promise.reject(failure) as never);
      } else {
        waiter({ value: undefined, done: true });
      }
    }
    for (const ended of this.#ended.splice(0)) ended();
  }
}
