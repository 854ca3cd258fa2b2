/**
 * Who may renew, as pure rules over a node's stored row: read top to bottom.
 *
 * A renewal is admitted when, in this order:
 *  1. the node is active (not removed);
 *  2. the certificate it presents is good (not revoked);
 *  3. the certificate is the node's newest (`current_serial`), or the one the newest was
 *     renewed from (`previous_serial`) while the newest is younger than the grace window, so a
 *     node that crashed before saving its new certificate can still renew (the unused newest
 *     is then revoked as superseded) — but never once the newest is revoked;
 *  4. the node has renewal budget left: a token bucket of `renewalBurst` renewals, refilled
 *     with one renewal every `renewalIntervalMs` (0 = no limit).
 *
 * The caller holds the node's row lock (see Store.lockNode) from reading the row to recording
 * the new certificate, so a removal, a revocation or another renewal of the same node can
 * never interleave with it.
 */
import type { NodeTable } from '../store/schema.js';
import { CairnError, RetryLater } from '../util/errors.js';

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
