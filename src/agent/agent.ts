/**
 * The node agent: keeps the node's identity fresh. It renews at a random point in the 50–80%
 * window of the current certificate's lifetime (at once if already past it), retries with
 * exponential backoff and jitter across the endpoints, picks up trust-bundle changes from
 * GET /v1/ca over verified TLS (accepting them only as acceptTrustBundle allows: trust only
 * widens through a chain), keeps the cluster CRL in crl.pem, and stops with a clear error
 * when the CA refuses the node for good (removed, revoked, expired, left behind by a root
 * rotation).
 *
 * GET /v1/ca is watched through a long-poll kept open to one replica (watch.ts): a root
 * rotation, its completion or abort, and a renewal the CA asks for (role change, rotation
 * batch) arrive within seconds; such a renewal starts after a small random delay. The
 * 10-minute poll stays as the fallback.
 *
 * After each renewal and each trust-bundle change it writes the output files (outputs.ts), then
 * starts the hook (hooks.ts) without waiting for it; after each attempt it records what happened
 * in agent-status.json and, if asked, the Prometheus textfile (status.ts).
 */
import path from 'node:path';
import pino, { Logger } from 'pino';
import { certificatesFromPem, PkiError, verifyChain } from '../pki/index.js';
import { CairnError } from '../util/errors.js';
import { closeAgents, request, RetryableError } from './client.js';
import { refreshCrl } from './crl.js';
import { pemOf } from './issued.js';
import { backoffDelay, isFatalRenewalError, renewOnce, RenewResult, sleep } from './renew.js';
import { HookConfig, HookEvent, Hooks } from './hooks.js';
import { describeOutputs, OutputResult, OutputSpec, writeOutputs } from './outputs.js';
import { clientTlsOf, NodeIdentity, nodePaths, readNodeIdentity, recoverPendingCommit, replaceIdentity } from './node-state.js';
import { health, recordFailure, recordHook, recordSuccess, writeMetricsFile } from './status.js';
import { acceptTrustBundle, vouchersFrom } from './trust.js';
import { CaAnswer, Waker, watchCa } from './watch.js';

/** Renewal happens between these fractions of a certificate's lifetime (notBefore → notAfter). */
export const RENEW_WINDOW = { from: 0.5, to: 0.8 } as const;
/** How often the agent asks the CA for its trust bundle. */
export const DEFAULT_CA_REFRESH_MS = 10 * 60_000;
/** Retry pauses double from 1 s up to this cap. */
export const MAX_BACKOFF_MS = 5 * 60_000;
/** Never renew twice within this interval (a very short lifetime must not become a busy loop). */
export const MIN_RENEW_INTERVAL_MS = 60_000;
/** A renewal the CA asks for (role change, root rotation) starts within this random delay. */
export const DEFAULT_RENEW_JITTER_MS = 2000;
/** Renewals the CA asks for are at least this far apart (a CA that keeps asking is not obeyed in a busy loop). */
export const MIN_REQUESTED_RENEW_INTERVAL_MS = 1000;

const ms = (d: Date | number) => (typeof d === 'number' ? d : d.getTime());

/** The renewal window of a certificate: 50% to 80% of the way from notBefore to notAfter. */
export function renewalWindow(notBefore: Date | number, notAfter: Date | number): { start: Date; end: Date } {
  const nb = ms(notBefore);
  const life = ms(notAfter) - nb;
  return { start: new Date(nb + life * RENEW_WINDOW.from), end: new Date(nb + life * RENEW_WINDOW.to) };
}

/** A random point in the renewal window; `random` in [0, 1) picks it (0 = the window's start). */
export function renewalTime(notBefore: Date | number, notAfter: Date | number, random: number = Math.random()): Date {
  const { start, end } = renewalWindow(notBefore, notAfter);
  const r = Math.min(Math.max(random, 0), 1);
  return new Date(Math.round(start.getTime() + (end.getTime() - start.getTime()) * r));
}

