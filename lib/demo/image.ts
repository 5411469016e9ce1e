// The demo's memory image and the workload that runs over it. The image is
// what a small analytics service would hold in memory, generated from a seed
// so that source and destination agree byte for byte:
//
//   header (one page) | chunk directory | customer index | query list | order chunks | sensor series
//
// - order chunks: zlib-compressed JSON lines, one order per line;
// - chunk directory: where each chunk is, its sizes and first order id;
// - customer index: an open-addressing hash table, customer id -> order id;
// - query list: customer ids the workload looks up through the index;
// - sensor series: float64 random walks.
//
// The workload inflates and parses every chunk (totals per city), looks up
// the queries through the index (each lookup inflates the chunk that holds
// the order: random reads across the image), and computes statistics over
// every sensor series in a shuffled order. The result is a small object,
// identical wherever the image is identical.
import { createHash } from 'node:crypto';
import { deflateSync, inflateSync } from 'node:zlib';

const MAGIC = 0x4d444655; // 'UFDM'
const VERSION = 1;
const ORDERS_PER_CHUNK = 256;
const SERIES_LENGTH = 1 << 16; // doubles per sensor series (512 KiB)
// Shares of the image: compressed orders, then the series fill the rest.
const ORDER_SHARE = 0.05;
const QUERY_SHARE = 1 / (1 << 16);
const DIRECTORY_ENTRY = 24;
const INDEX_ENTRY = 8;

const CITIES = ['Lisbon', 'Porto', 'Braga', 'Madrid', 'Seville', 'Valencia', 'Lyon', 'Paris', 'Nantes', 'Turin', 'Milan', 'Naples', 'Ghent', 'Utrecht', 'Bremen', 'Krakow'];
const PRODUCTS = ['kettle', 'lamp', 'chair', 'desk', 'rug', 'mug', 'plate', 'fork', 'towel', 'pillow', 'clock', 'mirror', 'vase', 'shelf', 'bench', 'stool', 'bowl', 'jar', 'tray', 'basket'];
const WORDS = ('the a of to and in is it for on with as was at by from this that be are or an have not but all were when we there can ' +
  'delivery late early box damaged perfect gift colour size fits great quality price again would order recommend service fast slow ' +
  'small large bright dark wood steel glass cotton wool kitchen garden office bedroom bathroom morning evening weekend door neighbour').split(' ');

/** A small, fast, seeded generator (mulberry32): the same numbers on every machine. */
export function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Layout {
  size: number;
  orders: number;
  chunks: number;
  directoryOffset: number;
  indexOffset: number;
  indexCapacity: number;
  queriesOffset: number;
  queries: number;
  chunksOffset: number;
  seriesOffset: number;
  series: number;
}

function align(value: number, to: number): number {
  return Math.ceil(value / to) * to;
}

function order(id: number, next: () => number): { line: string; customer: number } {
  const customer = 1 + Math.floor(next() * 0xfffffffe);
  const city = CITIES[Math.floor(next() * CITIES.length)]!;
  const lines = 1 + Math.floor(next() * 3);
  const items = [];
  for (let i = 0; i < lines; i++) {
    items.push(`{"sku":"${PRODUCTS[Math.floor(next() * PRODUCTS.length)]}-${Math.floor(next() * 1000)}","qty":${1 + Math.floor(next() * 4)},"cents":${100 + Math.floor(next() * 9900)}}`);
  }
  const words = [];
  for (let i = 4 + Math.floor(next() * 10); i > 0; i--) words.push(WORDS[Math.floor(next() * WORDS.length)]);
  const line = `{"id":${id},"customer":${customer},"city":"${city}","day":${Math.floor(next() * 3650)},"items":[${items.join(',')}],"note":"${words.join(' ')}"}`;
  return { line, customer };
}

/**
 * Writes the image for `seed` into `target` (its whole length, a multiple of
 * pageSize, at least 4 MiB) and returns its layout.
 */
