/**
 * PostgreSQL primary failover: a primary and a synchronous streaming standby of this file's
 * own (pg-pair.ts; the shared server on 5432 is not touched), three cairn replicas given the
 * multi-host URL, a steady join/renew load; the primary is crashed (pg_ctl stop -m immediate)
 * and the standby promoted. While there is no primary, joins answer 503 with Retry-After and
 * /readyz is 503; then service resumes by itself. Every certificate a client received is in
 * the new primary, no serial (and no serial range) was handed out twice, CRL numbers keep
 * increasing and the CRL lease is held again.
 */
import assert from 'node:assert/strict';
import {  } from 'node:crypto';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openStore, replicationWarning, SqlStore } from '../../src/store/store.js';
import { parsePgUrl } from '../../src/store/pg-failover.js';
import { addReplica, adminId, api, Cluster, startCluster } from './cluster.js';
import { checkNothingLost, csr, startLoad } from './load.js';
import { createPgPair, PgPair, query, waitFor } from './pg-pair.js';
import { createDb, pgQuery } from './pg.js';
import { sql } from 'kysely';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


describe('store URLs with several hosts', () => {
  test('one URL per host, target_session_attrs taken out, other parameters kept', () => {
    const t = parsePgUrl('postgres://u:p%40ss@h1:5432,[::1]:5433,h3/db?sslmode=disable&target_session_attrs=read-write&application_name=x');
    assert.deepEqual(t.hosts, ['h1:5432', '[::1]:5433', 'h3:5432']);
    assert.deepEqual(t.urls, [
      'postgres://u:p%40ss@h1:5432/db?sslmode=disable&application_name=x',
      'postgres://u:p%40ss@[::1]:5433/db?sslmode=disable&application_name=x',
      'postgres://u:p%40ss@h3/db?sslmode=disable&application_name=x',
    ]);
    assert.equal(t.readWrite, true);
    assert.equal(parsePgUrl('postgres://u@h1/db').readWrite, false);
    assert.equal(parsePgUrl('postgresql://h1/db?target_session_attrs=primary').readWrite, true);
    assert.throws(() => parsePgUrl('postgres://u@h1,h2/db?target_session_attrs=read-only'), /target_session_attrs=read-only is not for cairn/);
    assert.throws(() => parsePgUrl('postgres://u@h1,,h2/db'), /bad host list/);
  });

  test('the start check warns about a store without a synchronous standby (the shared server has none)', async () => {
    const db = await createDb();
    try {
      const s = await openStore('postgres', db.url);
      try {
        const r = await s.replication();
        assert.ok(r);
        assert.match(replicationWarning(r) ?? '', /synchronous_standby_names is empty|synchronous_commit is/);
      } finally {
        await s.close();
      }
    } finally {
      await db.drop();
    }
  });

  test('statements run prepared on their connection; one whose table another replica changed runs again unprepared (outside a transaction at once, inside one after a 503 retry)', async () => {
    const db = await createDb();
    const s = await openStore('postgres', db.url, { poolSize: 1 });
    try {
      const cert = { serial: 'AB01', kind: 'node', node_id: null, role: null, subject: 'CN=x', issuer_key_id: 'k', not_before: 1, not_after: 2, status: 'good', revoked_at: null, revocation_reason: null, cert_pem: 'pem', created_at: 1, replica_id: null, forwarded_at: null };
      await s.insertCertificate(cert as never);
      assert.equal((await s.getCertificate('AB01'))?.subject, 'CN=x');
      // the pool's one connection prepared it (pg_prepared_statements is per connection)
      const names = await s.transaction(async (tx) => (await sql<{ statement: string }>`select statement from pg_prepared_statements`.execute((tx as SqlStore).db)).rows);
      assert.ok(names.some((r) => /from "certificates" where "serial" = \$1/.test(r.statement)), JSON.stringify(names));
      // a newer replica adds a column: the prepared "select *" no longer matches ("cached plan must not change result type")
      await pgQuery(db.url, 'alter table certificates add column later_column text');
      assert.equal((await s.getCertificate('AB01'))?.subject, 'CN=x', 'outside a transaction: sent again unprepared');
      // inside a transaction the transaction has failed: 503 (retry), and the retry runs unprepared
      await s.insertNode({ id: 'n1', role: 'worker', status: 'active', created_at: 1, updated_at: 1, current_serial: null, previous_serial: null, renewed_at: null, renew_budget: null, renew_budget_at: null, renew_requested_at: null } as never);
      const lock = () => s.transaction(async (tx) => (await tx.lockNode('n1'))?.role);
      assert.equal(await lock(), 'worker');
      await pgQuery(db.url, 'alter table nodes add column later_column text');
      await assert.rejects(lock(), (e: Error) => e.name === 'StoreUnavailableError' && /retry/.test(e.message));
      assert.equal(await lock(), 'worker');
    } finally {
      await s.close();
      await db.drop();
    }
  });
});

