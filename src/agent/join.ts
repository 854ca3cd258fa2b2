/**
 * Join a cluster with a token: fetch the CA certificate, check it against the token's digest
 * (so a man in the middle cannot substitute a CA), check that the server's certificate on that
 * same connection chains to that root, generate the key here (it never leaves the node), send
 * a CSR with the token on that connection, check what comes back, and write the identity into
 * the node's state directory.
 */
import type { KeyObject } from 'node:crypto';
import fs from 'node:fs';
import { certificateFromPem, certificateToPem, createCsr, csrToPem, generateKeyPair, PkiError, privateKeyToPem, rootDigest, Role } from '../pki/index.js';
import { CairnError } from '../util/errors.js';
import { ensureDir, exists } from '../util/files.js';
import { ClientTls, isDroppedConnection, isRetryable, normalizeEndpoint, request, RequestOptions, SingleConnection } from './client.js';
import { refreshCrl } from './crl.js';
import { checkIssued, pemOf } from './issued.js';
import { OutputResult, OutputSpec, writeOutputs } from './outputs.js';
import { nodePaths, readNodeIdentity, replaceIdentity, writeNewIdentity } from './node-state.js';
import { recordSuccess, statusPath } from './status.js';
import { JoinToken, parseJoinToken } from './token.js';
import { acceptTrustBundle, vouchersFrom } from './trust.js';

/** How many times the same address is tried again after it dropped the connection. */
export const JOIN_DROPPED_RETRIES = 2;

export interface JoinOptions {
  /** replace an identity already in the state directory */
  force?: boolean;
  /** per-request deadline, default 10 s */
  timeoutMs?: number;
  /** pause before trying an address again after it dropped the connection, default 200 ms */
  retryDelayMs?: number;
  /** output files to write once the identity is in place (`--write`), checked before anything is sent */
  outputs?: OutputSpec[];
  /**
   * Recovery after expiry (`--recover`): the state directory holds the node's identity, whose
   * certificate expired; the token and a CSR signed with the node's key get it a new
   * certificate with the same node ID (POST /v1/recover). No endpoints: the node's own.
   */
  recover?: boolean;
}

export interface JoinResult {
  nodeId: string;
  role: Role;
  clusterId: string;
  stateDir: string;
  /** the endpoint that issued the certificate */
  endpoint: string;
  serial: string;
  notAfter: Date;
  /** things the user should know that did not stop the join (e.g. roots refused from the trust bundle) */
  warnings: string[];
  /** whether a CRL was fetched into crl.pem (best effort) */
  crl: boolean;
  /** the output files written (`--write`) */
  outputs: OutputResult[];
}

/** The part of `GET /v1/ca` a joining node uses. */
interface CaAnswer {
  clusterId?: unknown;
  roots?: { cluster?: unknown };
  intermediates?: unknown;
  crossSigned?: unknown;
}

/**
 * One request; if the address accepted the connection and dropped it (a replica dying behind
 * a load balancer, a reset), the same address is tried again, up to JOIN_DROPPED_RETRIES times.
 * Answers (4xx, 5xx), refused connections and timeouts are not retried here.
 */
async function requestRetryingDrops<T>(ep: string, method: string, path: string, body: unknown, t: ClientTls, o: RequestOptions & { retryDelayMs?: number }): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await request<T>(ep, method, path, body, t, o);
    } catch (e) {
      if (!isDroppedConnection(e) || attempt >= JOIN_DROPPED_RETRIES) throw e;
      await new Promise((r) => setTimeout(r, o.retryDelayMs ?? 200));
    }
  }
}

/** Validate and de-duplicate a list of CA endpoints, keeping their order. */
export function normalizeEndpoints(endpoints: string[]): string[] {
  const out: string[] = [];
  for (const e of endpoints) {
    const n = normalizeEndpoint(e);
    if (!out.includes(n)) out.push(n);
  }
  if (out.length === 0) throw new CairnError('usage', 'give at least one CA address (https://host:port)');
  return out;
}

