import { derChildren, derOf, derTop, oid, tlv } from './der.js';
import { PkiError } from './errors.js';

/** Distinguished-name attributes cairn writes, in order. */
export interface NameAttrs {
  C?: string;
  O?: string;
  OU?: string;
  CN?: string;
}

const OIDS: Record<keyof NameAttrs, string> = {
  C: '2.5.4.6',
  O: '2.5.4.10',
  OU: '2.5.4.11',
  CN: '2.5.4.3',
};
// RFC 5280 upper bounds
const MAX: Record<keyof NameAttrs, number> = { C: 2, O: 64, OU: 64, CN: 64 };
/** The attribute type OIDs, DER-encoded once. */
const OID_DER: Record<keyof NameAttrs, Buffer> = {
  C: derOf(oid(OIDS.C)),
  O: derOf(oid(OIDS.O)),
  OU: derOf(oid(OIDS.OU)),
  CN: derOf(oid(OIDS.CN)),
};
const KEYS = ['C', 'O', 'OU', 'CN'] as const;
const CONTROL = /[\u0000-\u001f\u007f]/;
const LONE_SURROGATE = /\p{Cs}/u;

/** Encode a Name (RDNSequence, one attribute per RDN) as DER; strings are UTF8String (C is a PrintableString). */
export function encodeName(attrs: NameAttrs): Buffer {
  const rdns: Buffer[] = [];
  for (const k of KEYS) {
    const v = attrs[k];
    if (v === undefined) continue;
    if (v.length === 0 || v.length > MAX[k]) {
      throw new PkiError('bad_name', `${k} must be 1 to ${MAX[k]} characters`);
    }
    if (CONTROL.test(v)) throw new PkiError('bad_name', `${k} must not contain control characters`);
    if (k !== 'C' && LONE_SURROGATE.test(v)) throw new PkiError('bad_name', `${k} contains a lone surrogate and cannot be encoded as UTF-8`);
    // PrintableString: one byte per character, as asn1js writes it; UTF8String: UTF-8.
    const value = k === 'C' ? tlv(0x13, Buffer.from(v, 'latin1')) : tlv(0x0c, Buffer.from(v, 'utf8'));
    rdns.push(tlv(0x31, tlv(0x30, OID_DER[k], value)));
  }
  return tlv(0x30, ...rdns);
}

/** Directory string types compared by their text: UTF8String, PrintableString, TeletexString, IA5String. */
const TEXT_TAGS: Record<number, BufferEncoding> = { 0x0c: 'utf8', 0x13: 'latin1', 0x14: 'latin1', 0x16: 'latin1' };

/** A Name as RFC 5280 7.1 compares it (the string type aside; whitespace and case folded; an RDN's attributes in any order). */
function nameKey(der: Buffer): string {
  const rdns: string[] = [];
  for (const rdn of derChildren(der, derTop(der, 'Name'), 'Name')) {
    const atvs = derChildren(der, rdn, 'RDN', 1).map((atv) => {
      const [type, value] = derChildren(der, atv, 'attribute', 2);
      const enc = TEXT_TAGS[value.tag];
      const v = enc ? der.subarray(value.contents, value.end).toString(enc).trim().replace(/\s+/g, ' ').toLowerCase() : `#${der.subarray(value.start, value.end).toString('hex')}`;
      return `${der.subarray(type.start, type.end).toString('hex')}=${JSON.stringify(v)}`;
    });
    rdns.push(atvs.sort().join('+'));
  }
  return rdns.join(',');
}

/**
 * Whether two DER Names are the same name: byte for byte, or as RFC 5280 7.1 compares them
 * (a CRL another implementation made may write the issuer's name with other string types:
 * Go writes PrintableString where OpenSSL wrote UTF8String).
 */
export function sameName(a: Buffer, b: Buffer): boolean {
  if (a.equals(b)) return true;
  try {
    return nameKey(a) === nameKey(b);
  } catch {
    return false;
  }
}