describe('PostgreSQL failover under load: primary crashed, standby promoted', () => {
  let pair: PgPair;
  let a: Cluster;
  let replicas: Awaited<ReturnType<typeof addReplica>>[] = [];
  let endpoints: string[];

  before(async () => {
    pair = await createPgPair();
    a = await startCluster('failover', { store: pair.storeUrl });
    const unlock = path.join(a.dir, 'unlock.key');
    replicas = [await addReplica(pair.storeUrl, unlock), await addReplica(pair.storeUrl, unlock)];
    endpoints = [a.url, ...replicas.map((r) => r.url)];
    const r = await api(a.url, 'PATCH', '/v1/config', { crlLeaseMs: 2000, crlCycleMs: 200, renewalIntervalMs: 0 }, adminId(a.dir));
    assert.equal(r.status, 200, JSON.stringify(r.body));
  });
  after(async () => {
    for (const r of replicas) await r.cleanup();
    await a?.cleanup();
    pair?.destroy();
  });

  test('503 + Retry-After and /readyz 503 without a primary, resumes by itself, nothing lost or duplicated', async (t) => {
    assert.match(a.logs.join(''), /the store is synchronously replicated/);
    const admin = adminId(a.dir);
    const load = startLoad(endpoints, a.tokens.worker, 8);
    t.after(() => load.stop());
    await waitFor(async () => load.stats.ok >= 40, 30_000, 'load before the failover');
    // a revocation, so that CRLs with entries are published before and after
    const first = load.stats.received[0];
    assert.equal((await api(a.url, 'POST', `/v1/certificates/${first.serial}/revoke`, { reason: 'keyCompromise' }, admin)).status, 200);
    await waitFor(async () => (await query(pair.url(pair.primary), 'select count(*)::int as n from crls where entries > 0'))[0].n > 0, 10_000, 'a CRL with the revocation');
    const before = (await query<{ n: number }>(pair.url(pair.primary), `select max(number)::int as n from crls where ca_name = 'cluster'`))[0].n;
    const leaseBefore = (await query<{ term: number }>(pair.url(pair.primary), `select term::int from leases where name = 'crl'`))[0].term;

    pair.crash(pair.primary);
    const crashedAt = Date.now();
    // no primary: every replica says so, and a join is a 503 with Retry-After (never a 500)
    for (const url of endpoints) {
      await waitFor(async () => (await api(url, 'GET', '/readyz')).status === 503, 10_000, `/readyz 503 on ${url}`);
      const k = csr();
      const j = await api(url, 'POST', '/v1/join', { token: a.tokens.worker, csr: k.csr });
      assert.equal(j.status, 503, JSON.stringify(j.body));
      assert.equal(j.body.error.code, 'unavailable');
      assert.ok(Number(j.headers['retry-after']) >= 1);
    }
    await sleep(1000);
    pair.promote(pair.standby);
    const promotedAt = Date.now();
    for (const url of endpoints) await waitFor(async () => (await api(url, 'GET', '/readyz')).status === 200, 15_000, `/readyz 200 on ${url}`);
    const readyMs = Date.now() - promotedAt;
    const okAtPromote = load.stats.ok;
    await waitFor(async () => load.stats.ok >= okAtPromote + 40, 30_000, 'load after the failover').catch((e) => {
      throw new Error(`${e.message}: ${JSON.stringify(load.stats.statuses)}`);
    });
    const stats = await load.stop();
    const firstOkAfter = stats.okTimes.find((t) => t > promotedAt)! - promotedAt;

    // revoke once more: the CRL leader (whichever replica holds the lease now) publishes a higher number
    const later = stats.received[stats.received.length - 1];
    assert.equal((await api(replicas[1].url, 'POST', `/v1/certificates/${later.serial}/revoke`, {}, admin)).status, 200);
    const now = pair.url(pair.standby);
    await waitFor(async () => (await query(now, `select max(number)::int as n from crls where ca_name = 'cluster'`))[0].n > before, 15_000, 'a CRL after the failover');
    const crls = await query<{ number: number; this_update: number }>(now, `select number::int, this_update from crls where ca_name = 'cluster' order by this_update, number`);
    for (let i = 1; i < crls.length; i++) assert.ok(crls[i].number > crls[i - 1].number, 'CRL numbers increase');
    const lease = (await query<{ term: number; expires_at: string }>(now, `select term::int, expires_at from leases where name = 'crl'`))[0];
    assert.ok(lease.term >= leaseBefore && Number(lease.expires_at) > promotedAt, 'the CRL lease is held after the failover');

    const check = await checkNothingLost(now, stats.received);
    console.log(
      `failover: ${stats.ok} certificates received (${check.stored} stored), statuses ${JSON.stringify(stats.statuses)}, ` +
        `all replicas ready ${readyMs} ms after promotion, first certificate ${firstOkAfter} ms after it (${promotedAt - crashedAt} ms without a primary)`,
    );
    assert.equal(check.missing, 0, 'every certificate a client received is in the new primary');
    assert.equal(check.duplicateSerials, 0);
    assert.equal(check.duplicateSequences, 0, 'no serial sequence number (range) handed out twice');
    assert.equal(stats.statuses[500] ?? 0, 0, 'never a 500');
    assert.equal(stats.noRetryAfter, 0, 'every 503 says when to retry');
    assert.ok((stats.statuses[503] ?? 0) > 0, 'the load saw the outage');
    assert.ok(readyMs < 10_000, `service resumed ${readyMs} ms after the promotion`);
  });
});
