import { createHash, timingSafeEqual } from 'node:crypto';
import { randomId, Role, ROLES } from '../pki/index.js';
import type { Store } from '../store/store.js';

export { isRole, ROLES, type Role } from '../pki/index.js';

/** `CAIRN-1-<root digest, 50 base36>-<secret, 25 base36>` (the layout of swarm's SWMTKN-1). */
export const TOKEN_RE = /^CAIRN-1-([0-9a-z]{50})-([0-9a-z]{25})$/;

export interface ParsedToken {
  digest: string;
  secret: string;
}

export function parseToken(token: string): ParsedToken | null {
  const m = TOKEN_RE.exec(token.trim());
  return m ? { digest: m[1], secret: m[2] } : null;
}

export function formatToken(digest: string, secret: string): string {
  return `CAIRN-1-${digest}-${secret}`;
}

/**
 * New secrets for these roles' join tokens (every role by default): only their hashes are
 * stored, the old secrets stop working at once, and the tokens are returned this once.
 */
export async function mintJoinTokens(tx: Store, digest: string, roles: readonly Role[] = ROLES): Promise<Partial<Record<Role, string>>> {
  const tokens: Partial<Record<Role, string>> = {};
  for (const role of roles) {
    const secret = newSecret();
    await tx.setTokenHash(role, hashSecret(secret));
    tokens[role] = formatToken(digest, secret);
  }
  return tokens;
}

export function newSecret(): string {
  return randomId();
}

/** Secrets are 128 random bits, so one SHA-256 is an adequate hash at rest. */
export function hashSecret(secret: string): string {
  return createHash('sha256').update(`cairn-join-token:${secret}`).digest('hex');
}

/**
 * Which role a secret belongs to, comparing against every stored hash in constant time
 * (every comparison is made, whatever matches).
 */
export function matchSecret(secret: string, hashes: Record<string, string>): Role | null {
  const h = Buffer.from(hashSecret(secret), 'hex');
  let found: Role | null = null;
  for (const role of ROLES) {
    const stored = Buffer.from(hashes[role] ?? '00'.repeat(32), 'hex');
    const eq = stored.length === h.length && timingSafeEqual(stored, h);
    if (eq) found = role;
  }
  return found;
}
