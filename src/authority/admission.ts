/**
 * Admission: who may do what, read top to bottom (step-ca's authorize.go is the model).
 *
 * 1. Join (`admitJoin`): a join token `CAIRN-1-<root digest>-<secret>` whose digest is the
 *    current cluster root's and whose secret matches a role's stored hash (constant time,
 *    every hash compared); one answer, "invalid token", for every way it can be wrong.
 *    Repeated failures from one address are limited by the HTTP layer (server.ts).
 *
 * 2. Identification (`identifyPeer`): the TLS layer has verified the client certificate's
 *    chain to one of our roots; here it must also be of this cluster (subject O), recorded by
 *    this CA (or adoptable: a node certificate issued by another controller holding the same
 *    CA keys, see clone.ts), good, and unexpired. What it may call depends on its kind
 *    (`requireKind`): node certificates renew, admin certificates administer, CA replica
 *    certificates neither.
 *
 * 3. Renewal (`admitRenewal`), as pure rules over a node's stored row, in this order:
 *    a. the node is active (not removed);
 *    b. the certificate it presents is good (not revoked);
 *    c. the certificate is the node's newest (`current_serial`), or the one the newest was
 *       renewed from (`previous_serial`) while the newest is younger than the grace window, so
 *       a node that crashed before saving its new certificate can still renew (the unused
 *       newest is then revoked as superseded) — but never once the newest is revoked;
 *    d. the node has renewal budget left (`takeRenewalBudget`): a token bucket of
 *       `renewalBurst` renewals, refilled with one every `renewalIntervalMs` (0 = no limit).
 *    The caller (Authority.renew) holds the node's row lock (Store.lockNode) from reading the
 *    row to recording the new certificate, so a removal, a revocation or another renewal of
 *    the same node never interleaves with it. The role of the new certificate is the node's
 *    role now, not the one in the certificate presented (`renewalHint` tells a node when they
 *    differ, so it renews at once).
 */
import type { NodeTable, Store } from '../store/store.js';
import { CairnError, RetryLater } from '../util/errors.js';
import { hashSecret, isRole, joinTokenState, matchSecret, parseToken, Role } from './tokens.js';

// ---------------------------------------------------------------- 1. join

/** What a join token admits: a role, and for a limited token the hash its use is counted by. */
export interface AdmittedToken {
  role: Role;
  /** a limited token (`cairn token create`): count its use with `useAdmittedToken`, in the join's transaction */
  limited: string | null;
}

/**
 * The role a join token admits, or the one refusal for every bad token. A reusable (swarm
 * style) token is matched in constant time against the roles' hashes; otherwise a limited
 * token is looked up by its hash (a SHA-256 of 128 random bits: the lookup reveals nothing)
 * and must be unrevoked, unexpired and have a use left. Its use is counted later, atomically,
 * in the transaction that records the join (`useAdmittedToken`).
 */
export async function admitJoin(store: Store, rootDigest: string, token: unknown, now = Date.now()): Promise<AdmittedToken> {
  if (typeof token !== 'string' || token.length === 0) throw new CairnError('bad_request', 'missing field "token"');
  const parsed = parseToken(token);
  // same answer for a malformed token, another cluster's digest, a wrong secret, and a used, expired or revoked limited token
  if (!parsed) throw new CairnError('invalid_token', 'invalid token');
  const role = matchSecret(parsed.secret, await store.getTokenHashes());
  if (parsed.digest !== rootDigest) throw new CairnError('invalid_token', 'invalid token');
  if (role) return { role, limited: null };
  const hash = hashSecret(parsed.secret);
  const t = await store.getJoinTokenByHash(hash);
  if (!t || !isRole(t.role) || joinTokenState(t, now) !== 'active') throw new CairnError('invalid_token', 'invalid token');
  return { role: t.role, limited: hash };
}

/** Count the use of a limited token inside the join's transaction; refused when another replica took the last use first. */
export async function useAdmittedToken(tx: Store, t: AdmittedToken, now = Date.now()): Promise<void> {
  if (t.limited && !(await tx.useJoinToken(t.limited, now))) throw new CairnError('invalid_token', 'invalid token');
}

// ---------------------------------------------------------------- 2. identification

/** What the TLS layer tells about a verified client certificate. */
export interface PeerCertificate {
  serialHex: string;
  /** the subject's O */
  clusterId: string | undefined;
  /** the certificate (DER): lets a controller sharing our CA keys adopt a node it does not know */
  raw?: Buffer;
  /** the TLS layer did not accept it (it does not chain to a root this replica trusts) */
  untrusted?: boolean;
}

