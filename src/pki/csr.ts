import { createPublicKey, KeyObject, verify as nodeVerify } from 'node:crypto';
import { bitsBytes, ctxConstructed, derChildren, derOf, derTop, encode, oid, raw, seq, smallInt, asn1 } from './der.js';
import { PkiError } from './errors.js';
import { checkKeyStrength, signatureSchemeFor, signWith, spkiDer, type SignatureScheme } from './keys.js';
import { encodeName, NameAttrs } from './name.js';
import { parsePemBlocks, toPem } from './pem.js';

/** Signature algorithms accepted on CSRs, by OID: [hash, key type]. */
const CSR_SIG_ALGS: Record<string, [string | null, string]> = {
  '1.2.840.10045.4.3.2': ['sha256', 'ec'],
  '1.2.840.10045.4.3.3': ['sha384', 'ec'],
  '1.2.840.10045.4.3.4': ['sha512', 'ec'],
  '1.2.840.113549.1.1.11': ['sha256', 'rsa'],
  '1.2.840.113549.1.1.12': ['sha384', 'rsa'],
  '1.2.840.113549.1.1.13': ['sha512', 'rsa'],
  '1.3.101.112': [null, 'ed25519'],
};
/** The same, keyed by the DER of the OID (so a request's OID is looked up without decoding it). */
const CSR_SIG_ALGS_BY_DER = new Map(Object.entries(CSR_SIG_ALGS).map(([o, a]) => [derOf(oid(o)).toString('latin1'), a]));

/** Dotted form of an OID element, for messages. */
function oidString(der: Uint8Array): string {
  const r = asn1.fromBER(der).result;
  return r instanceof asn1.ObjectIdentifier ? r.valueBlock.toString() : '(malformed)';
}

/**
 * SubjectPublicKeyInfo headers of EC keys on the named curves, uncompressed point (everything but
 * the X and Y coordinates that follow).
 */
const EC_SPKI_PREFIXES: { prefix: Buffer; crv: string; size: number }[] = [
  { prefix: Buffer.from('3059301306072a8648ce3d020106082a8648ce3d03010703420004', 'hex'), crv: 'P-256', size: 32 },
  { prefix: Buffer.from('3076301006072a8648ce3d020106052b8104002203620004', 'hex'), crv: 'P-384', size: 48 },
  { prefix: Buffer.from('30819b301006072a8648ce3d020106052b810400230381860004', 'hex'), crv: 'P-521', size: 66 },
];

/**
 * A requester's public key as a KeyObject. OpenSSL 3's generic SPKI decoder is the single most
 * expensive step of issuance (more than the ECDSA verify); the same EC key handed over as a JWK
 * (its coordinates, cut out of the SPKI) is imported directly and checked to be on the curve by
 * OpenSSL. Anything else takes the SPKI path.
 */
function importPublicKey(spki: Buffer): { key: KeyObject; namedCurve: boolean } {
  for (const c of EC_SPKI_PREFIXES) {
    if (spki.length === c.prefix.length + 2 * c.size && spki.subarray(0, c.prefix.length).equals(c.prefix)) {
      const x = spki.subarray(c.prefix.length, c.prefix.length + c.size);
      const y = spki.subarray(c.prefix.length + c.size);
      const jwk = { kty: 'EC', crv: c.crv, x: x.toString('base64url'), y: y.toString('base64url') };
      return { key: createPublicKey({ key: jwk, format: 'jwk' }), namedCurve: true };
    }
  }
  return { key: createPublicKey({ key: spki, format: 'der', type: 'spki' }), namedCurve: false };
}

export interface ParsedCsr {
  /** SubjectPublicKeyInfo DER of the requester's key. */
  publicKeyDer: Buffer;
  publicKey: KeyObject;
}

/** Largest CSR accepted, in bytes of DER: an RSA-8192 CSR is well under this. */
export const MAX_CSR_BYTES = 16 * 1024;

/**
 * Parse a PKCS#10 request and verify its proof of possession with native crypto.
 * Only the public key is returned: the CA never takes the subject or extensions from a CSR.
 */
