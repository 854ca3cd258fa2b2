/**
 * `cairn serve --workers N`: N server processes (node:cluster) sharing the listening socket.
 *
 * The primary process prepares the replica once (migrations, its record, its server
 * certificate), then forks the workers, which each open the store, load the authority and
 * serve the API. What must run once per replica stays in the primary: CRL publication under
 * the lease, the heartbeat. The primary also answers for the replica as a whole where a
 * worker alone cannot: /metrics (summed over workers), the failed-join limiter (a failure
 * seen by one worker is counted by all) and configuration changes (every process reloads
 * the configuration before the change is answered). Workers ignore SIGINT/SIGTERM: the primary drains
 * and stops them, and a worker whose primary is gone exits (node:cluster does so).
 */
import cluster, { Worker } from 'node:cluster';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AggregatorRegistry } from 'prom-client';
import { CairnError } from '../util/errors.js';
import type { Prepared, RunningServer, ServeOptions } from './bootstrap.js';

/** The message types between primary and workers. */
type Msg =
  | { cairn: 'listening'; url: string; port: number; kind: string; proxyProtocol: boolean }
  | { cairn: 'metrics'; id: number; text?: string; error?: string }
  | { cairn: 'join-failed'; addr: string }
  /** worker → primary: the configuration changed; primary → that worker: every process reloaded it */
  | { cairn: 'config-changed'; id: number }
  /** primary → worker: reload the configuration; worker → primary: done */
  | { cairn: 'reload-config'; id: number }
  | { cairn: 'config-reloaded'; id: number }
  | { cairn: 'shutdown' };

const CAIRN_BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/cairn.js');
const STOP_TIMEOUT_MS = 20_000;

/** Whether this process is a worker forked by `serve --workers`. */
export function isServeWorker(): boolean {
  return cluster.isWorker && process.env.CAIRN_SERVE_WORKER === '1';
}

/** The `cairn serve` arguments a worker is started with (everything but --workers). */
function workerArgs(o: ServeOptions): string[] {
  const a = ['serve', '--state-dir', o.stateDir];
  if (o.listen) a.push('--listen', o.listen);
  if (o.store) a.push('--store', o.store);
  if (o.unlockKeyFile) a.push('--unlock-key-file', o.unlockKeyFile);
  if (o.logLevel) a.push('--log-level', o.logLevel);
  if (o.proxyProtocol) a.push('--proxy-protocol');
  return a;
}

export async function servePrimary(
  o: ServeOptions,
  prepare: (o: ServeOptions, primary: boolean) => Promise<Prepared>,
  startLeaderTasks: (r: Prepared) => { started: Promise<void>; stop(): Promise<void> },
  // passed in, not imported when closing: the files of an install upgraded in place may be gone by then
  stopReplica: (r: Prepared, leader: { stop(): Promise<void> } | null) => Promise<void>,
): Promise<RunningServer> {
  const r = await prepare(o, true);
  const n = o.workers!;
  const aggregator = new AggregatorRegistry();
  const workers = new Set<Worker>();
  let closing = false;
  let leader: { started: Promise<void>; stop(): Promise<void> } | null = null;
  // workers accept from the shared socket themselves: with round-robin the first process
  // would accept every connection and hand it over by IPC (CPU per connection, one core)
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  cluster.setupPrimary({ exec: CAIRN_BIN, args: workerArgs(o) });

  const onMessage = (w: Worker, m: Msg) => {
    if (m?.cairn === 'metrics') {
      aggregator.clusterMetrics().then(
        (text) => w.isConnected() && w.send({ cairn: 'metrics', id: m.id, text }),
        (err: Error) => w.isConnected() && w.send({ cairn: 'metrics', id: m.id, error: err.message }),
      );
    } else if (m?.cairn === 'join-failed') {
      for (const other of workers) if (other !== w && other.isConnected()) other.send(m);
    } else if (m?.cairn === 'config-changed') {
      void reloadEverywhere(w).finally(() => w.isConnected() && w.send({ cairn: 'config-changed', id: m.id }));
    } else if (m?.cairn === 'config-reloaded') {
      reloads.get(m.id)?.();
    }
  };
  const reloads = new Map<number, () => void>();
  let reloadSeq = 0;
  /** Reload the configuration here and in every worker but `origin` (which did already). */
  const reloadEverywhere = async (origin: Worker) => {
    await r.auth.refreshConfig().catch((err) => r.logger.warn({ err }, 'config refresh failed'));
    await Promise.all(
      [...workers]
        .filter((w) => w !== origin && w.isConnected())
        .map(
          (w) =>
            new Promise<void>((resolve) => {
              const id = ++reloadSeq;
              const t = setTimeout(() => done(), 5000);
              const done = () => {
                clearTimeout(t);
                reloads.delete(id);
                resolve();
              };
              reloads.set(id, done);
              w.send({ cairn: 'reload-config', id });
            }),
        ),
    );
  };
  cluster.on('message', onMessage);

  /** Fork one worker; resolves when it listens, rejects if it exits first. */
  const fork = (id: number) =>
    new Promise<Extract<Msg, { cairn: 'listening' }>>((resolve, reject) => {
      const w = cluster.fork({ CAIRN_SERVE_WORKER: '1', CAIRN_WORKER_ID: String(id) });
      workers.add(w);
      let up = false;
      w.on('message', (m: Msg) => {
        if (m?.cairn === 'listening' && !up) {
          up = true;
          resolve(m);
        }
      });
      w.on('exit', (code, signal) => {
        workers.delete(w);
        if (!up) return reject(new CairnError('worker_failed', `server worker ${id} exited before listening (${signal ?? `exit code ${code}`}); its error is above`));
        if (closing) return;
        r.logger.error({ worker: id, code, signal }, 'server worker exited; starting another');
        setTimeout(() => {
          if (!closing) fork(id).catch((err) => r.logger.error({ err, worker: id }, 'server worker could not be restarted'));
        }, 1000).unref();
      });
    });

  const stopWorkers = async () => {
    await Promise.all(
      [...workers].map(
        (w) =>
          new Promise<void>((resolve) => {
            if (w.isDead()) return resolve();
            const t = setTimeout(() => w.process.kill('SIGKILL'), STOP_TIMEOUT_MS);
            w.once('exit', () => {
              clearTimeout(t);
              resolve();
            });
            if (w.isConnected()) w.send({ cairn: 'shutdown' });
            else w.process.kill('SIGTERM');
          }),
      ),
    );
  };

  try {
    leader = startLeaderTasks(r);
    const up = await Promise.all(Array.from({ length: n }, (_, i) => fork(i + 1)));
    await leader.started;
    const { url, port } = up[0];
    // the same RunningServer shape as serveReplica (bootstrap.ts) returns, on purpose
    r.logger.info({ url, store: r.kind, cluster: r.cfg.clusterId, proxyProtocol: r.proxyProtocol, workers: n }, 'cairn serving');
    let done: Promise<void> | null = null;
    return {
      url,
      port,
      close() {
        done ??= (async () => {
          closing = true;
          await stopWorkers();
          cluster.off('message', onMessage);
          await stopReplica(r, leader);
        })();
        return done;
      },
    };
  } catch (e) {
    closing = true;
    await stopWorkers();
    cluster.off('message', onMessage);
    await leader?.stop().catch(() => {});
    await r.store.close().catch(() => {});
    throw e;
  }
}