export interface AgentOptions {
  signal?: AbortSignal;
  /** default: pino at info level on stderr */
  logger?: Logger;
  /** renew at once at start, whatever the window says */
  renewNow?: boolean;
  /** trust-bundle poll interval, default 10 minutes (the fallback of the long-poll) */
  caRefreshMs?: number;
  /** keep a long-poll of GET /v1/ca open to learn of rotations and renewal requests at once (default true) */
  watch?: boolean;
  /** a renewal the CA asks for starts after a random delay up to this (default 2 s) */
  renewJitterMs?: number;
  /** first retry pause, default 1 s (doubling up to 5 minutes) */
  baseBackoffMs?: number;
  /** per-request deadline, default 10 s */
  timeoutMs?: number;
  random?: () => number;
  /** called after each successful renewal */
  onRenew?: (r: RenewResult) => void;
  /** called after ca.crt was rewritten with a changed trust bundle */
  onTrustUpdate?: () => void;
  /** called after crl.pem was replaced by a newer CRL */
  onCrlUpdate?: () => void;
  /** root digests the operator vouches for (`cairn agent --trust-token`): such a root may be added to ca.crt */
  trustDigests?: string[];
  /** files to write after each renewal and trust change (`--write`) */
  outputs?: OutputSpec[];
  /** what to run after the outputs are written (`--exec`, `--reload-signal`) */
  hooks?: HookConfig;
  /** Prometheus textfile to rewrite after each attempt (`--metrics-file`) */
  metricsFile?: string;
}

/** What publishChange did: the outputs (written or already right) and whether the hook started. */
export interface Published {
  event: HookEvent;
  outputs: OutputResult[];
  hook: 'started' | 'queued' | 'none';
}

/**
 * After a renewal or a trust change: write the outputs that differ from the identity now in
 * `stateDir`, then trigger the hook (which runs on its own). Throws (a CairnError naming the
 * file) if an output cannot be written: the hook is then not triggered.
 */
export async function publishChange(stateDir: string, event: HookEvent, o: { outputs?: OutputSpec[]; hooks?: Hooks }): Promise<Published> {
  const id = await rereadIdentity(stateDir);
  const outputs = o.outputs?.length ? await writeOutputs(o.outputs, id) : [];
  const p = nodePaths(path.resolve(stateDir)); // the hook may run elsewhere: absolute paths
  const hook = o.hooks
    ? o.hooks.trigger({ event, nodeId: id.config.nodeId, role: id.config.role, serial: id.leaf.serialHex, notAfter: id.leaf.notAfter, stateDir: p.dir, cert: p.cert, key: p.key, ca: p.ca })
    : 'none';
  return { event, outputs, hook };
}

/** Rewrite the metrics file, if one was asked for; a failure is logged, never fatal. */
export function updateMetrics(stateDir: string, file: string | undefined, log?: Logger): void {
  if (!file) return;
  try {
    writeMetricsFile(file, health(stateDir));
  } catch (e) {
    log?.warn({ file, err: (e as Error).message }, 'could not write the metrics file');
  }
}

/** Whether a certificate chain (leaf first) verifies against these roots now. */
function chainsTo(chain: Buffer[], roots: Buffer[]): boolean {
  try {
    verifyChain(chain[0], chain.slice(1), roots);
    return true;
  } catch (e) {
    if (e instanceof PkiError) return false;
    throw e;
  }
}

/** What GET /v1/ca answers (the fields the agent reads). */
export interface CaAnswerBody {
  clusterId?: unknown;
  trustBundle?: unknown;
  intermediates?: unknown;
  crossSigned?: unknown;
  /** changes whenever the CA generations or a rotation's state change (long-poll: `?wait=<version>`) */
  version?: unknown;
  rotation?: unknown;
  node?: { id?: unknown; role?: unknown; renew?: unknown };
}

export type TrustRefresh = 'unchanged' | 'updated' | 'renew' | 'refused';

/**
 * Apply one answer of `GET /v1/ca` from endpoint `e` as acceptTrustBundle decides: a new root
 * only if a trusted root vouches for it (a cross-signed certificate in `intermediates` or
 * `crossSigned` of the answer, in the bundle itself, or in our chain) or `trustDigests` names
 * it; otherwise ca.crt is left alone, the refusal is logged (warn, with the endpoint and the
 * root's fingerprint) and 'refused' is returned. If our own certificate would no longer verify
 * against the new bundle (the root was rotated away), ca.crt is left alone and 'renew' is
 * returned: a renewal brings both. 'renew' is also returned when the CA asks this node to renew
 * (the answer's `node.renew`: its role changed, or a root rotation wants its certificate from
 * the new key). Throws CairnError('bad_response') for an answer of another cluster or without a
 * usable trust bundle.
 */
