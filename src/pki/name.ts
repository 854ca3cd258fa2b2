import { derOf, oid, tlv } from './der.js';
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