export function parseCsr(input: Buffer): ParsedCsr {
  const der = Buffer.isBuffer(input) ? input : Buffer.from((input as Uint8Array).buffer, (input as Uint8Array).byteOffset, (input as Uint8Array).byteLength);
  if (der.length > MAX_CSR_BYTES) throw new PkiError('bad_csr', `CSR is larger than ${MAX_CSR_BYTES} bytes`);
  let info: Buffer, spki: Buffer, algDer: Buffer, sig: Buffer;
  try {
    // CertificationRequest ::= SEQUENCE { certificationRequestInfo, signatureAlgorithm, signature BIT STRING }
    // CertificationRequestInfo ::= SEQUENCE { version INTEGER (0), subject Name, subjectPKInfo, attributes [0] }
    // derTop checks the whole request is well-formed DER (every nested element), as decode() did.
    const top = derChildren(der, derTop(der, 'CSR'), 'CSR', 3);
    const cri = derChildren(der, top[0], 'CSR', 4);
    // exactly these elements: nothing smuggled after them
    if (top.length !== 3 || cri.length !== 4) throw new PkiError('bad_csr', 'CSR has unexpected extra elements');
    if (cri[3].tag !== 0xa0) throw new PkiError('bad_csr', 'CSR attributes are malformed');
    const version = cri[0];
    if (version.tag !== 0x02 || version.end - version.contents !== 1 || der[version.contents] !== 0) {
      throw new PkiError('bad_csr', 'CSR version is not 1');
    }
    info = der.subarray(top[0].start, top[0].end);
    spki = Buffer.from(der.subarray(cri[2].start, cri[2].end));
    const alg = derChildren(der, top[1], 'CSR', 1)[0];
    if (alg.tag !== 0x06) throw new PkiError('bad_csr', 'CSR signature algorithm is malformed');
    algDer = der.subarray(alg.start, alg.end);
    const bits = top[2];
    if (bits.tag !== 0x03 || bits.end === bits.contents || der[bits.contents] !== 0) throw new PkiError('bad_csr', 'CSR signature is malformed');
    sig = der.subarray(bits.contents + 1, bits.end);
  } catch (e) {
    if (e instanceof PkiError) throw new PkiError('bad_csr', e.message.startsWith('CSR') ? e.message : `CSR: ${e.message}`);
    throw new PkiError('bad_csr', 'CSR is not a valid PKCS#10 request');
  }
  let publicKey: KeyObject, namedCurve: boolean;
  try {
    ({ key: publicKey, namedCurve } = importPublicKey(spki));
  } catch {
    throw new PkiError('unsupported_key', 'CSR public key is malformed or of an unsupported type');
  }
  // An EC key on P-256/P-384/P-521 passes checkKeyStrength; asking OpenSSL for the curve of a
  // fresh key is not free, so only other keys are asked.
  if (!namedCurve) checkKeyStrength(publicKey);
  const alg = CSR_SIG_ALGS_BY_DER.get(algDer.toString('latin1'));
  if (!alg) throw new PkiError('bad_csr', `CSR signature algorithm ${oidString(algDer)} is not supported`);
  if (alg[1] !== publicKey.asymmetricKeyType) throw new PkiError('bad_csr', 'CSR signature algorithm does not match its key');
  let ok = false;
  try {
    ok = nodeVerify(alg[0], info, publicKey, sig);
  } catch {
    ok = false;
  }
  if (!ok) throw new PkiError('bad_csr_signature', 'CSR signature does not verify: the requester does not hold the private key');
  return { publicKeyDer: spki, publicKey };
}

/** Read a CSR from PEM ("CERTIFICATE REQUEST" or "NEW CERTIFICATE REQUEST") or raw DER. */
export function csrDerFrom(input: Buffer | string): Buffer {
  const text = typeof input === 'string' ? input : input.toString('latin1');
  if (text.includes('-----BEGIN')) {
    const blocks = parsePemBlocks(text).filter((b) => b.label === 'CERTIFICATE REQUEST' || b.label === 'NEW CERTIFICATE REQUEST');
    if (blocks.length !== 1) throw new PkiError('bad_csr', 'expected exactly one PEM CERTIFICATE REQUEST block');
    return blocks[0].der;
  }
  return typeof input === 'string' ? Buffer.from(input, 'latin1') : input;
}

/** Create a PKCS#10 request signed by `key` (the node side: the key never leaves the node). */
export function createCsr(key: KeyObject, subject: NameAttrs = {}): Buffer {
  const scheme = signatureSchemeFor(key);
  const info = encode(seq(smallInt(0), raw(encodeName(subject)), raw(spkiDer(key)), ctxConstructed(0)));
  const sig = signWith(key, scheme, info);
  return encode(seq(raw(info), raw(scheme.algorithmDer), bitsBytes(sig)));
}

/**
 * The CertificationRequestInfo of a request for `spkiDer` with the subject Name `subjectDer`
 * (verbatim), for a key held elsewhere (a token): sign it, then `signedCsr()`.
 */
export function csrTbs(subjectDer: Buffer, spkiDer: Buffer): Buffer {
  return encode(seq(smallInt(0), raw(subjectDer), raw(spkiDer), ctxConstructed(0)));
}

/** A PKCS#10 request from its CertificationRequestInfo and the signature over it. */
export function signedCsr(tbs: Buffer, scheme: SignatureScheme, signature: Buffer): Buffer {
  return encode(seq(raw(tbs), raw(scheme.algorithmDer), bitsBytes(signature)));
}

export function csrToPem(der: Uint8Array): string {
  return toPem('CERTIFICATE REQUEST', der);
}
