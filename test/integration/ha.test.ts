/**
 * High availability on a real PostgreSQL: three replicas on one database, concurrent joins
 * and renewals, a replica killed mid-load, HAProxy in front, CRL leader failover, a
 * PostgreSQL restart, replicated configuration. All PostgreSQL tests live in this one file
 * so that they run one after another (one of them restarts the server).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { certificateFromPem, certificateInfo, certificatesFromPem, createCsr, csrToPem, generateKeyPair, privateKeyToPem, sequenceOf } from '../../src/pki/index.js';
import { addReplica, adminId, api, cli, Cluster, freePort, mkTemp, startCluster, TlsIdentity } from './cluster.js';
import { createDb, pgQuery, TestDb } from './pg.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Node {
  id: TlsIdentity & { key: string; cert: string; ca: string };
  nodeId: string;
  received: string[];
}

function csr() {
  const kp = generateKeyPair();
  return { key: privateKeyToPem(kp.privateKey), csr: csrToPem(createCsr(kp.privateKey)) };
}

/** Join through the endpoints in turn until one answers 201 (retrying like a real node). */
async function joinAny(endpoints: string[], token: string, deadline = Date.now() + 30_000): Promise<Node> {
  const k = csr();
  let last = '';
  for (let i = 0; Date.now() < deadline; i++) {
    const url = endpoints[i % endpoints.length];
    try {
      const r = await api(url, 'POST', '/v1/join', { token, csr: k.csr });
      if (r.status === 201) return { id: { key: k.key, cert: r.body.certificate, ca: r.body.trustBundle }, nodeId: r.body.nodeId, received: [r.body.certificate] };
      last = `${r.status} ${JSON.stringify(r.body)}`;
    } catch (e) {
      last = (e as Error).message;
    }
    await sleep(50);
  }
  throw new Error(`join failed everywhere: ${last}`);
}

async function renewAny(endpoints: string[], n: Node, start = 0, deadline = Date.now() + 30_000): Promise<void> {
  const k = csr();
  let last = '';
  for (let i = start; Date.now() < deadline; i++) {
    const url = endpoints[i % endpoints.length];
    try {
      const r = await api(url, 'POST', '/v1/renew', { csr: k.csr }, n.id);
      if (r.status === 200) {
        assert.equal(r.body.nodeId, n.nodeId);
        n.id = { key: k.key, cert: r.body.certificate, ca: r.body.trustBundle };
        n.received.push(r.body.certificate);
        return;
      }
      last = `${r.status} ${JSON.stringify(r.body)}`;
      if (r.status < 500 && r.status !== 429) throw new Error(last);
    } catch (e) {
      last = (e as Error).message;
      if (/^4\d\d /.test(last)) throw e;
    }
    await sleep(50);
  }
  throw new Error(`renew failed everywhere: ${last}`);
}

async function storedSerials(url: string): Promise<{ serial: string; cert_pem: string; replica_id: string }[]> {
  return pgQuery(url, 'select serial, cert_pem, replica_id from certificates');
}

async function assertAllReceivedStored(db: string, nodes: Node[]) {
  const rows = await storedSerials(db);
  const pems = new Set(rows.map((r) => r.cert_pem.trim()));
  for (const n of nodes) for (const c of n.received) assert.ok(pems.has(c.trim()), 'a certificate a client received is not in the store');
  assert.equal(new Set(rows.map((r) => r.serial)).size, rows.length, 'duplicate serials');
}

