import { createHash, timingSafeEqual } from 'node:crypto';
import { isRole, randomId, Role, ROLES } from '../pki/index.js';
import type { JoinTokenTable, Store } from '../store/store.js';
import { CairnError } from '../util/errors.js';

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

// ---- limited join tokens (`cairn token create`): a lifetime and a number of uses

export const TOKEN_TTL_DEFAULT_MS = 60 * 60_000;
export const TOKEN_TTL_MIN_MS = 60_000;
export const TOKEN_TTL_MAX_MS = 30 * 86_400_000;
export const TOKEN_USES_MAX = 100_000;

export type JoinTokenState = 'active' | 'used' | 'expired' | 'revoked';

export function joinTokenState(t: Pick<JoinTokenTable, 'revoked_at' | 'expires_at' | 'uses' | 'max_uses'>, now: number): JoinTokenState {
  if (t.revoked_at !== null) return 'revoked';
  if (t.uses >= t.max_uses) return 'used';
  if (t.expires_at <= now) return 'expired';
  return 'active';
}

/** Check what a limited token is asked for: its role, lifetime (ms) and uses. */
export function checkTokenRequest(b: { role?: unknown; ttlMs?: unknown; uses?: unknown }): { role: Role; ttlMs: number; uses: number } {
  if (typeof b.role !== 'string' || !isRole(b.role)) throw new CairnError('bad_request', 'role must be worker or manager');
  const ttlMs = b.ttlMs ?? TOKEN_TTL_DEFAULT_MS;
  if (typeof ttlMs !== 'number' || !Number.isInteger(ttlMs) || ttlMs < TOKEN_TTL_MIN_MS || ttlMs > TOKEN_TTL_MAX_MS) {
    throw new CairnError('bad_request', 'ttlMs must be an integer between 1 minute and 30 days');
  }
  const uses = b.uses ?? 1;
  if (typeof uses !== 'number' || !Number.isInteger(uses) || uses < 1 || uses > TOKEN_USES_MAX) throw new CairnError('bad_request', `uses must be an integer between 1 and ${TOKEN_USES_MAX}`);
  return { role: b.role, ttlMs, uses };
}

/** A new limited token: the row to store (its secret only hashed) and the token, returned this once. */
export function mintLimitedToken(digest: string, r: { role: Role; ttlMs: number; uses: number }, now: number): { row: JoinTokenTable; token: string } {
  const secret = newSecret();
  return {
    row: { id: randomId(), role: r.role, secret_hash: hashSecret(secret), max_uses: r.uses, uses: 0, expires_at: now + r.ttlMs, created_at: now, revoked_at: null },
    token: formatToken(digest, secret),
  };
}
