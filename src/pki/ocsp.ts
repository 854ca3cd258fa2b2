/**
 * OCSP (RFC 6960) bytes: reading a request, writing a signed basic response or an error
 * response. Pure: which certificate is good or revoked, and which key signs, is decided by
 * the caller. The request is read with the strict DER reader (der.ts); the response is
 * written straight into DER and signed natively, like certificates and CRLs.
 */
import { hash, KeyObject } from 'node:crypto';
import { certificateInfo } from './cert.js';
import { derChildren, derOf, derTop, oid, tlv, Tlv, uintContents } from './der.js';
import { PkiError } from './errors.js';
import { REVOCATION_REASONS, RevocationReason } from './crl.js';
import { signatureSchemeFor, signWith } from './keys.js';

/** OCSPResponseStatus values (RFC 6960 4.2.1). */
export const OCSP_RESPONSE_STATUS = { successful: 0, malformedRequest: 1, internalError: 2, tryLater: 3, sigRequired: 5, unauthorized: 6 } as const;
export type OcspErrorStatus = Exclude<keyof typeof OCSP_RESPONSE_STATUS, 'successful'>;

const OID = {
  basic: '1.3.6.1.5.5.7.48.1.1',
  nonce: '1.3.6.1.5.5.7.48.1.2',
};
const HASH_OIDS: Record<string, 'sha1' | 'sha256' | 'sha384' | 'sha512'> = {
  '1.3.14.3.2.26': 'sha1',
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};
const BASIC_OID_DER = derOf(oid(OID.basic));
const NONCE_OID_DER = derOf(oid(OID.nonce));

/** One CertID of a request, with its DER (echoed unchanged in the answer). */
export interface OcspCertId {
  /** the hash algorithm's OID, and its name when cairn knows it */
  hashOid: string;
  hashName: 'sha1' | 'sha256' | 'sha384' | 'sha512' | null;
  issuerNameHash: Buffer;
  issuerKeyHash: Buffer;
  /** serial as uppercase hex without sign padding (as the store records it) */
  serialHex: string;
  der: Buffer;
}

export interface OcspRequestInfo {
  certIds: OcspCertId[];
  /** the nonce extension's extnValue (an OCTET STRING holding the nonce), to echo; null without one */
  nonce: Buffer | null;
  /** the request carries a signature (cairn does not require or check one) */
  signed: boolean;
}

/** Most single requests one OCSP request may carry. */
export const MAX_OCSP_REQUESTS = 32;

const bad = (why: string) => new PkiError('bad_der', `OCSP request: ${why}`);

function oidString(der: Buffer, t: Tlv): string {
  if (t.tag !== 0x06) throw bad('expected an OBJECT IDENTIFIER');
  const b = der.subarray(t.contents, t.end);
  if (b.length === 0) throw bad('empty OBJECT IDENTIFIER');
  const parts: number[] = [];
  let v = 0;
  for (let i = 0; i < b.length; i++) {
    v = v * 128 + (b[i] & 0x7f);
    if (!(b[i] & 0x80)) {
      parts.push(v);
      v = 0;
    } else if (v > 2 ** 40) throw bad('OBJECT IDENTIFIER out of range');
  }
  if (b[b.length - 1] & 0x80) throw bad('truncated OBJECT IDENTIFIER');
  const first = parts.shift()!;
  const head = first < 40 ? [0, first] : first < 80 ? [1, first - 40] : [2, first - 80];
  return [...head, ...parts].join('.');
}

