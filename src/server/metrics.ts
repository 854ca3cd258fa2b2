import { Counter, Gauge, Registry } from 'prom-client';
import type { Store } from '../store/store.js';

const DAY = 86_400_000;
const BUCKETS_DAYS = [1, 7, 30, 90, 365];

export interface Metrics {
  registry: Registry;
  issued: Counter<'kind'>;
  renewed: Counter;
  joinRejected: Counter<'reason'>;
  ocsp: Counter<'status'>;
}

export function createMetrics(store: Store): Metrics {
  const registry = new Registry();
  const issued = new Counter({ name: 'cairn_certificates_issued_total', help: 'Certificates issued by this replica', labelNames: ['kind'] as const, registers: [registry] });
  const renewed = new Counter({ name: 'cairn_certificates_renewed_total', help: 'Node certificates renewed by this replica', registers: [registry] });
  const joinRejected = new Counter({ name: 'cairn_join_rejected_total', help: 'Join requests refused, by reason', labelNames: ['reason'] as const, registers: [registry] });
  const ocsp = new Counter({ name: 'cairn_ocsp_responses_total', help: 'OCSP answers, by certificate status (good, revoked, unknown) or error status', labelNames: ['status'] as const, registers: [registry] });
  new Gauge({
    name: 'cairn_certificates_by_days_to_expiry',
    help: 'Unexpired, unrevoked certificates in the store, by days until expiry (upper bound of the bucket; +Inf for the rest)',
    labelNames: ['le_days'] as const,
    registers: [registry],
    // read from the shared store: with serve --workers every worker sees the same counts
    aggregator: 'first',
    async collect() {
      const counts = await store.countGoodByExpiry(Date.now(), BUCKETS_DAYS.map((d) => d * DAY));
      counts.forEach((n, i) => this.set({ le_days: i < BUCKETS_DAYS.length ? String(BUCKETS_DAYS[i]) : '+Inf' }, n));
    },
  });
  return { registry, issued, renewed, joinRejected, ocsp };
}
