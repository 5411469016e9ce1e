// userfaultfd for Node.js: the public API.
export { Userfaultfd } from './uffd';
export type { OpenOptions, RegisterModes, Registration, Target, ServeOptions, ServeSyncOptions, UffdLoan, Event, NonFaultEvent, AdoptedRange } from './uffd';
export type { ServeFromOptions, ServeRange, Miss } from './serve-from';
export type { ServeStats, SpinStats } from './stats';
export { Fault } from './events';
export { FaultBatch } from './fault-batch';
export type { FaultKind, Outcome, ForkEvent, RemapEvent, RemoveEvent, UnmapEvent } from './events';
export { Memfd, Mapping, attachView, scanWritten, systemPageSize, defaultHugePageSize } from './memory';
export type { HugePages, Backing } from './memory';
export { UffdError } from './errors';
export { FEATURES, IOCTLS } from './constants';
export type { Feature, Ioctl } from './constants';
export { UnixServer, UnixConnection, descriptorKind } from './unix-socket';
export type { Message, ReceiveOptions } from './unix-socket';
export { probe, formatProbe } from './probe';
export type { ProbeReport, MemoryType, Mode } from './probe';
export { FilePageSource, BufferPageSource } from './page-source';
export type { PageSource, FetchOptions, BufferPageSourceOptions } from './page-source';