/** Read an OCSPRequest (DER). Throws PkiError (bad_der) when it is not one. */
export function parseOcspRequest(input: Uint8Array): OcspRequestInfo {
  const der = Buffer.from(input);
  const top = derTop(der, 'OCSP request');
  if (top.tag !== 0x30) throw bad('not a SEQUENCE');
  const parts = derChildren(der, top, 'OCSP request', 1);
  const tbs = parts[0];
  if (tbs.tag !== 0x30) throw bad('tbsRequest is not a SEQUENCE');
  if (parts.length > 2 || (parts[1] && parts[1].tag !== 0xa0)) throw bad('unexpected element after tbsRequest');
  let fields = derChildren(der, tbs, 'tbsRequest', 1);
  // version [0] EXPLICIT (v1 = 0 only), requestorName [1] EXPLICIT
  if (fields[0]?.tag === 0xa0) {
    const v = derChildren(der, fields[0], 'version', 1);
    if (v.length !== 1 || v[0].tag !== 0x02 || !der.subarray(v[0].contents, v[0].end).equals(Buffer.from([0]))) throw bad('unsupported version');
    fields = fields.slice(1);
  }
  if (fields[0]?.tag === 0xa1) fields = fields.slice(1);
  const list = fields[0];
  if (!list || list.tag !== 0x30) throw bad('missing requestList');
  const exts = fields[1];
  if (fields.length > 2 || (exts && exts.tag !== 0xa2)) throw bad('unexpected element in tbsRequest');
  const requests = derChildren(der, list, 'requestList');
  if (requests.length === 0) throw bad('no request in requestList');
  if (requests.length > MAX_OCSP_REQUESTS) throw bad(`more than ${MAX_OCSP_REQUESTS} requests`);
  const certIds = requests.map((r) => {
    if (r.tag !== 0x30) throw bad('Request is not a SEQUENCE');
    const rc = derChildren(der, r, 'Request', 1);
    const id = rc[0];
    if (id.tag !== 0x30 || rc.length > 2 || (rc[1] && rc[1].tag !== 0xa0)) throw bad('malformed Request');
    const f = derChildren(der, id, 'CertID', 4);
    if (f.length !== 4 || f[0].tag !== 0x30 || f[1].tag !== 0x04 || f[2].tag !== 0x04 || f[3].tag !== 0x02) throw bad('malformed CertID');
    const alg = derChildren(der, f[0], 'hashAlgorithm', 1);
    const hashOid = oidString(der, alg[0]);
    const serial = der.subarray(f[3].contents, f[3].end);
    if (serial.length === 0 || serial.length > 21) throw bad('serialNumber out of range');
    if (serial[0] & 0x80) throw bad('negative serialNumber');
    return {
      hashOid,
      hashName: HASH_OIDS[hashOid] ?? null,
      issuerNameHash: Buffer.from(der.subarray(f[1].contents, f[1].end)),
      issuerKeyHash: Buffer.from(der.subarray(f[2].contents, f[2].end)),
      serialHex: uintContents(serial).toString('hex').toUpperCase().replace(/^(00)+(?=[0-9A-F]{2})/, ''),
      der: Buffer.from(der.subarray(id.start, id.end)),
    };
  });
  let nonce: Buffer | null = null;
  if (exts) {
    const seq = derChildren(der, exts, 'requestExtensions', 1);
    if (seq.length !== 1 || seq[0].tag !== 0x30) throw bad('malformed requestExtensions');
    for (const e of derChildren(der, seq[0], 'Extensions')) {
      if (e.tag !== 0x30) throw bad('malformed Extension');
      const ef = derChildren(der, e, 'Extension', 2);
      const value = ef[ef.length - 1];
      if (value.tag !== 0x04) throw bad('malformed Extension value');
      if (oidString(der, ef[0]) === OID.nonce) {
        const v = der.subarray(value.contents, value.end);
        if (v.length === 0 || v.length > 128) throw bad('nonce of an unsupported length');
        nonce = Buffer.from(v);
      }
    }
  }
  return { certIds, nonce, signed: parts.length === 2 };
}

/** The issuerNameHash and issuerKeyHash of a CA certificate under a hash (RFC 6960 4.1.1). */
export function issuerHashes(caCertDer: Buffer, hashName: string): { nameHash: Buffer; keyHash: Buffer } {
  const info = certificateInfo(caCertDer);
  const spki = info.publicKeyDer;
  const parts = derChildren(spki, derTop(spki, 'public key'), 'public key', 2);
  const bits = parts[1];
  return {
    nameHash: hash(hashName, info.subjectDer, 'buffer'),
    keyHash: hash(hashName, spki.subarray(bits.contents + 1, bits.end), 'buffer'),
  };
}

/** GeneralizedTime, whole seconds, Z (OCSP times are always GeneralizedTime). */
function generalizedTime(d: Date): Buffer {
  const s = new Date(Math.floor(d.getTime() / 1000) * 1000).toISOString(); // 2024-01-02T03:04:05.000Z
  return tlv(0x18, Buffer.from(s.slice(0, 19).replace(/[-T:]/g, '') + 'Z', 'latin1'));
}

export type OcspCertStatus = { status: 'good' } | { status: 'unknown' } | { status: 'revoked'; revokedAt: Date; reason?: RevocationReason | null };

export interface OcspSingleAnswer {
  certIdDer: Buffer;
  status: OcspCertStatus;
  thisUpdate: Date;
  nextUpdate: Date;
}

