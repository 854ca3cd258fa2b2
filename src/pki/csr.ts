import { createPublicKey, KeyObject, verify as nodeVerify } from 'node:crypto';
import { bitsBytes, bytesOf, children, ctxConstructed, decode, encode, raw, seq, smallInt, asn1 } from './der.js';
import { PkiError } from './errors.js';
import { checkKeyStrength, signatureSchemeFor, signWith, spkiDer } from './keys.js';
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
export function parseCsr(der: Buffer): ParsedCsr {
  if (der.length > MAX_CSR_BYTES) throw new PkiError('bad_csr', `CSR is larger than ${MAX_CSR_BYTES} bytes`);
  let info: Buffer, spki: Buffer, algOid: string, sig: Uint8Array;
  try {
    const top = children(decode(der, 'CSR'), 'CSR', 3);
    const cri = children(top[0], 'CSR', 4);
    if (!(cri[0] instanceof asn1.Integer) || cri[0].valueBlock.valueDec !== 0) throw new PkiError('bad_csr', 'CSR version is not 1');
    info = bytesOf(top[0]);
    spki = bytesOf(cri[2]);
    const alg = children(top[1], 'CSR', 1)[0];
    if (!(alg instanceof asn1.ObjectIdentifier)) throw new PkiError('bad_csr', 'CSR signature algorithm is malformed');
    algOid = alg.valueBlock.toString();
    if (!(top[2] instanceof asn1.BitString) || top[2].valueBlock.unusedBits !== 0) throw new PkiError('bad_csr', 'CSR signature is malformed');
    sig = top[2].valueBlock.valueHexView;
  } catch (e) {
    if (e instanceof PkiError) throw new PkiError('bad_csr', e.message.startsWith('CSR') ? e.message : `CSR: ${e.message}`);
    throw new PkiError('bad_csr', 'CSR is not a valid PKCS#10 request');
  }
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch {
    throw new PkiError('unsupported_key', 'CSR public key is malformed or of an unsupported type');
  }
  checkKeyStrength(publicKey);
  const alg = CSR_SIG_ALGS[algOid];
  if (!alg) throw new PkiError('bad_csr', `CSR signature algorithm ${algOid} is not supported`);
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

export function csrToPem(der: Uint8Array): string {
  return toPem('CERTIFICATE REQUEST', der);
}