export function applyCaAnswer(
  id: NodeIdentity,
  e: string,
  ca: CaAnswerBody,
  o: { logger?: Logger; trustDigests?: string[] } = {},
): TrustRefresh {
  if (ca?.clusterId !== id.config.clusterId) throw new CairnError('bad_response', `the CA at ${e} is of cluster ${String(ca?.clusterId)}, not ${id.config.clusterId}`);
  if (typeof ca.trustBundle !== 'string') throw new CairnError('bad_response', `the CA at ${e} answered GET /v1/ca without a trust bundle`);
  let trust: Buffer[];
  try {
    trust = certificatesFromPem(ca.trustBundle, 'the trust bundle');
  } catch (err) {
    if (err instanceof PkiError) throw new CairnError('bad_response', `the CA at ${e} answered with an unusable trust bundle: ${err.message}`);
    throw err;
  }
  // the CA tells a node to renew now when its role changed (promote, demote: the renewal brings
  // the certificate of its new role, and revokes a demoted node's manager certificates), and
  // during a root rotation, batch by batch, until its certificate is from the new key
  if (ca.node?.renew === true && ca.node.id === id.config.nodeId) {
    const why = ca.node.role !== undefined && ca.node.role !== id.config.role ? 'this node\'s role changed' : 'the CA asks this node to renew';
    o.logger?.info({ endpoint: e, from: id.config.role, to: ca.node.role }, `${why}: renewing now`);
    return 'renew';
  }
  if (pemOf(trust) === pemOf(id.trust)) return 'unchanged';
  const vouchers = [...id.chain.slice(1), ...vouchersFrom(ca.intermediates), ...vouchersFrom(ca.crossSigned)];
  const d = acceptTrustBundle(id.trust, trust, { vouchers, digests: o.trustDigests, chain: id.chain });
  if (!d.ok) {
    if (d.reason === 'breaks_own_chain') {
      o.logger?.info({ endpoint: e }, 'the trust bundle changed and our certificate does not verify against it: renewing');
      return 'renew';
    }
    o.logger?.warn(
      { endpoint: e, reason: d.reason, refused: d.refused, fingerprints: d.refused.map((r) => r.fingerprint) },
      `trust bundle from ${e} refused, ca.crt unchanged: ${d.message}`,
    );
    if (d.reason === 'unvouched_root' && !chainsTo(id.chain, trust)) {
      // the CA trusts nothing our certificate chains to (a rotation finished without us): only
      // a renewal can tell what to do — it brings a chain we may trust, or the CA says rejoin
      o.logger?.info({ endpoint: e }, 'the trust bundle changed and our certificate does not verify against it: renewing');
      return 'renew';
    }
    return 'refused';
  }
  if (!d.changed) return 'unchanged';
  replaceIdentity(id.dir, { caPem: pemOf(d.bundle) });
  o.logger?.info({ endpoint: e, roots: d.bundle.length, added: d.added.length, removed: d.removed.length, how: d.how }, 'trust bundle updated');
  return 'updated';
}

/**
 * Fetch the CA's trust bundle over TLS verified with the current one (the endpoints in turn,
 * until one answers) and apply it with applyCaAnswer.
 */
export async function refreshTrustBundle(
  id: NodeIdentity,
  o: { timeoutMs?: number; signal?: AbortSignal; logger?: Logger; trustDigests?: string[] } = {},
): Promise<TrustRefresh> {
  let last: unknown;
  for (const e of id.config.endpoints) {
    let ca: CaAnswerBody;
    try {
      ca = await request(e, 'GET', '/v1/ca', undefined, clientTlsOf(id), { timeoutMs: o.timeoutMs, signal: o.signal });
    } catch (err) {
      if (err instanceof CairnError && err.code === 'aborted') throw err;
      last = err;
      continue;
    }
    return applyCaAnswer(id, e, ca, o);
  }
  throw last;
}

