/**
 * The CA watcher of one server process: every second it reloads the CA keyring when the
 * stored generations or rotations changed (another replica rotated, finished or aborted),
 * brings this process's TLS identity and trust up to date without a restart, refreshes the
 * rotation's progress, and answers the long-polls of GET /v1/ca: all of them when the CA
 * changed, those of the nodes a rotation asked to renew since the last tick.
 */
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { Authority } from '../authority/authority.js';
import type { ServerOptions } from './server.js';
import { tlsContextOptions } from './tls-context.js';

/** How long a long-poll of GET /v1/ca is held at most. */
export const LONG_POLL_MS = 25_000;
const TICK_MS = 1000;

interface Waiter {
  nodeId: string | null;
  done: () => void;
}

export class CaWatcher {
  private readonly waiters = new Set<Waiter>();
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private tlsStale = false;
  private requestsSeen = Date.now();
  private seen: string;

  constructor(
    private readonly auth: Authority,
    private readonly app: FastifyInstance<any, any, any, any>,
    private readonly o: Pick<ServerOptions, 'onKeyringChange' | 'logger'>,
  ) {
    this.seen = auth.caInfo().version;
    this.timer = setInterval(() => void this.tick(), TICK_MS);
    this.timer.unref();
  }

  /** Hold a long-poll until the CA changes, this node is asked to renew, the client goes, or LONG_POLL_MS. */
  wait(nodeId: string | null, req: IncomingMessage): Promise<void> {
    return new Promise((resolve) => {
      const w: Waiter = {
        nodeId,
        done: () => {
          clearTimeout(t);
          req.off('close', w.done);
          this.waiters.delete(w);
          resolve();
        },
      };
      const t = setTimeout(w.done, LONG_POLL_MS);
      req.once('close', w.done);
      this.waiters.add(w);
    });
  }

  /** Check now if this process reloaded a change the watcher has not acted on (TLS identity, long-polls). */
  catchUp(): void {
    if (this.auth.caInfo().version !== this.seen) void this.tick();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const w of [...this.waiters]) w.done();
  }

  private async tick(): Promise<void> {
    if (this.running || !this.timer) return;
    this.running = true;
    try {
      // reloaded here, or already by a broadcast (serve --workers): what counts is what this watcher last saw
      await this.auth.reloadKeyring();
      const version = this.auth.caInfo().version;
      const changed = version !== this.seen;
      this.seen = version;
      if (changed || this.tlsStale) {
        this.tlsStale = !(await this.applyTls());
      }
      if (changed || this.auth.cas.runningRotation('cluster')) await this.auth.refreshRotationView();
      if (changed) {
        this.o.logger.info({ version: this.auth.caInfo().version }, 'CA generations changed: keyring reloaded');
        // e.g. a rotation to a key in a token this replica has no access to: it signs nothing with it (503) until it can
        for (const why of this.auth.cas.unreachable) this.o.logger.error({ code: 'hsm_token_missing' }, `this replica cannot sign with a CA key: ${why}`);
        for (const w of [...this.waiters]) w.done();
        return;
      }
      if (this.auth.cas.runningRotation('cluster') && this.waiters.size) {
        const since = this.requestsSeen;
        this.requestsSeen = Date.now();
        const asked = new Set(await this.auth.store.renewalRequestsSince(since - TICK_MS));
        for (const w of [...this.waiters]) if (w.nodeId && asked.has(w.nodeId)) w.done();
      }
    } catch (err) {
      this.o.logger.warn({ err }, 'CA watcher: reload failed');
    } finally {
      this.running = false;
    }
  }

  private async applyTls(): Promise<boolean> {
    if (!this.o.onKeyringChange) return true;
    const server = this.app.server as { setSecureContext?: (o: object) => void };
    return this.o.onKeyringChange((c) => server.setSecureContext?.(tlsContextOptions(c)));
  }
}