export interface OcspResponseParams {
  /** the responder's certificate (delegated OCSP signing, or the CA itself) and key */
  signerCertDer: Buffer;
  signerKey: KeyObject;
  producedAt: Date;
  answers: OcspSingleAnswer[];
  /** extnValue of the request's nonce, echoed */
  nonce?: Buffer | null;
  /** certificates to include (the delegated signer's, so a client can check it) */
  certs?: Buffer[];
  /** responderKeyHash(signerCertDer), when the caller keeps it */
  responderKeyHash?: Buffer;
}

/** The ResponderID byKey of a signing certificate: SHA-1 of its subjectPublicKey. */
export function responderKeyHash(signerCertDer: Buffer): Buffer {
  const spki = certificateInfo(signerCertDer).publicKeyDer;
  const bits = derChildren(spki, derTop(spki, 'public key'), 'public key', 2)[1];
  return hash('sha1', spki.subarray(bits.contents + 1, bits.end), 'buffer');
}

function certStatusDer(s: OcspCertStatus): Buffer {
  if (s.status === 'good') return Buffer.from([0x80, 0x00]);
  if (s.status === 'unknown') return Buffer.from([0x82, 0x00]);
  const parts = [generalizedTime(s.revokedAt)];
  // revocationReason [0] EXPLICIT CRLReason (ENUMERATED)
  if (s.reason && s.reason !== 'unspecified') parts.push(tlv(0xa0, tlv(0x0a, Buffer.from([REVOCATION_REASONS[s.reason]]))));
  return tlv(0xa1, ...parts);
}

/** A successful, signed basic OCSP response (DER). The responder is named by key (SHA-1 of its public key). */
export function buildOcspResponse(p: OcspResponseParams): Buffer {
  const keyHash = p.responderKeyHash ?? responderKeyHash(p.signerCertDer);
  const singles = p.answers.map((a) =>
    tlv(0x30, a.certIdDer, certStatusDer(a.status), generalizedTime(a.thisUpdate), tlv(0xa0, generalizedTime(a.nextUpdate))),
  );
  const tbsParts = [tlv(0xa2, tlv(0x04, keyHash)), generalizedTime(p.producedAt), tlv(0x30, ...singles)];
  if (p.nonce) tbsParts.push(tlv(0xa1, tlv(0x30, tlv(0x30, NONCE_OID_DER, tlv(0x04, p.nonce)))));
  const tbs = tlv(0x30, ...tbsParts);
  const scheme = signatureSchemeFor(p.signerKey);
  const sig = signWith(p.signerKey, scheme, tbs);
  const basicParts = [tbs, scheme.algorithmDer, tlv(0x03, Buffer.from([0]), sig)];
  if (p.certs && p.certs.length) basicParts.push(tlv(0xa0, tlv(0x30, ...p.certs)));
  const basic = tlv(0x30, ...basicParts);
  return tlv(0x30, tlv(0x0a, Buffer.from([0])), tlv(0xa0, tlv(0x30, BASIC_OID_DER, tlv(0x04, basic))));
}

/** An unsuccessful OCSP response: just the status (RFC 6960 4.2.1: no responseBytes). */
export function ocspErrorResponse(status: OcspErrorStatus): Buffer {
  return tlv(0x30, tlv(0x0a, Buffer.from([OCSP_RESPONSE_STATUS[status]])));
}

/** The request of one certificate (what a client sends), for tests and tools. */
export function buildOcspRequest(issuerCertDer: Buffer, serialHex: string, o: { hash?: 'sha1' | 'sha256'; nonce?: Buffer } = {}): Buffer {
  const h = o.hash ?? 'sha1';
  const { nameHash, keyHash } = issuerHashes(issuerCertDer, h);
  const hashOid = Object.entries(HASH_OIDS).find(([, n]) => n === h)![0];
  const certId = tlv(0x30, tlv(0x30, derOf(oid(hashOid)), Buffer.from([0x05, 0x00])), tlv(0x04, nameHash), tlv(0x04, keyHash), tlv(0x02, uintContents(Buffer.from(serialHex, 'hex'))));
  const tbs = [tlv(0x30, tlv(0x30, certId))];
  if (o.nonce) tbs.push(tlv(0xa2, tlv(0x30, tlv(0x30, NONCE_OID_DER, tlv(0x04, tlv(0x04, o.nonce))))));
  return tlv(0x30, tlv(0x30, ...tbs));
}
