/**
 * Thin helpers over asn1js for building DER. Every structure cairn emits is assembled here
 * from asn1js blocks; precomputed DER fragments are spliced in with RawData.
 */
import * as asn1 from 'asn1js';
import { PkiError } from './errors.js';

export type Node = asn1.BaseBlock<any, any> | asn1.RawData;

export const seq = (...value: Node[]): asn1.Sequence => new asn1.Sequence({ value: value as asn1.AsnType[] });
export const set = (...value: Node[]): asn1.Set => new asn1.Set({ value: value as asn1.AsnType[] });
export const oid = (value: string): asn1.ObjectIdentifier => new asn1.ObjectIdentifier({ value });
/** Pre-encoded DER spliced into a structure (asn1js's RawData does not write into a parent's writer). */
class Raw extends asn1.RawData {
  override toBER(sizeOnly?: boolean, writer?: asn1.ViewWriter): ArrayBuffer {
    const b = this.dataView.slice().buffer as ArrayBuffer;
    if (writer) writer.write(b);
    return b;
  }
}
export const raw = (data: Uint8Array): asn1.RawData => new Raw({ data });
export const octets = (data: Uint8Array): asn1.OctetString => new asn1.OctetString({ valueHex: data });
export const bool = (value: boolean): asn1.Boolean => new asn1.Boolean({ value });
export const utf8 = (value: string): asn1.Utf8String => new asn1.Utf8String({ value });
export const printable = (value: string): asn1.PrintableString => new asn1.PrintableString({ value });
export const nul = (): asn1.Null => new asn1.Null();

/** INTEGER from a small non-negative number. */
export const smallInt = (value: number): asn1.Integer => new asn1.Integer({ value });

