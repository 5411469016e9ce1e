// A strict JSON parser (RFC 8259) that keeps every integer exact as a bigint.
// Messages from other processes carry u64 fields (addresses above 2^53), which
// JSON.parse would round; and a hostile message must be refused with a clear
// reason, never crash the reader, so nesting depth and duplicate keys are
// bounded and refused too.

export type JsonValue = null | boolean | number | bigint | string | JsonValue[] | { [key: string]: JsonValue };

export class JsonError extends Error {
  /** The text ended inside a value: more bytes could still make it valid. */
  readonly incomplete: boolean;

  constructor(message: string, incomplete: boolean) {
    super(message);
    this.name = 'JsonError';
    this.incomplete = incomplete;
  }
}

const MAX_DEPTH = 32;
const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
const WHITESPACE = /[ \t\n\r]*/y;

/** Parses text; integers (no fraction, no exponent) become bigints, other numbers numbers. Throws JsonError. */
export function parseJsonU64(text: string): JsonValue {
  let pos = 0;

  const fail = (what: string): never => {
    if (pos >= text.length) throw new JsonError(`unexpected end of text (${what})`, true);
    throw new JsonError(`${what}, found ${JSON.stringify(text[pos])} at position ${pos}`, false);
  };
  const skip = (): void => {
    WHITESPACE.lastIndex = pos;
    WHITESPACE.exec(text);
    pos = WHITESPACE.lastIndex;
  };
  const literal = (word: string, value: JsonValue): JsonValue => {
    const have = text.slice(pos, pos + word.length);
    if (have === word) {
      pos += word.length;
      return value;
    }
    if (word.startsWith(have) && pos + have.length >= text.length) throw new JsonError('unexpected end of text (in a literal)', true);
    return fail(`expected ${word}`);
  };
  const string = (): string => {
    STRING.lastIndex = pos;
    const match = STRING.exec(text);
    if (!match) {
      // An unterminated string is incomplete only if nothing invalid came before the end.
      const rest = text.slice(pos);
      if (!rest.slice(1).includes('"') && !/[\u0000-\u001f]/.test(rest)) throw new JsonError('unexpected end of text (in a string)', true);
      return fail('expected a valid string');
    }
    pos = STRING.lastIndex;
    return JSON.parse(match[0]) as string;
  };
  const number = (depth: number): number | bigint => {
    NUMBER.lastIndex = pos;
    const match = NUMBER.exec(text);
    if (!match) return fail('expected a number');
    pos = NUMBER.lastIndex;
    // Inside a container, a number cannot end the text: more digits may follow.
    if (pos >= text.length && depth > 0) throw new JsonError('unexpected end of text (in a number)', true);
    return match[1] === undefined && match[2] === undefined ? BigInt(match[0]) : Number(match[0]);
  };
  const value = (depth: number): JsonValue => {
    if (depth > MAX_DEPTH) throw new JsonError(`nested deeper than ${MAX_DEPTH} levels`, false);
    skip();
    const ch = text[pos];
    if (ch === '{') {
      pos++;
      const object: { [key: string]: JsonValue } = Object.create(null) as { [key: string]: JsonValue };
      skip();
      if (text[pos] === '}') {
        pos++;
        return object;
      }
      for (;;) {
        skip();
        if (text[pos] !== '"') fail('expected a member name');
        const key = string();
        if (Object.hasOwn(object, key)) throw new JsonError(`the member ${JSON.stringify(key)} appears twice`, false);
        skip();
        if (text[pos] !== ':') fail('expected ":"');
        pos++;
        object[key] = value(depth + 1);
        skip();
        if (text[pos] === ',') {
          pos++;
          continue;
        }
        if (text[pos] === '}') {
          pos++;
          return object;
        }
        fail('expected "," or "}"');
      }
    }
    if (ch === '[') {
      pos++;
      const array: JsonValue[] = [];
      skip();
      if (text[pos] === ']') {
        pos++;
        return array;
      }
      for (;;) {
        array.push(value(depth + 1));
        skip();
        if (text[pos] === ',') {
          pos++;
          continue;
        }
        if (text[pos] === ']') {
          pos++;
          return array;
        }
        fail('expected "," or "]"');
      }
    }
    if (ch === '"') return string();
    if (ch === 't') return literal('true', true);
    if (ch === 'f') return literal('false', false);
    if (ch === 'n') return literal('null', null);
    if (ch === '-' || (ch !== undefined && ch >= '0' && ch <= '9')) return number(depth);
    return fail('expected a value');
  };

  const result = value(0);
  skip();
  if (pos < text.length) fail('expected the end of the text');
  return result;
}