export function generate(target: Uint8Array, seed: number, pageSize: number): Layout {
  const size = target.byteLength;
  const next = random(seed);
  // Orders until their compressed chunks fill their share of the image.
  const chunks: Buffer[] = [];
  const customers: number[] = [];
  let compressed = 0;
  const orderBudget = size * ORDER_SHARE;
  while (compressed < orderBudget) {
    const lines: string[] = [];
    for (let i = 0; i < ORDERS_PER_CHUNK; i++) {
      const { line, customer } = order(customers.length, next);
      lines.push(line);
      customers.push(customer);
    }
    const chunk = deflateSync(lines.join('\n'), { level: 1 });
    chunks.push(chunk);
    compressed += chunk.length;
  }
  const orders = customers.length;
  const indexCapacity = 2 ** Math.ceil(Math.log2(orders * 2));
  const queries = Math.max(16, Math.floor(size * QUERY_SHARE / 4));
  const directoryOffset = pageSize;
  const indexOffset = align(directoryOffset + chunks.length * DIRECTORY_ENTRY, pageSize);
  const queriesOffset = align(indexOffset + indexCapacity * INDEX_ENTRY, pageSize);
  const chunksOffset = align(queriesOffset + queries * 4, pageSize);
  const seriesOffset = align(chunksOffset + compressed, pageSize);
  if (seriesOffset + SERIES_LENGTH * 8 > size) throw new RangeError(`an image of ${size} bytes is too small for the demo's data; give at least 4 MiB`);
  const series = Math.floor((size - seriesOffset) / (SERIES_LENGTH * 8));
  const view = new DataView(target.buffer, target.byteOffset, target.byteLength);
  target.fill(0);

  // Header.
  const header = [MAGIC, VERSION, orders, chunks.length, directoryOffset, indexOffset, indexCapacity, queriesOffset, queries, chunksOffset, seriesOffset, series];
  header.forEach((value, i) => view.setFloat64(i * 8, value, true));

  // Chunks and their directory.
  let at = chunksOffset;
  chunks.forEach((chunk, i) => {
    target.set(chunk, at);
    const entry = directoryOffset + i * DIRECTORY_ENTRY;
    view.setFloat64(entry, at, true);
    view.setUint32(entry + 8, chunk.length, true);
    view.setUint32(entry + 12, i * ORDERS_PER_CHUNK, true);
    view.setUint32(entry + 16, ORDERS_PER_CHUNK, true);
    at += chunk.length;
  });

  // The customer index: linear probing; a customer with several orders keeps the first.
  const mask = indexCapacity - 1;
  for (let id = 0; id < orders; id++) {
    const customer = customers[id]!;
    let slot = hashKey(customer) & mask;
    for (;;) {
      const entry = indexOffset + slot * INDEX_ENTRY;
      const key = view.getUint32(entry, true);
      if (key === 0) {
        view.setUint32(entry, customer, true);
        view.setUint32(entry + 4, id, true);
        break;
      }
      if (key === customer) break;
      slot = (slot + 1) & mask;
    }
  }

  // Queries: mostly customers that exist, some that do not.
  for (let i = 0; i < queries; i++) {
    const key = next() < 0.9 ? customers[Math.floor(next() * orders)]! : 1 + Math.floor(next() * 0xfffffffe);
    view.setUint32(queriesOffset + i * 4, key, true);
  }

  // Sensor series: random walks, from an inline generator (a closure call per
  // value would double the time spent here).
  const values = new Float64Array(target.buffer, target.byteOffset + seriesOffset, series * SERIES_LENGTH);
  let state = Math.floor(next() * 0x7fffffff) | 1;
  for (let s = 0; s < series; s++) {
    let value = next() * 100;
    const drift = (next() - 0.5) / 100 - 0.5;
    for (let i = 0; i < SERIES_LENGTH; i++) {
      state = (Math.imul(state, 1664525) + 1013904223) | 0;
      value += drift + (state >>> 0) / 4294967296;
      values[s * SERIES_LENGTH + i] = value;
    }
  }
  return { size, orders, chunks: chunks.length, directoryOffset, indexOffset, indexCapacity, queriesOffset, queries, chunksOffset, seriesOffset, series };
}

function hashKey(key: number): number {
  let h = Math.imul(key ^ (key >>> 16), 0x45d9f3b);
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b);
  return (h ^ (h >>> 16)) >>> 0;
}

export function readLayout(image: Uint8Array): Layout {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const field = (i: number): number => view.getFloat64(i * 8, true);
  if (field(0) !== MAGIC || field(1) !== VERSION) throw new Error('this memory does not hold a demo image (bad magic or version)');
  return {
    size: image.byteLength, orders: field(2), chunks: field(3), directoryOffset: field(4), indexOffset: field(5), indexCapacity: field(6),
    queriesOffset: field(7), queries: field(8), chunksOffset: field(9), seriesOffset: field(10), series: field(11),
  };
}

interface OrderRecord {
  id: number;
  customer: number;
  city: string;
  items: { qty: number; cents: number }[];
}

