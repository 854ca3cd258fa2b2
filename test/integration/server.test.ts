import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { certificatesFromPem, createCsr, csrToPem, generateKeyPair, privateKeyToPem } from '../../src/pki/index.js';
import { api, cli, Cluster, mkTemp, query, rawPost, startCluster } from './cluster.js';

const newCsr = () => {
  const kp = generateKeyPair();
  return { key: privateKeyToPem(kp.privateKey), csr: csrToPem(createCsr(kp.privateKey, { CN: 'requested-name', O: 'evil' })) };
};

async function counts(dir: string) {
  const [n] = await query(dir, 'select count(*) as n from nodes');
  const [c] = await query(dir, 'select count(*) as n from certificates');
  return { nodes: n.n, certs: c.n };
}

describe('CA server API', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster();
  });
  after(async () => {
    await c.cleanup();
  });

  test('init refuses an initialized directory and changes nothing', async () => {
    // the running server writes its database; every other file must stay as it was
    const snapshot = () =>
      fs.readdirSync(c.dir).sort().map((f) => [f, f.startsWith('cairn.db') ? null : fs.statSync(path.join(c.dir, f)).mtimeMs]);
    const before = snapshot();
    const r = cli(['init', 'again', '--state-dir', c.dir]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^cairn: error: .*already initialized/);
    assert.deepEqual(snapshot(), before);
  });

  test('GET /v1/ca gives the roots, the trust bundle and the digest in the tokens', async () => {
    const r = await api(c.url, 'GET', '/v1/ca');
    assert.equal(r.status, 200);
    assert.equal(r.body.clusterId, c.clusterId);
    assert.match(r.body.roots.cluster, /BEGIN CERTIFICATE/);
    assert.match(r.body.roots.client, /BEGIN CERTIFICATE/);
    assert.equal(c.tokens.worker.split('-')[2], r.body.digest);
    assert.equal(r.body.digest.length, 50);
  });

  test('the server sends its certificate and the root (handed over once, not built per handshake); OpenSSL verifies it against ca.crt', () => {
    const port = new URL(c.url).port;
    const r = spawnSync('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-showcerts', '-CAfile', path.join(c.dir, 'ca.crt'), '-verify_return_error'], { input: '', encoding: 'utf8', timeout: 20_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Verify return code: 0 \(ok\)/);
    const sent = certificatesFromPem(r.stdout, 's_client output');
    assert.equal(sent.length, 2, r.stdout);
    const roots = certificatesFromPem(fs.readFileSync(path.join(c.dir, 'ca.crt'), 'utf8'), 'ca.crt');
    assert.ok(roots.some((d) => d.equals(sent[1])), 'the second certificate sent is the cluster root');
    assert.match(r.stdout, /s:O ?= ?[^\n]*OU ?= ?ca-replica/);
  });

  test('a join ignores the requested subject and records the node before answering', async () => {
    const { csr } = newCsr();
    const r = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.equal(r.body.role, 'worker');
    assert.doesNotMatch(r.body.certificate, /requested-name/);
    const rows = await query(c.dir, 'select * from nodes where id = ?', r.body.nodeId);
    assert.equal(rows.length, 1);
    const certs = await query(c.dir, 'select * from certificates where node_id = ?', r.body.nodeId);
    assert.equal(certs.length, 1);
    assert.equal(certs[0].cert_pem.trim(), r.body.certificate.trim());
  });

  test('bad input gets a 4xx JSON error with a stable code, records nothing, and the server stays up', async () => {
    const before = await counts(c.dir);
    const good = newCsr().csr;
    const der = Buffer.from(good.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    const badSig = Buffer.from(der);
    badSig[badSig.length - 5] ^= 0xff;
    const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const other = mkTemp();
    const otherInit = cli(['init', 'other', '--state-dir', path.join(other, 's'), '--listen', '127.0.0.1:1', '--json']);
    assert.equal(otherInit.code, 0, otherInit.stderr);
    const otherToken = JSON.parse(otherInit.stdout).tokens.worker;
    fs.rmSync(other, { recursive: true, force: true });
    const wrongSecret = c.tokens.worker.slice(0, -3) + (c.tokens.worker.endsWith('aaa') ? 'bbb' : 'aaa');
    const cases: [string, unknown, number, string][] = [
      ['malformed CSR', { token: c.tokens.worker, csr: '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n' }, 400, 'bad_csr'],
      ['garbage CSR', { token: c.tokens.worker, csr: 'hello' }, 400, 'bad_csr'],
      ['CSR with a bad signature', { token: c.tokens.worker, csr: csrToPem(badSig) }, 400, 'bad_csr_signature'],
      ['RSA-1024 key', { token: c.tokens.worker, csr: csrToPem(createCsr(rsa1024.privateKey)) }, 400, 'weak_key'],
      ['wrong token secret', { token: wrongSecret, csr: good }, 401, 'invalid_token'],
      ['token of another cluster', { token: otherToken, csr: good }, 401, 'invalid_token'],
      ['malformed token', { token: 'SWMTKN-1-abc', csr: good }, 401, 'invalid_token'],
      ['missing token', { csr: good }, 400, 'bad_request'],
      ['missing csr', { token: c.tokens.worker }, 400, 'bad_request'],
      ['not an object', [1, 2], 400, 'bad_request'],
    ];
    for (const [what, body, status, code] of cases) {
      const r = await api(c.url, 'POST', '/v1/join', body);
      assert.equal(r.status, status, `${what}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, code, what);
      assert.equal(typeof r.body.error.message, 'string');
    }
    // the error for a wrong token never says which part was wrong
    const msgs = new Set<string>();
    for (const t of [wrongSecret, otherToken, 'junk']) msgs.add((await api(c.url, 'POST', '/v1/join', { token: t, csr: good })).body.error.message);
    assert.deepEqual([...msgs], ['invalid token']);

    const big = await rawPost(c.url, '/v1/join', Buffer.alloc(10 * 1024 * 1024, 0x61));
    assert.equal(big.status, 413);
    assert.match(big.text, /"code":"body_too_large"/);
    const notJson = await api(c.url, 'POST', '/v1/join', undefined, {}, Buffer.from('{not json'));
    assert.equal(notJson.status, 400);
    assert.equal(notJson.body.error.code, 'bad_request');
    const unknown = await api(c.url, 'GET', '/v1/nope');
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error.code, 'not_found');

    assert.deepEqual(await counts(c.dir), before);
    assert.equal((await api(c.url, 'GET', '/healthz')).status, 200);
    assert.doesNotMatch(c.logs.join(''), /internal error/);
  });

  test('admin routes need an admin certificate; node routes need a node certificate', async () => {
    const noCert = await api(c.url, 'GET', '/v1/nodes');
    assert.equal(noCert.status, 401);
    assert.equal(noCert.body.error.code, 'client_certificate_required');
    const { key, csr } = newCsr();
    const j = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr });
    const nodeId = { key, cert: j.body.certificate, ca: j.body.trustBundle };
    const asNode = await api(c.url, 'GET', '/v1/nodes', undefined, nodeId);
    assert.equal(asNode.status, 403);
    assert.equal(asNode.body.error.code, 'forbidden');
    const adminId = {
      key: fs.readFileSync(path.join(c.dir, 'admin/key.pem'), 'utf8'),
      cert: fs.readFileSync(path.join(c.dir, 'admin/cert.pem'), 'utf8'),
      ca: fs.readFileSync(path.join(c.dir, 'admin/ca.pem'), 'utf8'),
    };
    const asAdmin = await api(c.url, 'GET', '/v1/nodes', undefined, adminId);
    assert.equal(asAdmin.status, 200);
    const renewAsAdmin = await api(c.url, 'POST', '/v1/renew', { csr: newCsr().csr }, adminId);
    assert.equal(renewAsAdmin.status, 403);
    const renewNoCert = await api(c.url, 'POST', '/v1/renew', { csr: newCsr().csr });
    assert.equal(renewNoCert.status, 401);
  });

  test('cairn update --cert-expiry refuses under 1h and applies to the next certificate', async () => {
    const low = cli(['update', '--cert-expiry', '30m', '--state-dir', c.dir]);
    assert.equal(low.code, 2);
    assert.match(low.stderr, /at least 1h/);
    const ok = cli(['update', '--cert-expiry', '2h', '--state-dir', c.dir]);
    assert.equal(ok.code, 0, ok.stderr);
    const j = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: newCsr().csr });
    const [row] = await query(c.dir, 'select not_before, not_after from certificates where node_id = ?', j.body.nodeId);
    // notBefore is backdated by one hour
    assert.equal(Math.round((row.not_after - row.not_before) / 60_000), 180);
    const back = cli(['update', '--cert-expiry', '90d', '--state-dir', c.dir]);
    assert.equal(back.code, 0, back.stderr);
  });

  test('token rotation: the old token fails at once, the new one works; only hashes are stored', async () => {
    const r = cli(['token', 'worker', '--rotate', '--quiet', '--state-dir', c.dir]);
    assert.equal(r.code, 0, r.stderr);
    const fresh = r.stdout.trim();
    assert.match(fresh, /^CAIRN-1-[0-9a-z]{50}-[0-9a-z]{25}$/);
    assert.notEqual(fresh, c.tokens.worker);
    const old = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: newCsr().csr });
    assert.equal(old.status, 401);
    const now = await api(c.url, 'POST', '/v1/join', { token: fresh, csr: newCsr().csr });
    assert.equal(now.status, 201);
    const shown = cli(['token', 'worker', '--state-dir', c.dir]);
    assert.match(shown.stdout, new RegExp(`cairn join --token ${fresh}`));
    const rows = await query(c.dir, 'select * from tokens');
    const secret = fresh.split('-').pop()!;
    assert.ok(rows.every((t) => !JSON.stringify(t).includes(secret)));
    c.tokens.worker = fresh;
  });

  test('failed joins are rate-limited per address', async () => {
    let limited = 0;
    for (let i = 0; i < 30; i++) {
      const r = await api(c.url, 'POST', '/v1/join', { token: 'nope', csr: 'x' });
      if (r.status === 429) {
        limited++;
        assert.equal(r.body.error.code, 'rate_limited');
        assert.ok(Number(r.headers['retry-after']) > 0);
      }
    }
    assert.ok(limited > 0, 'expected 429s');
    // even a good token is refused while limited
    const r = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: newCsr().csr });
    assert.equal(r.status, 429);
  });

  test('metrics are in Prometheus format', async () => {
    const r = await api(c.url, 'GET', '/metrics');
    assert.equal(r.status, 200);
    assert.match(r.body, /cairn_certificates_issued_total\{kind="join"\} \d+/);
    assert.match(r.body, /cairn_join_rejected_total\{reason="invalid_token"\} \d+/);
    assert.match(r.body, /cairn_certificates_by_days_to_expiry\{le_days="90"\} \d+/);
  });
});

describe('crash safety', () => {
  test('SIGKILL during a burst of joins: every certificate received is in the store, no serial repeats', async () => {
    const c = await startCluster();
    try {
      const received: string[] = [];
      let stop = false;
      const worker = async () => {
        while (!stop) {
          try {
            const r = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: newCsr().csr });
            if (r.status === 201) received.push(r.body.certificate);
          } catch {
            /* connection cut by the kill */
          }
        }
      };
      const workers = Array.from({ length: 8 }, worker);
      // kill mid-burst: once a good number of joins went through (however loaded the machine is)
      const deadline = Date.now() + 30_000;
      while (received.length < 30 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      await c.kill('SIGKILL');
      stop = true;
      await Promise.all(workers);
      assert.ok(received.length > 10, `only ${received.length} joins before the kill`);
      await c.start();
      const rows = await query(c.dir, 'select serial, cert_pem from certificates');
      const stored = new Set(rows.map((r) => r.cert_pem.trim()));
      for (const cert of received) assert.ok(stored.has(cert.trim()), 'a certificate a client received is missing from the store');
      assert.equal(new Set(rows.map((r) => r.serial)).size, rows.length);
      const [ic] = await query(c.dir, 'pragma integrity_check');
      assert.equal(ic.integrity_check, 'ok');
      // after restart, new serials never repeat old ones
      const after = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: newCsr().csr });
      assert.equal(after.status, 201);
      const all = await query(c.dir, 'select serial from certificates');
      assert.equal(new Set(all.map((r) => r.serial)).size, all.length);
    } finally {
      await c.cleanup();
    }
  });

  test('SIGTERM drains in-flight requests and exits 0', async () => {
    const c = await startCluster();
    try {
      const inflight = Array.from({ length: 20 }, () => api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: newCsr().csr }).catch((e) => e));
      await new Promise((r) => setTimeout(r, 20));
      const code = await c.kill('SIGTERM');
      assert.equal(code, 0);
      const results = await Promise.all(inflight);
      const ok = results.filter((r) => r && r.status === 201);
      const rows = await query(c.dir, 'select cert_pem from certificates where kind = ?', 'node');
      const stored = new Set(rows.map((r) => r.cert_pem.trim()));
      for (const r of ok) assert.ok(stored.has(r.body.certificate.trim()));
    } finally {
      await c.cleanup();
    }
  });
});