export async function join(token: string, endpoints: string[], stateDir: string, opts: JoinOptions = {}): Promise<JoinResult> {
  // Everything that can be refused locally is refused before any network I/O.
  const t = parseJoinToken(token);
  const p = nodePaths(stateDir);
  if (opts.recover) {
    if (!exists(p.key)) throw new CairnError('usage', `--recover needs the node's identity in ${stateDir} (its key and expired certificate); without it, join as a new node`);
    const old = readNodeIdentity(stateDir);
    const eps = normalizeEndpoints(endpoints.length ? endpoints : old.config.endpoints);
    return joinThrough(t, token.trim(), eps, stateDir, { ...opts, force: true }, { key: old.key, nodeId: old.config.nodeId });
  }
  const eps = normalizeEndpoints(endpoints);
  if (exists(p.key) && !opts.force) {
    throw new CairnError('exists', `${stateDir} already holds a node identity (${p.key}); use --force to join again and replace it`);
  }
  const created = !exists(stateDir);
  ensureDir(stateDir);
  try {
    return await joinThrough(t, token.trim(), eps, stateDir, opts);
  } catch (e) {
    if (created) {
      try {
        fs.rmdirSync(stateDir); // leave nothing behind a failed join (only if still empty)
      } catch {
        /* not empty: keep it */
      }
    }
    throw e;
  }
}

