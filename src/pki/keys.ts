import { createPrivateKey, createPublicKey, generateKeyPairSync, KeyObject, sign as nodeSign } from 'node:crypto';
import { PkiError } from './errors.js';
import { pemBlockOf, toPem } from './pem.js';

export type KeyType = 'ec-p256' | 'ec-p384' | 'rsa-2048' | 'rsa-3072' | 'rsa-4096' | 'ed25519';

/** Key types a user may ask for. P-256 is the default. */
export const KEY_TYPES: KeyType[] = ['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096', 'ed25519'];
export const DEFAULT_KEY_TYPE: KeyType = 'ec-p256';

export function isKeyType(s: string): s is KeyType {
  return (KEY_TYPES as string[]).includes(s);
}

export interface KeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
}

export function generateKeyPair(type: KeyType = DEFAULT_KEY_TYPE): KeyPair {
  switch (type) {
    case 'ec-p256':
      return generateKeyPairSync('ec', { namedCurve: 'P-256' });
    case 'ec-p384':
      return generateKeyPairSync('ec', { namedCurve: 'P-384' });
    case 'rsa-2048':
    case 'rsa-3072':
    case 'rsa-4096':
      return generateKeyPairSync('rsa', { modulusLength: Number(type.slice(4)), publicExponent: 0x10001 });
    case 'ed25519':
      return generateKeyPairSync('ed25519');
  }
}

/** PKCS#8 PEM of a private key. */
export function privateKeyToPem(key: KeyObject): string {
  return key.export({ type: 'pkcs8', format: 'pem' }) as string;
}

/** SubjectPublicKeyInfo DER of a key (private or public). */
export function spkiDer(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return pub.export({ type: 'spki', format: 'der' });
}

/** Load a private key from PEM (PKCS#8, or the traditional EC/RSA forms); unencrypted only. */
export function privateKeyFromPem(pem: string, what = 'the key file'): KeyObject {
  const labels = ['PRIVATE KEY', 'EC PRIVATE KEY', 'RSA PRIVATE KEY'];
  let der: Buffer;
  let label: string;
  try {
    der = pemBlockOf(pem, [...labels, 'ENCRYPTED PRIVATE KEY'], what);
    label = pem.includes('BEGIN ENCRYPTED PRIVATE KEY') ? 'ENCRYPTED PRIVATE KEY' : labels.find((l) => pem.includes(`BEGIN ${l}`))!;
  } catch (e) {
    if (e instanceof PkiError) throw new PkiError('bad_key', `${what}: ${e.message.replace(/ in .*$/, '')} (expected a PEM private key)`);
    throw e;
  }
  if (label === 'ENCRYPTED PRIVATE KEY') throw new PkiError('bad_key', `${what}: encrypted private keys are not supported`);
  try {
    const type = label === 'PRIVATE KEY' ? 'pkcs8' : label === 'EC PRIVATE KEY' ? 'sec1' : 'pkcs1';
    const key = createPrivateKey({ key: der, format: 'der', type });
    checkKeyStrength(key);
    return key;
  } catch (e) {
    if (e instanceof PkiError) throw e;
    throw new PkiError('bad_key', `${what}: not a valid private key`);
  }
}

export interface KeyDescription {
  /** 'ec' | 'rsa' | 'ed25519' */
  kind: string;
  /** 'P-256', 'rsa-2048', 'ed25519'... */
  name: string;
}

export function describeKey(key: KeyObject): KeyDescription {
  const t = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails ?? {};
  if (t === 'ec') {
    const curve = d.namedCurve === 'prime256v1' ? 'P-256' : d.namedCurve === 'secp384r1' ? 'P-384' : d.namedCurve === 'secp521r1' ? 'P-521' : String(d.namedCurve);
    return { kind: 'ec', name: curve };
  }
  if (t === 'rsa') return { kind: 'rsa', name: `rsa-${d.modulusLength}` };
  if (t === 'ed25519') return { kind: 'ed25519', name: 'ed25519' };
  return { kind: String(t), name: String(t) };
}

/**
 * Refuse keys cairn will not certify or sign with: RSA under 2048 bits (or over 8192),
 * curves other than P-256/P-384/P-521, and any other algorithm but Ed25519.
 */
export function checkKeyStrength(key: KeyObject): void {
  const t = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails ?? {};
  if (t === 'rsa') {
    const bits = d.modulusLength ?? 0;
    if (bits < 2048) throw new PkiError('weak_key', `RSA key of ${bits} bits is too weak: at least 2048 bits are required`);
    if (bits > 8192) throw new PkiError('unsupported_key', `RSA key of ${bits} bits is larger than the 8192 bits supported`);
    return;
  }
  if (t === 'ec') {
    if (!['prime256v1', 'secp384r1', 'secp521r1'].includes(String(d.namedCurve))) {
      throw new PkiError('unsupported_key', `EC curve ${d.namedCurve} is not supported: use P-256, P-384 or P-521`);
    }
    return;
  }
  if (t === 'ed25519') return;
  throw new PkiError('unsupported_key', `key type ${t} is not supported: use ECDSA (P-256), RSA (2048-4096) or Ed25519`);
}

/** How a key signs X.509 objects: the AlgorithmIdentifier DER and the Node hash name. */
export interface SignatureScheme {
  /** DER of the AlgorithmIdentifier SEQUENCE. */
  algorithmDer: Buffer;
  /** hash for crypto.sign, or null for Ed25519 */
  hash: string | null;
}

// AlgorithmIdentifier DERs (RFC 5758, RFC 4055, RFC 8410). RSA carries explicit NULL params.
const ALG = {
  ecdsaSha256: '300a06082a8648ce3d040302',
  ecdsaSha384: '300a06082a8648ce3d040303',
  ecdsaSha512: '300a06082a8648ce3d040304',
  rsaSha256: '300d06092a864886f70d01010b0500',
  ed25519: '300506032b6570',
};

export function signatureSchemeFor(key: KeyObject): SignatureScheme {
  const t = key.asymmetricKeyType;
  if (t === 'ec') {
    const c = String(key.asymmetricKeyDetails?.namedCurve);
    if (c === 'secp384r1') return { algorithmDer: Buffer.from(ALG.ecdsaSha384, 'hex'), hash: 'sha384' };
    if (c === 'secp521r1') return { algorithmDer: Buffer.from(ALG.ecdsaSha512, 'hex'), hash: 'sha512' };
    return { algorithmDer: Buffer.from(ALG.ecdsaSha256, 'hex'), hash: 'sha256' };
  }
  if (t === 'rsa') return { algorithmDer: Buffer.from(ALG.rsaSha256, 'hex'), hash: 'sha256' };
  if (t === 'ed25519') return { algorithmDer: Buffer.from(ALG.ed25519, 'hex'), hash: null };
  throw new PkiError('unsupported_key', `cannot sign with a ${t} key`);
}

/** Native signature over `data` (DER-encoded ECDSA signatures, PKCS#1 v1.5 for RSA). */
export function signWith(key: KeyObject, scheme: SignatureScheme, data: Uint8Array): Buffer {
  return nodeSign(scheme.hash, data, key);
}

/** Whether a private key and a public key (or SPKI DER) are a pair. */
export function keysMatch(privateKey: KeyObject, publicSpkiDer: Uint8Array): boolean {
  return spkiDer(privateKey).equals(Buffer.from(publicSpkiDer));
}

export { toPem };
