/**
 * Defects from the security review: query-string validation, PATCH /v1/config names,
 * store outages as 503, a bad server key at start, logged refusals, and docs/api.md's error
 * table against what the server answers. Real servers, real TLS, real SQLite/PostgreSQL.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createCsr, csrToPem, generateKeyPair, privateKeyToPem } from '../../src/pki/index.js';
import { sql } from 'kysely';
import { openStore, StoreUnavailableError } from '../../src/store/store.js';
import { REPO_ROOT } from '../helpers.js';
import { api, cliAsync, Cluster, startCluster, TlsIdentity } from './cluster.js';
import { createDb, pgQuery, TestDb } from './pg.js';

const newCsr = () => {
  const kp = generateKeyPair();
  return { key: privateKeyToPem(kp.privateKey), csr: csrToPem(createCsr(kp.privateKey, { CN: 'x' })) };
};

function adminIdentity(dir: string): TlsIdentity {
  return {
    key: fs.readFileSync(path.join(dir, 'admin/key.pem'), 'utf8'),
    cert: fs.readFileSync(path.join(dir, 'admin/cert.pem'), 'utf8'),
    ca: fs.readFileSync(path.join(dir, 'admin/ca.pem'), 'utf8'),
  };
}

/** Write to a server's SQLite store behind its back (WAL: the server sees it at its next read). */
async function execSql(dir: string, sql: string, ...params: unknown[]): Promise<void> {
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(path.join(dir, 'cairn.db'), { fileMustExist: true });
  try {
    db.prepare(sql).run(...params);
  } finally {
    db.close();
  }
}

/** JSON log lines a server wrote so far. */
function logLines(c: Cluster): Record<string, any>[] {
  return c.logs
    .join('')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l));
}

