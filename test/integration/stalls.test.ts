/**
 * No stalls at scale (issue 14): a listing of 20,000 nodes is one query per page and leaves
 * the server answering; a CRL of 100,000 entries is built off the thread that serves
 * renewals; `serve --workers 2` stops all its processes. Rows are seeded straight into the
 * SQLite store (seedRows); everything else goes through the real CLI and HTTPS API.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { performance } from 'node:perf_hooks';
import { createCsr, csrToPem, generateKeyPair, privateKeyToPem } from '../../src/pki/index.js';
import { adminId, api, childrenOf, cliAsync, Cluster, seedRows, ServeProcess, startCluster, stillRunning } from './cluster.js';

async function restart(c: Cluster, args: string[]): Promise<ServeProcess> {
  await c.kill('SIGTERM');
  const s = new ServeProcess(c.dir, {}, args);
  await s.start();
  return s;
}

describe('no stalls', () => {
  let c: Cluster;
  let server: ServeProcess | undefined;
  before(async () => {
    c = await startCluster('stalls');
  });
  after(async () => {
    await server?.kill('SIGTERM');
    await c.cleanup();
  });

  test('node ls lists 20,000 nodes within 10 s, and /metrics answers while it runs (serve --workers 2)', async () => {
    server = await restart(c, ['--workers', '2']);
    await seedRows(c.dir, { nodes: 20_000 });
    const t0 = performance.now();
    const ls = cliAsync(['node', 'ls', '--json', '--state-dir', c.dir]);
    let done = false;
    void ls.then(() => (done = true));
    const slowest: number[] = [];
    while (!done) {
      const s = performance.now();
      const m = await api(c.url, 'GET', '/metrics');
      slowest.push(performance.now() - s);
      assert.equal(m.status, 200);
      assert.match(String(m.body), /cairn_certificates_by_days_to_expiry\{le_days="90"\} 20000/, 'the gauge counts each certificate once, not once per worker');
      await new Promise((r) => setTimeout(r, 50));
    }
    const r = await ls;
    const ms = performance.now() - t0;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).length, 20_000);
    assert.ok(ms < 10_000, `node ls took ${Math.round(ms)} ms`);
    assert.ok(Math.max(...slowest) < 2000, `/metrics took up to ${Math.round(Math.max(...slowest))} ms during the listing`);
    // SIGTERM to the first process stops every worker
    const workers = childrenOf(server.proc!.pid!);
    assert.equal(workers.length, 2, 'two worker processes');
    assert.equal(await server.kill('SIGTERM'), 0);
    server = undefined;
    assert.deepEqual(stillRunning(workers), [], 'no worker outlives the server');
  });

  test('renewals keep answering while a 100,000-entry CRL is published (serve --workers 1)', async () => {
    server = await restart(c, ['--workers', '1']);
    await seedRows(c.dir, { revoked: 100_000 });
    const admin = adminId(c.dir);
    assert.equal((await api(c.url, 'PATCH', '/v1/config', { renewalIntervalMs: 0 }, admin)).status, 200);
    const k = generateKeyPair();
    const joined = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: csrToPem(createCsr(k.privateKey)) });
    assert.equal(joined.status, 201);
    let id = { key: privateKeyToPem(k.privateKey), cert: joined.body.certificate as string };
    const renew = async () => {
      const nk = generateKeyPair();
      const r = await api(c.url, 'POST', '/v1/renew', { csr: csrToPem(createCsr(nk.privateKey)) }, id);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      id = { key: privateKeyToPem(nk.privateKey), cert: r.body.certificate };
    };
    // the seeded revocations only reach a CRL once the revocation mark moves: revoke one
    const logs = () => server!.logs.join('');
    const before = logs().length;
    const victim = generateKeyPair();
    const v = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: csrToPem(createCsr(victim.privateKey)) });
    assert.equal((await api(c.url, 'POST', `/v1/nodes/${v.body.nodeId}/revoke`, { reason: 'keyCompromise' }, admin)).status, 200);
    const lat: number[] = [];
    const end = Date.now() + 20_000;
    let published = false;
    while (Date.now() < end) {
      const s = performance.now();
      await renew();
      lat.push(performance.now() - s);
      const m = logs().slice(before).match(/"ca":"cluster","number":\d+,"entries":(\d+)/);
      if (m && Number(m[1]) > 100_000) {
        published = true;
        // a few more renewals after the publication, then done
        for (let i = 0; i < 5; i++) await renew();
        break;
      }
    }
    assert.ok(published, 'the CRL leader published the 100k-entry CRL');
    const worst = Math.max(...lat);
    assert.ok(worst < 300, `a renewal took ${Math.round(worst)} ms while the CRL was built (${lat.length} renewals)`);
    await server.kill('SIGTERM');
    server = undefined;
  });
});
