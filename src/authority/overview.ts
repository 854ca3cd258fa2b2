/**
 * What an operator looks at (the dashboard's overview): the CAs, replicas and the CRL
 * leader, node and expiry counts, the newest CRLs, recent refused joins and renewals; and
 * the audit log, newest first.
 */
import { X509Certificate } from 'node:crypto';
import { DAY_MS, describeKey } from '../pki/index.js';
import type { AuditTable } from '../store/schema.js';
import { CairnError } from '../util/errors.js';
import type { Authority } from './authority.js';
import { CRL_LEASE } from './crl.js';
import { page, PageRequest } from './pages.js';

/** How many refused joins and renewals the store keeps, and the overview shows. */
export const FAILURES_KEPT = 500;
export const FAILURES_SHOWN = 20;

const iso = (ms: number | null) => (ms === null ? null : new Date(Number(ms)).toISOString());

/** The overview answer of GET /v1/overview. */
export async function overview(auth: Authority) {
  const store = auth.store;
  const now = Date.now();
  const [cas, replicas, lease, nodes, expiry, crlCluster, crlClient, failures] = await Promise.all([
    store.listCas(),
    store.listReplicas(),
    store.getLease(CRL_LEASE),
    store.countNodes(),
    store.countGoodByExpiry(now, [7 * DAY_MS, 30 * DAY_MS]),
    store.latestCrl('cluster'),
    store.latestCrl('client'),
    store.recentFailures(FAILURES_SHOWN),
  ]);
  const leader = lease && lease.holder && Number(lease.expires_at) > now ? lease.holder : null;
  return {
    cluster: { id: auth.clusterId, name: auth.clusterName },
    cas: cas.map((c) => {
      const x = new X509Certificate(c.cert_pem);
      return {
        name: c.name,
        generation: c.generation,
        status: c.status,
        keyId: c.key_id,
        subject: x.subject.split('\n').join(', '),
        keyType: describeKey(x.publicKey).name,
        fingerprint: x.fingerprint256,
        notBefore: new Date(x.validFrom).toISOString(),
        notAfter: new Date(x.validTo).toISOString(),
      };
    }),
    replicas: replicas.map((r) => ({
      id: r.id, address: r.address, version: r.version, startedAt: iso(r.started_at), heartbeatAt: iso(r.heartbeat_at), crlLeader: r.id === leader,
    })),
    crlLeader: leader,
    nodes,
    certificates: { expiringWithin7Days: expiry[0], expiringWithin30Days: expiry[0] + expiry[1] },
    crls: Object.fromEntries(
      ([['cluster', crlCluster], ['client', crlClient]] as const).map(([ca, c]) => [
        ca,
        c ? { number: Number(c.number), thisUpdate: iso(c.this_update), nextUpdate: iso(c.next_update), entries: c.entries, replica: c.replica_id } : null,
      ]),
    ),
    failures: failures.map((f) => ({ at: iso(f.at), kind: f.kind, code: f.code, client: f.client, nodeId: f.node_id })),
  };
}

export interface AuditRequest extends PageRequest {
  /** an action ("node.promote"), or a prefix ending in "." ("node.") */
  action?: string;
  actor?: string;
  /** entries at or after this time (ms) */
  since?: number;
}

function auditView(r: AuditTable) {
  let detail: unknown;
  try {
    detail = JSON.parse(r.detail);
  } catch {
    detail = r.detail;
  }
  return { id: r.id, seq: r.seq === null ? null : Number(r.seq), at: iso(r.at), replica: r.replica_id, actor: r.actor, action: r.action, subject: r.subject, outcome: r.outcome, detail };
}

/** One page of the audit log, newest first. */
export async function auditLog(auth: Authority, req: AuditRequest) {
  if (req.action !== undefined && !/^[a-z_][a-z_.]{0,63}$/.test(req.action)) throw new CairnError('bad_request', 'action must be an action name such as node.promote, or a prefix ending in "." such as node.');
  if (req.actor !== undefined && !/^[A-Za-z0-9:._@-]{1,128}$/.test(req.actor)) throw new CairnError('bad_request', 'actor must be an actor as the audit log shows it, such as admin:<serial>');
  const r = await page(
    req,
    (after, limit) => auth.store.auditPage({ after, limit, action: req.action, actor: req.actor, since: req.since }),
    (a) => ({ t: Number(a.at), k: a.id }),
    auditView,
  );
  return { entries: r.items, next: r.next };
}

/**
 * Records refused joins and renewals in the store (the newest FAILURES_KEPT), at most `perSecond`
 * a second per replica: a flood of bad joins costs the store a bounded number of writes (the
 * metrics still count every one).
 */
export class FailureRecorder {
  private budget: number;
  private at = Date.now();
  private sincePrune = 0;
  constructor(
    private readonly auth: Authority,
    private readonly perSecond = 10,
  ) {
    this.budget = perSecond;
  }

  async record(kind: 'join' | 'renew', code: string, client: string, nodeId: string | null = null): Promise<void> {
    const now = Date.now();
    this.budget = Math.min(this.perSecond, this.budget + ((now - this.at) / 1000) * this.perSecond);
    this.at = now;
    if (this.budget < 1) return;
    this.budget -= 1;
    await this.auth.store.insertFailure({ at: now, kind, code, client: client.slice(0, 100), node_id: nodeId });
    if (++this.sincePrune >= 50) {
      this.sincePrune = 0;
      await this.auth.store.pruneFailures(FAILURES_KEPT);
    }
  }
}