async function waitForLog(c: Cluster, pred: (l: Record<string, any>) => boolean, ms = 5000): Promise<Record<string, any>> {
  const end = Date.now() + ms;
  for (;;) {
    const hit = logLines(c).find(pred);
    if (hit) return hit;
    if (Date.now() > end) throw new Error(`no such log line in:\n${c.logs.join('')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('hardening (SQLite server)', () => {
  let c: Cluster;
  let admin: TlsIdentity;
  before(async () => {
    c = await startCluster();
    admin = adminIdentity(c.dir);
  });
  after(async () => {
    await c.cleanup();
  });

  test('repeated or unknown query parameters are 400 bad_request on every route', async () => {
    const cases: [string, TlsIdentity][] = [
      ['/v1/certificates?node=a&node=b', admin],
      ['/v1/certificates?status=good&status=revoked', admin],
      ['/v1/certificates?color=blue', admin],
      ['/v1/nodes?color=blue', admin],
      ['/v1/nodes?limit=5&limit=6', admin],
      ['/v1/crl/cluster?format=pem&format=der', {}],
      ['/v1/crl/cluster?foo=1', {}],
      ['/v1/ca?x=1', {}],
      ['/healthz?x', {}],
    ];
    for (const [p, id] of cases) {
      const r = await api(c.url, 'GET', p, undefined, id);
      assert.equal(r.status, 400, `${p}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, 'bad_request', p);
    }
    // known, single parameters still work
    assert.equal((await api(c.url, 'GET', '/v1/certificates?kind=admin', undefined, admin)).status, 200);
    assert.doesNotMatch(c.logs.join(''), /internal error/);
  });

  test('PATCH /v1/config accepts only its own known settings', async () => {
    for (const k of ['toString', 'constructor', '__proto__', 'hasOwnProperty', 'valueOf', 'isPrototypeOf']) {
      const r = await api(c.url, 'PATCH', '/v1/config', undefined, admin, Buffer.from(`{"${k}": 3600000}`));
      assert.equal(r.status, 400, `${k}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, 'bad_request', k);
    }
    const cfg = await api(c.url, 'GET', '/v1/config', undefined, admin);
    assert.deepEqual(Object.keys(cfg.body).sort(), [
      'auditSealIntervalMs', 'certExpiryMs', 'crlCycleMs', 'crlLeaseMs', 'crlUrl', 'crlValidityMs', 'externalCas', 'ocspUrl', 'ocspValidityMs', 'recoveryWindowMs', 'renewalBurst', 'renewalGraceMs',
      'renewalIntervalMs', 'serialRangeIncrement', 'serialRangeLowWater',
    ]);
    const ok = await api(c.url, 'PATCH', '/v1/config', { certExpiryMs: 90 * 86_400_000 }, admin);
    assert.equal(ok.status, 200);
  });

  test('failed joins, rate limiting and refused renewals are logged at warn without secrets', async () => {
    const secretish = 'CAIRN-1-' + 'a'.repeat(50) + '-' + 'b'.repeat(25);
    const { csr } = newCsr();
    const bad = await api(c.url, 'POST', '/v1/join', { token: secretish, csr });
    assert.equal(bad.status, 401);
    const line = await waitForLog(c, (l) => l.msg === 'join refused' && l.code === 'invalid_token');
    assert.equal(line.level, 40);
    assert.equal(line.client, '127.0.0.1');
    // a refused renewal: a removed node
    const k = newCsr();
    const j = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: k.csr });
    assert.equal(j.status, 201);
    const rm = await api(c.url, 'DELETE', `/v1/nodes/${j.body.nodeId}`, undefined, admin);
    assert.equal(rm.status, 200);
    const renew = await api(c.url, 'POST', '/v1/renew', { csr: newCsr().csr }, { key: k.key, cert: j.body.certificate, ca: j.body.trustBundle });
    assert.equal(renew.status, 403);
    const rl = await waitForLog(c, (l) => l.msg === 'renewal refused');
    assert.equal(rl.level, 40);
    assert.equal(rl.client, '127.0.0.1');
    assert.ok(['node_removed', 'certificate_revoked'].includes(rl.code), rl.code);
    // rate limiting
    for (let i = 0; i < 25; i++) await api(c.url, 'POST', '/v1/join', { token: 'nope', csr: 'x' });
    const lim = await waitForLog(c, (l) => l.msg === 'join rate limited');
    assert.equal(lim.level, 40);
    assert.equal(lim.code, 'rate_limited');
    assert.equal(lim.client, '127.0.0.1');
    const all = c.logs.join('');
    assert.ok(!all.includes('b'.repeat(25)), 'a token secret was logged');
    assert.ok(!all.includes(csr.split('\n')[1]), 'a CSR was logged');
    assert.ok(!all.includes(c.tokens.worker.split('-').pop()!), 'a token secret was logged');
  });
});

describe('errors documented in docs/api.md', () => {
  let c: Cluster;
  let admin: TlsIdentity;
  before(async () => {
    c = await startCluster();
    admin = adminIdentity(c.dir);
  });
  after(async () => {
    await c.cleanup();
  });

  /** [status, code] rows of the error table in docs/api.md. */
  function documented(): [number, string][] {
    const md = fs.readFileSync(path.join(REPO_ROOT, 'docs/api.md'), 'utf8');
    const section = md.split(/^## Errors$/m)[1].split(/^## /m)[0];
    const rows: [number, string][] = [];
    for (const line of section.split('\n')) {
      const m = line.match(/^\| (\d{3}) \| (.+?) \| .* \|$/);
      if (!m) continue;
      for (const code of m[2].matchAll(/`([a-z_]+)`/g)) rows.push([Number(m[1]), code[1]]);
    }
    return rows;
  }

  test('docs/api.md lists exactly the error codes the API answers, each with its status in the error table', async () => {
    const { ERRORS, isErrorCode } = await import('../../src/util/errors.js');
    const doc = documented();
    assert.ok(doc.length >= 15, `parsed only ${doc.length} rows`);
    for (const [status, code] of doc) {
      assert.ok(isErrorCode(code), `docs/api.md lists ${code}, which is not an error code`);
      assert.ok(ERRORS[code].api, `docs/api.md lists ${code}, which is not marked api in src/util/errors.ts`);
      assert.equal(ERRORS[code].status, status, `docs/api.md says ${code} is ${status}`);
    }
    const docCodes = new Set(doc.map(([, code]) => code));
    assert.equal(docCodes.size, doc.length, 'a code is listed twice');
    for (const [code, e] of Object.entries(ERRORS)) if (e.api) assert.ok(docCodes.has(code), `${code} (${e.status}) is not in docs/api.md`);
  });

  test('the documented codes reachable over HTTP are answered with their documented status', async () => {
    const doc = new Map(documented().map(([s, code]) => [code, s]));
    const seen = new Map<string, number>();
    const record = (r: { status: number; body: any }) => {
      if (r.body?.error?.code) seen.set(r.body.error.code, r.status);
      return r;
    };
    const good = newCsr();
    const rsa = (await import('node:crypto')).generateKeyPairSync('rsa', { modulusLength: 1024 });
    record(await api(c.url, 'POST', '/v1/join', { csr: good.csr }));
    record(await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: 'junk' }));
    const der = Buffer.from(good.csr.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    der[der.length - 5] ^= 0xff;
    record(await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: csrToPem(der) }));
    record(await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: csrToPem(createCsr(rsa.privateKey)) }));
    record(await api(c.url, 'POST', '/v1/join', { token: 'CAIRN-1-x-y', csr: good.csr }));
    record(await api(c.url, 'GET', '/v1/nodes'));
    const j = record(await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: good.csr }));
    const nodeId = { key: good.key, cert: j.body.certificate, ca: j.body.trustBundle };
    record(await api(c.url, 'GET', '/v1/nodes', undefined, nodeId));
    record(await api(c.url, 'GET', '/v1/nodes/zzzzzzzzzzzzzzzzzzzzzzzzz', undefined, admin));
    const certs = await api(c.url, 'GET', `/v1/certificates?node=${j.body.nodeId}`, undefined, admin);
    const serial = certs.body.certificates[0].serial;
    // a second certificate of the node (a renewal) so the first can be revoked while it stays usable
    const k2 = newCsr();
    const renewed = await api(c.url, 'POST', '/v1/renew', { csr: k2.csr }, nodeId);
    assert.equal(renewed.status, 200);
    record(await api(c.url, 'POST', `/v1/certificates/${serial}/revoke`, {}, admin));
    record(await api(c.url, 'POST', `/v1/certificates/${serial}/revoke`, {}, admin));
    record(await api(c.url, 'POST', '/v1/renew', { csr: newCsr().csr }, nodeId)); // revoked certificate
    const body = Buffer.alloc(70 * 1024, 0x20);
    record(await api(c.url, 'POST', '/v1/join', undefined, {}, Buffer.concat([Buffer.from('{"a":"'), body, Buffer.from('"}')])));
    record(
      await new Promise((resolve, reject) => {
        import('node:https').then(({ default: https }) => {
          const req = https.request(new URL('/v1/join', c.url), { method: 'POST', rejectUnauthorized: false, agent: false, headers: { 'content-type': 'text/plain' } }, (res) => {
            let t = '';
            res.on('data', (d) => (t += d));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(t) }));
          });
          req.on('error', reject);
          req.end('hello');
        });
      }),
    );
    // removed node: its renewal is refused
    const g2 = newCsr();
    const j2 = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: g2.csr });
    await api(c.url, 'DELETE', `/v1/nodes/${j2.body.nodeId}`, undefined, admin);
    record(await api(c.url, 'POST', '/v1/renew', { csr: newCsr().csr }, { key: g2.key, cert: j2.body.certificate, ca: j2.body.trustBundle }));
    record(await api(c.url, 'POST', `/v1/nodes/${j2.body.nodeId}/promote`, undefined, admin));
    // an expired certificate (recorded as expired in the store; TLS still accepts the chain)
    const newSerial = (await api(c.url, 'GET', `/v1/certificates?node=${j.body.nodeId}&status=good`, undefined, admin)).body.certificates[0].serial;
    await execSql(c.dir, 'update certificates set not_after = ? where serial = ?', Date.now() - 1000, newSerial);
    record(await api(c.url, 'POST', '/v1/renew', { csr: newCsr().csr }, { key: k2.key, cert: renewed.body.certificate, ca: renewed.body.trustBundle }));
    for (let i = 0; i < 25; i++) record(await api(c.url, 'POST', '/v1/join', { token: 'nope', csr: 'x' }));
    for (const [code, status] of seen) {
      assert.ok(doc.has(code), `the server answered ${code} (${status}), which docs/api.md does not list`);
      assert.equal(status, doc.get(code), `${code}: the server answered ${status}, docs/api.md says ${doc.get(code)}`);
    }
    for (const code of ['bad_request', 'bad_csr', 'bad_csr_signature', 'weak_key', 'invalid_token', 'client_certificate_required', 'forbidden', 'not_found', 'already_revoked', 'certificate_revoked', 'node_removed', 'certificate_expired', 'body_too_large', 'unsupported_media_type', 'rate_limited']) {
      assert.ok(seen.has(code), `${code} was not exercised`);
    }
  });
});

describe('store outage (PostgreSQL)', () => {
  let db: TestDb;
  let c: Cluster;
  before(async () => {
    db = await createDb();
    c = await startCluster('outage', { store: db.url });
  });
  after(async () => {
    await c?.cleanup();
    await db?.drop();
  });

  test('join and renew answer 503 unavailable with Retry-After while PostgreSQL refuses connections', async () => {
    const k = newCsr();
    const j = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: k.csr });
    assert.equal(j.status, 201);
    const name = new URL(db.url).pathname.slice(1);
    const adminUrl = new URL(db.url);
    adminUrl.pathname = '/postgres';
    await pgQuery(adminUrl.toString(), `ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
    await pgQuery(adminUrl.toString(), 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [name]);
    try {
      const join = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: newCsr().csr }).catch((e) => {
        throw new Error(`${e.message}; server logs:\n${c.logs.join('')}`);
      });
      assert.equal(join.status, 503, JSON.stringify(join.body) + c.logs.join("").slice(-3000));
      assert.equal(join.body.error.code, 'unavailable');
      assert.ok(Number(join.headers['retry-after']) > 0);
      const renew = await api(c.url, 'POST', '/v1/renew', { csr: newCsr().csr }, { key: k.key, cert: j.body.certificate, ca: j.body.trustBundle });
      assert.equal(renew.status, 503, JSON.stringify(renew.body));
      assert.equal(renew.body.error.code, 'unavailable');
      assert.ok(Number(renew.headers['retry-after']) > 0);
      assert.equal((await api(c.url, 'GET', '/readyz')).status, 503);
      assert.doesNotMatch(c.logs.join(''), /internal error/);
    } finally {
      await pgQuery(adminUrl.toString(), `ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
    }
    // and it recovers on its own
    const again = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: newCsr().csr });
    assert.equal(again.status, 201);
  });
});

describe('store layer (PostgreSQL)', () => {
  test('a backend killed inside a transaction is a StoreUnavailableError, not a crash of the process', async () => {
    const db = await createDb();
    const store = await openStore('postgres', db.url);
    try {
      const adminUrl = new URL(db.url);
      adminUrl.pathname = '/postgres';
      await assert.rejects(
        store.db.transaction().execute(async (trx) => {
          const { rows } = await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(trx);
          await pgQuery(adminUrl.toString(), 'SELECT pg_terminate_backend($1)', [rows[0].pid]);
          await new Promise((r) => setTimeout(r, 300)); // the client learns of it while checked out, between queries
          await trx.selectFrom('cluster').selectAll().execute();
        }),
        (e) => e instanceof StoreUnavailableError && e.code === 'store_unavailable',
      );
      // the pool replaces the broken connection
      assert.deepEqual(await store.getCluster(), undefined);
    } finally {
      await store.close();
      await db.drop();
    }
  });
});

describe('cairn serve with a bad server.key', () => {
  for (const [what, make] of [
    ['garbage', () => 'this is not a key\n'],
    ['a valid key that does not match server.crt', () => privateKeyToPem(generateKeyPair().privateKey)],
  ] as [string, () => string][]) {
    test(`${what}: one line naming the file, exit 1`, async () => {
      const c = await startCluster();
      try {
        await c.kill('SIGKILL');
        const keyFile = path.join(c.dir, 'server.key');
        fs.writeFileSync(keyFile, make(), { mode: 0o600 });
        const r = await cliAsync(['serve', '--state-dir', c.dir, '--listen', '127.0.0.1:0']);
        assert.equal(r.code, 1, r.stderr);
        const lines = r.stderr.trim().split('\n').filter((l) => !l.startsWith('{'));
        assert.equal(lines.length, 1, r.stderr);
        assert.match(lines[0], /^cairn: error: /);
        assert.ok(lines[0].includes(keyFile), lines[0]);
        assert.doesNotMatch(lines[0], /DECODER|error:1E08010C|routines/);
      } finally {
        await c.cleanup();
      }
    });
  }
});

