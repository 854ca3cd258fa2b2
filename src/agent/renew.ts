/**
 * One renewal: a new key generated here, a CSR sent over mutual TLS with the current
 * certificate, the answer checked, and key, certificate, trust bundle and node.json replaced
 * together (crash-safe, see state.ts).
 */
import type { Logger } from 'pino';
import { createCsr, csrToPem, generateKeyPair, PkiError, privateKeyToPem, verifyChain, Role } from '../pki/index.js';
import { CairnError } from '../util/errors.js';
import { ApiError, closeAgents, isRetryable, request, RetryableError } from './client.js';
import { refreshCrl } from './crl.js';
import { checkIssued, pemOf } from './issued.js';
import { clientTlsOf, NodeIdentity, readNodeIdentity, recoverPendingCommit, replaceIdentity } from './node-state.js';
import { acceptTrustBundle } from './trust.js';

export interface RenewResult {
  nodeId: string;
  role: Role;
  previousRole: Role;
  clusterId: string;
  /** the endpoint that renewed */
  endpoint: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** whether ca.crt changed (the bundle that came with the certificate was accepted and differs) */
  trustChanged: boolean;
  /** set when the bundle that came with the certificate was refused (ca.crt kept): why */
  trustRefused?: string;
}

export interface RenewOptions {
  /** how many times to go through the endpoint list before giving up (default 3) */
  rounds?: number;
  /** first pause between rounds (doubling, with jitter); default 1 s */
  baseDelayMs?: number;
  /** per-request deadline, default 10 s */
  timeoutMs?: number;
  signal?: AbortSignal;
  logger?: Logger;
  random?: () => number;
  /** root digests the operator vouches for (see acceptTrustBundle) */
  trustDigests?: string[];
  /** fetch the CRL after the renewal (default true) */
  fetchCrl?: boolean;
}

/**
 * Refusals that name this node: whichever replica answers, the answer would be the same, so
 * they end a renewal at once. Any other refusal may be one replica's (a wrong or misconfigured
 * replica answering 403 or 404): the other endpoints are tried first.
 */
const NAMES_THIS_NODE = new Set(['node_removed', 'certificate_revoked', 'certificate_expired', 'renewal_superseded', 'rejoin_required']);

/** Answers after which retrying cannot help: the node must join again (or the operator must act). */
const FATAL = new Set([...NAMES_THIS_NODE, 'client_certificate_required', 'forbidden']);

/** Whether a renewal error means "stop": the CA refuses this node for good. */
export function isFatalRenewalError(e: unknown): boolean {
  if (!(e instanceof CairnError)) return true; // a bug: do not spin on it
  if (FATAL.has(e.code)) return true;
  if (e.code === 'aborted') return false;
  return !isRetryable(e);
}

/**
 * Exponential backoff with "equal jitter": the n-th retry (from 0) waits between half and all
 * of min(cap, base·2ⁿ), so a fleet that failed together does not retry together.
 */
export function backoffDelay(attempt: number, o: { baseMs?: number; capMs?: number; random?: () => number } = {}): number {
  const base = o.baseMs ?? 1000;
  const cap = o.capMs ?? 5 * 60_000;
  const d = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  const r = (o.random ?? Math.random)();
  return Math.round(d / 2 + (r * d) / 2);
}

