import { request } from '../agent/client.js';
import { statePaths, readReplicaConfig } from '../server/state-dir.js';
import { CairnError } from '../util/errors.js';
import { exists, readKeyFile, readText } from '../util/files.js';

/** The API address for admin calls: --server, else the listen address in the state directory. */
export function serverUrl(stateDir: string, override?: string): string {
  if (override) return override; // normalized by the client
  const cfg = readReplicaConfig(stateDir);
  const host = cfg.listen.replace(/^(0\.0\.0\.0|\[::\]):/, '127.0.0.1:');
  return `https://${host}`;
}

/**
 * Call the API with the admin client bundle of a state directory (one connection, closed
 * after the answer: a CLI command must not be kept alive by a pooled socket).
 */
export async function adminCall(stateDir: string, server: string | undefined, method: string, path: string, body?: unknown, opts: { raw?: boolean } = {}): Promise<any> {
  const p = statePaths(stateDir);
  if (!exists(p.adminCert)) throw new CairnError('no_admin_bundle', `no admin bundle in ${p.adminDir}: this state directory was not created by "cairn init"`);
  const identity = { key: readKeyFile(p.adminKey), cert: readText(p.adminCert), ca: readText(p.adminCa) };
  const base = serverUrl(stateDir, server);
  try {
    return await request(base, method, path, body, identity, { keepAlive: false, timeoutMs: 15_000, raw: opts.raw });
  } catch (e) {
    if (e instanceof CairnError && e.code === 'unreachable' && /connection refused/.test(e.message)) {
      throw new CairnError('unreachable', `${e.message} (is "cairn serve" running?)`);
    }
    throw e;
  }
}

/**
 * Follow a paged listing (`{ <field>: [...], next }`) to its end, handing each page to
 * `onPage` as it arrives: memory and answer size stay bounded whatever the list's length.
 */
export async function adminPages<T>(stateDir: string, server: string | undefined, path: string, field: string, onPage: (items: T[]) => void, limit = 1000): Promise<number> {
  let after: string | null = null;
  let total = 0;
  for (;;) {
    const u = new URL(path, 'https://x/');
    u.searchParams.set('limit', String(limit));
    if (after) u.searchParams.set('after', after);
    const r = await adminCall(stateDir, server, 'GET', `${u.pathname.slice(1)}${u.search}`);
    const items = r?.[field];
    if (!Array.isArray(items)) throw new CairnError('bad_response', `the answer of ${path} has no "${field}" list`);
    onPage(items as T[]);
    total += items.length;
    if (r.next === null || r.next === undefined) return total;
    if (typeof r.next !== 'string' || r.next === after) throw new CairnError('bad_response', `the answer of ${path} has an invalid "next" cursor`);
    after = r.next;
  }
}
