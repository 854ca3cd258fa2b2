/**
 * How the API shows nodes and certificates: stored rows to JSON views (ISO times, camelCase),
 * and the checks of a node listing's filters. One mapping per kind of record, used by every
 * answer that shows one.
 */
import type { CertificateTable, NodeTable, NodePageQuery, NodeSort, NodeWithCertificate } from '../store/store.js';
import { NODE_SORTS } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import type { PageRequest } from './pages.js';
import { isRole } from './tokens.js';

export interface NodeView {
  id: string;
  role: string;
  status: string;
  createdAt: string;
  updatedAt: string;
  /** when its current certificate was issued (join or last renewal) */
  renewedAt: string | null;
  /** state: good, expired or revoked */
  certificate: { serial: string; notBefore: string; notAfter: string; issuerKeyId: string; state: 'good' | 'expired' | 'revoked' } | null;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(Number(ms)).toISOString());

/** A node and its current certificate's validity (shown like certificateView's, on purpose) (as listNodesPage joins them, or looked up). */
export function nodeView(
  n: Pick<NodeTable, 'id' | 'role' | 'status' | 'created_at' | 'updated_at' | 'renewed_at'>,
  cert: Pick<CertificateTable, 'serial' | 'not_before' | 'not_after' | 'issuer_key_id' | 'status'> | null,
  now = Date.now(),
): NodeView {
  const state = !cert ? 'good' : cert.status === 'revoked' ? 'revoked' : Number(cert.not_after) <= now ? 'expired' : 'good';
  return {
    id: n.id,
    role: n.role,
    status: n.status,
    createdAt: iso(n.created_at)!,
    updatedAt: iso(n.updated_at)!,
    renewedAt: iso(n.renewed_at),
    certificate: cert ? { serial: cert.serial, notBefore: iso(cert.not_before)!, notAfter: iso(cert.not_after)!, issuerKeyId: cert.issuer_key_id, state } : null,
  };
}

/** A row of a node listing (node with its certificate joined in). */
export function listedNodeView(n: NodeWithCertificate): NodeView {
  const cert = n.cert_serial
    ? { serial: n.cert_serial, not_before: Number(n.cert_not_before), not_after: Number(n.cert_not_after), issuer_key_id: n.cert_issuer_key_id!, status: n.cert_status ?? 'good' }
    : null;
  return nodeView(n, cert);
}

export function certificateView(r: CertificateTable) {
  return {
    serial: r.serial,
    kind: r.kind,
    nodeId: r.node_id,
    role: r.role,
    subject: r.subject,
    issuerKeyId: r.issuer_key_id,
    notBefore: iso(r.not_before)!,
    notAfter: iso(r.not_after)!,
    status: r.status,
    revokedAt: r.revoked_at ? iso(r.revoked_at) : null,
    revocationReason: r.revocation_reason,
  };
}

export interface NodeListRequest extends PageRequest {
  /** created (default), expiry, renewed or id */
  sort?: string;
  /** asc (default) or desc */
  order?: string;
  role?: string;
  status?: string;
  /** a prefix of the node ID */
  q?: string;
}

/** Check the filters and order of a node listing. */
export function nodeFilter(req: NodeListRequest): Omit<NodePageQuery, 'after' | 'limit'> {
  const sort = req.sort ?? 'created';
  if (!(NODE_SORTS as readonly string[]).includes(sort)) throw new CairnError('bad_request', `sort must be one of ${NODE_SORTS.join(', ')}`);
  if (req.order !== undefined && req.order !== 'asc' && req.order !== 'desc') throw new CairnError('bad_request', 'order must be asc or desc');
  if (req.role !== undefined && !isRole(req.role)) throw new CairnError('bad_request', 'role must be worker or manager');
  if (req.status !== undefined && req.status !== 'active' && req.status !== 'removed') throw new CairnError('bad_request', 'status must be active or removed');
  const q = req.q?.toLowerCase();
  if (q !== undefined && !/^[0-9a-z]{1,25}$/.test(q)) throw new CairnError('bad_request', 'q must be the start of a node ID: 1-25 letters and digits');
  return { sort: sort as NodeSort, desc: req.order === 'desc', role: req.role, status: req.status, idPrefix: q };
}
