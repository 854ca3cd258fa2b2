import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { CairnError } from '../util/errors.js';

/** The cluster unlock key: 32 bytes that seal CA private keys in the store (AES-256-GCM). */
export const UNLOCK_KEY_BYTES = 32;

export function newUnlockKey(): Buffer {
  return randomBytes(UNLOCK_KEY_BYTES);
}

/** The text form kept in files and CAIRN_UNLOCK_KEY: `CAIRN-UNLOCK-1-<base64url>`. */
export function formatUnlockKey(key: Buffer): string {
  return `CAIRN-UNLOCK-1-${key.toString('base64url')}`;
}

export function parseUnlockKey(text: string, where: string): Buffer {
  const m = text.trim().match(/^CAIRN-UNLOCK-1-([A-Za-z0-9_-]+)$/);
  const key = m ? Buffer.from(m[1], 'base64url') : null;
  if (!key || key.length !== UNLOCK_KEY_BYTES) throw new CairnError('bad_unlock_key', `${where} does not hold a cairn unlock key`);
  return key;
}

/** Seal `plaintext` under the unlock key; `context` (e.g. the CA id) is bound as associated data. */
export function seal(unlockKey: Buffer, plaintext: Buffer | string, context: string): string {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', unlockKey, iv);
  c.setAAD(Buffer.from(context));
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  return `v1:${Buffer.concat([iv, c.getAuthTag(), ct]).toString('base64')}`;
}

export function unseal(unlockKey: Buffer, sealed: string, context: string): Buffer {
  const m = sealed.match(/^v1:([A-Za-z0-9+/=]+)$/);
  const raw = m ? Buffer.from(m[1], 'base64') : Buffer.alloc(0);
  if (raw.length < 29) throw new CairnError('store_corrupt', `sealed key for ${context} is malformed`);
  try {
    const d = createDecipheriv('aes-256-gcm', unlockKey, raw.subarray(0, 12));
    d.setAAD(Buffer.from(context));
    d.setAuthTag(raw.subarray(12, 28));
    return Buffer.concat([d.update(raw.subarray(28)), d.final()]);
  } catch {
    throw new CairnError('wrong_unlock_key', `the unlock key does not open the CA keys in the store (wrong unlock key for this cluster?)`);
  }
}
