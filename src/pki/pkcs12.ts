/**
 * PKCS#12 (RFC 7292) files for moving CA material: certificates with their private keys,
 * each named by a friendly name (the "nickname" NSS shows).
 *
 * Written with modern protection only, as OpenSSL 3 does by default: keys in PBES2 shrouded
 * key bags and certificates in a PBES2-encrypted safe (PBKDF2-HMAC-SHA256, AES-256-CBC),
 * and a SHA-256 MAC over the whole. Read: the same, and any PBES2 file with AES-CBC and an
 * HMAC-SHA-1/2 PRF and MAC; legacy PKCS#12 PBE (RC2, 3DES, RC4) is refused with a clear
 * message. Pure: no I/O.
 */
import { createHash, createPrivateKey, KeyObject, randomBytes } from 'node:crypto';
import * as asn1 from 'asn1js';
import * as pkijs from 'pkijs';
import { certificateInfo } from './cert.js';
import { PkiError } from './errors.js';
import { checkKeyStrength, keysMatch } from './keys.js';

const OID = {
  data: '1.2.840.113549.1.7.1',
  signedData: '1.2.840.113549.1.7.2',
  envelopedData: '1.2.840.113549.1.7.3',
  encryptedData: '1.2.840.113549.1.7.6',
  keyBag: '1.2.840.113549.1.12.10.1.1',
  shroudedKeyBag: '1.2.840.113549.1.12.10.1.2',
  certBag: '1.2.840.113549.1.12.10.1.3',
  safeContentsBag: '1.2.840.113549.1.12.10.1.6',
  x509Certificate: '1.2.840.113549.1.9.22.1',
  friendlyName: '1.2.840.113549.1.9.20',
  localKeyId: '1.2.840.113549.1.9.21',
  pbes2: '1.2.840.113549.1.5.13',
  pbmac1: '1.2.840.113549.1.5.14',
};

/** Legacy password-based encryption: PKCS#12 v1 PBE (RC4, 3DES, RC2) and PKCS#5 v1.5 PBES1. */
const LEGACY_PBE = new Set([
  '1.2.840.113549.1.12.1.1', '1.2.840.113549.1.12.1.2', '1.2.840.113549.1.12.1.3',
  '1.2.840.113549.1.12.1.4', '1.2.840.113549.1.12.1.5', '1.2.840.113549.1.12.1.6',
  '1.2.840.113549.1.5.1', '1.2.840.113549.1.5.3', '1.2.840.113549.1.5.4',
  '1.2.840.113549.1.5.6', '1.2.840.113549.1.5.10', '1.2.840.113549.1.5.11',
]);

const LEGACY_MESSAGE = 'legacy PKCS#12 encryption (use openssl pkcs12 -export without -legacy)';

/** PBKDF2 iterations for the keys and the certificate safe, and iterations of the MAC key derivation. */
export const PKCS12_ITERATIONS = 100_000;

export interface Pkcs12Input {
  certDer: Buffer;
  friendlyName: string;
  /** the private key of the certificate, if it is to be exported */
  key?: KeyObject | null;
}

export interface Pkcs12Entry {
  certDer: Buffer;
  friendlyName: string | null;
  localKeyId: Buffer | null;
  key: KeyObject | null;
}

/** What pkcs12-cert-find prints for an entry. */
export interface Pkcs12CertDescription {
  /** SHA-1 fingerprint of the certificate, lowercase hex (the certificate ID NSS and Dogtag use) */
  id: string;
  serial: string;
  nickname: string | null;
  subject: string;
  issuer: string;
  hasKey: boolean;
}

const ab = (b: Uint8Array): ArrayBuffer => {
  const out = new ArrayBuffer(b.byteLength);
  new Uint8Array(out).set(b);
  return out;
};

function engine(): pkijs.ICryptoEngine {
  return pkijs.getCrypto(true);
}

function checkPassword(password: string): Buffer {
  if (typeof password !== 'string' || password.length === 0) throw new PkiError('bad_password', 'the PKCS#12 password must not be empty');
  return Buffer.from(password, 'utf8');
}