/** The life of a worker process: serve until the primary says stop (or goes away). */
export async function runWorker(o: ServeOptions): Promise<void> {
  const ignore = () => {};
  process.on('SIGINT', ignore);
  process.on('SIGTERM', ignore);
  const send = (m: Msg) => process.send?.(m);
  const pending = new Map<number, { resolve(t: string): void; reject(e: Error): void }>();
  const configAcks = new Map<number, () => void>();
  let seq = 0;
  // answered once every process of the replica reloaded it (or after 10 s)
  const onConfigChange = () =>
    new Promise<void>((resolve) => {
      const id = ++seq;
      const t = setTimeout(() => done(), 10_000);
      const done = () => {
        clearTimeout(t);
        configAcks.delete(id);
        resolve();
      };
      configAcks.set(id, done);
      send({ cairn: 'config-changed', id });
    });
  const metricsText = () =>
    new Promise<string>((resolve, reject) => {
      const id = ++seq;
      const t = setTimeout(() => {
        pending.delete(id);
        reject(new Error('the primary process did not answer for metrics'));
      }, 5000);
      pending.set(id, {
        resolve: (x) => (clearTimeout(t), resolve(x)),
        reject: (e) => (clearTimeout(t), reject(e)),
      });
      send({ cairn: 'metrics', id });
    });
  let stop: (() => void) | null = null;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  // the primary is gone (killed, even with SIGKILL): its IPC channel closes; a worker never outlives it
  process.once('disconnect', () => {
    stop?.();
    setTimeout(() => process.exit(0), 5000).unref();
  });
  let remoteFailure: ((addr: string) => void) | null = null;
  process.on('message', (m: Msg) => {
    if (m?.cairn === 'metrics') {
      const p = pending.get(m.id);
      pending.delete(m.id);
      if (m.text !== undefined) p?.resolve(m.text);
      else p?.reject(new Error(m.error ?? 'metrics failed'));
    } else if (m?.cairn === 'join-failed') remoteFailure?.(m.addr);
    else if (m?.cairn === 'config-changed') configAcks.get(m.id)?.();
    else if (m?.cairn === 'reload-config') {
      void (reloadConfig?.() ?? Promise.resolve()).catch(() => {}).finally(() => send({ cairn: 'config-reloaded', id: m.id }));
    } else if (m?.cairn === 'shutdown') stop!();
  });
  let reloadConfig: (() => Promise<unknown>) | null = null;
  const { serveWorker } = await import('./bootstrap.js');
  const w = await serveWorker(o, send, metricsText, (addr) => send({ cairn: 'join-failed', addr }), onConfigChange);
  remoteFailure = w.recordJoinFailure;
  reloadConfig = w.refreshConfig;
  // answer the primary's requests for this worker's metrics (prom-client's cluster protocol)
  AggregatorRegistry.setRegistries([w.registry]);
  new AggregatorRegistry();
  await stopped;
  await w.close();
  process.off('SIGINT', ignore);
  process.off('SIGTERM', ignore);
  process.disconnect?.();
}
