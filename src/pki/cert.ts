import { createPublicKey, hash, KeyObject, X509Certificate as NodeX509 } from 'node:crypto';
import { isIP } from 'node:net';
import * as pkijs from 'pkijs';
import { asn1, decode, derChildren, derOf, derTop, namedBitsDer, oid, smallIntDer, timeDer, tlv, uintContents } from './der.js';
import { PkiError } from './errors.js';
import { checkKeyStrength, keysMatch, signatureSchemeFor, SignatureScheme, signWith } from './keys.js';
import { encodeName, NameAttrs } from './name.js';
import { pemBlockOf, pemBlocksOf, toPem } from './pem.js';

export type KeyUsageName = 'digitalSignature' | 'contentCommitment' | 'keyEncipherment' | 'keyCertSign' | 'cRLSign';
export type ExtKeyUsageName = 'serverAuth' | 'clientAuth' | 'OCSPSigning';

const KU_BITS: Record<KeyUsageName, number> = { digitalSignature: 0, contentCommitment: 1, keyEncipherment: 2, keyCertSign: 5, cRLSign: 6 };
const EKU_OIDS: Record<ExtKeyUsageName, string> = { serverAuth: '1.3.6.1.5.5.7.3.1', clientAuth: '1.3.6.1.5.5.7.3.2', OCSPSigning: '1.3.6.1.5.5.7.3.9' };

export type SubjectAltName = { dns: string } | { ip: string };

/** What the CA decided to put in a certificate. The requester never chooses any of it. */
export interface CertificateProfile {
  serial: Buffer;
  subject: NameAttrs;
  /** the subject Name as DER, verbatim (a cross-signed certificate repeats another CA's exact subject); overrides `subject` */
  subjectDer?: Buffer;
  /** the subject key identifier, verbatim (a cross-signed certificate repeats the other CA's); default: RFC 5280 method 1 */
  subjectKeyId?: Buffer;
  notBefore: Date;
  notAfter: Date;
  /** SubjectPublicKeyInfo DER of the subject's key. */
  publicKey: Buffer;
  /** Present for CA certificates. */
  ca?: { pathLength?: number };
  keyUsage: KeyUsageName[];
  extKeyUsage?: ExtKeyUsageName[];
  sans?: SubjectAltName[];
  /** Authority Information Access: where to ask the OCSP responder about this certificate. */
  ocspUrls?: string[];
  /** CRL distribution points. */
  crlUrls?: string[];
  /** id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1): for a delegated OCSP signing certificate. */
  ocspNoCheck?: boolean;
}

/** A signing CA, with every fixed part of the certificates it issues precomputed. */
export interface Issuer {
  certDer: Buffer;
  /** DER of the CA's subject Name (the issuer of what it signs). */
  nameDer: Buffer;
  /** The CA's subject key identifier (goes into the AuthorityKeyIdentifier of what it signs). */
  keyId: Buffer;
  notAfter: Date;
  key: KeyObject;
  scheme: SignatureScheme;
  /** Precomputed AuthorityKeyIdentifier extension DER. */
  akiExtDer: Buffer;
}

/** RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING contents. */
export function keyIdentifier(spki: Uint8Array): Buffer {
  const parts = derChildren(spki, derTop(spki, 'public key'), 'public key', 2);
  const bits = parts[1];
  if (bits.tag !== 0x03) throw new PkiError('bad_der', 'public key: missing BIT STRING');
  if (bits.end === bits.contents || spki[bits.contents] > 7) throw new PkiError('bad_der', 'public key is not valid DER');
  // The contents after the unused-bits byte.
  return hash('sha1', spki.subarray(bits.contents + 1, bits.end), 'buffer');
}

const OCTET_STRING = 0x04;
const SEQUENCE = 0x30;
const BOOL_TRUE = Buffer.from([0x01, 0x01, 0xff]);
const EMPTY = Buffer.alloc(0);