export interface PeerIdentity {
  kind: 'node' | 'admin' | 'server';
  nodeId: string | null;
  role: string | null;
  serial: string;
}

/** Adopt a certificate this store has no record of (clone.ts), or null. */
export type Adopter = (der: Buffer, serial: string) => Promise<PeerIdentity | null>;

/** Serial as the store records it: uppercase hex, no DER sign padding. */
export const storedSerial = (hex: string) => hex.toUpperCase().replace(/^(00)+(?=[0-9A-F]{2})/, '');

export async function identifyPeer(
  store: Store,
  clusterId: string,
  peer: PeerCertificate | undefined,
  adopt: Adopter,
  /** whether a certificate the TLS layer refused is of a generation a rotation retired */
  retired: (der: Buffer) => boolean = () => false,
): Promise<PeerIdentity> {
  if (peer?.untrusted) {
    if (peer.raw && peer.clusterId === clusterId && retired(peer.raw)) {
      throw new CairnError('rejoin_required', 'this certificate was issued by a root CA that a completed rotation retired: join the cluster again ("cairn join --force" with a current token)');
    }
    throw new CairnError('client_certificate_required', 'a client certificate that chains to the cluster\'s roots is required');
  }
  if (!peer) throw new CairnError('client_certificate_required', 'a client certificate is required');
  if (peer.clusterId !== clusterId) throw new CairnError('forbidden', 'the client certificate is not of this cluster');
  const serial = storedSerial(peer.serialHex);
  const rec = await store.getCertificate(serial);
  if (!rec) {
    const adopted = peer.raw ? await adopt(peer.raw, serial) : null;
    if (adopted) return adopted;
    throw new CairnError('forbidden', 'the client certificate was not issued by this cluster');
  }
  if (rec.status !== 'good') {
    // a removed node's certificates are revoked: say what happened to the node
    const n = rec.kind === 'node' && rec.node_id ? await store.getNode(rec.node_id) : undefined;
    if (n && n.status !== 'active') throw new CairnError('node_removed', `node ${n.id} has been removed from the cluster`);
    throw new CairnError('certificate_revoked', 'the client certificate is revoked');
  }
  if (rec.not_after <= Date.now()) throw new CairnError('certificate_expired', 'the client certificate has expired');
  if (rec.kind !== 'node' && rec.kind !== 'admin' && rec.kind !== 'server') throw new CairnError('forbidden', 'this certificate cannot use the API');
  return { kind: rec.kind as PeerIdentity['kind'], nodeId: rec.node_id, role: rec.role, serial };
}

const KIND_REFUSALS = {
  node: 'this endpoint is for node certificates',
  admin: 'this endpoint needs an admin client certificate',
} as const;

/** What an API endpoint needs: a node certificate (renewal) or an admin certificate (everything administrative). */
export function requireKind(peer: PeerIdentity, kind: keyof typeof KIND_REFUSALS): PeerIdentity {
  if (peer.kind !== kind) throw new CairnError('forbidden', KIND_REFUSALS[kind]);
  return peer;
}

/**
 * For a node calling with its certificate: its current role, and whether it should renew now
 * because the role in its certificate is no longer its role. Null for anything else (a node
 * not in good standing learns why when it renews).
 */
export async function renewalHint(store: Store, identify: () => Promise<PeerIdentity>): Promise<{ id: string; role: string; renew: boolean } | null> {
  let id: PeerIdentity;
  try {
    id = await identify();
  } catch (e) {
    if (e instanceof CairnError) return null;
    throw e;
  }
  if (id.kind !== 'node' || !id.nodeId) return null;
  const n = await store.getNode(id.nodeId);
  if (!n || n.status !== 'active') return null;
  return { id: n.id, role: n.role, renew: n.role !== id.role };
}

// ---------------------------------------------------------------- 3. renewal

export interface RenewalLimits {
  /** how long after a renewal the certificate it replaced may still renew (ms) */
  renewalGraceMs: number;
  /** renewals a node may make in a burst */
  renewalBurst: number;
  /** one more renewal allowed every this many ms; 0 = unlimited */
  renewalIntervalMs: number;
}

export interface RenewalAdmission {
  /** 'current': the newest certificate renews; 'grace': the previous one does, within the grace window */
  path: 'current' | 'grace';
  /** the newest certificate the grace path leaves unused (it is revoked as superseded) */
  abandoned: string | null;
  /** what the node's budget becomes once this renewal is recorded */
  budget: number;
}

