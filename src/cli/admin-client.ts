import fs from 'node:fs';
import path from 'node:path';
import { Command, Option } from 'commander';
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

/** A client bundle's identity: ca.pem, cert.pem, key.pem (0600). */
export interface BundleIdentity {
  ca: string;
  cert: string;
  key: string;
}

/** A client bundle directory: ca.pem, cert.pem, key.pem (0600), as `cairn bundle unpack` writes it and <state dir>/admin/ holds. */
export function readBundle(dir: string): BundleIdentity {
  const f = (n: string) => path.join(dir, n);
  for (const n of ['ca.pem', 'cert.pem', 'key.pem']) {
    if (!exists(f(n))) throw new CairnError('no_admin_bundle', `${dir} is not a client bundle: ${f(n)} does not exist (a bundle holds ca.pem, cert.pem and key.pem)`);
  }
  return { ca: readText(f('ca.pem')), cert: readText(f('cert.pem')), key: readKeyFile(f('key.pem')) };
}

/** The server a bundle was made for: CAIRN_SERVER as its env.sh sets it. */
function bundleServer(dir: string): string | undefined {
  const env = path.join(dir, 'env.sh');
  if (!exists(env)) return undefined;
  const m = /^export CAIRN_SERVER='([^']*)'$/m.exec(fs.readFileSync(env, 'utf8'));
  return m?.[1];
}

/** Who an admin command calls the API as, and where. */
export interface AdminTarget {
  identity: BundleIdentity;
  server: string;
  /** the state directory, when the identity came from one */
  stateDir?: string;
}

export interface AdminFlags {
  stateDir?: string;
  bundle?: string;
  server?: string;
}

/**
 * The identity and server of an admin command: a replica's state directory (its admin bundle
 * and listen address), a bundle directory (`--bundle`, its server from --server, CAIRN_SERVER
 * or its env.sh), or the environment a bundle's env.sh sets (CAIRN_CERT, CAIRN_KEY, CAIRN_CA,
 * CAIRN_SERVER): an operator can administer the cluster from a laptop.
 */
export function adminTarget(f: AdminFlags): AdminTarget {
  if (f.stateDir && f.bundle) throw new CairnError('usage', 'give either --state-dir DIR or --bundle DIR, not both');
  if (f.stateDir) {
    const p = statePaths(f.stateDir);
    if (!exists(p.adminCert)) throw new CairnError('no_admin_bundle', `no admin bundle in ${p.adminDir}: this state directory was not created by "cairn init"`);
    return { identity: { key: readKeyFile(p.adminKey), cert: readText(p.adminCert), ca: readText(p.adminCa) }, server: serverUrl(f.stateDir, f.server), stateDir: f.stateDir };
  }
  if (f.bundle) {
    const identity = readBundle(f.bundle);
    const server = f.server ?? process.env.CAIRN_SERVER ?? bundleServer(f.bundle);
    if (!server) throw new CairnError('usage', `--bundle ${f.bundle}: give --server URL (the bundle has no env.sh naming its server)`);
    return { identity, server };
  }
  const { CAIRN_CERT: cert, CAIRN_KEY: key, CAIRN_CA: ca, CAIRN_SERVER: server } = process.env;
  if (cert || key || ca) {
    const missing = Object.entries({ CAIRN_CERT: cert, CAIRN_KEY: key, CAIRN_CA: ca }).filter(([, v]) => !v).map(([k]) => k);
    if (missing.length) throw new CairnError('usage', `the environment names a bundle but ${missing.join(' and ')} ${missing.length === 1 ? 'is' : 'are'} not set: source the bundle's env.sh again`);
    const s = f.server ?? server;
    if (!s) throw new CairnError('usage', 'CAIRN_SERVER is not set: source the bundle\'s env.sh, or give --server URL');
    return { identity: { cert: readText(cert!), key: readKeyFile(key!), ca: readText(ca!) }, server: s };
  }
  throw new CairnError('usage', 'no admin identity: give --state-dir DIR (a replica\'s), --bundle DIR (a client bundle), or source a bundle\'s env.sh (CAIRN_CERT, CAIRN_KEY, CAIRN_CA, CAIRN_SERVER)');
}

/** --state-dir, --bundle and --server: where an admin command's identity and server come from. */
export function addAdminOptions(c: Command): Command {
  return c
    .addOption(new Option('--state-dir <dir>', 'a replica state directory (its admin bundle and listen address are used)'))
    .addOption(new Option('--bundle <dir>', 'a client bundle directory (ca.pem, cert.pem, key.pem) instead of a state directory; without either, the environment of a bundle\'s env.sh is used'))
    .addOption(new Option('--server <url>', 'API address (default: the state directory\'s listen address, or CAIRN_SERVER, or the bundle\'s env.sh)'));
}

/**
 * Call the API as the target (one connection, closed after the answer: a CLI command must
 * not be kept alive by a pooled socket).
 */
export async function adminCall(t: AdminTarget, method: string, path: string, body?: unknown, opts: { raw?: boolean; maxResponseBytes?: number } = {}): Promise<any> {
  try {
    return await request(t.server, method, path, body, t.identity, { keepAlive: false, timeoutMs: 15_000, raw: opts.raw, maxResponseBytes: opts.maxResponseBytes });
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
export async function adminPages<T>(t: AdminTarget, path: string, field: string, onPage: (items: T[]) => void, limit = 1000): Promise<number> {
  let after: string | null = null;
  let total = 0;
  for (;;) {
    const u = new URL(path, 'https://x/');
    u.searchParams.set('limit', String(limit));
    if (after) u.searchParams.set('after', after);
    const r = await adminCall(t, 'GET', `${u.pathname.slice(1)}${u.search}`);
    const items = r?.[field];
    if (!Array.isArray(items)) throw new CairnError('bad_response', `the answer of ${path} has no "${field}" list`);
    onPage(items as T[]);
    total += items.length;
    if (r.next === null || r.next === undefined) return total;
    if (typeof r.next !== 'string' || r.next === after) throw new CairnError('bad_response', `the answer of ${path} has an invalid "next" cursor`);
    after = r.next;
  }
}
