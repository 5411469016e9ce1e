// userfaultfd for Node.js: the public API.
export { Userfaultfd } from './uffd';
export type { OpenOptions, RegisterModes, Registration, Target, ServeOptions, Event, NonFaultEvent, AdoptedRange } from './uffd';
export { Fault } from './events';
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
export { FilePageSource } from './page-source';
export type { PageSource, FetchOptions } from './page-source';
export { FirecrackerServer, FirecrackerSession, parseHandshake, receiveHandshake } from './firecracker';
export type { FailurePolicy, SessionOptions, SessionStats, SessionEnd, SessionResult, ServerOptions, GuestRegion, Handshake } from './firecracker';
export { LatencyHistogram } from './latency';