/** Decide whether `presentedSerial` may renew for node `n` now; throws the refusal. */
export function admitRenewal(
  nodeId: string,
  n: NodeTable | undefined,
  presented: { serial: string; status: string } | undefined,
  /** the node's newest certificate, when it is not the one presented */
  newest: { status: string } | undefined,
  now: number,
  limits: RenewalLimits,
): RenewalAdmission {
  if (!n || n.status !== 'active') throw new CairnError('node_removed', `node ${nodeId} has been removed from the cluster`);
  if (!presented || presented.status !== 'good') throw new CairnError('certificate_revoked', 'the client certificate is revoked');
  const presentedSerial = presented.serial;
  let path: RenewalAdmission['path'];
  if (n.current_serial === null || n.current_serial === presentedSerial) path = 'current';
  else if (n.previous_serial === presentedSerial && n.renewed_at !== null && now - n.renewed_at < limits.renewalGraceMs && newest?.status === 'good') path = 'grace';
  else {
    throw new CairnError(
      'renewal_superseded',
      `this certificate of node ${n.id} has been superseded by a newer one (serial ${n.current_serial}): only the node's newest certificate can renew; join again if it was lost`,
    );
  }
  return { path, abandoned: path === 'grace' ? n.current_serial : null, budget: takeRenewalBudget(n, now, limits) };
}

/** The token bucket: the budget left after one renewal now, or a RetryLater refusal. */
export function takeRenewalBudget(n: Pick<NodeTable, 'id' | 'renew_budget' | 'renew_budget_at'>, now: number, limits: RenewalLimits): number {
  const burst = limits.renewalBurst;
  if (limits.renewalIntervalMs <= 0) return burst;
  const last = n.renew_budget_at ?? now;
  const refill = Math.max(0, now - last) / limits.renewalIntervalMs;
  const budget = Math.min(burst, (n.renew_budget ?? burst) + refill);
  if (budget < 1) {
    const waitMs = Math.ceil((1 - budget) * limits.renewalIntervalMs);
    throw new RetryLater('rate_limited', `node ${n.id} renews too often: at most ${burst} renewals in a burst, then one every ${Math.round(limits.renewalIntervalMs / 1000)}s; retry in ${Math.ceil(waitMs / 1000)}s`, waitMs);
  }
  return budget - 1;
}

// ---------------------------------------------------------------- 4. recovery after expiry

/**
 * A node that was down past its certificate's expiry gets its identity back (`join --recover`)
 * when: it is still a member (not removed); the token it presents is a valid join token of
 * its role now; the certificate request is signed with the key of its newest certificate
 * (proof of possession: the CSR's signature, with that public key); that certificate is not
 * revoked, has expired, and expired less than `recoveryWindowMs` ago. Anything else is a
 * refusal that says why. The caller holds the node's row lock.
 */
export function admitRecovery(
  nodeId: string,
  n: NodeTable | undefined,
  newest: { status: string; not_after: number; publicKeyDer: Buffer } | undefined,
  csrPublicKeyDer: Buffer,
  tokenRole: Role,
  now: number,
  windowMs: number,
): void {
  const refuse = (why: string) => {
    throw new CairnError('recovery_refused', `node ${nodeId} cannot recover its identity: ${why}`);
  };
  if (!n) refuse('it is not a member of this cluster (join as a new node)');
  if (n!.status !== 'active') throw new CairnError('node_removed', `node ${nodeId} has been removed from the cluster: join as a new node`);
  if (tokenRole !== n!.role) refuse(`the token is for ${tokenRole}s, and the node is a ${n!.role}: use a ${n!.role} token`);
  if (!newest) refuse('it has no certificate on record');
  if (newest!.status !== 'good') throw new CairnError('certificate_revoked', `node ${nodeId}'s newest certificate is revoked: join as a new node`);
  if (!newest!.publicKeyDer.equals(csrPublicKeyDer)) refuse("the certificate request is not signed with the key of the node's newest certificate");
  if (newest!.not_after > now) refuse('its certificate has not expired: renew with it instead');
  if (windowMs <= 0) refuse('recovery is disabled (recoveryWindowMs is 0): join as a new node');
  const ago = now - newest!.not_after;
  if (ago > windowMs) {
    refuse(`its certificate expired ${Math.floor(ago / 86_400_000)} days ago, longer than the recovery window (${Math.round(windowMs / 86_400_000)} days): join as a new node`);
  }
}
