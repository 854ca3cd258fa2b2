import { encode, oid, printable, seq, set, utf8 } from './der.js';
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

/** Encode a Name (RDNSequence, one attribute per RDN) as DER; strings are UTF8String. */
export function encodeName(attrs: NameAttrs): Buffer {
  const rdns = [];
  for (const k of ['C', 'O', 'OU', 'CN'] as const) {
    const v = attrs[k];
    if (v === undefined) continue;
    if (v.length === 0 || v.length > MAX[k]) {
      throw new PkiError('bad_name', `${k} must be 1 to ${MAX[k]} characters`);
    }
    if (/[\u0000-\u001f\u007f]/.test(v)) throw new PkiError('bad_name', `${k} must not contain control characters`);
    rdns.push(set(seq(oid(OIDS[k]), k === 'C' ? printable(v) : utf8(v))));
  }
  return encode(seq(...rdns));
}