/** Read the identity again; a read caught between the renames of someone else's update is retried. */
async function rereadIdentity(dir: string): Promise<NodeIdentity> {
  for (let i = 0; ; i++) {
    try {
      return readNodeIdentity(dir);
    } catch (e) {
      if (!(e instanceof CairnError) || e.code !== 'key_mismatch' || i >= 20) throw e;
      if (i === 10 && recoverPendingCommit(dir)) return readNodeIdentity(dir);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/**
 * Run the renewal loop until `signal` aborts (resolves) or the CA refuses the node for good
 * (rejects with a CairnError saying why).
 */
export async function runAgent(stateDir: string, opts: AgentOptions = {}): Promise<void> {
  const log = opts.logger ?? pino({ level: 'info' }, pino.destination({ fd: 2, sync: true }));
  const signal = opts.signal;
  const random = opts.random ?? Math.random;
  const caRefreshMs = opts.caRefreshMs ?? DEFAULT_CA_REFRESH_MS;
  let renewNow = !!opts.renewNow;
  let plan = null as { serial: string; at: number } | null;
  let failures = 0;
  let lastRenewal = -Infinity;
  let nextCaCheck = 0;
  /** when to make a renewal the CA asked for (null: none asked) */
  let requestedAt: number | null = null;
  /** the newest answer of the long-poll, not yet applied (only the newest matters) */
  let inbox: CaAnswer | null = null;
  const waker = new Waker();

  if (recoverPendingCommit(stateDir)) log.warn('finished an identity update that was interrupted');
  let id = readNodeIdentity(stateDir);
  log.info({ nodeId: id.config.nodeId, role: id.config.role, clusterId: id.config.clusterId, notAfter: id.leaf.notAfter.toISOString() }, 'agent started');

  const hooks = opts.hooks ? new Hooks({
    ...opts.hooks,
    logger: log,
    onResult: (r) => {
      recordHook(stateDir, r.serial, r, hooks!.stats);
      updateMetrics(stateDir, opts.metricsFile, log);
    },
  }) : undefined;
  /** a change whose outputs could not be written yet: tried again at `at` */
  let unpublished: { event: HookEvent; at: number; failures: number } | null = null;
  /** ca.crt changed: write the outputs, run the hook, tell the library's loader. */
  const trustChanged = async () => {
    await publish('trust-changed', 'outputs written after the trust bundle changed', {});
    opts.onTrustUpdate?.();
  };

  /** Refresh crl.pem (a failure is logged and retried later); false when the agent is stopping. */
  const crlRefresh = async (): Promise<boolean> => {
    try {
      if ((await refreshCrl(await rereadIdentity(stateDir), { timeoutMs: opts.timeoutMs, signal, logger: log })) === 'updated') opts.onCrlUpdate?.();
    } catch (e) {
      if (signal?.aborted) return false;
      log.warn({ code: (e as CairnError).code, err: (e as Error).message }, 'could not refresh the CRL; will try again');
    }
    return true;
  };
  const publish = async (event: HookEvent, what: string, fields: Record<string, unknown>) => {
    try {
      const p = await publishChange(stateDir, event, { outputs: opts.outputs, hooks });
      unpublished = null;
      log.info({ ...fields, outputs: describeOutputs(p.outputs), hook: p.hook }, what);
    } catch (e) {
      if (!(e instanceof CairnError)) throw e;
      const failures = (unpublished?.failures ?? 0) + 1;
      const wait = backoffDelay(failures - 1, { baseMs: opts.baseBackoffMs ?? 1000, capMs: MAX_BACKOFF_MS, random });
      // a renewal stays a renewal for the hook even if a trust change comes before the retry
      unpublished = { event: unpublished?.event === 'renewed' ? 'renewed' : event, at: Date.now() + wait, failures };
      log.info(fields, what);
      log.error({ code: e.code, err: e.message, retryInMs: wait }, 'could not write the output files; the hook waits for them; will retry');
    }
  };
  // bring the outputs in line with the identity (they may be missing, or older than a renewal
  // made while the agent was down); only a change makes the hook run
  if (opts.outputs?.length) {
    try {
      const written = (await writeOutputs(opts.outputs, id)).filter((r) => r.written);
      if (written.length) await publish(written.some((r) => r.format !== 'ca') ? 'renewed' : 'trust-changed', 'outputs brought up to date', { written: describeOutputs(written) });
    } catch (e) {
      if (!(e instanceof CairnError)) throw e;
      unpublished = { event: 'renewed', at: Date.now(), failures: 0 };
      log.error({ code: e.code, err: e.message }, 'could not write the output files; will retry');
    }
  }
  updateMetrics(stateDir, opts.metricsFile, log);

  // the long-poll runs beside the loop; it only hands answers over, the loop applies them
  const watchStop = new AbortController();
  const stopWatch = () => watchStop.abort();
  signal?.addEventListener('abort', stopWatch, { once: true });
  const watching = opts.watch === false
    ? Promise.resolve()
    : watchCa({
        signal: watchStop.signal,
        logger: log,
        identity: () => rereadIdentity(stateDir),
        random,
        baseBackoffMs: opts.baseBackoffMs,
        onAnswer: (a) => {
          inbox = a;
          waker.wake();
        },
      }).then(
        () => undefined,
        (e) => log.error({ err: (e as Error).message }, 'the CA watch stopped'),
      );

  try {
    while (!signal?.aborted) {
      id = await rereadIdentity(stateDir); // someone may have replaced it (join --force, cairn agent --renew-now)
      const now = Date.now();
      if (!plan || plan.serial !== id.leaf.serialHex) {
        const at = Math.max(renewalTime(id.leaf.notBefore, id.leaf.notAfter, random()).getTime(), lastRenewal + MIN_RENEW_INTERVAL_MS);
        plan = { serial: id.leaf.serialHex, at };
        log.info({ serial: id.leaf.serialHex, notAfter: id.leaf.notAfter.toISOString(), renewAt: new Date(at).toISOString() }, 'renewal scheduled');
      }

      if (renewNow || now >= plan.at || (requestedAt !== null && now >= requestedAt)) {
        try {
          const r = await renewOnce(stateDir, { rounds: 1, signal, logger: log, timeoutMs: opts.timeoutMs, trustDigests: opts.trustDigests });
          failures = 0;
          renewNow = false;
          requestedAt = null;
          lastRenewal = Date.now();
          nextCaCheck = lastRenewal + caRefreshMs; // the renewal brought the current trust bundle
          recordSuccess(stateDir, r.serial);
          await publish('renewed', 'certificate renewed', { serial: r.serial, role: r.role, endpoint: r.endpoint, notAfter: r.notAfter.toISOString(), trustChanged: r.trustChanged });
          updateMetrics(stateDir, opts.metricsFile, log);
          if (r.role !== r.previousRole) log.info({ from: r.previousRole, to: r.role }, 'role changed');
          opts.onRenew?.(r);
        } catch (e) {
          if (signal?.aborted) break;
          const fatal = isFatalRenewalError(e);
          recordFailure(stateDir, id.leaf.serialHex, { code: (e as CairnError).code, message: (e as Error).message }, fatal);
          updateMetrics(stateDir, opts.metricsFile, log);
          if (fatal) {
            log.error({ code: (e as CairnError).code, err: (e as Error).message }, 'renewal refused: stopping');
            throw e;
          }
          // the server's Retry-After (429, 503) is honoured, within the backoff cap
          const asked = e instanceof RetryableError && e.retryAfterMs ? Math.min(e.retryAfterMs, MAX_BACKOFF_MS) : 0;
          const wait = Math.max(asked, backoffDelay(failures++, { baseMs: opts.baseBackoffMs ?? 1000, capMs: MAX_BACKOFF_MS, random }));
          log.warn({ code: (e as CairnError).code, err: (e as Error).message, retryInMs: wait, failures }, 'renewal failed; will retry');
          await sleep(wait, signal);
        }
        continue;
      }

      if (inbox) {
        const a: CaAnswer = inbox;
        inbox = null;
        try {
          // a renewal asked of a certificate we already replaced is done: the rest of the answer still counts
          const body = a.body.node?.renew === true && a.serial !== id.leaf.serialHex ? { ...a.body, node: { ...a.body.node, renew: false } } : a.body;
          const r = applyCaAnswer(id, a.endpoint, body, { logger: log, trustDigests: opts.trustDigests });
          if (r === 'renew' && requestedAt === null) {
            requestedAt = Math.max(now + Math.round(random() * (opts.renewJitterMs ?? DEFAULT_RENEW_JITTER_MS)), lastRenewal + MIN_REQUESTED_RENEW_INTERVAL_MS);
            log.info({ endpoint: a.endpoint, renewAt: new Date(requestedAt).toISOString() }, 'renewal requested by the CA');
          }
          if (r === 'updated') await trustChanged();
        } catch (e) {
          if (!(e instanceof CairnError)) throw e;
          log.warn({ endpoint: a.endpoint, code: e.code, err: e.message }, 'could not apply the answer of the CA watch');
        }
        if (a.changed) {
          // the CA changed (a rotation began or ended): its CRL may be signed by another key now
          if (!(await crlRefresh())) break;
        }
        continue;
      }

      if (now >= nextCaCheck) {
        nextCaCheck = now + caRefreshMs;
        try {
          const r = await refreshTrustBundle(id, { timeoutMs: opts.timeoutMs, signal, logger: log, trustDigests: opts.trustDigests });
          if (r === 'renew' && requestedAt === null) requestedAt = Math.max(now, lastRenewal + MIN_REQUESTED_RENEW_INTERVAL_MS);
          if (r === 'updated') await trustChanged();
        } catch (e) {
          if (signal?.aborted) break;
          log.warn({ code: (e as CairnError).code, err: (e as Error).message }, 'could not refresh the trust bundle; will try again');
        }
        // with the trust bundle as it now is: the CRL must be signed by a root we trust
        if (!(await crlRefresh())) break;
        continue;
      }

      if (unpublished && now >= unpublished.at) {
        await publish(unpublished.event, 'output files written', {});
        continue;
      }

      await waker.sleep(Math.min(plan.at, nextCaCheck, unpublished?.at ?? Infinity, requestedAt ?? Infinity) - now, signal);
    }
  } finally {
    signal?.removeEventListener('abort', stopWatch);
    watchStop.abort();
    await watching;
    closeAgents(clientTlsOf(id));
    await hooks?.stop();
  }
  log.info('agent stopped');
}
