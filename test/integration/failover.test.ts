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
import { X509Certificate } from 'node:crypto';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createCsr, csrToPem, generateKeyPair, privateKeyToPem } from '../../src/pki/index.js';
import { openStore, replicationWarning } from '../../src/store/store.js';
import { parsePgUrl } from '../../src/store/pg-failover.js';
import { addReplica, adminId, api, Cluster, startCluster, TlsIdentity } from './cluster.js';
import { createPgPair, PgPair, query, waitFor } from './pg-pair.js';
import { createDb } from './pg.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function csr() {
  const kp = generateKeyPair();
  return { key: privateKeyToPem(kp.privateKey), csr: csrToPem(createCsr(kp.privateKey)) };
}

/** What the clients of a load saw. */
export interface LoadStats {
  received: { serial: string; pem: string }[];
  ok: number;
  /** answers by status (5xx and 429 retried) */
  statuses: Record<number, number>;
  /** 503 answers without a Retry-After header */
  noRetryAfter: number;
  networkErrors: number;
  /** successes, by time (for the longest time without service) */
  okTimes: number[];
}

/**
 * `clients` nodes that join, then renew in a loop, each request to the next endpoint, retrying
 * on 5xx, 429 and network errors, until stop() — like agents would.
 */
export function startLoad(endpoints: string[], token: string, clients: number, pauseMs = 30) {
  const stats: LoadStats = { received: [], ok: 0, statuses: {}, noRetryAfter: 0, networkErrors: 0, okTimes: [] };
  let stopping = false;
  let rr = 0;
  const serialOf = (pem: string) => new X509Certificate(pem).serialNumber;
  const one = async (fn: (url: string) => Promise<{ status: number; body: any; headers: Record<string, unknown> }>, expect: number) => {
    while (!stopping) {
      const url = endpoints[rr++ % endpoints.length];
      try {
        const r = await fn(url);
        stats.statuses[r.status] = (stats.statuses[r.status] ?? 0) + 1;
        if (r.status === expect) {
          stats.ok++;
          stats.okTimes.push(Date.now());
          stats.received.push({ serial: serialOf(r.body.certificate), pem: r.body.certificate });
          return r.body;
        }
        if (r.status === 503 && !r.headers['retry-after']) stats.noRetryAfter++;
        if (r.status < 500 && r.status !== 429) throw new Error(`refused: ${r.status} ${JSON.stringify(r.body)}`);
      } catch (e) {
        if (/^refused/.test((e as Error).message)) throw e;
        stats.networkErrors++;
      }
      await sleep(100);
    }
    return null;
  };
  const client = async () => {
    let k = csr();
    const joined = await one((url) => api(url, 'POST', '/v1/join', { token, csr: k.csr }), 201);
    if (!joined) return;
    let id: TlsIdentity = { key: k.key, cert: joined.certificate };
    while (!stopping) {
      await sleep(pauseMs);
      const next = csr();
      const b = await one((url) => api(url, 'POST', '/v1/renew', { csr: next.csr }, id), 200);
      if (!b) return;
      k = next;
      id = { key: k.key, cert: b.certificate };
    }
  };
  const running = Promise.all(Array.from({ length: clients }, () => client()));
  return {
    stats,
    async stop() {
      stopping = true;
      await running;
      return stats;
    },
  };
}

/** The high 8 bytes of a serial: the sequence number from a claimed range. */
const sequenceOfHex = (serial: string) => serial.padStart(32, '0').slice(0, 16);

/** Every received certificate is stored; no serial, and no sequence number, twice. */
export async function checkNothingLost(url: string, received: { serial: string; pem: string }[]) {
  const rows = await query<{ serial: string; cert_pem: string }>(url, 'select serial, cert_pem from certificates');
  const stored = new Map(rows.map((r) => [r.serial, r.cert_pem.trim()]));
  const missing = received.filter((c) => stored.get(c.serial.toUpperCase()) !== c.pem.trim());
  const seqs = new Set(rows.map((r) => sequenceOfHex(r.serial)));
  const receivedSerials = new Set(received.map((c) => c.serial));
  return { stored: rows.length, received: received.length, missing: missing.length, duplicateSerials: received.length - receivedSerials.size, duplicateSequences: rows.length - seqs.size };
}

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