function bagAttributes(friendlyName: string, localKeyId: Buffer | null): pkijs.Attribute[] {
  const attrs = [new pkijs.Attribute({ type: OID.friendlyName, values: [new asn1.BmpString({ value: friendlyName })] })];
  if (localKeyId) attrs.push(new pkijs.Attribute({ type: OID.localKeyId, values: [new asn1.OctetString({ valueHex: ab(localKeyId) })] }));
  return attrs;
}

async function pbes2Encrypt(password: Buffer, content: Uint8Array, iterations: number): Promise<pkijs.EncryptedContentInfo> {
  return engine().encryptEncryptedContentInfo({
    password: ab(password),
    contentEncryptionAlgorithm: { name: 'AES-CBC', length: 256 } as { name: string; length: number } as never,
    hmacHashAlgorithm: 'SHA-256',
    iterationCount: iterations,
    contentToEncrypt: ab(content),
    contentType: OID.data,
  });
}

/**
 * Build a PKCS#12 file: one certificate bag per entry (friendlyName, and localKeyId when a
 * key goes with it) in a PBES2-encrypted safe, one shrouded key bag per key in a second safe,
 * and a SHA-256 MAC. Friendly names must be unique.
 */
export async function buildPkcs12(entries: Pkcs12Input[], password: string, opts: { iterations?: number } = {}): Promise<Buffer> {
  const pw = checkPassword(password);
  const iterations = opts.iterations ?? PKCS12_ITERATIONS;
  if (entries.length === 0) throw new PkiError('bad_pkcs12', 'nothing to put in the PKCS#12 file');
  const names = new Set<string>();
  const certBags: pkijs.SafeBag[] = [];
  const keyBags: pkijs.SafeBag[] = [];
  for (const e of entries) {
    if (!e.friendlyName || names.has(e.friendlyName)) throw new PkiError('bad_pkcs12', `friendly name "${e.friendlyName}" is empty or repeated`);
    names.add(e.friendlyName);
    const info = certificateInfo(e.certDer);
    let localKeyId: Buffer | null = null;
    if (e.key) {
      if (!keysMatch(e.key, info.publicKeyDer)) throw new PkiError('key_mismatch', `the key given for "${e.friendlyName}" does not belong to its certificate`);
      // as OpenSSL does: the SHA-1 of the certificate ties the key to it
      localKeyId = createHash('sha1').update(e.certDer).digest();
      const pkcs8 = e.key.export({ type: 'pkcs8', format: 'der' });
      const enc = await pbes2Encrypt(pw, pkcs8, iterations);
      const shrouded = new pkijs.PKCS8ShroudedKeyBag({
        encryptionAlgorithm: enc.contentEncryptionAlgorithm,
        encryptedData: enc.encryptedContent!,
      });
      keyBags.push(new pkijs.SafeBag({ bagId: OID.shroudedKeyBag, bagValue: shrouded, bagAttributes: bagAttributes(e.friendlyName, localKeyId) }));
    }
    const certBag = new pkijs.CertBag({ certId: OID.x509Certificate, certValue: new asn1.OctetString({ valueHex: ab(e.certDer) }) as unknown as pkijs.Certificate });
    certBags.push(new pkijs.SafeBag({ bagId: OID.certBag, bagValue: certBag, bagAttributes: bagAttributes(e.friendlyName, localKeyId) }));
  }
  const contentInfos: pkijs.ContentInfo[] = [];
  const certSafe = new pkijs.SafeContents({ safeBags: certBags }).toSchema().toBER(false);
  const encCerts = await pbes2Encrypt(pw, new Uint8Array(certSafe), iterations);
  contentInfos.push(new pkijs.ContentInfo({ contentType: OID.encryptedData, content: new pkijs.EncryptedData({ version: 0, encryptedContentInfo: encCerts }).toSchema() }));
  if (keyBags.length) {
    const keySafe = new pkijs.SafeContents({ safeBags: keyBags }).toSchema().toBER(false);
    contentInfos.push(new pkijs.ContentInfo({ contentType: OID.data, content: new asn1.OctetString({ valueHex: keySafe }) }));
  }
  const authSafe = new pkijs.AuthenticatedSafe({ safeContents: contentInfos }).toSchema().toBER(false);
  const macSalt = randomBytes(16);
  const mac = await engine().stampDataWithPassword({
    password: ab(pw),
    hashAlgorithm: 'SHA-256',
    salt: ab(macSalt),
    iterationCount: iterations,
    contentToStamp: authSafe,
  });
  const pfx = new pkijs.PFX({
    version: 3,
    authSafe: new pkijs.ContentInfo({ contentType: OID.data, content: new asn1.OctetString({ valueHex: authSafe }) }),
    macData: new pkijs.MacData({
      mac: new pkijs.DigestInfo({
        digestAlgorithm: new pkijs.AlgorithmIdentifier({ algorithmId: '2.16.840.1.101.3.4.2.1', algorithmParams: new asn1.Null() }),
        digest: new asn1.OctetString({ valueHex: mac }),
      }),
      macSalt: new asn1.OctetString({ valueHex: ab(macSalt) }),
      iterations,
    }),
  });
  return Buffer.from(pfx.toSchema().toBER(false));
}

