/**
 * Cursor pagination of listings: a page is at most `limit` rows in a stable order, and the
 * cursor that continues it is opaque to clients (base64url of the last row's order key).
 */
import type { PageKey } from '../store/store.js';
import { CairnError } from '../util/errors.js';

export const DEFAULT_PAGE_LIMIT = 500;
export const MAX_PAGE_LIMIT = 1000;

export interface PageRequest {
  /** opaque cursor from the previous page's `next` */
  after?: string;
  limit?: number;
}

export function pageLimit(limit: number | undefined): number {
  if (limit === undefined) return DEFAULT_PAGE_LIMIT;
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_PAGE_LIMIT) throw new CairnError('bad_request', `limit must be an integer between 1 and ${MAX_PAGE_LIMIT}`);
  return limit;
}

export function encodeCursor(k: PageKey): string {
  return Buffer.from(JSON.stringify([k.t, k.k])).toString('base64url');
}

export function decodeCursor(s: string | undefined): PageKey | undefined {
  if (s === undefined) return undefined;
  const bad = () => new CairnError('bad_request', 'invalid cursor: pass the "next" value of the previous page unchanged');
  if (s.length === 0 || s.length > 200 || !/^[A-Za-z0-9_-]+$/.test(s)) throw bad();
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
  } catch {
    throw bad();
  }
  if (!Array.isArray(v) || v.length !== 2 || !Number.isSafeInteger(v[0]) || typeof v[1] !== 'string' || !/^[0-9A-Za-z-]{1,64}$/.test(v[1])) throw bad();
  return { t: v[0], k: v[1] };
}

/** Fetch limit + 1 rows: the extra one only tells whether a next page exists. */
export async function page<R, V>(req: PageRequest, fetch: (after: PageKey | undefined, limit: number) => Promise<R[]>, key: (r: R) => PageKey, view: (r: R) => V): Promise<{ items: V[]; next: string | null }> {
  const limit = pageLimit(req.limit);
  const rows = await fetch(decodeCursor(req.after), limit + 1);
  const more = rows.length > limit;
  const shown = more ? rows.slice(0, limit) : rows;
  return { items: shown.map(view), next: more ? encodeCursor(key(shown[shown.length - 1])) : null };
}
