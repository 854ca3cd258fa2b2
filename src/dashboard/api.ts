/**
 * The dashboard's way to the cluster: the API over mutual TLS with an admin bundle (the
 * browser never holds a client certificate), through the same client as the CLI and the
 * agent. Several endpoints: the one that answered last is asked first; when it cannot be
 * reached (or answers 5xx), the next one is, in order.
 */
import { ApiError, ClientTls, isRetryable, normalizeEndpoint, request } from '../agent/client.js';
import { CairnError } from '../util/errors.js';

export class ClusterApi {
  private current = 0;
  readonly endpoints: string[];

  constructor(endpoints: string[], private readonly identity: ClientTls) {
    if (endpoints.length === 0) throw new CairnError('usage', 'no API endpoint: give --server URL');
    this.endpoints = [...new Set(endpoints.map(normalizeEndpoint))];
  }

  /** The endpoint asked first (the one that answered last). */
  get endpoint(): string {
    return this.endpoints[this.current];
  }

  /** One API call; fails over to the next endpoint on network trouble or a 5xx. */
  async call<T = any>(method: string, path: string, body?: unknown, opts: { raw?: boolean } = {}): Promise<T> {
    let last: unknown;
    for (let i = 0; i < this.endpoints.length; i++) {
      const at = (this.current + i) % this.endpoints.length;
      try {
        const r = await request<T>(this.endpoints[at], method, path, body, this.identity, { timeoutMs: 8000, raw: opts.raw, maxResponseBytes: 8 * 1024 * 1024 });
        this.current = at;
        return r;
      } catch (e) {
        // a refusal (4xx) is the cluster's answer, the same on every replica
        if (e instanceof ApiError && e.status < 500) throw e;
        if (!isRetryable(e)) throw e;
        last = e;
      }
    }
    const why = last instanceof Error ? last.message : String(last);
    throw new CairnError('unreachable', this.endpoints.length > 1 ? `no replica answered (${this.endpoints.length} tried); last: ${why}` : why);
  }
}