const notPkcs12 = () => new PkiError('bad_pkcs12', 'not a PKCS#12 file (expected DER: a .p12 or .pfx file)');
const wrongPassword = () => new PkiError('wrong_password', 'wrong PKCS#12 password (or the file has been modified)');

function parseSchema<T>(fn: () => T, err: () => PkiError = notPkcs12): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof PkiError) throw e;
    throw err();
  }
}

/** Check the algorithm of an encrypted piece before decrypting: PBES2 only. */
function requirePbes2(alg: pkijs.AlgorithmIdentifier, what: string): void {
  if (alg.algorithmId === OID.pbes2) {
    const params = parseSchema(() => new pkijs.PBES2Params({ schema: alg.algorithmParams }));
    const scheme = params.encryptionScheme.algorithmId;
    const supported = ['2.16.840.1.101.3.4.1.2', '2.16.840.1.101.3.4.1.22', '2.16.840.1.101.3.4.1.42'];
    if (!supported.includes(scheme)) throw new PkiError('unsupported_pkcs12', `${what} uses an unsupported cipher (OID ${scheme}); use AES-CBC`);
    if (params.keyDerivationFunc.algorithmId !== '1.2.840.113549.1.5.12') {
      throw new PkiError('unsupported_pkcs12', `${what} uses an unsupported key derivation (OID ${params.keyDerivationFunc.algorithmId}); use PBKDF2`);
    }
    return;
  }
  if (LEGACY_PBE.has(alg.algorithmId)) throw new PkiError('legacy_pkcs12', LEGACY_MESSAGE);
  throw new PkiError('unsupported_pkcs12', `${what} uses an unsupported encryption (OID ${alg.algorithmId})`);
}

async function pbes2Decrypt(alg: pkijs.AlgorithmIdentifier, encrypted: asn1.OctetString, pw: Buffer, what: string): Promise<ArrayBuffer> {
  requirePbes2(alg, what);
  try {
    return await engine().decryptEncryptedContentInfo({
      password: ab(pw),
      encryptedContentInfo: new pkijs.EncryptedContentInfo({ contentType: OID.data, contentEncryptionAlgorithm: alg, encryptedContent: encrypted }),
    });
  } catch {
    // the MAC was right (same password) but the content does not decrypt: a damaged file, or a
    // file whose parts use different passwords
    throw wrongPassword();
  }
}

function attributes(bag: pkijs.SafeBag): { friendlyName: string | null; localKeyId: Buffer | null } {
  let friendlyName: string | null = null;
  let localKeyId: Buffer | null = null;
  for (const a of bag.bagAttributes ?? []) {
    const v = a.values[0];
    if (a.type === OID.friendlyName && v instanceof asn1.BmpString) friendlyName = v.valueBlock.value;
    else if (a.type === OID.friendlyName && v && 'valueBlock' in v && typeof (v.valueBlock as { value?: unknown }).value === 'string') friendlyName = (v.valueBlock as { value: string }).value;
    else if (a.type === OID.localKeyId && v instanceof asn1.OctetString) localKeyId = Buffer.from(v.valueBlock.valueHexView);
  }
  return { friendlyName, localKeyId };
}