async function joinThrough(t: JoinToken, token: string, eps: string[], stateDir: string, opts: JoinOptions, recovering?: { key: KeyObject; nodeId: string }): Promise<JoinResult> {
  // a recovering node proves it holds its old key by signing the request with it
  const kp = recovering ? { privateKey: recovering.key } : generateKeyPair('ec-p256');
  const csr = csrToPem(createCsr(kp.privateKey));
  const path = recovering ? '/v1/recover' : '/v1/join';
  const body = recovering ? { nodeId: recovering.nodeId, token, csr } : { token, csr };
  const failures: { endpoint: string; error: CairnError }[] = [];
  const req = { timeoutMs: opts.timeoutMs, keepAlive: false, retryDelayMs: opts.retryDelayMs };

  for (const ep of eps) {
    // 1. first contact, unverified: the answer is trusted only if its root matches the digest.
    //    The connection is kept for the join itself (one TLS handshake per join).
    let ca: CaAnswer;
    let conn = new SingleConnection();
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          ca = await request<CaAnswer>(ep, 'GET', '/v1/ca', undefined, { insecure: true }, { ...req, connection: conn });
          break;
        } catch (e) {
          if (!isDroppedConnection(e) || attempt >= JOIN_DROPPED_RETRIES) throw e;
          conn.close();
          conn = new SingleConnection();
          await new Promise((r) => setTimeout(r, opts.retryDelayMs ?? 200));
        }
      }
    } catch (e) {
      conn.close();
      if (!(e instanceof CairnError)) throw e;
      failures.push({ endpoint: ep, error: e });
      continue;
    }
    let rootDer: Buffer;
    try {
      if (typeof ca?.roots?.cluster !== 'string') throw new PkiError('bad_pem', 'no cluster root');
      rootDer = certificateFromPem(ca.roots.cluster, 'the cluster root');
    } catch (e) {
      conn.close();
      if (!(e instanceof PkiError)) throw e;
      failures.push({ endpoint: ep, error: new CairnError('bad_response', `the CA at ${ep} answered GET /v1/ca without a usable cluster root certificate (${e.message})`) });
      continue;
    }
    const digest = rootDigest(rootDer);
    if (digest !== t.digest) {
      conn.close();
      failures.push({
        endpoint: ep,
        error: new CairnError(
          'ca_mismatch',
          `the CA at ${ep} does not match the token's digest (its root certificate has digest ${digest}, the token says ${t.digest}): ` +
            'this may be a man in the middle, or a token of another cluster; nothing was sent to it',
        ),
      });
      continue;
    }
    const rootPem = certificateToPem(rootDer);
    const expectCluster = typeof ca.clusterId === 'string' ? ca.clusterId : undefined;

    // 2. the join itself, to a CA replica (OU=ca-replica and DNS:ca) of the cluster it named,
    //    whose certificate chains to that root: checked on the connection of step 1, then the
    //    join goes out on it. If the server closed it meanwhile, a new connection verified by
    //    TLS against the root. A node certificate never receives the token.
    let answer: unknown;
    try {
      const untrusted = conn.verify(rootDer, { clusterId: expectCluster });
      if (untrusted) throw new CairnError(untrusted.code, untrusted.message.replace('the server is', `the server at ${ep} is`));
      try {
        answer = await request(ep, 'POST', path, body, { insecure: true }, { ...req, connection: conn });
      } catch (e) {
        if (!isDroppedConnection(e)) throw e;
        answer = await requestRetryingDrops(ep, 'POST', path, body, { ca: rootPem, clusterId: expectCluster }, req);
      }
    } catch (e) {
      if (!(e instanceof CairnError)) throw e;
      if (!isRetryable(e)) {
        if (e.code === 'invalid_token') {
          throw new CairnError('invalid_token', `${e.message}: the token may have been rotated or be of another cluster; get the current one with "cairn token worker|manager"`);
        }
        throw e;
      }
      failures.push({ endpoint: ep, error: e });
      continue;
    } finally {
      conn.close();
    }

    // 3. check what came back, then write it. The token's root is what we trust; the bundle
    //    that came with the certificate may add roots only as acceptTrustBundle allows.
    const got = checkIssued(answer, kp.privateKey, ep, { clusterId: expectCluster, anchors: [rootDer] });
    if (recovering && got.nodeId !== recovering.nodeId) {
      throw new CairnError('bad_response', `the CA at ${ep} answered the recovery of node ${recovering.nodeId} with a certificate for ${got.nodeId}`);
    }
    const warnings: string[] = [];
    const decision = acceptTrustBundle([rootDer], got.trust, {
      vouchers: [...got.chain.slice(1), ...vouchersFrom(ca.intermediates), ...vouchersFrom(ca.crossSigned)],
      digests: [t.digest],
      chain: got.chain,
    });
    if (!decision.ok) warnings.push(`the trust bundle from ${ep} was not accepted as is, ca.crt holds only the token's root: ${decision.message}`);
    const files = {
      keyPem: privateKeyToPem(kp.privateKey),
      certPem: got.certPem,
      caPem: decision.ok ? pemOf(decision.bundle) : rootPem,
      config: { nodeId: got.nodeId, role: got.role, clusterId: got.clusterId, endpoints: eps },
    };
    if (opts.force) {
      replaceIdentity(stateDir, files);
      // the previous identity's CRL and agent status say nothing about this one
      fs.rmSync(nodePaths(stateDir).crl, { force: true });
      fs.rmSync(statusPath(stateDir), { force: true });
    } else writeNewIdentity(stateDir, files);
    recordSuccess(stateDir, got.leaf.serialHex);
    // 4. the CRL, best effort: the agent fetches it again at every trust refresh
    let crl = false;
    try {
      crl = (await refreshCrl(readNodeIdentity(stateDir), { timeoutMs: opts.timeoutMs, keepAlive: false })) !== 'unavailable';
    } catch {
      /* best effort */
    }
    // 5. the output files for other programs
    let outputs: OutputResult[] = [];
    if (opts.outputs?.length) {
      try {
        outputs = await writeOutputs(opts.outputs, readNodeIdentity(stateDir));
      } catch (e) {
        if (!(e instanceof CairnError)) throw e;
        throw new CairnError(e.code, `joined as ${got.role} ${got.nodeId} (identity in ${stateDir}), but ${e.message}; fix it and "cairn agent --write …" writes the outputs at its start`);
      }
    }
    return { nodeId: got.nodeId, role: got.role, clusterId: got.clusterId, stateDir, endpoint: ep, serial: got.leaf.serialHex, notAfter: got.leaf.notAfter, warnings, crl, outputs };
  }

  // Nobody issued. A digest mismatch is the failure that matters most: say it first.
  const mismatch = failures.find((f) => f.error.code === 'ca_mismatch');
  if (failures.length === 1) throw failures[0].error;
  const others = failures.filter((f) => f !== mismatch).map((f) => f.error.message);
  if (mismatch) {
    throw new CairnError('ca_mismatch', `${mismatch.error.message}${others.length ? `; the other endpoints failed too: ${others.join('; ')}` : ''}`);
  }
  throw new CairnError(failures[0].error.code, `could not join through any of ${eps.length} CA endpoints: ${failures.map((f) => f.error.message).join('; ')}`);
}
