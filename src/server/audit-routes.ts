/**
 * The audit chain for `cairn audit verify`: entries in order of position with their hashes,
 * the seals, and the head. The verifier runs in the client, against the cluster roots it
 * trusts (its bundle's ca.pem), so a store tampered with cannot vouch for itself.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { sealAuditLog } from '../authority/audit-log.js';
import type { Authority, PeerIdentity } from '../authority/authority.js';
import type { AuditSealTable, AuditTable } from '../store/store.js';

const MAX_CHAIN_PAGE = 5000;

const chainView = (r: AuditTable) => ({
  seq: Number(r.seq), id: r.id, at: Number(r.at), replica_id: r.replica_id, actor: r.actor, action: r.action, subject: r.subject, outcome: r.outcome, detail: r.detail, prev_hash: r.prev_hash, hash: r.hash,
});
const sealView = (s: AuditSealTable) => ({ seq: Number(s.seq), hash: s.hash, at: Number(s.at), replica_id: s.replica_id, signer_pem: s.signer_pem, signature: s.signature });

export function auditChainRoutes(
  app: FastifyInstance<any, any, any, any>,
  authority: Authority,
  admin: (req: FastifyRequest) => Promise<PeerIdentity>,
  intParam: (v: string | undefined, name: string) => number | undefined,
): void {
  const pageOf = (q: { after?: string; limit?: string }) => ({
    afterSeq: intParam(q.after, 'after') ?? 0,
    limit: Math.min(intParam(q.limit, 'limit') ?? MAX_CHAIN_PAGE, MAX_CHAIN_PAGE),
  });
  app.get<{ Querystring: { after?: string; limit?: string } }>('/v1/audit/chain', { config: { query: ['after', 'limit'] } }, async (req) => {
    await admin(req);
    const rows = await authority.store.auditChain(pageOf(req.query));
    return { clusterId: authority.clusterId, entries: rows.map(chainView) };
  });
  app.get<{ Querystring: { after?: string; limit?: string } }>('/v1/audit/seals', { config: { query: ['after', 'limit'] } }, async (req) => {
    await admin(req);
    return { seals: (await authority.store.auditSeals(pageOf(req.query))).map(sealView) };
  });
  app.get('/v1/audit/head', async (req) => {
    await admin(req);
    const [head, unchained] = await Promise.all([authority.store.auditHead(), authority.store.countUnchainedAudit()]);
    return { clusterId: authority.clusterId, head: head ? { seq: Number(head.seq), hash: head.hash } : null, unchained };
  });
  // seal the head now (operators before a backup or an audit; tests)
  app.post('/v1/audit/seal', async (req) => {
    await admin(req);
    const s = await sealAuditLog(authority);
    const latest = s ?? (await authority.store.latestAuditSeal()) ?? null;
    return { sealed: !!s, seal: latest ? sealView(latest) : null };
  });
}
