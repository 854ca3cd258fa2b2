/**
 * Limited join tokens and recovery after expiry, through the real CLI and server:
 * - `cairn token create --uses 1`: two replicas on one PostgreSQL racing for the last use, exactly
 *   one join succeeds; `token ls` / `token revoke`; an expired or revoked token is refused.
 * - `cairn join --recover`: a node whose certificate expired gets the same node ID back (its
 *   certificate's expiry is moved into the past in the store: waiting an hour is not a test);
 *   refused, saying why, past the window, with a token of another role, with another key,
 *   and once removed; `node ls` shows the certificate state; `node prune` removes the long expired.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createCsr, csrToPem, generateKeyPair } from '../../src/pki/index.js';
import { addReplica, adminId, api, cli, cliAsync, Cluster, mkTemp, startCluster } from './cluster.js';
import { createDb, pgQuery, TestDb } from './pg.js';

const DAY = 86_400_000;
const csrPem = () => csrToPem(createCsr(generateKeyPair().privateKey));
const nodeJson = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, 'node.json'), 'utf8'));

/** Move a node's newest certificate's expiry into the past (the store's record is what the CA checks). */
async function expire(c: Cluster, nodeId: string, agoMs: number) {
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(path.join(c.dir, 'cairn.db'));
  try {
    db.pragma('busy_timeout = 5000');
    db.prepare('UPDATE certificates SET not_after = ? WHERE serial = (SELECT current_serial FROM nodes WHERE id = ?)').run(Date.now() - agoMs, nodeId);
  } finally {
    db.close();
  }
}