/** INTEGER from big-endian unsigned bytes (minimal DER, adds a leading 0 when the high bit is set). */
export function uintBytes(bytes: Uint8Array): asn1.Integer {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  let b = Buffer.from(bytes.subarray(i));
  if (b[0] & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
  return new asn1.Integer({ valueHex: b });
}

/** BIT STRING holding whole bytes (0 unused bits). */
export const bitsBytes = (data: Uint8Array): asn1.BitString => new asn1.BitString({ valueHex: data });

/** BIT STRING of named bits (KeyUsage style), DER-minimal: trailing zero bits dropped. */
export function namedBits(bits: number[]): asn1.BitString {
  if (bits.length === 0) return new asn1.BitString({ valueHex: new Uint8Array(0) });
  const max = Math.max(...bits);
  const bytes = new Uint8Array(Math.floor(max / 8) + 1);
  for (const b of bits) bytes[b >> 3] |= 0x80 >> (b & 7);
  const unused = 7 - (max & 7);
  return new asn1.BitString({ valueHex: bytes, unusedBits: unused });
}

/** [n] context-specific, constructed (EXPLICIT tagging, or IMPLICIT for SEQUENCE/SET types). */
export const ctxConstructed = (tagNumber: number, ...value: Node[]): asn1.Constructed =>
  new asn1.Constructed({ idBlock: { tagClass: 3, tagNumber }, value: value as asn1.AsnType[] });

/** [n] IMPLICIT primitive with the given contents. */
export const ctxPrimitive = (tagNumber: number, contents: Uint8Array): asn1.Primitive =>
  new asn1.Primitive({ idBlock: { tagClass: 3, tagNumber }, valueHex: contents });

/** X.509 Time: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5), whole seconds. */
export function time(d: Date): asn1.UTCTime | asn1.GeneralizedTime {
  const s = new Date(Math.floor(d.getTime() / 1000) * 1000);
  if (s.getUTCFullYear() < 2050 && s.getUTCFullYear() >= 1950) return new asn1.UTCTime({ valueDate: s });
  return new asn1.GeneralizedTime({ valueDate: s });
}

export function encode(node: Node): Buffer {
  const ab = (node as asn1.BaseBlock).toBER(false);
  return Buffer.from(ab);
}

/** Parse DER strictly: one complete element, no trailing bytes. */
export function decode(der: Uint8Array, what: string): asn1.AsnType {
  const res = asn1.fromBER(der);
  if (res.offset === -1 || res.result.error) {
    throw new PkiError('bad_der', `${what} is not valid DER`);
  }
  if (res.offset !== der.byteLength) {
    throw new PkiError('bad_der', `${what} has ${der.byteLength - res.offset} trailing bytes after the DER structure`);
  }
  return res.result;
}

/** The exact bytes an element was decoded from. */
export function bytesOf(node: asn1.AsnType): Buffer {
  const v = (node as asn1.BaseBlock).valueBeforeDecodeView;
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

/** Children of a constructed element, checking the kind. */
export function children(node: asn1.AsnType | undefined, what: string, min = 0): asn1.AsnType[] {
  if (!node || !(node instanceof asn1.Sequence || node instanceof asn1.Set || node instanceof asn1.Constructed)) {
    throw new PkiError('bad_der', `${what}: unexpected ASN.1 structure`);
  }
  const v = node.valueBlock.value as asn1.AsnType[];
  if (v.length < min) throw new PkiError('bad_der', `${what}: structure is too short`);
  return v;
}

export { asn1 };

// ---------------------------------------------------------------------------------------------
// The fast path. asn1js builds an object per element and copies buffers at every level, which
// costs more than the signature itself on the issuance hot path (join/renew). There cairn
// writes DER directly: definite-length TLVs around precomputed fragments (fixed OIDs and
// extension headers are encoded once, by asn1js, at load), and reads the few structures it
// needs (CSR, SubjectPublicKeyInfo) with a strict DER walker. The output is byte-for-byte what
// the asn1js helpers above produce.
// ---------------------------------------------------------------------------------------------

/** DER of one element, encoded once (for constants: OIDs, fixed extensions). */
export const derOf = (node: Node): Buffer => encode(node);

/** One TLV: `tag` (a single identifier byte, e.g. 0x30 SEQUENCE, 0x82 [2] IMPLICIT) around the concatenated contents. */
export function tlv(tag: number, ...contents: Uint8Array[]): Buffer {
  let n = 0;
  for (const c of contents) n += c.length;
  // header and contents in one allocation
  const lenBytes = n < 0x80 ? 0 : n < 0x100 ? 1 : n < 0x10000 ? 2 : n < 0x1000000 ? 3 : 4;
  const out = Buffer.allocUnsafe(2 + lenBytes + n);
  out[0] = tag;
  if (lenBytes === 0) out[1] = n;
  else {
    out[1] = 0x80 | lenBytes;
    for (let i = lenBytes, v = n; i >= 1; i--, v = Math.floor(v / 256)) out[1 + i] = v & 0xff;
  }
  let o = 2 + lenBytes;
  for (const c of contents) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

/** INTEGER contents from big-endian unsigned bytes: minimal, with a leading 0 when the high bit is set (as uintBytes). */
export function uintContents(bytes: Uint8Array): Buffer {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const b = Buffer.from(bytes.buffer, bytes.byteOffset + i, bytes.length - i);
  if (b.length > 0 && b[0] & 0x80) {
    const out = Buffer.allocUnsafe(b.length + 1);
    out[0] = 0;
    out.set(b, 1);
    return out;
  }
  return b;
}

/** INTEGER from a small non-negative number (as smallInt). */
export function smallIntDer(value: number): Buffer {
  if (!Number.isInteger(value) || value < 0 || value > 0x7fffffff) throw new PkiError('bad_der', `integer ${value} out of range`);
  const bytes: number[] = [];
  let v = value;
  do {
    bytes.unshift(v & 0xff);
    v = Math.floor(v / 256);
  } while (v > 0);
  if (bytes[0] & 0x80) bytes.unshift(0);
  return tlv(0x02, Uint8Array.from(bytes));
}

/** BIT STRING of named bits (as namedBits). */
export function namedBitsDer(bits: number[]): Buffer {
  if (bits.length === 0) return Buffer.from([0x03, 0x01, 0x00]);
  const max = Math.max(...bits);
  const bytes = new Uint8Array(Math.floor(max / 8) + 1);
  for (const b of bits) bytes[b >> 3] |= 0x80 >> (b & 7);
  return tlv(0x03, Uint8Array.of(7 - (max & 7)), bytes);
}

const two = (n: number) => (n < 10 ? '0' + n : String(n));

/** X.509 Time as in time(): UTCTime through 2049, GeneralizedTime from 2050, whole seconds, Z. */
export function timeDer(d: Date): Buffer {
  const s = new Date(Math.floor(d.getTime() / 1000) * 1000);
  const y = s.getUTCFullYear();
  const rest = two(s.getUTCMonth() + 1) + two(s.getUTCDate()) + two(s.getUTCHours()) + two(s.getUTCMinutes()) + two(s.getUTCSeconds()) + 'Z';
  if (y < 2050 && y >= 1950) return tlv(0x17, Buffer.from(two(y % 100) + rest, 'latin1'));
  return tlv(0x18, Buffer.from(String(y).padStart(4, '0') + rest, 'latin1'));
}

/** One element found by the DER reader: its tag byte and where its header and contents lie. */
export interface Tlv {
  /** The first identifier byte (class, constructed bit, low tag number or 0x1f). */
  tag: number;
  start: number;
  /** Start of the contents. */
  contents: number;
  end: number;
}

const MAX_DEPTH = 100;

/** Read one element at `offset`, not beyond `limit`; null if it is not valid DER (truncated, indefinite or non-minimal length). */
function readTlv(der: Uint8Array, offset: number, limit: number): Tlv | null {
  let p = offset;
  if (p >= limit) return null;
  const tag = der[p++];
  if ((tag & 0x1f) === 0x1f) {
    // high tag number form: base-128, at most 4 bytes, minimal
    let n = 0;
    if (p >= limit || der[p] === 0x80) return null;
    for (;;) {
      if (p >= limit || ++n > 4) return null;
      if (!(der[p++] & 0x80)) break;
    }
  }
  if (p >= limit) return null;
  let len = der[p++];
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 3 || p + n > limit || der[p] === 0) return null; // indefinite, oversized or non-minimal
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[p++];
    if (len < 0x80) return null; // long form for a short length: not DER
  }
  if (p + len > limit) return null;
  return { tag, start: offset, contents: p, end: p + len };
}

/** Whether der[start, end) is a well-formed sequence of DER elements, recursively through constructed ones. */
function wellFormed(der: Uint8Array, start: number, end: number, depth: number): boolean {
  if (depth > MAX_DEPTH) return false;
  let p = start;
  while (p < end) {
    const t = readTlv(der, p, end);
    if (!t) return false;
    if (t.tag & 0x20 && !wellFormed(der, t.contents, t.end, depth + 1)) return false;
    p = t.end;
  }
  return true;
}

/**
 * The single top element of `der`, checked to be well-formed DER throughout, with no trailing
 * bytes. Same errors as decode().
 */
export function derTop(der: Uint8Array, what: string): Tlv {
  const t = readTlv(der, 0, der.length);
  if (!t || (t.tag & 0x20 && !wellFormed(der, t.contents, t.end, 1))) throw new PkiError('bad_der', `${what} is not valid DER`);
  if (t.end !== der.length) throw new PkiError('bad_der', `${what} has ${der.length - t.end} trailing bytes after the DER structure`);
  return t;
}

/** The children of a constructed element (already checked by derTop). Same errors as children(). */
export function derChildren(der: Uint8Array, t: Tlv, what: string, min = 0): Tlv[] {
  // SEQUENCE, SET, or a constructed tagged element (as children() accepts)
  const constructed = t.tag === 0x30 || t.tag === 0x31 || (t.tag & 0x20 && t.tag & 0xc0);
  if (!constructed) throw new PkiError('bad_der', `${what}: unexpected ASN.1 structure`);
  const out: Tlv[] = [];
  for (let p = t.contents; p < t.end; ) {
    const c = readTlv(der, p, t.end);
    if (!c) throw new PkiError('bad_der', `${what} is not valid DER`);
    out.push(c);
    p = c.end;
  }
  if (out.length < min) throw new PkiError('bad_der', `${what}: structure is too short`);
  return out;
}
