import { KeyObject } from 'node:crypto';
import { CertificateProfile, ExtKeyUsageName, KeyUsageName, SubjectAltName } from './cert.js';
import { NameAttrs } from './name.js';

export const HOUR_MS = 3600_000;
export const DAY_MS = 24 * HOUR_MS;
/** Root CAs live 20 years. */
export const ROOT_CA_LIFETIME_MS = 20 * 365 * DAY_MS;
/** Leaves are backdated so that a node whose clock runs behind accepts a fresh certificate. */
export const BACKDATE_MS = 60 * 60_000;

/** Key usages for a leaf: digitalSignature, plus keyEncipherment for RSA keys (RSA key exchange). */
export function leafKeyUsage(publicKey: KeyObject): KeyUsageName[] {
  return publicKey.asymmetricKeyType === 'rsa' ? ['digitalSignature', 'keyEncipherment'] : ['digitalSignature'];
}

export function rootCaProfile(subject: NameAttrs, publicKeyDer: Buffer, serial: Buffer, now = new Date()): CertificateProfile {
  return {
    serial,
    subject,
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + ROOT_CA_LIFETIME_MS),
    publicKey: publicKeyDer,
    ca: {},
    keyUsage: ['digitalSignature', 'keyCertSign', 'cRLSign'],
  };
}

export interface LeafOptions {
  subject: NameAttrs;
  publicKeyDer: Buffer;
  publicKey: KeyObject;
  serial: Buffer;
  lifetimeMs: number;
  extKeyUsage: ExtKeyUsageName[];
  sans?: SubjectAltName[];
  now?: Date;
  /** key usages instead of the default for the key type (a signing-only certificate) */
  keyUsage?: KeyUsageName[];
  ocspUrls?: string[];
  crlUrls?: string[];
  ocspNoCheck?: boolean;
}

export function leafProfile(o: LeafOptions): CertificateProfile {
  const now = o.now ?? new Date();
  return {
    serial: o.serial,
    subject: o.subject,
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + o.lifetimeMs),
    publicKey: o.publicKeyDer,
    keyUsage: o.keyUsage ?? leafKeyUsage(o.publicKey),
    extKeyUsage: o.extKeyUsage,
    sans: o.sans,
    ocspUrls: o.ocspUrls,
    crlUrls: o.crlUrls,
    ocspNoCheck: o.ocspNoCheck,
  };
}
