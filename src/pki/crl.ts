import { verify as nodeVerify, X509Certificate } from 'node:crypto';
import { certificateInfo, Issuer, IssuerInfo } from './cert.js';
import { asn1, bitsBytes, ctxConstructed, ctxPrimitive, derChildren, derTop, encode, octets, oid, raw, seq, smallInt, time, timeDer, Tlv, tlv, uintBytes, uintContents } from './der.js';
import { PkiError } from './errors.js';
import { sameName } from './name.js';
import { SignatureScheme, signWith } from './keys.js';

/** RFC 5280 5.3.1 reason codes. */
export const REVOCATION_REASONS = {
  unspecified: 0,
  keyCompromise: 1,
  cACompromise: 2,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  certificateHold: 6,
  privilegeWithdrawn: 9,
  aACompromise: 10,
} as const;
export type RevocationReason = keyof typeof REVOCATION_REASONS;

export function isRevocationReason(s: string): s is RevocationReason {
  return Object.prototype.hasOwnProperty.call(REVOCATION_REASONS, s);
}

export interface RevokedEntry {
  serial: Buffer;
  revokedAt: Date;
  reason?: RevocationReason;
}

export interface CrlParams {
  issuer: Issuer;
  /** monotonic CRL number */
  number: bigint;
  thisUpdate: Date;
  nextUpdate: Date;
  revoked: RevokedEntry[];
  /** entries already encoded with `crlEntryDer` (a builder that keeps its list), listed after `revoked` */
  entriesDer?: Buffer[];
}

/** Extensions of an entry with a reason code: SEQUENCE { SEQUENCE { id-ce-cRLReasons, OCTET STRING { ENUMERATED } } }. */
const reasonExtensions = new Map<number, Buffer>(
  Object.values(REVOCATION_REASONS).map((code) => [code, encode(seq(seq(oid('2.5.29.21'), octets(encode(new asn1.Enumerated({ value: code }))))))]),
);

/**
 * One revokedCertificates entry, DER. Written with `tlv` rather than asn1js objects: a CRL
 * of 100,000 entries is built in a fraction of the time (checked against asn1js in tests).
 */
export function crlEntryDer(r: RevokedEntry): Buffer {
  const code = r.reason ? REVOCATION_REASONS[r.reason] : 0;
  const parts = [tlv(0x02, uintContents(r.serial)), timeDer(new Date(Math.floor(r.revokedAt.getTime() / 1000) * 1000))];
  // reasonCode "unspecified" SHOULD be absent (RFC 5280 5.3.1)
  if (code) parts.push(reasonExtensions.get(code)!);
  return tlv(0x30, Buffer.concat(parts));
}

function bigintBytes(n: bigint): Buffer {
  let h = n.toString(16);
  if (h.length % 2) h = '0' + h;
  return Buffer.from(h, 'hex');
}

/** Build and sign a v2 CRL (RFC 5280): AKI and CRL number extensions, reason codes on entries. */
export function buildCrl(p: CrlParams): Buffer {
  const tbs = crlTbs(p);
  return signedCrl(tbs, p.issuer.scheme, signWith(p.issuer.key, p.issuer.scheme, tbs));
}

/** A CRL from its TBSCertList and the signature over it. */
export function signedCrl(tbs: Buffer, scheme: SignatureScheme, signature: Buffer): Buffer {
  return encode(seq(raw(tbs), raw(scheme.algorithmDer), bitsBytes(signature)));
}

/** The TBSCertList a CA signs (for signers that hold the key elsewhere): then `signedCrl()`. */
export function crlTbs(p: Omit<CrlParams, 'issuer'> & { issuer: IssuerInfo }): Buffer {
  if (p.number < 0n) throw new PkiError('bad_crl', 'CRL number must not be negative');
  const encoded = p.revoked.map(crlEntryDer);
  const entries = p.entriesDer ? (encoded.length ? encoded.concat(p.entriesDer) : p.entriesDer) : encoded;
  const crlExts = seq(
    seq(oid('2.5.29.35'), octets(encode(seq(ctxPrimitive(0, p.issuer.keyId))))),
    seq(oid('2.5.29.20'), octets(encode(uintBytes(bigintBytes(p.number))))),
  );
  const tbs = encode(
    seq(
      smallInt(1),
      raw(p.issuer.scheme.algorithmDer),
      raw(p.issuer.nameDer),
      time(p.thisUpdate),
      time(p.nextUpdate),
      // entries are encoded one by one and spliced in as one block: asn1js is slow with 100k children
      ...(entries.length ? [seq(raw(Buffer.concat(entries)))] : []),
      ctxConstructed(0, crlExts),
    ),
  );
  return tbs;
}

/** The CRL number of a CRL (for checks and tests). */
export function crlNumber(der: Buffer): bigint {
  // walked as TLVs, not decoded into objects: a CRL of 100,000 entries is read in milliseconds
  const [tbs] = derChildren(der, derTop(der, 'CRL'), 'CRL', 3);
  const extsWrap = derChildren(der, tbs, 'CRL', 4).find((t) => t.tag === 0xa0);
  if (!extsWrap) throw new PkiError('bad_crl', 'CRL has no CRL number');
  const [exts] = derChildren(der, extsWrap, 'CRL extensions', 1);
  for (const e of derChildren(der, exts, 'CRL extensions')) {
    const parts = derChildren(der, e, 'CRL extension', 2);
    if (parts[0].tag === 0x06 && der.subarray(parts[0].start, parts[0].end).equals(CRL_NUMBER_OID)) {
      const value = parts[parts.length - 1];
      if (value.tag !== 0x04) throw new PkiError('bad_crl', 'the CRL number extension is malformed');
      const inner = der.subarray(value.contents, value.end);
      const n = derTop(inner, 'CRL number');
      if (n.tag !== 0x02) throw new PkiError('bad_crl', 'the CRL number is not an INTEGER');
      return BigInt('0x' + (inner.subarray(n.contents, n.end).toString('hex') || '0'));
    }
  }
  throw new PkiError('bad_crl', 'CRL has no CRL number');
}