/** Extension IDs, DER-encoded once. */
const EXT_OID = {
  basicConstraints: derOf(oid('2.5.29.19')),
  keyUsage: derOf(oid('2.5.29.15')),
  extKeyUsage: derOf(oid('2.5.29.37')),
  subjectKeyId: derOf(oid('2.5.29.14')),
  authorityKeyId: derOf(oid('2.5.29.35')),
  subjectAltName: derOf(oid('2.5.29.17')),
  authorityInfoAccess: derOf(oid('1.3.6.1.5.5.7.1.1')),
  crlDistributionPoints: derOf(oid('2.5.29.31')),
  ocspNoCheck: derOf(oid('1.3.6.1.5.5.7.48.1.5')),
};
const EKU_DER: Record<ExtKeyUsageName, Buffer> = {
  serverAuth: derOf(oid(EKU_OIDS.serverAuth)), clientAuth: derOf(oid(EKU_OIDS.clientAuth)), OCSPSigning: derOf(oid(EKU_OIDS.OCSPSigning)),
};
const AD_OCSP = derOf(oid('1.3.6.1.5.5.7.48.1'));
/** uniformResourceIdentifier [6] IMPLICIT IA5String */
const uriName = (u: string) => tlv(0x86, Buffer.from(u, 'ascii'));

/** AuthorityInfoAccess with id-ad-ocsp locations. */
function aiaExtension(urls: string[]): Buffer {
  return ext(EXT_OID.authorityInfoAccess, false, tlv(SEQUENCE, ...urls.map((u) => tlv(SEQUENCE, AD_OCSP, uriName(u)))));
}

/** CRLDistributionPoints: one DistributionPoint { distributionPoint [0] { fullName [0] GeneralNames } } per URL. */
function crlDpExtension(urls: string[]): Buffer {
  return ext(EXT_OID.crlDistributionPoints, false, tlv(SEQUENCE, ...urls.map((u) => tlv(SEQUENCE, tlv(0xa0, tlv(0xa0, uriName(u)))))));
}

/** A URL fit for a certificate extension: http(s), printable ASCII, no spaces. */
export function checkExtensionUrl(u: string): string | null {
  if (!/^https?:\/\/[\x21-\x7e]+$/.test(u)) return 'must be an http:// or https:// URL of printable ASCII without spaces';
  if (u.length > 1024) return 'is longer than 1024 characters';
  return null;
}
/** version [0] EXPLICIT INTEGER 2 (v3). */
const VERSION_V3 = Buffer.from('a003020102', 'hex');
/** BasicConstraints CA:false (an empty SEQUENCE), critical: every leaf carries this exact extension. */
const BC_LEAF = ext(EXT_OID.basicConstraints, true, tlv(SEQUENCE));

function ext(id: Buffer, critical: boolean, value: Uint8Array): Buffer {
  return tlv(SEQUENCE, id, critical ? BOOL_TRUE : EMPTY, tlv(OCTET_STRING, value));
}

function akiExtension(keyId: Buffer): Buffer {
  return ext(EXT_OID.authorityKeyId, false, tlv(SEQUENCE, tlv(0x80, keyId)));
}

/** A DNS name of LDH labels (a leading "*." wildcard label allowed), no trailing dot. */
export function validateDnsName(name: string): string | null {
  if (name.length === 0) return 'is empty';
  if (name.endsWith('.')) return 'must not end with a dot';
  if (name.length > 253) return 'is longer than 253 characters';
  const labels = name.split('.');
  for (const [i, l] of labels.entries()) {
    if (i === 0 && l === '*' && labels.length > 2) continue;
    if (l.length === 0) return 'has an empty label';
    if (l.length > 63) return 'has a label longer than 63 characters';
    if (!/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$/.test(l)) return `has an invalid label "${l}" (letters, digits and inner hyphens only)`;
  }
  return null;
}

/** Turn a host name or IP address given by a user into a SAN, or refuse it with a reason. */
export function sanFor(host: string): SubjectAltName {
  if (isIP(host)) return { ip: host };
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (isIP(h)) return { ip: h };
  const why = validateDnsName(host);
  if (why) throw new PkiError('bad_hostname', `"${host}" is not a valid DNS name or IP address: it ${why}`);
  return { dns: host.toLowerCase() };
}

