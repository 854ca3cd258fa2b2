/**
 * Revocation without the CA: the agent keeps the newest cluster CRL in NODEDIR/crl.pem, so that
 * peers (loadNodeTls) and the agent's own client can refuse revoked certificates while no CA
 * is reachable.
 *
 * The CRL is fetched from `GET /v1/crl/cluster` (DER) over TLS verified as for every CA call,
 * then checked: it must be signed by a root of ca.crt (same issuer name, signature verified
 * with node:crypto), and its CRL number must not be lower than the stored one's (without numbers,
 * as an external CA's: its thisUpdate not earlier). Only then is
 * crl.pem replaced, atomically (temp file + rename).
 */
import type { Logger } from 'pino';
import { CrlInfo, parseCrl, PkiError, toPem, verifyCrl } from '../pki/index.js';
import { CairnError } from '../util/errors.js';
import { FILE_MODE, writeFilesAtomic } from '../util/files.js';
import { request } from './client.js';
import { clientTlsOf, nodePaths, NodeIdentity, readNodeCrl } from './node-state.js';

export const CRL_API_PATH = '/v1/crl/cluster';
/** Largest CRL accepted (about 400,000 entries). */
export const MAX_CRL_BYTES = 16 * 1024 * 1024;

export type CrlRefresh = 'updated' | 'unchanged' | 'unavailable';

/**
 * Check a CRL an endpoint sent against what the node trusts and what it already holds.
 * Returns the parsed CRL, or throws CairnError('bad_crl' | 'stale_crl').
 */
export function checkCrl(der: Buffer, trust: Buffer[], stored: CrlInfo | null, where: string): CrlInfo {
  let crl: CrlInfo;
  try {
    crl = parseCrl(der);
  } catch (e) {
    if (e instanceof PkiError) throw new CairnError('bad_crl', `the CRL from ${where} is malformed: ${e.message}`);
    throw e;
  }
  if (verifyCrl(crl, trust) < 0) throw new CairnError('bad_crl', `the CRL from ${where} is not signed by a root this node trusts`);
  if (stored && stored.issuerDer.equals(crl.issuerDer) && crl.number < stored.number) {
    throw new CairnError('stale_crl', `the CRL from ${where} (number ${crl.number}) is older than the one this node holds (number ${stored.number})`);
  }
  // a CRL without a number (an external CA's: CFSSL numbers none) is ordered by its thisUpdate
  if (stored && stored.issuerDer.equals(crl.issuerDer) && crl.number === 0n && stored.number === 0n && crl.thisUpdate < stored.thisUpdate) {
    throw new CairnError('stale_crl', `the CRL from ${where} (issued ${crl.thisUpdate.toISOString()}) is older than the one this node holds (issued ${stored.thisUpdate.toISOString()})`);
  }
  return crl;
}

/** Write crl.pem atomically. */
export function storeCrl(dir: string, crl: CrlInfo): void {
  writeFilesAtomic([{ path: nodePaths(dir).crl, data: toPem('X509 CRL', crl.der), mode: FILE_MODE }], { overwrite: true });
}

/**
 * Fetch the cluster CRL from the node's endpoints (first that answers with a good one wins)
 * and store it if it is newer than crl.pem. Never throws for network or CA trouble: the
 * previous CRL stays, and the result says 'unavailable' (logged at warn).
 */
export async function refreshCrl(
  id: NodeIdentity,
  o: { timeoutMs?: number; signal?: AbortSignal; logger?: Logger; keepAlive?: boolean } = {},
): Promise<CrlRefresh> {
  const stored = readNodeCrl(id.dir, (e) => o.logger?.warn({ err: e.message }, 'stored CRL unusable'));
  const problems: string[] = [];
  for (const ep of id.config.endpoints) {
    let der: Buffer;
    try {
      der = await request<Buffer>(ep, 'GET', CRL_API_PATH, undefined, clientTlsOf(id), {
        raw: true,
        keepAlive: o.keepAlive,
        timeoutMs: o.timeoutMs,
        signal: o.signal,
        maxResponseBytes: MAX_CRL_BYTES,
      });
    } catch (e) {
      if (e instanceof CairnError && e.code === 'aborted') throw e;
      problems.push((e as Error).message);
      continue;
    }
    let crl: CrlInfo;
    try {
      crl = checkCrl(der, id.trust, stored, ep);
    } catch (e) {
      if (!(e instanceof CairnError)) throw e;
      o.logger?.warn({ endpoint: ep, code: e.code, err: e.message }, 'CRL refused');
      problems.push(e.message);
      continue;
    }
    if (stored && crl.der.equals(stored.der)) return 'unchanged';
    if (stored && crl.number === stored.number && (crl.number !== 0n || crl.thisUpdate <= stored.thisUpdate)) return 'unchanged'; // the same number re-signed: keep ours
    storeCrl(id.dir, crl);
    o.logger?.info({ endpoint: ep, crlNumber: String(crl.number), revoked: crl.revoked.size }, 'CRL updated');
    return 'updated';
  }
  o.logger?.warn({ problems }, 'could not fetch a CRL; keeping the stored one');
  return 'unavailable';
}
