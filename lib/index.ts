// userfaultfd for Node.js: the public API.
export { Userfaultfd } from './uffd';
export type { OpenOptions, RegisterModes, Registration, Target, ServeOptions, Event, NonFaultEvent } from './uffd';
export { Fault } from './events';
export type { FaultKind, Outcome, ForkEvent, RemapEvent, RemoveEvent, UnmapEvent } from './events';
export { Memfd, Mapping, attachView, systemPageSize, defaultHugePageSize } from './memory';
export type { HugePages } from './memory';
export { UffdError } from './errors';
export { FEATURES, IOCTLS } from './constants';
export type { Feature, Ioctl } from './constants';
