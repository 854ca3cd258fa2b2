import { createHash } from 'node:crypto';
import { pooledRandomBytes } from './random.js';

function base36(bytes: Uint8Array, width: number): string {
  const n = BigInt('0x' + (Buffer.from(bytes).toString('hex') || '0'));
  return n.toString(36).padStart(width, '0');
}

/** 128 random bits in lowercase base36, 25 characters: cluster IDs, node IDs, token secrets. */
export function randomId(): string {
  return base36(pooledRandomBytes(16), 25);
}

export const ID_RE = /^[0-9a-z]{25}$/;

/** The roles a node certificate's OU carries. */
export type Role = 'worker' | 'manager';
export const ROLES: readonly Role[] = ['worker', 'manager'];
export const isRole = (s: unknown): s is Role => typeof s === 'string' && (ROLES as readonly string[]).includes(s);

/** SHA-256 of DER bytes, lowercase hex. */
export function sha256Hex(der: Uint8Array): string {
  return createHash('sha256').update(der).digest('hex');
}

/** SHA-256 fingerprint in the colon form OpenSSL prints (AB:CD:...). */
export function fingerprint256(der: Uint8Array): string {
  return createHash('sha256').update(der).digest('hex').toUpperCase().match(/../g)!.join(':');
}

/** The root digest carried by join tokens: SHA-256 of the root certificate's DER, base36, 50 characters. */
export function rootDigest(rootDer: Uint8Array): string {
  return base36(createHash('sha256').update(rootDer).digest(), 50);
}

/** A random UUID (v4), used to name offline node certificates. */
export function randomUuid(): string {
  return globalThis.crypto.randomUUID();
}
