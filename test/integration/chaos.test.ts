/**
 * Chaos: 3 replicas over a PostgreSQL primary + synchronous standby, behind HAProxy (TCP, the
 * clients' only address), a steady stream of joins and renewals, while a controller SIGKILLs
 * and restarts replicas at random, restarts PostgreSQL once, and fails it over once. At the
 * end it prints and checks: certificates received vs stored (equal), duplicate serials (0),
 * CRL numbers (strictly increasing), requests failed vs retried, the longest time without
 * service. Bounded: CAIRN_CHAOS_SECONDS (default 30), 8 clients, traffic to 127.0.0.1 only.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freePort, startBackground, type Background } from '../helpers.js';
import { addReplica, adminId, api, mkTemp, startCluster, type Cluster, type ServeProcess } from './cluster.js';
import { checkNothingLost, startLoad } from './load.js';
import { createPgPair, query, waitFor, type PgPair } from './pg-pair.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const SECONDS = Number(process.env.CAIRN_CHAOS_SECONDS ?? 30);

describe('chaos: replicas killed, PostgreSQL restarted and failed over, under load behind HAProxy', () => {
  let pair: PgPair;
  let a: Cluster;
  let others: Awaited<ReturnType<typeof addReplica>>[] = [];
  let haproxy: Background;
  let front: string;
  let dir: string;

  before(async () => {
    pair = await createPgPair();
    a = await startCluster('chaos', { store: pair.storeUrl });
    const unlock = path.join(a.dir, 'unlock.key');
    others = [await addReplica(pair.storeUrl, unlock), await addReplica(pair.storeUrl, unlock)];
    const r = await api(a.url, 'PATCH', '/v1/config', { crlLeaseMs: 2000, crlCycleMs: 200, renewalIntervalMs: 0 }, adminId(a.dir));
    assert.equal(r.status, 200, JSON.stringify(r.body));
    dir = mkTemp('cairn-chaos-');
    const port = await freePort();
    const backends = [a.port, ...others.map((o) => o.port)];
    const cfg = path.join(dir, 'haproxy.cfg');
    fs.writeFileSync(
      cfg,
      [
        'global',
        '  maxconn 2000',
        'defaults',
        '  mode tcp',
        '  timeout connect 1s',
        '  timeout client 30s',
        '  timeout server 30s',
        '  retries 3',
        '  option redispatch',
        'frontend cairn',
        `  bind 127.0.0.1:${port}`,
        '  default_backend replicas',
        'backend replicas',
        '  balance roundrobin',
        ...backends.map((p, i) => `  server r${i} 127.0.0.1:${p} check inter 500 fall 2 rise 1`),
        '',
      ].join('\n'),
    );
    haproxy = startBackground('haproxy', ['-db', '-f', cfg]);
    front = `https://127.0.0.1:${port}`;
    await waitFor(async () => (await api(front, 'GET', '/healthz').catch(() => ({ status: 0 }))).status === 200, 10_000, 'HAProxy in front of the replicas');
  });
  after(async () => {
    await haproxy?.stop();
    for (const o of others) await o.cleanup();
    await a?.cleanup();
    pair?.destroy();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test(`${SECONDS} s of chaos: nothing lost, nothing duplicated, CRL numbers increase`, async () => {
    const servers: ServeProcess[] = [a.server, ...others.map((o) => o.server)];
    const load = startLoad([front], a.tokens.worker, 8, 30);
    const events: string[] = [];
    const t0 = Date.now();
    const at = (s: number) => t0 + s * 1000;
    let restartedPg = false;
    let failedOver = false;
    const restart = async (s: ServeProcess) => {
      let last = '';
      // a replica cannot start while no PostgreSQL host accepts writes: it is retried, as systemd would
      for (let i = 0; i < 20; i++) {
        try {
          await s.start();
          return;
        } catch (e) {
          last = (e as Error).message.slice(-600);
          await sleep(1000); // its killed workers may still hold the port for a moment
        }
      }
      throw new Error(`replica ${s.dir} did not come back: ${last}`);
    };
    try {
      while (Date.now() < at(SECONDS)) {
        await sleep(2000 + Math.random() * 2000);
        const elapsed = (Date.now() - t0) / 1000;
        if (!restartedPg && elapsed > SECONDS * 0.3) {
          restartedPg = true;
          events.push(`${elapsed.toFixed(0)}s PostgreSQL primary restarted (-m immediate)`);
          pair.crash(pair.primary);
          await sleep(1000);
          pair.start(pair.primary);
          continue;
        }
        if (!failedOver && elapsed > SECONDS * 0.6) {
          failedOver = true;
          events.push(`${elapsed.toFixed(0)}s PostgreSQL failed over (primary crashed, standby promoted)`);
          pair.crash(pair.primary);
          await sleep(1000);
          pair.promote(pair.standby);
          continue;
        }
        const victim = servers[Math.floor(Math.random() * servers.length)];
        events.push(`${elapsed.toFixed(0)}s SIGKILL ${path.basename(path.dirname(victim.dir))}`);
        await victim.kill('SIGKILL');
        await sleep(500 + Math.random() * 1500);
        await restart(victim);
      }
      for (const s of servers) if (!s.running) await restart(s);
      // service after the storm
      const okBefore = load.stats.ok;
      await waitFor(async () => load.stats.ok >= okBefore + 20, 30_000, 'service after the chaos');
    } finally {
      await load.stop();
    }
    const stats = load.stats;
    const primaryUrl = pair.url(pair.standby); // promoted
    const check = await checkNothingLost(primaryUrl, stats.received);
    const crls = await query<{ ca_name: string; number: number; this_update: string }>(primaryUrl, 'select ca_name, number::int, this_update from crls order by ca_name, this_update, number');
    let crlOrder = true;
    for (let i = 1; i < crls.length; i++) if (crls[i].ca_name === crls[i - 1].ca_name && crls[i].number <= crls[i - 1].number) crlOrder = false;
    let longestGap = 0;
    for (let i = 1; i < stats.okTimes.length; i++) longestGap = Math.max(longestGap, stats.okTimes[i] - stats.okTimes[i - 1]);
    const failed = Object.entries(stats.statuses).filter(([s]) => Number(s) >= 500 || Number(s) === 429).reduce((n, [, c]) => n + c, 0) + stats.networkErrors;
    console.log(
      [
        `chaos (${SECONDS} s): ${events.length} events`,
        ...events.map((e) => `  ${e}`),
        `certificates received ${check.received}, stored ${check.stored}, missing ${check.missing}`,
        `duplicate serials ${check.duplicateSerials}, duplicate sequence numbers ${check.duplicateSequences}`,
        `CRLs ${crls.length}, numbers strictly increasing per CA: ${crlOrder}`,
        `requests: ${stats.ok} succeeded, ${failed} failed and retried (statuses ${JSON.stringify(stats.statuses)}, network errors ${stats.networkErrors})`,
        `longest time without a successful request: ${longestGap} ms`,
      ].join('\n'),
    );
    assert.equal(check.missing, 0, 'every certificate a client received is in the store');
    assert.equal(check.duplicateSerials, 0);
    assert.equal(check.duplicateSequences, 0);
    assert.ok(crlOrder, 'CRL numbers strictly increase');
    assert.equal(stats.statuses[500] ?? 0, 0, 'never a 500');
    assert.ok(stats.ok > 50, `the load went on (${stats.ok} certificates)`);
  });
});