function ipBytes(ip: string): Buffer {
  if (isIP(ip) === 4) return Buffer.from(ip.split('.').map(Number));
  // IPv6: expand ::, handle embedded IPv4
  let s = ip;
  const v4 = s.match(/(\d+\.\d+\.\d+\.\d+)$/);
  if (v4) {
    const b = v4[1].split('.').map(Number);
    s = s.slice(0, -v4[1].length) + ((b[0] << 8) | b[1]).toString(16) + ':' + ((b[2] << 8) | b[3]).toString(16);
  }
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail ? tail.split(':') : [];
  const groups = tail !== undefined ? [...h, ...Array(8 - h.length - t.length).fill('0'), ...t] : h;
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/**
 * KeyUsage and ExtendedKeyUsage extensions depend only on the list of names: each distinct list
 * is encoded once (there are a handful: the names come from small fixed sets).
 */
const usageExtCache = new Map<string, Buffer>();
function cachedUsageExt(key: string, build: () => Buffer): Buffer {
  let d = usageExtCache.get(key);
  if (!d) {
    d = build();
    if (usageExtCache.size < 256) usageExtCache.set(key, d);
  }
  return d;
}

function keyUsageExtension(names: KeyUsageName[]): Buffer {
  return cachedUsageExt('ku:' + names.join(','), () => ext(EXT_OID.keyUsage, true, namedBitsDer(names.map((k) => KU_BITS[k]))));
}

function extKeyUsageExtension(names: ExtKeyUsageName[]): Buffer {
  return cachedUsageExt('eku:' + names.join(','), () => ext(EXT_OID.extKeyUsage, false, tlv(SEQUENCE, ...names.map((e) => EKU_DER[e]))));
}

function sanExtension(sans: SubjectAltName[]): Buffer {
  // dNSName [2] IA5String, iPAddress [7] OCTET STRING, both IMPLICIT
  const names = sans.map((s) => ('dns' in s ? tlv(0x82, Buffer.from(s.dns, 'ascii')) : tlv(0x87, ipBytes(s.ip))));
  return ext(EXT_OID.subjectAltName, false, tlv(SEQUENCE, ...names));
}

function basicConstraintsExtension(ca: CertificateProfile['ca']): Buffer {
  if (!ca) return BC_LEAF;
  return ext(EXT_OID.basicConstraints, true, tlv(SEQUENCE, BOOL_TRUE, ca.pathLength !== undefined ? smallIntDer(ca.pathLength) : EMPTY));
}

/**
 * Build the TBSCertificate DER for a profile under an issuer (or self-signed when akiExtDer is null).
 * Everything fixed is precomputed; what varies per certificate is written straight into DER.
 */
function tbsCertificate(p: CertificateProfile, issuerNameDer: Buffer, scheme: SignatureScheme, akiExtDer: Buffer | null): Buffer {
  const exts: Buffer[] = [basicConstraintsExtension(p.ca), keyUsageExtension(p.keyUsage)];
  if (p.extKeyUsage && p.extKeyUsage.length) exts.push(extKeyUsageExtension(p.extKeyUsage));
  exts.push(ext(EXT_OID.subjectKeyId, false, tlv(OCTET_STRING, p.subjectKeyId ?? keyIdentifier(p.publicKey))));
  if (akiExtDer) exts.push(akiExtDer);
  if (p.sans && p.sans.length) exts.push(sanExtension(p.sans));
  if (p.ocspUrls && p.ocspUrls.length) exts.push(aiaExtension(p.ocspUrls));
  if (p.crlUrls && p.crlUrls.length) exts.push(crlDpExtension(p.crlUrls));
  if (p.ocspNoCheck) exts.push(ext(EXT_OID.ocspNoCheck, false, Buffer.from([0x05, 0x00])));
  return tlv(
    SEQUENCE,
    VERSION_V3,
    tlv(0x02, uintContents(p.serial)),
    scheme.algorithmDer,
    issuerNameDer,
    tlv(SEQUENCE, timeDer(p.notBefore), timeDer(p.notAfter)),
    p.subjectDer ?? encodeName(p.subject),
    p.publicKey,
    tlv(0xa3, tlv(SEQUENCE, ...exts)),
  );
}

/** Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING (0 unused bits) }. */
function assemble(tbs: Buffer, scheme: SignatureScheme, key: KeyObject): Buffer {
  return signedCertificate(tbs, scheme, signWith(key, scheme, tbs));
}
const NO_UNUSED_BITS = Buffer.from([0]);

function checkProfile(p: CertificateProfile): void {
  if (p.serial.length === 0 || p.serial.length > 20) throw new PkiError('bad_serial', 'serial must be 1 to 20 bytes');
  for (const u of [...(p.ocspUrls ?? []), ...(p.crlUrls ?? [])]) {
    const why = checkExtensionUrl(u);
    if (why) throw new PkiError('bad_name', `"${u}" ${why}`);
  }
  if (!(p.notBefore < p.notAfter)) throw new PkiError('bad_validity', 'notBefore must be before notAfter');
}

/** Issue a certificate signed by `issuer`. notAfter is clamped to the issuer's notAfter. */
export function issueCertificate(p: CertificateProfile, issuer: Issuer): Buffer {
  const tbs = certificateTbs(p, issuer);
  return assemble(tbs, issuer.scheme, issuer.key);
}

/** What a CA needs to say about itself in what it signs (everything of an Issuer but the key). */
export type IssuerInfo = Omit<Issuer, 'key'>;

/**
 * The TBSCertificate a CA signs, for signers that hold the key elsewhere (an HSM, another
 * process): sign these bytes with the scheme of `issuer`, then `signedCertificate()`.
 * notAfter is clamped to the issuer's notAfter.
 */
export function certificateTbs(p: CertificateProfile, issuer: IssuerInfo): Buffer {
  checkProfile(p);
  const profile = p.notAfter > issuer.notAfter ? { ...p, notAfter: issuer.notAfter } : p;
  return tbsCertificate(profile, issuer.nameDer, issuer.scheme, issuer.akiExtDer);
}

/** A certificate from its TBSCertificate and the signature over it. */
export function signedCertificate(tbs: Buffer, scheme: SignatureScheme, signature: Buffer): Buffer {
  return tlv(SEQUENCE, tbs, scheme.algorithmDer, tlv(0x03, NO_UNUSED_BITS, signature));
}

/**
 * The parts of a CA certificate needed to sign with it, without its key (the key is held by
 * a signer): `scheme` follows the CA's public key.
 */
export function issuerInfo(certDer: Buffer): IssuerInfo {
  const info = certificateInfo(certDer);
  if (!info.isCA) throw new PkiError('not_ca', `certificate ${info.subject} is not a CA certificate`);
  const keyId = info.subjectKeyId ?? keyIdentifier(info.publicKeyDer);
  return {
    certDer,
    nameDer: info.subjectDer,
    keyId,
    notAfter: info.notAfter,
    scheme: signatureSchemeFor(createPublicKey({ key: info.publicKeyDer, format: 'der', type: 'spki' })),
    akiExtDer: akiExtension(keyId),
  };
}

/** Create a self-signed certificate (a root CA) with the given key. */
export function selfSignCertificate(p: CertificateProfile, key: KeyObject): Buffer {
  checkProfile(p);
  checkKeyStrength(key);
  if (!keysMatch(key, p.publicKey)) throw new PkiError('key_mismatch', 'the signing key does not match the certificate public key');
  const scheme = signatureSchemeFor(key);
  const tbs = tbsCertificate(p, p.subjectDer ?? encodeName(p.subject), scheme, null);
  return assemble(tbs, scheme, key);
}

/**
 * The TBSCertificate of a self-signed certificate (a root) whose key is held elsewhere, and the
 * scheme to sign it with (from `p.publicKey`): sign the bytes, then `signedCertificate()`.
 */
export function selfSignedTbs(p: CertificateProfile): { tbs: Buffer; scheme: SignatureScheme } {
  checkProfile(p);
  const scheme = signatureSchemeFor(createPublicKey({ key: p.publicKey, format: 'der', type: 'spki' }));
  return { tbs: tbsCertificate(p, p.subjectDer ?? encodeName(p.subject), scheme, null), scheme };
}

/** Parse the parts of a CA certificate needed to sign with it, and check the key belongs to it. */
export function makeIssuer(certDer: Buffer, key: KeyObject): Issuer {
  const info = issuerInfo(certDer);
  checkKeyStrength(key);
  if (!keysMatch(key, certificateInfo(certDer).publicKeyDer)) throw new PkiError('key_mismatch', 'the CA certificate and the CA key do not match');
  return {
    ...info,
    key,
    scheme: signatureSchemeFor(key),
  };
}

export interface CertificateInfo {
  der: Buffer;
  serial: Buffer;
  serialHex: string;
  subject: string;
  issuer: string;
  subjectAttrs: NameAttrs;
  subjectDer: Buffer;
  issuerDer: Buffer;
  notBefore: Date;
  notAfter: Date;
  isCA: boolean;
  /** basicConstraints pathLenConstraint (null: none) */
  pathLength: number | null;
  /** keyUsage bits set, by name (null: no keyUsage extension) */
  keyUsage: KeyUsageName[] | null;
  publicKeyDer: Buffer;
  subjectKeyId: Buffer | null;
  authorityKeyId: Buffer | null;
  sans: SubjectAltName[];
  extKeyUsage: string[];
}

/** Parse a certificate (DER). Throws PkiError on anything that is not a well-formed X.509 certificate. */
export function certificateInfo(der: Buffer): CertificateInfo {
  let c: NodeX509;
  let cert: pkijs.Certificate;
  try {
    decode(der, 'certificate');
    c = new NodeX509(der);
    cert = pkijs.Certificate.fromBER(der);
  } catch (e) {
    if (e instanceof PkiError) throw e;
    throw new PkiError('bad_certificate', 'not a valid X.509 certificate');
  }
  const extn = (id: string) => cert.extensions?.find((e) => e.extnID === id);
  const ski = extn('2.5.29.14')?.parsedValue as asn1.OctetString | undefined;
  const aki = extn('2.5.29.35')?.parsedValue as pkijs.AuthorityKeyIdentifier | undefined;
  const bc = extn('2.5.29.19')?.parsedValue as pkijs.BasicConstraints | undefined;
  const san = extn('2.5.29.17')?.parsedValue as pkijs.AltName | undefined;
  const eku = extn('2.5.29.37')?.parsedValue as pkijs.ExtKeyUsage | undefined;
  const kuExt = extn('2.5.29.15')?.parsedValue as asn1.BitString | undefined;
  let keyUsage: KeyUsageName[] | null = null;
  if (kuExt) {
    const bytes = Buffer.from(kuExt.valueBlock.valueHexView);
    const bit = (n: number) => (bytes[n >> 3] ?? 0) & (0x80 >> (n & 7));
    keyUsage = (Object.keys(KU_BITS) as KeyUsageName[]).filter((k) => bit(KU_BITS[k]));
  }
  const attrs: NameAttrs = {};
  const short: Record<string, keyof NameAttrs> = { '2.5.4.6': 'C', '2.5.4.10': 'O', '2.5.4.11': 'OU', '2.5.4.3': 'CN' };
  for (const tv of cert.subject.typesAndValues) {
    const k = short[tv.type];
    if (k && attrs[k] === undefined) attrs[k] = String((tv.value as asn1.Utf8String).valueBlock.value);
  }
  const sans: SubjectAltName[] = [];
  for (const n of (san as unknown as { altNames?: pkijs.GeneralName[] })?.altNames ?? []) {
    if (n.type === 2) sans.push({ dns: String(n.value) });
    else if (n.type === 7) sans.push({ ip: ipString(Buffer.from((n.value as asn1.OctetString).valueBlock.valueHexView)) });
  }
  const serial = Buffer.from(cert.serialNumber.valueBlock.valueHexView);
  return {
    der,
    serial,
    serialHex: c.serialNumber.toUpperCase(),
    subject: c.subject.split('\n').join(', '),
    issuer: c.issuer.split('\n').join(', '),
    subjectAttrs: attrs,
    issuerDer: Buffer.from(cert.issuer.toSchema().toBER()),
    subjectDer: Buffer.from(cert.subject.toSchema().toBER()),
    notBefore: cert.notBefore.value,
    notAfter: cert.notAfter.value,
    isCA: bc?.cA === true,
    pathLength: bc?.cA === true && typeof bc.pathLenConstraint === 'number' ? bc.pathLenConstraint : bc?.cA === true && bc.pathLenConstraint ? Number((bc.pathLenConstraint as asn1.Integer).valueBlock.valueDec) : null,
    keyUsage,
    publicKeyDer: Buffer.from(cert.subjectPublicKeyInfo.toSchema().toBER()),
    subjectKeyId: ski ? Buffer.from(ski.valueBlock.valueHexView) : null,
    authorityKeyId: aki?.keyIdentifier ? Buffer.from(aki.keyIdentifier.valueBlock.valueHexView) : null,
    sans,
    extKeyUsage: eku?.keyPurposes ?? [],
  };
}

function ipString(b: Buffer): string {
  if (b.length === 4) return Array.from(b).join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  return groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::').replace(/:{3,}/, '::');
}

/** All certificates in a PEM text, as DER, each checked to parse. */
export function certificatesFromPem(pem: string, what: string): Buffer[] {
  const ders = pemBlocksOf(pem, ['CERTIFICATE'], what);
  for (const d of ders) {
    try {
      new NodeX509(d);
    } catch {
      throw new PkiError('bad_certificate', `${what} holds a CERTIFICATE block that is not a valid X.509 certificate`);
    }
  }
  return ders;
}

/** Exactly one certificate from PEM. */
export function certificateFromPem(pem: string, what: string): Buffer {
  const d = pemBlockOf(pem, ['CERTIFICATE'], what);
  return certificatesFromPem(toPem('CERTIFICATE', d), what)[0];
}

export function certificateToPem(der: Uint8Array): string {
  return toPem('CERTIFICATE', der);
}
