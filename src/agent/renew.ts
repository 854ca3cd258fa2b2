/**
 * One renewal: a new key generated here, a CSR sent over mutual TLS with the current
 * certificate, the answer checked, and key, certificate, trust bundle and node.json replaced
 * together (crash-safe, see state.ts).
 */
import type { Logger } from 'pino';
import { createCsr, csrToPem, generateKeyPair, privateKeyToPem } from '../pki/index.js';
import { CairnError } from '../util/errors.js';
import { ApiError, ClientTls, closeAgents, isRetryable, request, RetryableError } from './client.js';
import { checkIssued, pemOf } from './issued.js';
import { NodeIdentity, NodeRole, readNodeIdentity, recoverPendingCommit, replaceIdentity } from './state.js';

export interface RenewResult {
  nodeId: string;
  role: NodeRole;
  previousRole: NodeRole;
  clusterId: string;
  /** the endpoint that renewed */
  endpoint: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** whether the trust bundle that came with the certificate differs from ca.crt before */
  trustChanged: boolean;
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
}

/** Answers after which retrying cannot help: the node must join again (or the operator must act). */
const FATAL = new Set(['node_removed', 'certificate_revoked', 'certificate_expired', 'client_certificate_required', 'forbidden']);

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

/** The TLS identity a node uses to call the CA: its trust bundle, certificate and key. */
export function clientTlsOf(id: NodeIdentity): ClientTls {
  return { ca: id.caPem, cert: id.certPem, key: id.keyPem };
}

function explain(e: CairnError, id: NodeIdentity): CairnError {
  const again = `join again with a token: cairn join --force --token <token> --state-dir ${id.dir} <url>`;
  switch (e.code) {
    case 'node_removed':
      return new CairnError(e.code, `node ${id.config.nodeId} has been removed from the cluster and cannot renew its certificate; to come back, ${again}`);
    case 'certificate_revoked':
      return new CairnError(e.code, `the certificate of node ${id.config.nodeId} has been revoked (the node may have been removed from the cluster) and cannot be renewed; to come back, ${again}`);
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
        `join again with a token: cairn join --force --token <token> --state-dir ${stateDir} <url>`,
    );
  }
  const kp = generateKeyPair('ec-p256');
  const csr = csrToPem(createCsr(kp.privateKey));
  const tls = clientTlsOf(id);
  const rounds = Math.max(1, opts.rounds ?? 3);
  const errors: CairnError[] = [];

  for (let round = 0; round < rounds; round++) {
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
        if (!isRetryable(e)) throw explain(e, id);
        log?.warn({ endpoint: ep, code: e.code, err: e.message }, 'renewal failed at this endpoint');
        errors.push(e);
        continue;
      }
      const got = checkIssued(answer, kp.privateKey, ep, { clusterId: id.config.clusterId, nodeId: id.config.nodeId });
      const trustChanged = got.caPem !== pemOf(id.trust);
      replaceIdentity(stateDir, {
        keyPem: privateKeyToPem(kp.privateKey),
        certPem: got.certPem,
        caPem: got.caPem,
        config: { ...id.config, role: got.role },
      });
      closeAgents(tls); // the old identity's connections are of no further use
      return {
        nodeId: got.nodeId,
        role: got.role,
        previousRole: id.config.role,
        clusterId: got.clusterId,
        endpoint: ep,
        serial: got.leaf.serialHex,
        notBefore: got.leaf.notBefore,
        notAfter: got.leaf.notAfter,
        trustChanged,
      };
    }
  }
  const last = errors.at(-1)!;
  const retryAfter = Math.max(0, ...errors.map((e) => (e instanceof ApiError ? e.retryAfterMs ?? 0 : 0)));
  throw new RetryableError(
    last.code,
    `renewal failed at every CA endpoint (${id.config.endpoints.join(', ')}): ${errors.slice(-id.config.endpoints.length).map((e) => e.message).join('; ')}`,
    retryAfter || null,
  );
}