function keyFromPkcs8(der: Uint8Array): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: Buffer.from(der), format: 'der', type: 'pkcs8' });
  } catch {
    throw new PkiError('bad_pkcs12', 'the PKCS#12 file holds a private key that cannot be read');
  }
  checkKeyStrength(key);
  return key;
}

interface RawKey { key: KeyObject; friendlyName: string | null; localKeyId: Buffer | null }
interface RawCert { der: Buffer; friendlyName: string | null; localKeyId: Buffer | null }

async function collectBags(contents: pkijs.SafeContents, pw: Buffer, certs: RawCert[], keys: RawKey[], depth = 0): Promise<void> {
  if (depth > 4) throw notPkcs12();
  for (const bag of contents.safeBags) {
    const attrs = attributes(bag);
    switch (bag.bagId) {
      case OID.certBag: {
        const cb = bag.bagValue as pkijs.CertBag;
        if (cb.certId !== OID.x509Certificate) continue; // attribute certificates and others: not ours
        const der = Buffer.from((cb.certValue as unknown as asn1.OctetString).valueBlock.valueHexView);
        certs.push({ der, ...attrs });
        break;
      }
      case OID.shroudedKeyBag: {
        const kb = bag.bagValue as pkijs.PKCS8ShroudedKeyBag;
        const plain = await pbes2Decrypt(kb.encryptionAlgorithm, kb.encryptedData, pw, 'a private key');
        keys.push({ key: keyFromPkcs8(new Uint8Array(plain)), ...attrs });
        break;
      }
      case OID.keyBag: {
        const pki = bag.bagValue as pkijs.PrivateKeyInfo;
        keys.push({ key: keyFromPkcs8(new Uint8Array(pki.toSchema().toBER(false))), ...attrs });
        break;
      }
      case OID.safeContentsBag:
        await collectBags(bag.bagValue as pkijs.SafeContents, pw, certs, keys, depth + 1);
        break;
      default:
        // CRL and secret bags: nothing cairn uses
        break;
    }
  }
}

/**
 * Read a PKCS#12 file: check its MAC with the password, decrypt its safes and key bags, and
 * pair every certificate with its key (by localKeyId, else by public key). Keys without a
 * certificate are ignored.
 */
