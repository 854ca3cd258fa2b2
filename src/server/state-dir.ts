/**
 * A replica's state directory: what stays local to one replica (its identity, listen
 * address, store location, server key and certificate, the admin bundle, the unlock key in
 * the single-node default). Everything cluster-wide lives in the store.
 */
import path from 'node:path';
import { parseUnlockKey } from '../authority/seal.js';
import { CairnError } from '../util/errors.js';
import { exists, KEY_MODE, readKeyFile, readText, writeFilesAtomic } from '../util/files.js';

export const REPLICA_FILE = 'replica.json';
export const UNLOCK_KEY_FILE = 'unlock.key';
export const DEFAULT_LISTEN = '127.0.0.1:7443';

export interface ReplicaConfig {
  version: 1;
  replicaId: string;
  clusterId: string;
  /** store URL (credentials never written here); absent for the default SQLite file */
  store?: string;
  listen: string;
  advertiseAddr: string;
  sans: string[];
  /** every connection starts with a PROXY protocol header from a load balancer (cairn serve --proxy-protocol) */
  proxyProtocol?: boolean;
  /** how this replica reaches the PKCS#11 token holding CA keys: module path, token label, PIN file (never the PIN) */
  pkcs11?: { module: string; token: string; pinFile: string };
}

export function statePaths(dir: string) {
  return {
    dir,
    replica: path.join(dir, REPLICA_FILE),
    unlockKey: path.join(dir, UNLOCK_KEY_FILE),
    serverKey: path.join(dir, 'server.key'),
    serverCert: path.join(dir, 'server.crt'),
    caCert: path.join(dir, 'ca.crt'),
    adminDir: path.join(dir, 'admin'),
    adminCa: path.join(dir, 'admin', 'ca.pem'),
    adminCert: path.join(dir, 'admin', 'cert.pem'),
    adminKey: path.join(dir, 'admin', 'key.pem'),
    adminTokens: path.join(dir, 'admin', 'tokens.json'),
  };
}

export function readReplicaConfig(dir: string): ReplicaConfig {
  const p = statePaths(dir).replica;
  if (!exists(p)) throw new CairnError('not_initialized', `${dir} is not a cairn state directory (no ${REPLICA_FILE}): run "cairn init" first`);
  let cfg: ReplicaConfig;
  try {
    cfg = JSON.parse(readText(p));
  } catch (e) {
    if (e instanceof CairnError) throw e;
    throw new CairnError('corrupt', `${p} is not valid JSON`);
  }
  if (cfg?.version !== 1 || typeof cfg.replicaId !== 'string' || typeof cfg.listen !== 'string') {
    throw new CairnError('corrupt', `${p} is not a cairn replica configuration`);
  }
  return cfg;
}

/** The unlock key: --unlock-key-file, else CAIRN_UNLOCK_KEY, else <state dir>/unlock.key. */
export function loadUnlockKey(dir: string, file?: string): Buffer {
  if (file) return parseUnlockKey(readKeyFile(file), file);
  const env = process.env.CAIRN_UNLOCK_KEY;
  if (env) return parseUnlockKey(env, 'CAIRN_UNLOCK_KEY');
  const p = statePaths(dir).unlockKey;
  if (!exists(p)) throw new CairnError('no_unlock_key', `no unlock key: give --unlock-key-file or CAIRN_UNLOCK_KEY (${p} does not exist)`);
  return parseUnlockKey(readKeyFile(p), p);
}

/** Split "host:port" (IPv6 as [::1]:port). */
export function parseHostPort(s: string, what = '--listen'): { host: string; port: number } {
  const m = s.match(/^\[([^\]]+)\]:(\d+)$/) ?? s.match(/^([^:]+):(\d+)$/);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new CairnError('usage', `${what} "${s}" is not HOST:PORT`);
  }
  return { host: m[1], port };
}

/** The join tokens kept in <state dir>/admin/tokens.json (the store has only their hashes); {} when there is none. */
export function readTokens(dir: string): Record<string, string> {
  const p = statePaths(dir).adminTokens;
  if (!exists(p)) return {};
  try {
    return JSON.parse(readKeyFile(p));
  } catch (e) {
    if (e instanceof CairnError) throw e;
    throw new CairnError('corrupt', `${p} is not valid JSON`);
  }
}

/** Record a rotated join token in <state dir>/admin/tokens.json (0600, atomically). */
export function saveToken(dir: string, role: string, token: string): void {
  const tokens = readTokens(dir);
  tokens[role] = token;
  writeFilesAtomic([{ path: statePaths(dir).adminTokens, data: JSON.stringify(tokens, null, 2) + '\n', mode: KEY_MODE }], { overwrite: true });
}