describe('HA: three replicas on one PostgreSQL', () => {
  let db: TestDb;
  let a: Cluster;
  let replicas: Awaited<ReturnType<typeof addReplica>>[] = [];
  let endpoints: string[];
  const unlockKey = () => path.join(a.dir, 'unlock.key');

  before(async () => {
    db = await createDb();
    a = await startCluster('ha', { store: db.url });
    replicas = [await addReplica(db.url, unlockKey()), await addReplica(db.url, unlockKey())];
    endpoints = [a.url, ...replicas.map((r) => r.url)];
    // fast CRL cycles for the failover test
    const r = await api(a.url, 'PATCH', '/v1/config', { crlLeaseMs: 2000, crlCycleMs: 200 }, adminId(a.dir));
    assert.equal(r.status, 200, JSON.stringify(r.body));
  });
  after(async () => {
    for (const r of replicas) await r.cleanup();
    await a?.cleanup();
    await db?.drop();
  });

  test('replica ls lists all three with a heartbeat', async () => {
    const r = cli(['replica', 'ls', '--state-dir', replicas[0].dir, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout);
    assert.equal(list.length, 3);
    for (const x of list) assert.ok(Date.now() - Date.parse(x.heartbeatAt) < 60_000);
  });

  test('a wrong unlock key refuses to start with a clear message', async () => {
    const bad = path.join(mkTemp(), 'bad.key');
    fs.writeFileSync(bad, 'CAIRN-UNLOCK-1-' + Buffer.alloc(32, 7).toString('base64url') + '\n', { mode: 0o600 });
    const r = cli(['serve', '--state-dir', replicas[0].dir, '--unlock-key-file', bad, '--listen', '127.0.0.1:0']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /unlock key does not open the CA keys/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    const missing = cli(['replica', 'add', '--state-dir', path.join(mkTemp(), 'x'), '--store', db.url, '--advertise-addr', '127.0.0.1'], { env: { CAIRN_UNLOCK_KEY: '' } });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /unlock key/);
  });

  test('60 nodes join and renew concurrently through all three: no duplicate serials, everything received is stored', async () => {
    const nodes = await Promise.all(Array.from({ length: 60 }, (_, i) => joinAny([endpoints[i % 3], ...endpoints], a.tokens.worker)));
    await Promise.all(nodes.map((n, i) => renewAny(endpoints, n, i + 1)));
    await Promise.all(nodes.map((n, i) => renewAny(endpoints, n, i + 2)));
    await assertAllReceivedStored(db.url, nodes);
    const rows = await storedSerials(db.url);
    const byReplica = new Set(rows.map((r) => r.replica_id));
    assert.ok(byReplica.size >= 3, 'every replica issued');
  });

  test('node rm while 12 clients renew through all three replicas: no certificate of a removed node stays good (8 trials)', async () => {
    const admin = adminId(a.dir);
    const cfg = await api(a.url, 'PATCH', '/v1/config', { renewalIntervalMs: 0 }, admin); // no per-node limit: renew as fast as possible
    assert.equal(cfg.status, 200, JSON.stringify(cfg.body));
    await sleep(2200); // every replica picks the setting up (2 s refresh)
    try {
      let renewals = 0;
      for (let trial = 0; trial < 8; trial++) {
        const nodes = await Promise.all(Array.from({ length: 12 }, (_, i) => joinAny([endpoints[i % 3], ...endpoints], a.tokens.worker)));
        const loops = nodes.map(async (n, i) => {
          for (let k = 0; ; k++) {
            const next = csr();
            const r = await api(endpoints[(i + k) % 3], 'POST', '/v1/renew', { csr: next.csr }, n.id);
            if (r.status !== 200) return r.body?.error?.code as string;
            n.id = { key: next.key, cert: r.body.certificate, ca: r.body.trustBundle };
            renewals++;
          }
        });
        await sleep(300);
        // remove every node while its renewals are in flight, through different replicas
        const rm = await Promise.all(nodes.map((n, i) => api(endpoints[(i + 1) % 3], 'DELETE', `/v1/nodes/${n.nodeId}`, undefined, admin)));
        for (const r of rm) assert.equal(r.status, 200, JSON.stringify(r.body));
        const ends = await Promise.all(loops);
        for (const e of ends) assert.ok(['node_removed', 'certificate_revoked'].includes(e), `a renewal loop ended with ${e}`);
        const good = await pgQuery(db.url, "select serial from certificates where node_id = any($1) and status = 'good'", [nodes.map((n) => n.nodeId)]);
        assert.deepEqual(good, [], `trial ${trial}: certificates of removed nodes are still good`);
      }
      assert.ok(renewals > 8 * 12, `only ${renewals} renewals ran: the race was not exercised`);
    } finally {
      await api(a.url, 'PATCH', '/v1/config', { renewalIntervalMs: 60_000 }, admin);
    }
  });

  test('SIGKILL one replica mid-load: the others carry on, retries succeed, its range is never reused', async () => {
    const victim = replicas[1];
    const before = await storedSerials(db.url);
    const maxSeqBefore = Math.max(...(await pgQuery(db.url, "select next from sequences where name = 'serial'")).map((r) => Number(r.next)));
    const load = Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const n = await joinAny([endpoints[i % 3], ...endpoints], a.tokens.worker);
        await renewAny(endpoints, n, i);
        return n;
      }),
    );
    await sleep(150);
    await victim.server.kill('SIGKILL');
    const nodes = await load;
    assert.equal(nodes.length, 40);
    await assertAllReceivedStored(db.url, nodes);
    await victim.server.start();
    const fresh = await joinAny([victim.url], a.tokens.worker);
    const seq = sequenceOf(certificateInfo(certificateFromPem(fresh.id.cert, 'cert')).serial);
    assert.ok(Number(seq) >= maxSeqBefore, `restarted replica reused a sequence number (${seq} < ${maxSeqBefore})`);
    const after = await storedSerials(db.url);
    assert.ok(after.length > before.length);
    assert.equal(new Set(after.map((r) => r.serial)).size, after.length);
  });

  test('cairn update --cert-expiry 2h through replica A: the next certificate from replica B has that lifetime', async () => {
    const r = cli(['update', '--cert-expiry', '2h', '--state-dir', a.dir]);
    assert.equal(r.code, 0, r.stderr);
    await sleep(2600); // configuration refresh period is 2 s
    const n = await joinAny([replicas[0].url], a.tokens.worker);
    const info = certificateInfo(certificateFromPem(n.id.cert, 'cert'));
    assert.equal(Math.round((info.notAfter.getTime() - info.notBefore.getTime()) / 60_000), 180); // 2h + 1h backdating
    assert.equal(cli(['update', '--cert-expiry', '90d', '--state-dir', a.dir]).code, 0);
  });

  test('kill the CRL leader: another replica publishes within lease + one cycle; numbers increase; openssl agrees', async () => {
    const tmp = mkTemp();
    const n = await joinAny(endpoints, a.tokens.worker);
    const [lease] = await pgQuery(db.url, "select holder, term from leases where name = 'crl'");
    const all = [{ id: JSON.parse(fs.readFileSync(path.join(a.dir, 'replica.json'), 'utf8')).replicaId, srv: a.server, url: a.url }, ...replicas.map((r) => ({ id: JSON.parse(fs.readFileSync(path.join(r.dir, 'replica.json'), 'utf8')).replicaId, srv: r.server, url: r.url }))];
    const leader = all.find((x) => x.id === lease.holder)!;
    assert.ok(leader, 'a replica holds the CRL lease');
    const others = all.filter((x) => x !== leader);
    const numberOf = async (url: string) => {
      const r = await api(url, 'GET', '/v1/crl/cluster?format=pem');
      assert.equal(r.status, 200);
      const f = path.join(tmp, `crl-${Math.random()}.pem`);
      fs.writeFileSync(f, r.body);
      const t = spawnSync('openssl', ['crl', '-in', f, '-noout', '-crlnumber'], { encoding: 'utf8' });
      return { n: parseInt(t.stdout.split('=')[1], 16), file: f };
    };
    const before = await numberOf(others[0].url);
    await leader.srv.kill('SIGKILL');
    const killedAt = Date.now();
    const serial = certificateInfo(certificateFromPem(n.id.cert, 'c')).serialHex;
    const rv = cli(['revoke', serial, '--reason', 'keyCompromise', '--state-dir', a.dir, '--server', others[0].url]);
    assert.equal(rv.code, 0, rv.stderr);
    // renewal is refused at once, on any replica, before any CRL
    const refused = await api(others[1].url, 'POST', '/v1/renew', { csr: csr().csr }, n.id);
    assert.equal(refused.status, 403);
    assert.equal(refused.body.error.code, 'certificate_revoked');
    let published: { n: number; file: string } | null = null;
    while (Date.now() - killedAt < 2000 + 200 + 3000) {
      const cur = await numberOf(others[1].url);
      const text = spawnSync('openssl', ['crl', '-in', cur.file, '-noout', '-text'], { encoding: 'utf8' }).stdout;
      if (cur.n > before.n && text.includes(serial)) {
        published = cur;
        break;
      }
      await sleep(200);
    }
    assert.ok(published, 'no replica published a CRL listing the revocation after the leader died');
    assert.ok(Date.now() - killedAt < 2000 + 200 + 3000);
    const [lease2] = await pgQuery(db.url, "select holder, term from leases where name = 'crl'");
    assert.notEqual(lease2.holder, leader.id);
    assert.ok(Number(lease2.term) > Number(lease.term));
    // every replica serves it, it verifies, and openssl reports the node certificate revoked
    const caFile = path.join(tmp, 'ca.pem');
    fs.writeFileSync(caFile, n.id.ca);
    const leaf = path.join(tmp, 'leaf.pem');
    fs.writeFileSync(leaf, n.id.cert);
    await sleep(1100); // CRL cache on the replicas
    for (const o of others) {
      const c = await numberOf(o.url);
      assert.ok(c.n >= published!.n);
      const v = spawnSync('openssl', ['crl', '-in', c.file, '-noout', '-CAfile', caFile], { encoding: 'utf8' });
      assert.match(v.stderr + v.stdout, /verify OK/);
      const chk = spawnSync('openssl', ['verify', '-crl_check', '-CAfile', caFile, '-CRLfile', c.file, leaf], { encoding: 'utf8' });
      assert.notEqual(chk.status, 0);
      assert.match(chk.stdout + chk.stderr, /certificate revoked/);
    }
    await leader.srv.start();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('HAProxy with /healthz checks in front: joins and renewals go on while a replica stops and starts', async () => {
    const tmp = mkTemp();
    const port = await freePort();
    const cfg = path.join(tmp, 'haproxy.cfg');
    const backends = endpoints.map((u, i) => `  server r${i} ${new URL(u).host} check check-ssl verify none inter 300 fall 1 rise 1`).join('\n');
    fs.writeFileSync(
      cfg,
      `global\n  maxconn 512\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch\nfrontend cairn\n  bind 127.0.0.1:${port}\n  default_backend replicas\nbackend replicas\n  balance roundrobin\n  option httpchk GET /healthz\n${backends}\n`,
    );
    const check = spawnSync('haproxy', ['-c', '-f', cfg], { encoding: 'utf8' });
    assert.equal(check.status, 0, check.stdout + check.stderr);
    const hp = spawn('haproxy', ['-db', '-f', cfg], { stdio: 'ignore' });
    try {
      await sleep(800);
      const lb = `https://127.0.0.1:${port}`;
      const nodes: Node[] = [];
      for (let i = 0; i < 5; i++) nodes.push(await joinAny([lb], a.tokens.worker));
      await replicas[0].server.kill('SIGTERM');
      const during = await Promise.all(Array.from({ length: 10 }, () => joinAny([lb], a.tokens.worker)));
      for (const n of nodes) await renewAny([lb], n);
      await replicas[0].server.start();
      await sleep(800);
      for (const n of [...nodes, ...during]) await renewAny([lb], n);
      await assertAllReceivedStored(db.url, [...nodes, ...during]);
    } finally {
      hp.kill('SIGKILL');
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  test('PostgreSQL restart during load: /readyz says 503 while it is down, replicas recover, nothing lost or duplicated', async () => {
    const version = fs.readdirSync('/usr/lib/postgresql').sort().at(-1)!;
    let stop = false;
    const nodes: Node[] = [];
    const load = (async () => {
      while (!stop) {
        try {
          nodes.push(await joinAny(endpoints, a.tokens.worker, Date.now() + 60_000));
        } catch {
          /* retried in the loop */
        }
      }
    })();
    await sleep(300);
    const down = spawnSync('pg_ctlcluster', [version, 'main', 'stop', '-m', 'fast'], { encoding: 'utf8' });
    assert.equal(down.status, 0, down.stderr);
    try {
      let sawNotReady = false;
      for (let i = 0; i < 20 && !sawNotReady; i++) {
        const r = await api(a.url, 'GET', '/readyz');
        if (r.status === 503) sawNotReady = true;
        else await sleep(100);
      }
      assert.ok(sawNotReady, '/readyz stayed 200 with PostgreSQL down');
      assert.equal((await api(a.url, 'GET', '/healthz')).status, 200);
    } finally {
      const up = spawnSync('pg_ctlcluster', [version, 'main', 'start'], { encoding: 'utf8' });
      assert.equal(up.status, 0, up.stderr);
    }
    let ready = false;
    for (let i = 0; i < 100 && !ready; i++) {
      const rs = await Promise.all(endpoints.map((u) => api(u, 'GET', '/readyz').then((r) => r.status).catch(() => 0)));
      ready = rs.every((s) => s === 200);
      if (!ready) await sleep(200);
    }
    assert.ok(ready, 'replicas did not become ready again');
    const count = nodes.length;
    while (nodes.length < count + 5) await sleep(100);
    stop = true;
    await load;
    await assertAllReceivedStored(db.url, nodes);
  });

  test('replica rm: the replica leaves replica ls, its server certificate is on the CRL, and it cannot serve again', async () => {
    const victim = replicas[1];
    const id = JSON.parse(fs.readFileSync(path.join(victim.dir, 'replica.json'), 'utf8')).replicaId;
    const self = cli(['replica', 'rm', id, '--state-dir', a.dir, '--server', victim.url]);
    assert.equal(self.code, 1);
    assert.match(self.stderr, /the one answering this request/);
    const r = cli(['replica', 'rm', id, '--state-dir', a.dir, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const { revoked } = JSON.parse(r.stdout);
    const serverSerial = certificateInfo(certificateFromPem(fs.readFileSync(path.join(victim.dir, 'server.crt'), 'utf8'), 'server.crt')).serialHex;
    assert.ok(revoked.includes(serverSerial), `${serverSerial} not in ${revoked}`);
    const ls = JSON.parse(cli(['replica', 'ls', '--state-dir', a.dir, '--json']).stdout);
    assert.ok(!ls.some((x: { id: string }) => x.id === id));
    assert.equal(cli(['replica', 'rm', id, '--state-dir', a.dir]).code, 1); // already gone
    // the CRL leader lists it within a few cycles
    const crlFile = path.join(mkTemp(), 'crl.pem');
    let text = '';
    for (let i = 0; i < 50 && !text.includes(serverSerial); i++) {
      await sleep(200);
      assert.equal(cli(['crl', '--state-dir', a.dir, '-o', crlFile]).code, 0);
      text = spawnSync('openssl', ['crl', '-in', crlFile, '-noout', '-text'], { encoding: 'utf8' }).stdout;
    }
    assert.ok(text.includes(serverSerial), 'the removed replica is not on the CRL');
    await victim.server.kill('SIGKILL');
    const again = cli(['serve', '--state-dir', victim.dir, '--unlock-key-file', unlockKey()]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /was removed from the cluster/);
  });
});

describe('store migrations', () => {
  test('two replicas migrating a fresh PostgreSQL database at once both succeed', async () => {
    const { openStore } = await import('../../src/store/store.js');
    const db = await createDb();
    try {
      const stores = await Promise.all([openStore('postgres', db.url), openStore('postgres', db.url), openStore('postgres', db.url)]);
      for (const s of stores) await s.close();
      const rows = await pgQuery(db.url, 'select name from kysely_migration order by name');
      const { migrationProvider } = await import('../../src/store/migrations.js');
      const all = Object.keys(await migrationProvider.getMigrations()).sort();
      assert.ok(all.length >= 5);
      assert.deepEqual(rows.map((r) => r.name), all);
    } finally {
      await db.drop();
    }
  });
});

describe('root rotation finished with --force on PostgreSQL, racing renewals', () => {
  let db: TestDb;
  let a: Cluster;
  let replicas: Awaited<ReturnType<typeof addReplica>>[] = [];
  before(async () => {
    db = await createDb();
    a = await startCluster('ha-rot', { store: db.url });
    replicas = [await addReplica(db.url, path.join(a.dir, 'unlock.key')), await addReplica(db.url, path.join(a.dir, 'unlock.key'))];
  });
  after(async () => {
    for (const r of replicas) await r.cleanup();
    await a?.cleanup();
    await db?.drop();
  });

  /** An admin call through replica A, retried while A re-issues its state directory's admin certificate after a completion. */
  async function asAdmin(method: string, p: string, body?: unknown) {
    let r = await api(a.url, method, p, body, adminId(a.dir));
    for (let i = 0; i < 50 && r.status === 403; i++) {
      await sleep(200);
      r = await api(a.url, method, p, body, adminId(a.dir));
    }
    return r;
  }

  test('a node either converged (active, its newest certificate of the new root and good) or was removed with every certificate revoked — never removed yet holding a good one (8 trials, 12 nodes, 3 replicas)', async (t) => {
    const endpoints = [a.url, ...replicas.map((r) => r.url)];
    let token = a.tokens.worker;
    const outcomes = { renewedKept: 0, renewedThenRemoved: 0, refused: 0 };
    for (let trial = 0; trial < 8; trial++) {
      // nodes that hold a certificate of the old root, then a rotation every replica knows of
      const nodes = await Promise.all(Array.from({ length: 12 }, (_, i) => joinAny([endpoints[i % 3], ...endpoints], token)));
      const started = await asAdmin('POST', '/v1/ca/rotate', {});
      assert.equal(started.status, 202, JSON.stringify(started.body));
      const newKey = started.body.rotation.to.keyId as string;
      await sleep(1300); // each replica reloads its CA generations every second
      // each node renews once, through the replicas in turn, while the rotation is finished with --force
      const renewals = nodes.map(async (n, i) => {
        await sleep((i % 4) * 3);
        const k = csr();
        const r = await api(endpoints[(i + trial) % 3], 'POST', '/v1/renew', { csr: k.csr }, { key: n.id.key, cert: n.id.cert });
        // the leaf's serial (during a rotation the answer's chain also carries the cross-signed root)
        const end: { serial?: string; code?: string } = r.status === 200 ? { serial: certificateInfo(certificatesFromPem(r.body.certificate, 'renewed')[0]).serialHex } : { code: String(r.body?.error?.code) };
        return end;
      });
      await sleep(4);
      const fin = await asAdmin('POST', '/v1/ca/rotation/finish', { force: true });
      assert.equal(fin.status, 200, JSON.stringify(fin.body));
      const ends = await Promise.all(renewals);
      token = token.replace(/^(CAIRN-1-)[^-]+-/, `$1${fin.body.digest}-`);

      const ids = nodes.map((n) => n.nodeId);
      const rows = await pgQuery(db.url, 'select id, status, current_serial from nodes where id = any($1)', [ids]);
      const certs = await pgQuery(db.url, 'select serial, node_id, status, issuer_key_id from certificates where node_id = any($1)', [ids]);
      for (const [i, n] of nodes.entries()) {
        const row = rows.find((r) => r.id === n.nodeId)!;
        const mine = certs.filter((c) => c.node_id === n.nodeId);
        const end = ends[i];
        if (row.status === 'removed') {
          assert.deepEqual(mine.filter((c) => c.status === 'good').map((c) => c.serial), [], `trial ${trial}: removed node ${n.nodeId} holds a good certificate`);
          if (end.serial) outcomes.renewedThenRemoved++;
          else outcomes.refused++;
        } else {
          assert.equal(row.status, 'active');
          const current = mine.find((c) => c.serial === row.current_serial)!;
          assert.equal(current.status, 'good', `trial ${trial}: active node ${n.nodeId}'s newest certificate is not good`);
          assert.equal(current.issuer_key_id, newKey, `trial ${trial}: active node ${n.nodeId} kept only a certificate of the retired root`);
          assert.equal(end.serial, current.serial, `trial ${trial}: active node ${n.nodeId}: its newest certificate is not the one its renewal received (${JSON.stringify(end)})`);
          outcomes.renewedKept++;
        }
        // refused: removed first, or (client_certificate_required) arriving after its replica stopped trusting the retired root
        if (end.code) assert.ok(['node_removed', 'certificate_revoked', 'client_certificate_required'].includes(end.code), `trial ${trial}: renewal ended with ${end.code}`);
      }
    }
    t.diagnostic(`outcomes: ${JSON.stringify(outcomes)}`);
    // both sides of the race happened: some renewals won, some lost to the completion
    assert.ok(outcomes.renewedKept > 0 && outcomes.renewedThenRemoved + outcomes.refused > 0, JSON.stringify(outcomes));
  });
});