/** Sleep unless aborted; resolves false if aborted. */
export function sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(false);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve(true);
    }, Math.max(0, Math.min(ms, 2 ** 31 - 1)));
    const onAbort = () => {
      clearTimeout(t);
      resolve(false);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export { clientTlsOf };

function explain(e: CairnError, id: NodeIdentity): CairnError {
  const again = `join again with a token: cairn join --force --token <token> --state-dir ${id.dir} <url>`;
  switch (e.code) {
    case 'node_removed':
      return new CairnError(e.code, `node ${id.config.nodeId} has been removed from the cluster and cannot renew its certificate; to come back, ${again}`);
    case 'certificate_revoked':
      return new CairnError(e.code, `the certificate of node ${id.config.nodeId} has been revoked (the node may have been removed from the cluster) and cannot be renewed; to come back, ${again}`);
    case 'renewal_superseded':
      return new CairnError(e.code, `the CA refuses to renew with certificate ${id.leaf.serialHex}: node ${id.config.nodeId} has a newer certificate (is another copy of this node's state directory renewing?); ${again}`);
    case 'rejoin_required':
      return new CairnError(
        e.code,
        `node ${id.config.nodeId} still holds a certificate of a root the cluster retired (a root CA rotation was finished without it); ${again}`,
      );
    case 'certificate_expired':
    case 'client_certificate_required':
      return new CairnError(e.code, `the CA does not accept the certificate of node ${id.config.nodeId} (${e.message}); ${again}`);
    default:
      return e;
  }
}

export async function renewOnce(stateDir: string, opts: RenewOptions = {}): Promise<RenewResult> {
  recoverPendingCommit(stateDir);
  const id = readNodeIdentity(stateDir);
  const log = opts.logger;
  if (id.leaf.notAfter.getTime() <= Date.now()) {
    throw new CairnError(
      'certificate_expired',
      `the certificate of node ${id.config.nodeId} expired at ${id.leaf.notAfter.toISOString()}: renewal needs a valid certificate; ` +
        `get the same node ID back with a join token of its role (within the cluster's recovery window, default 30 days): ` +
        `cairn join --recover --token <token> --state-dir ${stateDir}; or join as a new node: cairn join --force --token <token> --state-dir ${stateDir} <url>`,
    );
  }
  const kp = generateKeyPair('ec-p256');
  const csr = csrToPem(createCsr(kp.privateKey));
  const tls = clientTlsOf(id);
  const rounds = Math.max(1, opts.rounds ?? 3);
  const errors: CairnError[] = [];
  /** refusals that are not worth another round (non-retryable, but not naming this node) */
  let refusals = 0;

  for (let round = 0; round < rounds; round++) {
    if (round > 0 && refusals === id.config.endpoints.length) break; // every endpoint refused: another round will not help
    refusals = 0;
    if (round > 0) {
      const wait = backoffDelay(round - 1, { baseMs: opts.baseDelayMs, random: opts.random });
      log?.info({ retryInMs: wait }, 'every CA endpoint failed; retrying');
      if (!(await sleep(wait, opts.signal))) throw new CairnError('aborted', 'renewal aborted');
    }
    for (const ep of id.config.endpoints) {
      let answer: unknown;
      try {
        answer = await request(ep, 'POST', '/v1/renew', { csr }, tls, { timeoutMs: opts.timeoutMs, signal: opts.signal });
      } catch (e) {
        if (!(e instanceof CairnError) || e.code === 'aborted') throw e;
        if (NAMES_THIS_NODE.has(e.code)) throw explain(e, id);
        if (!isRetryable(e)) refusals++;
        log?.warn({ endpoint: ep, code: e.code, err: e.message }, 'renewal failed at this endpoint');
        errors.push(e);
        continue;
      }
      let got: ReturnType<typeof checkIssued>;
      try {
        got = checkIssued(answer, kp.privateKey, ep, { clusterId: id.config.clusterId, nodeId: id.config.nodeId });
      } catch (e) {
        if (!(e instanceof CairnError)) throw e;
        if (id.config.endpoints.length === 1) throw e;
        log?.warn({ endpoint: ep, code: e.code, err: e.message }, 'renewal answer refused at this endpoint');
        errors.push(e);
        refusals++;
        continue;
      }
      // ca.crt changes only as acceptTrustBundle allows; otherwise it is kept, and the new
      // certificate must verify against it
      const decision = acceptTrustBundle(id.trust, got.trust, { vouchers: got.chain.slice(1), digests: opts.trustDigests, chain: got.chain });
      let caPem: string | undefined;
      let trustRefused: string | undefined;
      if (decision.ok) {
        if (decision.changed) caPem = pemOf(decision.bundle);
      } else {
        trustRefused = decision.message;
        log?.warn({ endpoint: ep, reason: decision.reason, refused: decision.refused }, `trust bundle refused: ${decision.message}`);
      }
      try {
        verifyChain(got.chain[0], got.chain.slice(1), decision.ok ? decision.bundle : id.trust, { purpose: 'clientAuth' });
      } catch (e) {
        if (!(e instanceof PkiError)) throw e;
        const err = new CairnError('untrusted_root', `the CA at ${ep} issued a certificate that does not chain to a root this node may trust (${e.message}); nothing was written`);
        if (id.config.endpoints.length === 1) throw err;
        log?.warn({ endpoint: ep, code: err.code, err: err.message }, 'renewal answer refused at this endpoint');
        errors.push(err);
        refusals++;
        continue;
      }
      replaceIdentity(stateDir, {
        keyPem: privateKeyToPem(kp.privateKey),
        certPem: got.certPem,
        caPem,
        config: { ...id.config, role: got.role },
      });
      closeAgents(tls); // the old identity's connections are of no further use
      if (opts.fetchCrl !== false) {
        try {
          await refreshCrl(readNodeIdentity(stateDir), { timeoutMs: opts.timeoutMs, signal: opts.signal, logger: log });
        } catch (e) {
          log?.warn({ err: (e as Error).message }, 'could not fetch the CRL after renewal');
        }
      }
      return {
        nodeId: got.nodeId,
        role: got.role,
        previousRole: id.config.role,
        clusterId: got.clusterId,
        endpoint: ep,
        serial: got.leaf.serialHex,
        notBefore: got.leaf.notBefore,
        notAfter: got.leaf.notAfter,
        trustChanged: caPem !== undefined,
        ...(trustRefused ? { trustRefused } : {}),
      };
    }
  }
  if (refusals === id.config.endpoints.length) {
    // every endpoint refused for a reason retrying will not fix: say so, with the first refusal
    const first = errors[errors.length - refusals];
    const e = explain(first, id);
    if (refusals === 1) throw e;
    throw new CairnError(e.code, `renewal refused at every CA endpoint: ${errors.slice(-refusals).map((x) => x.message).join('; ')}`);
  }
  const last = errors.at(-1)!;
  const retryAfter = Math.max(0, ...errors.map((e) => (e instanceof ApiError ? e.retryAfterMs ?? 0 : 0)));
  throw new RetryableError(
    last.code,
    `renewal failed at every CA endpoint (${id.config.endpoints.join(', ')}): ${errors.slice(-id.config.endpoints.length).map((e) => e.message).join('; ')}`,
    retryAfter || null,
  );
}
