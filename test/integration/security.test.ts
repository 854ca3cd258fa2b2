/**
 * A removed, revoked, demoted or over-eager node keeps no power, and the last admin is not
 * locked out — on a real server over SQLite (the PostgreSQL race is in ha.test.ts).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { createCsr, csrToPem, generateKeyPair, privateKeyToPem } from '../../src/pki/index.js';
import { adminId, api, cli, Cluster, query, startCluster, TlsIdentity } from './cluster.js';

interface Held {
  nodeId: string;
  id: TlsIdentity;
  serial: string;
}

function csr() {
  const kp = generateKeyPair();
  return { key: privateKeyToPem(kp.privateKey), csr: csrToPem(createCsr(kp.privateKey)) };
}

describe('removal, revocation and renewal are final', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster('security');
  });
  after(async () => {
    await c.cleanup();
  });

  const serialOf = async (nodeId: string) => (await api(c.url, 'GET', `/v1/nodes/${nodeId}`, undefined, adminId(c.dir))).body.certificate.serial as string;
  async function join(role: 'worker' | 'manager' = 'worker'): Promise<Held> {
    const k = csr();
    const r = await api(c.url, 'POST', '/v1/join', { token: c.tokens[role], csr: k.csr });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return { nodeId: r.body.nodeId, id: { key: k.key, cert: r.body.certificate, ca: r.body.trustBundle }, serial: await serialOf(r.body.nodeId) };
  }
  async function renew(h: Held) {
    const k = csr();
    const r = await api(c.url, 'POST', '/v1/renew', { csr: k.csr }, h.id);
    const next: Held | null = r.status === 200 ? { nodeId: h.nodeId, id: { key: k.key, cert: r.body.certificate, ca: r.body.trustBundle }, serial: await serialOf(h.nodeId) } : null;
    return { r, next };
  }
  const setConfig = async (patch: Record<string, number>) => {
    const r = await api(c.url, 'PATCH', '/v1/config', patch, adminId(c.dir));
    assert.equal(r.status, 200, JSON.stringify(r.body));
  };
  const statusOf = async (serial: string) => (await query(c.dir, 'select status, revocation_reason from certificates where serial = ?', serial))[0];

  test('revoke --node revokes every certificate of a node, beyond 10,000, and says how many', async () => {
    const n = await join();
    // 10,050 more good certificates of that node, recorded straight into the store
    const db = new Database(path.join(c.dir, 'cairn.db'));
    db.pragma('busy_timeout = 5000');
    const [tmpl] = await query(c.dir, 'select * from certificates where serial = ?', n.serial);
    const ins = db.prepare('insert into certificates (serial, kind, node_id, role, subject, issuer_key_id, not_before, not_after, status, revoked_at, revocation_reason, cert_pem, created_at, replica_id) values (?,?,?,?,?,?,?,?,?,?,?,?,?,?)');
    db.transaction(() => {
      for (let i = 0; i < 10_050; i++) {
        ins.run(`F${i.toString(16).padStart(31, '0')}`, 'node', n.nodeId, 'worker', tmpl.subject, tmpl.issuer_key_id, tmpl.not_before, tmpl.not_after + i, 'good', null, null, tmpl.cert_pem, tmpl.created_at + i, null);
      }
    })();
    db.close();
    const r = cli(['revoke', '--node', n.nodeId, '--reason', 'keyCompromise', '--state-dir', c.dir]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), `Revoked 10051 certificates of node ${n.nodeId} (keyCompromise).`);
    const [left] = await query(c.dir, "select count(*) as n from certificates where node_id = ? and status = 'good'", n.nodeId);
    assert.equal(left.n, 0);
    const j = JSON.parse(cli(['revoke', '--node', n.nodeId, '--state-dir', c.dir, '--json']).stdout);
    assert.deepEqual(j, { revoked: 0, serials: [], reason: 'unspecified' });
  });

  test('only the newest certificate renews: never an older one once the newest is revoked', async () => {
    const c1 = await join();
    const { next: c2 } = await renew(c1);
    assert.ok(c2);
    const rv = await api(c.url, 'POST', `/v1/certificates/${c2.serial}/revoke`, { reason: 'keyCompromise' }, adminId(c.dir));
    assert.equal(rv.status, 200, JSON.stringify(rv.body));
    const again = await renew(c1);
    assert.equal(again.r.status, 403, JSON.stringify(again.r.body));
    assert.equal(again.r.body.error.code, 'renewal_superseded');
    assert.equal((await renew(c2)).r.body.error.code, 'certificate_revoked');
  });

  test('the certificate before the newest renews within the grace window (a node that crashed), and the unused newest is revoked', async () => {
    const c1 = await join();
    const { next: c2 } = await renew(c1);
    // the node "crashed" before saving c2: it renews with c1, within the grace window
    const { r, next: c3 } = await renew(c1);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(await statusOf(c2!.serial), { status: 'revoked', revocation_reason: 'superseded' });
    assert.equal((await renew(c2!)).r.body.error.code, 'certificate_revoked');
    // two renewals back is never allowed; with no grace window, neither is one back
    const { next: c4 } = await renew(c3!);
    assert.equal((await renew(c1)).r.body.error.code, 'renewal_superseded');
    await setConfig({ renewalGraceMs: 0 });
    try {
      assert.equal((await renew(c3!)).r.body.error.code, 'renewal_superseded');
      assert.equal((await renew(c4!)).r.status, 200);
    } finally {
      await setConfig({ renewalGraceMs: 3_600_000 });
    }
  });

  test('renewals per node are limited: a burst, then 429 with Retry-After; other nodes are not affected', async () => {
    await setConfig({ renewalBurst: 3, renewalIntervalMs: 60_000 });
    try {
      let h = await join();
      for (let i = 0; i < 3; i++) {
        const { r, next } = await renew(h);
        assert.equal(r.status, 200, JSON.stringify(r.body));
        h = next!;
      }
      const { r } = await renew(h);
      assert.equal(r.status, 429, JSON.stringify(r.body));
      assert.equal(r.body.error.code, 'rate_limited');
      const wait = Number(r.headers['retry-after']);
      assert.ok(wait > 0 && wait <= 60, `Retry-After ${wait}`);
      // the refused attempt recorded nothing, and another node renews
      assert.equal((await renew(await join())).r.status, 200);
    } finally {
      await setConfig({ renewalBurst: 5, renewalIntervalMs: 60_000 });
    }
  });

  test('demotion: the node is told to renew, and its renewal revokes its manager certificates (privilegeWithdrawn)', async () => {
    const m1 = await join('manager');
    const { next: m2 } = await renew(m1);
    const ca0 = await api(c.url, 'GET', '/v1/ca', undefined, m2!.id);
    assert.deepEqual(ca0.body.node, { id: m1.nodeId, role: 'manager', renew: false });
    const d = cli(['node', 'demote', m1.nodeId, '--state-dir', c.dir]);
    assert.equal(d.code, 0, d.stderr);
    const ca1 = await api(c.url, 'GET', '/v1/ca', undefined, m2!.id);
    assert.deepEqual(ca1.body.node, { id: m1.nodeId, role: 'worker', renew: true });
    const { r, next: w } = await renew(m2!);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.role, 'worker');
    for (const s of [m1.serial, m2!.serial]) assert.deepEqual(await statusOf(s), { status: 'revoked', revocation_reason: 'privilegeWithdrawn' });
    assert.deepEqual(await statusOf(w!.serial), { status: 'good', revocation_reason: null });
    // without a client certificate, /v1/ca says nothing about nodes
    assert.equal((await api(c.url, 'GET', '/v1/ca')).body.node, undefined);
  });

  test('a connection keeps the client certificate it began with: TLS renegotiation is refused (the server reads the peer once per connection)', async () => {
    const h = await join();
    const sock = tls.connect({ host: '127.0.0.1', port: c.port, key: h.id.key, cert: h.id.cert, rejectUnauthorized: false, maxVersion: 'TLSv1.2' });
    try {
      await once(sock, 'secureConnect');
      assert.equal(sock.getProtocol(), 'TLSv1.2');
      // the request before shows the connection works; the renegotiation is then refused
      sock.write('GET /v1/whoami HTTP/1.1\r\nhost: ca\r\n\r\n');
      const [first] = await once(sock, 'data');
      assert.match(String(first), /^HTTP\/1\.1 200/);
      const refused = await new Promise<boolean>((resolve) => {
        sock.on('error', () => resolve(true));
        sock.on('close', () => resolve(true));
        sock.renegotiate({ rejectUnauthorized: false }, (err) => resolve(!!err));
      });
      assert.equal(refused, true);
    } finally {
      sock.destroy();
    }
  });

  test('no TLS session tickets: no session carrying a client certificate is handed out or resumed (TLS 1.3 and 1.2)', async () => {
    const h = await join();
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
      const first = tls.connect({ host: '127.0.0.1', port: c.port, key: h.id.key, cert: h.id.cert, rejectUnauthorized: false, maxVersion });
      let session: Buffer | undefined;
      first.on('session', (s: Buffer) => (session = s));
      try {
        await once(first, 'secureConnect');
        first.write('GET /v1/whoami HTTP/1.1\r\nhost: ca\r\n\r\n');
        assert.match(String((await once(first, 'data'))[0]), /^HTTP\/1\.1 200/);
        await new Promise((r) => setTimeout(r, 100)); // TLS 1.3 tickets follow the handshake
        // TLS 1.3: at most a stateful ticket (a session ID of 32 bytes), never the encrypted session
        const ticket = first.getTLSTicket();
        assert.ok(ticket === undefined || ticket.length <= 64, `${maxVersion}: a ${ticket?.length}-byte session ticket`);
      } finally {
        first.destroy();
      }
      const again = tls.connect({ host: '127.0.0.1', port: c.port, key: h.id.key, cert: h.id.cert, rejectUnauthorized: false, maxVersion, session: session ?? first.getSession() });
      try {
        await once(again, 'secureConnect');
        assert.equal(again.isSessionReused(), false, maxVersion);
      } finally {
        again.destroy();
      }
    }
  });

  test('the last good admin certificate is not revoked without --force; cairn admin-bundle lets an admin back in', async () => {
    const admins = () => JSON.parse(cli(['cert', 'ls', '--kind', 'admin', '--status', 'good', '--json', '--state-dir', c.dir]).stdout) as { serial: string }[];
    const [only] = admins();
    const refused = cli(['revoke', only.serial, '--state-dir', c.dir]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /last good admin certificate.*--force/);
    assert.equal((await statusOf(only.serial)).status, 'good');

    // a second admin bundle, issued with the store and unlock key alone
    const b = cli(['admin-bundle', '--state-dir', c.dir, '--json']);
    assert.equal(b.code, 0, b.stderr);
    const second = JSON.parse(b.stdout).serial;
    assert.equal((fs.statSync(path.join(c.dir, 'admin/key.pem')).mode & 0o777), 0o600);
    assert.equal(cli(['revoke', only.serial, '--state-dir', c.dir]).code, 0); // another admin is left
    // the last one goes only with --force, and then nobody is admin ...
    assert.equal(cli(['revoke', second, '--state-dir', c.dir]).code, 1);
    const forced = cli(['revoke', second, '--force', '--state-dir', c.dir]);
    assert.equal(forced.code, 0, forced.stderr);
    const locked = cli(['node', 'ls', '--state-dir', c.dir]);
    assert.equal(locked.code, 1);
    assert.match(locked.stderr, /revoked/);
    // ... until admin-bundle issues a new one
    assert.equal(cli(['admin-bundle', '--state-dir', c.dir]).code, 0);
    assert.equal(cli(['node', 'ls', '--state-dir', c.dir]).code, 0);
  });

  test('admin-bundle: clear errors for a directory that is not a replica, and a wrong unlock key', async () => {
    const r = cli(['admin-bundle', '--state-dir', path.join(c.dir, 'nope')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^cairn: error: .*not a cairn state directory/);
    const badKey = path.join(path.dirname(c.dir), 'bad.key');
    fs.writeFileSync(badKey, `${'A'.repeat(43)}=\n`, { mode: 0o600 });
    const w = cli(['admin-bundle', '--state-dir', c.dir, '--unlock-key-file', badKey]);
    assert.equal(w.code, 1, w.stderr);
    assert.doesNotMatch(w.stderr, /\n\s+at /);
  });
});
