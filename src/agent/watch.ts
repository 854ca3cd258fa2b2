/**
 * The agent's long-poll of the CA: `GET /v1/ca?wait=<version>` kept open to one replica at a
 * time, with the node's client certificate, so that a node learns of a root rotation (or of a
 * role change, or of a renewal the CA asks for) within seconds rather than at its 10-minute
 * trust poll. The replica answers at once when the version differs from the one we hold,
 * otherwise when it changes, otherwise after about 25 s with the same version; we then ask again.
 *
 * Every answer is handed to `onAnswer` (the agent loop applies it: trust refresh, renewal);
 * nothing here writes to the state directory. On failure the next endpoint is tried; after a
 * whole round of failures the watcher waits (exponential backoff with jitter, up to a minute).
 * A replica that does not know `?wait` (an older version: it answers 400, or with no `version`)
 * is skipped; when no endpoint knows it, the watcher stops and the periodic poll remains.
 */
import type { Logger } from 'pino';
import { CairnError } from '../util/errors.js';
import type { CaAnswerBody } from './agent.js';
import { ApiError, isDroppedConnection, request } from './client.js';
import { clientTlsOf, NodeIdentity } from './node-state.js';
import { backoffDelay, sleep } from './renew.js';

/** Our own deadline for one long-poll: the replica answers within about 25 s. */
export const WAIT_DEADLINE_MS = 40_000;
/** Pause between polls when a replica answers "no change" at once (it should not): no busy loop. */
export const MIN_POLL_INTERVAL_MS = 1000;
/** Longest pause after every endpoint failed. */
export const MAX_WATCH_BACKOFF_MS = 60_000;

export interface CaAnswer {
  endpoint: string;
  body: CaAnswerBody;
  /** the serial of the certificate the request was made with: a renewal asked of an older certificate is already done */
  serial: string;
  /** whether the version differs from the previous answer's (always true for the first) */
  changed: boolean;
  version: string;
}

export interface WatchOptions {
  signal: AbortSignal;
  logger?: Logger;
  /** the identity now on disk (re-read before each request: renewals and trust changes replace it) */
  identity: () => Promise<NodeIdentity>;
  onAnswer: (a: CaAnswer) => void;
  random?: () => number;
  baseBackoffMs?: number;
  /** per-request deadline (default WAIT_DEADLINE_MS) */
  deadlineMs?: number;
}

/** Resolves when `signal` aborts, or when no endpoint offers the long-poll. Never rejects for CA trouble. */
export async function watchCa(o: WatchOptions): Promise<'aborted' | 'unsupported'> {
  const log = o.logger;
  const unsupported = new Set<string>();
  let version: string | null = null;
  let next = 0;
  let failures = 0;
  let rounds = 0;
  let retriedDrop = false;
  while (!o.signal.aborted) {
    let id: NodeIdentity;
    try {
      id = await o.identity();
    } catch (e) {
      if (o.signal.aborted) break;
      log?.warn({ err: (e as Error).message }, 'the CA watch cannot read the node identity; will try again');
      await sleep(backoffDelay(rounds++, { baseMs: o.baseBackoffMs ?? 1000, capMs: MAX_WATCH_BACKOFF_MS, random: o.random }), o.signal);
      continue;
    }
    const endpoints = id.config.endpoints.filter((e) => !unsupported.has(e));
    if (endpoints.length === 0) {
      log?.info('no CA endpoint offers the long-poll of GET /v1/ca: relying on the periodic trust poll');
      return 'unsupported';
    }
    const e = endpoints[next % endpoints.length];
    const path = version === null ? '/v1/ca' : `/v1/ca?wait=${encodeURIComponent(version)}`;
    const started = Date.now();
    let body: CaAnswerBody;
    try {
      body = await request(e, 'GET', path, undefined, clientTlsOf(id), { timeoutMs: o.deadlineMs ?? WAIT_DEADLINE_MS, signal: o.signal });
    } catch (err) {
      if (o.signal.aborted || (err instanceof CairnError && err.code === 'aborted')) break;
      if (err instanceof ApiError && err.status === 400 && version !== null) {
        // a replica of an older version refuses the query parameter: use the others
        log?.info({ endpoint: e, err: err.message }, 'this CA endpoint does not offer the long-poll; trying the others');
        unsupported.add(e);
        continue;
      }
      if (isDroppedConnection(err) && !retriedDrop) {
        // e.g. our own renewal closed the old identity's connections: ask again at once
        retriedDrop = true;
        continue;
      }
      retriedDrop = false;
      failures++;
      next++;
      const level = failures === 1 ? 'debug' : 'info';
      log?.[level]({ endpoint: e, err: (err as Error).message }, 'the CA watch failed at this endpoint');
      if (failures % endpoints.length === 0) {
        const wait = backoffDelay(rounds++, { baseMs: o.baseBackoffMs ?? 1000, capMs: MAX_WATCH_BACKOFF_MS, random: o.random });
        log?.warn({ retryInMs: wait, endpoints }, 'the CA watch failed at every endpoint; the periodic trust poll still runs');
        await sleep(wait, o.signal);
      }
      continue;
    }
    retriedDrop = false;
    if (failures > 0) log?.info({ endpoint: e }, 'the CA watch is connected again');
    failures = 0;
    rounds = 0;
    if (typeof body?.version !== 'string' || body.version.length === 0 || body.version.length > 200) {
      log?.info({ endpoint: e }, 'this CA endpoint does not offer the long-poll (no version in GET /v1/ca); trying the others');
      unsupported.add(e);
      continue;
    }
    const changed = body.version !== version;
    version = body.version;
    o.onAnswer({ endpoint: e, body, serial: id.leaf.serialHex, changed, version });
    if (!changed && Date.now() - started < MIN_POLL_INTERVAL_MS) await sleep(MIN_POLL_INTERVAL_MS, o.signal);
  }
  return 'aborted';
}

/**
 * A sleep that another task can cut short: `wake()` ends the current `sleep` at once, or the
 * next one if none is running (a wake is never lost).
 */
export class Waker {
  private pending = false;
  private resolve: (() => void) | null = null;

  wake(): void {
    if (this.resolve) {
      const r = this.resolve;
      this.resolve = null;
      r();
    } else {
      this.pending = true;
    }
  }

  /** Resolves after `ms`, on `wake()`, or when `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (this.pending || signal?.aborted) {
      this.pending = false;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        signal?.removeEventListener('abort', done);
        if (this.resolve === done) this.resolve = null;
        resolve();
      };
      const t = setTimeout(done, Math.max(0, Math.min(ms, 2 ** 31 - 1)));
      signal?.addEventListener('abort', done, { once: true });
      this.resolve = done;
    });
  }
}
