/** The renewal admission rules (src/authority/admission.ts), as pure functions: milliseconds. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { admitRenewal, RenewalLimits, takeRenewalBudget } from '../../src/authority/admission.js';
import type { NodeTable } from '../../src/store/schema.js';
import { CairnError, RetryLater } from '../../src/util/errors.js';

const NOW = 1_800_000_000_000;
const LIMITS: RenewalLimits = { renewalGraceMs: 3_600_000, renewalBurst: 5, renewalIntervalMs: 60_000 };

function node(over: Partial<NodeTable> = {}): NodeTable {
  return {
    id: 'n0000000000000000000000001', role: 'worker', status: 'active', created_at: NOW - 10_000_000, updated_at: NOW - 1000,
    current_serial: 'C2', previous_serial: 'C1', renewed_at: NOW - 60_000, renew_budget: null, renew_budget_at: null, renew_requested_at: null, ...over,
  };
}
const good = (serial: string) => ({ serial, status: 'good' });
const code = (fn: () => unknown) => {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof CairnError);
    return e.code;
  }
  return 'admitted';
};

describe('renewal admission', () => {
  test('the newest certificate renews; budget is spent', () => {
    const a = admitRenewal('n', node(), good('C2'), undefined, NOW, LIMITS);
    assert.deepEqual(a, { path: 'current', abandoned: null, budget: 4 });
  });

  test('a removed or unknown node is refused first, whatever it presents', () => {
    assert.equal(code(() => admitRenewal('n', node({ status: 'removed' }), good('C2'), undefined, NOW, LIMITS)), 'node_removed');
    assert.equal(code(() => admitRenewal('n', undefined, good('C2'), undefined, NOW, LIMITS)), 'node_removed');
  });

  test('a revoked certificate is refused, also when it is the newest', () => {
    assert.equal(code(() => admitRenewal('n', node(), { serial: 'C2', status: 'revoked' }, undefined, NOW, LIMITS)), 'certificate_revoked');
    assert.equal(code(() => admitRenewal('n', node(), undefined, undefined, NOW, LIMITS)), 'certificate_revoked');
  });

  test('the previous certificate renews only within the grace window, and abandons the newest', () => {
    assert.deepEqual(admitRenewal('n', node(), good('C1'), good('C2'), NOW, LIMITS), { path: 'grace', abandoned: 'C2', budget: 4 });
    assert.equal(code(() => admitRenewal('n', node({ renewed_at: NOW - 3_600_000 }), good('C1'), good('C2'), NOW, LIMITS)), 'renewal_superseded');
    assert.equal(code(() => admitRenewal('n', node(), good('C1'), good('C2'), NOW, { ...LIMITS, renewalGraceMs: 0 })), 'renewal_superseded');
    // once the newest is revoked, the one before it never renews again
    assert.equal(code(() => admitRenewal('n', node(), good('C1'), { status: 'revoked' }, NOW, LIMITS)), 'renewal_superseded');
  });

  test('any older certificate is superseded', () => {
    assert.equal(code(() => admitRenewal('n', node(), good('C0'), good('C2'), NOW, LIMITS)), 'renewal_superseded');
  });

  test('the bucket: a burst, then one renewal per interval, with the wait in the refusal', () => {
    let n = node({ renew_budget: null, renew_budget_at: null });
    let t = NOW;
    for (let i = 0; i < 5; i++) {
      const b = takeRenewalBudget(n, t, LIMITS);
      n = { ...n, renew_budget: b, renew_budget_at: t };
    }
    assert.equal(n.renew_budget, 0);
    try {
      takeRenewalBudget(n, t + 15_000, LIMITS);
      assert.fail('a sixth renewal in the burst was allowed');
    } catch (e) {
      assert.ok(e instanceof RetryLater);
      assert.equal(e.code, 'rate_limited');
      assert.equal(e.retryAfterMs, 45_000);
    }
    t += 60_000;
    assert.equal(takeRenewalBudget(n, t, LIMITS), 0);
    // refills up to the burst, never beyond
    assert.equal(takeRenewalBudget({ ...n, renew_budget: 0, renew_budget_at: t }, t + 3_600_000, LIMITS), 4);
    // 0 = no limit
    assert.equal(takeRenewalBudget({ ...n, renew_budget: 0, renew_budget_at: t }, t, { ...LIMITS, renewalIntervalMs: 0 }), 5);
  });
});