describe('recovery after expiry (join --recover), node ls, node prune', () => {
  let c: Cluster;
  let tmp: string;
  before(async () => {
    c = await startCluster('recover');
    tmp = mkTemp();
  });
  after(async () => {
    await c?.cleanup();
  });

  const joinNode = async (name: string, token = c.tokens.worker) => {
    const dir = path.join(tmp, name);
    const r = await cliAsync(['join', '--token', token, '--state-dir', dir, c.url]);
    assert.equal(r.code, 0, r.stderr);
    return { dir, id: nodeJson(dir).nodeId as string };
  };

  test('an expired node gets its node ID and role back; the old key signs; node ls shows the states', async () => {
    const n = await joinNode('w1');
    await expire(c, n.id, 3 * DAY);
    const ls = cli(['node', 'ls', '--state-dir', c.dir]);
    assert.match(ls.stdout, new RegExp(`${n.id}\\s+worker\\s+active\\s+expired`));
    assert.match(ls.stdout, /LAST RENEWAL/);
    const keyBefore = fs.readFileSync(path.join(n.dir, 'node.key'), 'utf8');
    const r = await cliAsync(['join', '--recover', '--token', c.tokens.worker, '--state-dir', n.dir, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.nodeId, n.id);
    assert.equal(j.role, 'worker');
    assert.equal(fs.readFileSync(path.join(n.dir, 'node.key'), 'utf8'), keyBefore);
    const inspect = JSON.parse(cli(['node', 'inspect', n.id, '--state-dir', c.dir, '--json']).stdout);
    assert.equal(inspect.certificate.state, 'good');
    assert.equal(inspect.certificate.serial, j.serial.toUpperCase().replace(/:/g, ''));
    // and it renews as usual afterwards
    const renew = await cliAsync(['agent', '--state-dir', n.dir, '--renew-now']);
    assert.equal(renew.code, 0, renew.stderr);
    const audit = await api(c.url, 'GET', '/v1/audit?action=node.recover', undefined, adminId(c.dir));
    assert.equal(audit.status, 200);
    assert.equal(audit.body.entries.length, 1);
    assert.equal(audit.body.entries[0].detail.node, n.id);
  });

  test('cairn agent --recover --token: the agent gets the identity back first, then renews as usual', async () => {
    const n = await joinNode('w-agent');
    await expire(c, n.id, 2 * DAY);
    const bad = await cliAsync(['agent', '--recover', '--state-dir', n.dir, '--renew-now']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--recover needs --token/);
    const r = await cliAsync(['agent', '--recover', '--token', c.tokens.worker, '--state-dir', n.dir, '--renew-now']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /identity recovered/);
    assert.equal(nodeJson(n.dir).nodeId, n.id);
    const inspect = JSON.parse(cli(['node', 'inspect', n.id, '--state-dir', c.dir, '--json']).stdout);
    assert.equal(inspect.certificate.state, 'good');
  });

  test('refusals say why: past the window, a token of another role, another key, not expired, removed, a bad token', async () => {
    const n = await joinNode('w2');
    const other = await joinNode('w3');
    // not expired yet: renew instead
    let r = await cliAsync(['join', '--recover', '--token', c.tokens.worker, '--state-dir', n.dir]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /has not expired: renew with it instead/);
    await expire(c, n.id, 40 * DAY);
    r = await cliAsync(['join', '--recover', '--token', c.tokens.worker, '--state-dir', n.dir]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /expired 40 days ago, longer than the recovery window \(30 days\): join as a new node/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    await expire(c, n.id, DAY);
    r = await cliAsync(['join', '--recover', '--token', c.tokens.manager, '--state-dir', n.dir]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /the token is for managers, and the node is a worker: use a worker token/);
    // another node's key (its state directory) for this node's ID: the proof of possession fails
    const body = { nodeId: n.id, token: c.tokens.worker, csr: csrPem() };
    const a = await api(c.url, 'POST', '/v1/recover', body);
    assert.equal(a.status, 403);
    assert.equal(a.body.error.code, 'recovery_refused');
    assert.match(a.body.error.message, /not signed with the key of the node's newest certificate/);
    const bad = await api(c.url, 'POST', '/v1/recover', { ...body, token: c.tokens.worker.slice(0, -1) + (c.tokens.worker.endsWith('x') ? 'y' : 'x') });
    assert.equal(bad.status, 401);
    assert.equal((await api(c.url, 'POST', '/v1/recover', { ...body, nodeId: '../x' })).status, 400);
    // removed: refused for good
    assert.equal(cli(['node', 'rm', n.id, '--state-dir', c.dir]).code, 0);
    r = await cliAsync(['join', '--recover', '--token', c.tokens.worker, '--state-dir', n.dir]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /has been removed from the cluster/);
    void other;
  });

  test('node prune removes nodes whose certificate expired longer ago than --expired-for, and they cannot recover', async () => {
    const old = await joinNode('p1');
    const recent = await joinNode('p2');
    const fresh = await joinNode('p3');
    await expire(c, old.id, 50 * DAY);
    await expire(c, recent.id, 2 * DAY);
    const r = cli(['node', 'prune', '--expired-for', '30d', '--state-dir', c.dir, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const removed: string[] = JSON.parse(r.stdout).removed;
    assert.ok(removed.includes(old.id));
    assert.ok(!removed.includes(recent.id) && !removed.includes(fresh.id));
    const ls = JSON.parse(cli(['node', 'ls', '--state-dir', c.dir, '--json']).stdout);
    assert.equal(ls.find((x: any) => x.id === old.id).status, 'removed');
    assert.equal(ls.find((x: any) => x.id === fresh.id).status, 'active');
    assert.equal(cli(['node', 'prune', '--expired-for', 'soon', '--state-dir', c.dir]).code, 2);
  });
});

describe('limited join tokens on two replicas sharing PostgreSQL', () => {
  let db: TestDb;
  let a: Cluster;
  let b: Awaited<ReturnType<typeof addReplica>>;
  before(async () => {
    db = await createDb();
    a = await startCluster('tokens', { store: db.url });
    b = await addReplica(db.url, path.join(a.dir, 'unlock.key'));
  });
  after(async () => {
    await b?.cleanup();
    await a?.cleanup();
    await db?.drop();
  });

  test('two replicas racing for the last use: exactly one join succeeds (10 trials)', async () => {
    // (two requests a trial: each refusal counts against the address's failed-join limit)
    for (let i = 0; i < 10; i++) {
      const t = cli(['token', 'create', '--role', 'worker', '--uses', '1', '--ttl', '10m', '-q', '--state-dir', a.dir]);
      assert.equal(t.code, 0, t.stderr);
      const token = t.stdout.trim();
      assert.match(token, /^CAIRN-1-[0-9a-z]{50}-[0-9a-z]{25}$/);
      const answers = await Promise.all([a.url, b.url].map((u) => api(u, 'POST', '/v1/join', { token, csr: csrPem() })));
      const statuses = answers.map((x) => x.status).sort();
      assert.deepEqual(statuses, [201, 401], `trial ${i}: ${JSON.stringify(answers.map((x) => x.body))}`);
    }
  });

  test('uses and expiry are kept; ls shows state, never a secret; revoke stops it; a manager token makes managers', async () => {
    const created = JSON.parse(cli(['token', 'create', '--role', 'manager', '--uses', '2', '--json', '--state-dir', a.dir]).stdout);
    assert.equal(created.maxUses, 2);
    assert.equal(created.state, 'active');
    const j1 = await api(b.url, 'POST', '/v1/join', { token: created.token, csr: csrPem() });
    assert.equal(j1.status, 201);
    assert.equal(j1.body.role, 'manager');
    let ls = JSON.parse(cli(['token', 'ls', '--json', '--state-dir', a.dir]).stdout);
    const row = ls.find((x: any) => x.id === created.id);
    assert.equal(row.uses, 1);
    assert.equal(row.token, undefined);
    assert.doesNotMatch(JSON.stringify(ls), /CAIRN-1-/);
    const stored = await pgQuery(db.url, 'select secret_hash from join_tokens where id = $1', [created.id]);
    assert.ok(!created.token.includes(stored[0].secret_hash));
    assert.equal(cli(['token', 'revoke', created.id, '--state-dir', a.dir]).code, 0);
    assert.equal((await api(a.url, 'POST', '/v1/join', { token: created.token, csr: csrPem() })).status, 401);
    ls = JSON.parse(cli(['token', 'ls', '--json', '--state-dir', a.dir]).stdout);
    assert.equal(ls.find((x: any) => x.id === created.id).state, 'revoked');
    const again = cli(['token', 'revoke', created.id, '--state-dir', a.dir]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /revoked already/);
    // expired: move its expiry into the past
    const e = JSON.parse(cli(['token', 'create', '--role', 'worker', '--json', '--state-dir', a.dir]).stdout);
    await pgQuery(db.url, 'update join_tokens set expires_at = $1 where id = $2', [Date.now() - 1000, e.id]);
    assert.equal((await api(a.url, 'POST', '/v1/join', { token: e.token, csr: csrPem() })).status, 401);
    // a refused join (bad CSR) does not spend a use
    const s = JSON.parse(cli(['token', 'create', '--role', 'worker', '--json', '--state-dir', a.dir]).stdout);
    assert.equal((await api(a.url, 'POST', '/v1/join', { token: s.token, csr: 'nonsense' })).status, 400);
    assert.equal((await api(a.url, 'POST', '/v1/join', { token: s.token, csr: csrPem() })).status, 201);
    // bad requests
    assert.equal(cli(['token', 'create', '--role', 'admin', '--state-dir', a.dir]).code, 1 + 1);
    assert.equal(cli(['token', 'create', '--role', 'worker', '--ttl', '10s', '--state-dir', a.dir]).code, 1);
    assert.equal(cli(['token', 'create', '--role', 'worker', '--uses', '0', '--state-dir', a.dir]).code, 1);
    // the reusable tokens are unchanged
    assert.equal((await api(a.url, 'POST', '/v1/join', { token: a.tokens.worker, csr: csrPem() })).status, 201);
    assert.equal((await api(b.url, 'POST', '/v1/join', { token: a.tokens.worker, csr: csrPem() })).status, 201);
  });
});