export interface WorkloadResult {
  orders: number;
  revenueCents: number;
  itemsSold: number;
  topCity: string;
  lookups: number;
  found: number;
  foundRevenueCents: number;
  series: number;
  /** sha256 over every series' min, max, mean and last value, in series order. */
  seriesDigest: string;
  /** sha256 of the inflated order text, chunk by chunk. */
  ordersDigest: string;
}

/** Runs the workload over image (read only) and returns its result. */
export function runWorkload(image: Uint8Array, seed: number): WorkloadResult {
  const layout = readLayout(image);
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const chunkAt = (i: number): Uint8Array => {
    const entry = layout.directoryOffset + i * DIRECTORY_ENTRY;
    const offset = view.getFloat64(entry, true);
    return image.subarray(offset, offset + view.getUint32(entry + 8, true));
  };

  // 1. Every order, chunk by chunk.
  const ordersHash = createHash('sha256');
  const byCity = new Map<string, number>();
  let revenueCents = 0;
  let itemsSold = 0;
  let orders = 0;
  for (let i = 0; i < layout.chunks; i++) {
    const text = inflateSync(chunkAt(i));
    ordersHash.update(text);
    for (const line of text.toString('utf8').split('\n')) {
      const record = JSON.parse(line) as OrderRecord;
      let cents = 0;
      for (const item of record.items) {
        cents += item.qty * item.cents;
        itemsSold += item.qty;
      }
      revenueCents += cents;
      byCity.set(record.city, (byCity.get(record.city) ?? 0) + cents);
      orders++;
    }
  }
  let topCity = '';
  for (const [city, cents] of byCity) if (!topCity || cents > byCity.get(topCity)! || (cents === byCity.get(topCity) && city < topCity)) topCity = city;

  // 2. Lookups through the customer index: random reads.
  const mask = layout.indexCapacity - 1;
  let found = 0;
  let foundRevenueCents = 0;
  const cache = new Map<number, string[]>();
  for (let q = 0; q < layout.queries; q++) {
    const customer = view.getUint32(layout.queriesOffset + q * 4, true);
    let slot = hashKey(customer) & mask;
    let id = -1;
    for (;;) {
      const entry = layout.indexOffset + slot * INDEX_ENTRY;
      const key = view.getUint32(entry, true);
      if (key === 0) break;
      if (key === customer) {
        id = view.getUint32(entry + 4, true);
        break;
      }
      slot = (slot + 1) & mask;
    }
    if (id < 0) continue;
    const chunk = Math.floor(id / ORDERS_PER_CHUNK);
    let lines = cache.get(chunk);
    if (!lines) {
      lines = inflateSync(chunkAt(chunk)).toString('utf8').split('\n');
      if (cache.size >= 8) cache.delete(cache.keys().next().value!);
      cache.set(chunk, lines);
    }
    const record = JSON.parse(lines[id % ORDERS_PER_CHUNK]!) as OrderRecord;
    if (record.customer !== customer || record.id !== id) throw new Error(`the index points customer ${customer} at order ${id}, which belongs to customer ${record.customer}: the image is corrupt`);
    found++;
    for (const item of record.items) foundRevenueCents += item.qty * item.cents;
  }

  // 3. Statistics of every sensor series, visited in a shuffled order.
  const stats = new Float64Array(layout.series * 4);
  const visit = Array.from({ length: layout.series }, (_, i) => i);
  const next = random(seed ^ 0x5eed);
  for (let i = visit.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [visit[i], visit[j]] = [visit[j]!, visit[i]!];
  }
  for (const s of visit) {
    const values = new Float64Array(image.buffer, image.byteOffset + layout.seriesOffset + s * SERIES_LENGTH * 8, SERIES_LENGTH);
    let min = Infinity;
    let max = -Infinity;
    let sum = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      if (v < min) min = v;
      if (v > max) max = v;
      sum += v;
    }
    stats.set([min, max, sum / values.length, values[values.length - 1]!], s * 4);
  }
  return {
    orders, revenueCents, itemsSold, topCity, lookups: layout.queries, found, foundRevenueCents, series: layout.series,
    seriesDigest: createHash('sha256').update(new Uint8Array(stats.buffer)).digest('hex'),
    ordersDigest: ordersHash.digest('hex'),
  };
}

/** sha256 of the whole image. */
export function hashImage(image: Uint8Array): string {
  const hash = createHash('sha256');
  const slice = 16 << 20;
  for (let at = 0; at < image.byteLength; at += slice) hash.update(image.subarray(at, Math.min(image.byteLength, at + slice)));
  return hash.digest('hex');
}