export async function parsePkcs12(der: Buffer, password: string): Promise<Pkcs12Entry[]> {
  const pw = checkPassword(password);
  const pfx = parseSchema(() => {
    const p = pkijs.PFX.fromBER(ab(der));
    if (p.version !== 3) throw notPkcs12();
    return p;
  });
  if (pfx.authSafe.contentType === OID.signedData) throw new PkiError('unsupported_pkcs12', 'PKCS#12 files protected by a signature (public-key integrity mode) are not supported');
  if (pfx.authSafe.contentType !== OID.data || !(pfx.authSafe.content instanceof asn1.OctetString)) throw notPkcs12();
  const authSafeBytes = (pfx.authSafe.content as asn1.OctetString).getValue();
  if (!pfx.macData) throw new PkiError('unsupported_pkcs12', 'the PKCS#12 file has no MAC, so its password cannot be checked (export it with a MAC)');
  const macAlg = pfx.macData.mac.digestAlgorithm.algorithmId;
  if (macAlg === OID.pbmac1) throw new PkiError('unsupported_pkcs12', 'PKCS#12 PBMAC1 integrity is not supported (export with the default MAC)');
  const hashes: Record<string, string> = {
    '1.3.14.3.2.26': 'SHA-1', '2.16.840.1.101.3.4.2.1': 'SHA-256', '2.16.840.1.101.3.4.2.2': 'SHA-384', '2.16.840.1.101.3.4.2.3': 'SHA-512',
  };
  const hash = hashes[macAlg];
  if (!hash) throw new PkiError('unsupported_pkcs12', `the PKCS#12 MAC uses an unsupported digest (OID ${macAlg})`);
  const iterations = pfx.macData.iterations ?? 1;
  if (iterations > 10_000_000) throw new PkiError('unsupported_pkcs12', `the PKCS#12 MAC iteration count ${iterations} is unreasonably large`);
  const macOk = await engine().verifyDataStampedWithPassword({
    password: ab(pw),
    hashAlgorithm: hash,
    salt: ab(pfx.macData.macSalt.valueBlock.valueHexView),
    iterationCount: iterations,
    contentToVerify: authSafeBytes,
    signatureToVerify: ab(pfx.macData.mac.digest.valueBlock.valueHexView),
  }).catch(() => false);
  if (!macOk) throw wrongPassword();
  const authSafe = parseSchema(() => pkijs.AuthenticatedSafe.fromBER(authSafeBytes));
  const certs: RawCert[] = [];
  const keys: RawKey[] = [];
  for (const ci of authSafe.safeContents) {
    let safe: pkijs.SafeContents;
    if (ci.contentType === OID.data) {
      safe = parseSchema(() => pkijs.SafeContents.fromBER((ci.content as asn1.OctetString).getValue()));
    } else if (ci.contentType === OID.encryptedData) {
      const ed = parseSchema(() => new pkijs.EncryptedData({ schema: ci.content }));
      const eci = ed.encryptedContentInfo;
      if (!eci.encryptedContent) throw notPkcs12();
      const plain = await pbes2Decrypt(eci.contentEncryptionAlgorithm, eci.encryptedContent, pw, 'the certificate safe');
      safe = parseSchema(() => pkijs.SafeContents.fromBER(plain), wrongPassword);
    } else if (ci.contentType === OID.envelopedData) {
      throw new PkiError('unsupported_pkcs12', 'PKCS#12 safes encrypted to a public key (enveloped data) are not supported');
    } else {
      throw notPkcs12();
    }
    await collectBags(safe, pw, certs, keys);
  }
  const used = new Set<RawKey>();
  const entries: Pkcs12Entry[] = [];
  for (const c of certs) {
    const info = parseSchema(() => certificateInfo(c.der), () => new PkiError('bad_pkcs12', 'the PKCS#12 file holds a certificate that cannot be parsed'));
    let k = c.localKeyId ? keys.find((x) => !used.has(x) && x.localKeyId?.equals(c.localKeyId!)) : undefined;
    k ??= keys.find((x) => !used.has(x) && keysMatch(x.key, info.publicKeyDer));
    if (k && !keysMatch(k.key, info.publicKeyDer)) throw new PkiError('key_mismatch', `the key paired with certificate "${c.friendlyName ?? info.subject}" does not belong to it`);
    if (k) used.add(k);
    entries.push({ certDer: c.der, friendlyName: c.friendlyName ?? k?.friendlyName ?? null, localKeyId: c.localKeyId, key: k?.key ?? null });
  }
  return entries;
}

/** A distinguished name in RFC 4514 order and form (most specific first: CN=…,OU=…,O=…). */
export function formatDn(nameDer: Buffer): string {
  const short: Record<string, string> = {
    '2.5.4.3': 'CN', '2.5.4.6': 'C', '2.5.4.7': 'L', '2.5.4.8': 'ST', '2.5.4.10': 'O', '2.5.4.11': 'OU',
    '0.9.2342.19200300.100.1.25': 'DC', '0.9.2342.19200300.100.1.1': 'UID', '1.2.840.113549.1.9.1': 'E', '2.5.4.5': 'SERIALNUMBER',
  };
  const name = pkijs.RelativeDistinguishedNames.fromBER(ab(nameDer));
  const esc = (s: string) => s.replace(/([\\,+"<>;=])/g, '\\$1').replace(/^([ #])/, '\\$1').replace(/ $/, '\\ ');
  return name.typesAndValues
    .map((tv) => {
      const v = tv.value as unknown as { valueBlock: { value?: unknown } };
      const text = typeof v.valueBlock?.value === 'string' ? v.valueBlock.value : `#${Buffer.from(tv.value.toBER(false)).toString('hex')}`;
      return `${short[tv.type] ?? tv.type}=${esc(text)}`;
    })
    .reverse()
    .join(',');
}

export function describePkcs12Entry(e: Pkcs12Entry): Pkcs12CertDescription {
  const info = certificateInfo(e.certDer);
  return {
    id: createHash('sha1').update(e.certDer).digest('hex'),
    serial: info.serialHex,
    nickname: e.friendlyName,
    subject: formatDn(info.subjectDer),
    issuer: formatDn(info.issuerDer),
    hasKey: !!e.key,
  };
}
