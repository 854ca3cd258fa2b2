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

/**
 * A DER tag-length-value with a definite, minimal length. Used only where asn1js's per-object
 * cost dominates (100k-entry CRLs); unit tests check it against asn1js's encoding.
 */
export function tlv(tag: number, content: Uint8Array): Buffer {
  const n = content.length;
  let head: Buffer;
  if (n < 0x80) head = Buffer.from([tag, n]);
  else if (n < 0x100) head = Buffer.from([tag, 0x81, n]);
  else if (n < 0x10000) head = Buffer.from([tag, 0x82, n >> 8, n & 0xff]);
  else if (n < 0x1000000) head = Buffer.from([tag, 0x83, n >> 16, (n >> 8) & 0xff, n & 0xff]);
  else head = Buffer.from([tag, 0x84, (n >>> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]);
  return Buffer.concat([head, content]);
}

/** Minimal unsigned INTEGER contents (adds 0x00 when the high bit is set). */
export function uintContents(bytes: Uint8Array): Buffer {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const b = Buffer.from(bytes.subarray(i));
  return b[0] & 0x80 ? Buffer.concat([Buffer.from([0]), b]) : b;
}

const pad2 = (n: number) => (n < 10 ? '0' : '') + n;

/** X.509 Time as DER bytes, same rules as `time()`. */
export function timeDer(d: Date): Buffer {
  const y = d.getUTCFullYear();
  const body = `${pad2(d.getUTCMonth() + 1)}${pad2(d.getUTCDate())}${pad2(d.getUTCHours())}${pad2(d.getUTCMinutes())}${pad2(d.getUTCSeconds())}Z`;
  if (y >= 1950 && y < 2050) return tlv(0x17, Buffer.from(pad2(y % 100) + body, 'ascii'));
  return tlv(0x18, Buffer.from(String(y).padStart(4, '0') + body, 'ascii'));
}