/** DER of the OID of the CRL number extension (2.5.29.20). */
const CRL_NUMBER_OID = Buffer.from('0603551d14', 'hex');

/** A CRL as a relying party reads it. */
export interface CrlInfo {
  der: Buffer;
  /** DER of the issuer Name */
  issuerDer: Buffer;
  /** the CRL number extension (0 if absent) */
  number: bigint;
  thisUpdate: Date;
  nextUpdate: Date | null;
  /** revoked serials, normalized by normalizeSerialHex */
  revoked: Set<string>;
  /** the signed part and its signature, for verifyCrl */
  tbsDer: Buffer;
  signatureAlgorithmDer: Buffer;
  signature: Buffer;
}

/** A serial in hex as compared for revocation: uppercase, no separators, no leading zeros. */
export function normalizeSerialHex(hex: string): string {
  return hex.replace(/[:\s]/g, '').toUpperCase().replace(/^0+(?=.)/, '');
}

function readTime(der: Buffer, t: Tlv): Date {
  const s = der.subarray(t.contents, t.end).toString('latin1');
  let m: RegExpMatchArray | null;
  if (t.tag === 0x17 && (m = s.match(/^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/))) {
    const y = Number(m[1]);
    return new Date(Date.UTC(y < 50 ? 2000 + y : 1900 + y, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
  }
  if (t.tag === 0x18 && (m = s.match(/^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/))) {
    return new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
  }
  throw new PkiError('bad_crl', 'the CRL holds a malformed time');
}

/**
 * Parse a v2 CRL (DER) with the fast DER reader (a CRL of 100,000 entries is read in
 * milliseconds). The signature is not checked here: see verifyCrl.
 */
export function parseCrl(der: Buffer): CrlInfo {
  const top = derTop(der, 'CRL');
  const [tbs, alg, sig] = derChildren(der, top, 'CRL', 3);
  if (tbs.tag !== 0x30 || alg.tag !== 0x30 || sig.tag !== 0x03) throw new PkiError('bad_crl', 'not a CRL');
  const f = derChildren(der, tbs, 'CRL', 4);
  let i = 0;
  if (f[i].tag === 0x02) i++; // version
  i++; // signature algorithm
  const issuer = f[i++];
  if (!issuer || issuer.tag !== 0x30) throw new PkiError('bad_crl', 'the CRL has no issuer name');
  const thisUpdate = readTime(der, f[i++]);
  let nextUpdate: Date | null = null;
  if (f[i] && (f[i].tag === 0x17 || f[i].tag === 0x18)) nextUpdate = readTime(der, f[i++]);
  const revoked = new Set<string>();
  if (f[i] && f[i].tag === 0x30) {
    for (const entry of derChildren(der, f[i++], 'CRL entries')) {
      const [serial] = derChildren(der, entry, 'CRL entry', 2);
      if (serial.tag !== 0x02) throw new PkiError('bad_crl', 'a CRL entry has no serial number');
      revoked.add(normalizeSerialHex(der.subarray(serial.contents, serial.end).toString('hex')));
    }
  }
  let number = 0n;
  try {
    number = crlNumber(der);
  } catch (e) {
    if (!(e instanceof PkiError)) throw e;
  }
  if (sig.end <= sig.contents || der[sig.contents] !== 0) throw new PkiError('bad_crl', 'the CRL signature is malformed');
  return {
    der,
    issuerDer: der.subarray(issuer.start, issuer.end),
    number,
    thisUpdate,
    nextUpdate,
    revoked,
    tbsDer: der.subarray(tbs.start, tbs.end),
    signatureAlgorithmDer: der.subarray(alg.start, alg.end),
    signature: der.subarray(sig.contents + 1, sig.end),
  };
}

/** Hash of each signature algorithm cairn signs with (null: Ed25519 signs the message itself). */
const SIG_HASH: Record<string, string | null> = {
  '300a06082a8648ce3d040302': 'sha256',
  '300a06082a8648ce3d040303': 'sha384',
  '300a06082a8648ce3d040304': 'sha512',
  '300d06092a864886f70d01010b0500': 'sha256',
  '300d06092a864886f70d01010c0500': 'sha384',
  '300d06092a864886f70d01010d0500': 'sha512',
  '300506032b6570': null,
};

/**
 * Find which of `issuers` (CA certificates, DER) signed a CRL: same subject name as the CRL's
 * issuer and a signature that verifies with its key (node:crypto). Returns its index, or -1.
 */
export function verifyCrl(crl: CrlInfo, issuers: Buffer[]): number {
  const alg = crl.signatureAlgorithmDer.toString('hex');
  if (!(alg in SIG_HASH)) return -1;
  for (const [i, der] of issuers.entries()) {
    let c: X509Certificate;
    try {
      c = new X509Certificate(der);
    } catch {
      continue;
    }
    if (!c.ca) continue;
    const subject = certificateInfo(der).subjectDer;
    if (!sameName(subject, crl.issuerDer)) continue;
    try {
      if (nodeVerify(SIG_HASH[alg], crl.tbsDer, c.publicKey, crl.signature)) return i;
    } catch {
      /* wrong key type for this algorithm */
    }
  }
  return -1;
}
