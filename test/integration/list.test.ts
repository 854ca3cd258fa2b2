/**
 * Listings that scale: cursor pagination of GET /v1/nodes and GET /v1/certificates, and the
 * CLI following the cursor. 100,000 nodes (with their certificates) are written straight into
 * the real SQLite store through the Store class, then listed through the real server and CLI.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openStore } from '../../src/store/store.js';
import { api, cliAsync, Cluster, startCluster, TlsIdentity } from './cluster.js';

const N = 100_000;

function adminIdentity(dir: string): TlsIdentity {
  return {
    key: fs.readFileSync(path.join(dir, 'admin/key.pem'), 'utf8'),
    cert: fs.readFileSync(path.join(dir, 'admin/cert.pem'), 'utf8'),
    ca: fs.readFileSync(path.join(dir, 'admin/ca.pem'), 'utf8'),
  };
}

const nodeId = (i: number) => `n${i.toString(36).padStart(24, '0')}`;
const serialOf = (i: number) => `7F${i.toString(16).toUpperCase().padStart(30, '0')}`;

/** N nodes, each with a current certificate; three nodes share each created_at (ties are ordered by id). */
async function fill(dir: string, base: number): Promise<void> {
  const store = await openStore('sqlite', path.join(dir, 'cairn.db'), { migrate: false });
  try {
    for (let start = 0; start < N; start += 1000) {
      const idx = Array.from({ length: Math.min(1000, N - start) }, (_, j) => start + j);
      await store.db.transaction().execute(async (trx) => {
        await trx
          .insertInto('nodes')
          .values(idx.map((i) => ({ id: nodeId(i), role: i % 10 ? 'worker' : 'manager', status: 'active', created_at: base + Math.floor(i / 3), updated_at: base, current_serial: serialOf(i) })))
          .execute();
        await trx
          .insertInto('certificates')
          .values(
            idx.map((i) => ({
              serial: serialOf(i), kind: 'node', node_id: nodeId(i), role: 'worker', subject: `CN=${nodeId(i)}`, issuer_key_id: 'ab', not_before: base,
              not_after: base + 86_400_000, status: 'good', revoked_at: null, revocation_reason: null, cert_pem: '-', created_at: base + Math.floor(i / 3), replica_id: null,
            })),
          )
          .execute();
      });
    }
  } finally {
    await store.close();
  }
}

describe(`listing ${N} nodes`, () => {
  let c: Cluster;
  let admin: TlsIdentity;
  before(async () => {
    c = await startCluster();
    admin = adminIdentity(c.dir);
    await fill(c.dir, Date.now() - 3_600_000);
  });
  after(async () => {
    await c.cleanup();
  });

  test('GET /v1/nodes pages with an opaque cursor: every node once, in (created, id) order, with its certificate', async () => {
    const first = await api(c.url, 'GET', '/v1/nodes', undefined, admin);
    assert.equal(first.status, 200);
    assert.equal(first.body.nodes.length, 500, 'default page size');
    assert.equal(typeof first.body.next, 'string');
    assert.equal(first.body.nodes[0].id, nodeId(0));
    assert.equal(first.body.nodes[0].certificate.serial, serialOf(0));
    const seen: string[] = [];
    let after: string | null = null;
    let pages = 0;
    do {
      const r: { status: number; body: any } = await api(c.url, 'GET', `/v1/nodes?limit=1000${after ? `&after=${after}` : ''}`, undefined, admin);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.ok(r.body.nodes.length <= 1000);
      for (const n of r.body.nodes) seen.push(n.id);
      after = r.body.next;
      pages++;
    } while (after);
    assert.equal(seen.length, N);
    assert.equal(new Set(seen).size, N);
    assert.deepEqual(seen.slice(0, 5), [0, 1, 2, 3, 4].map(nodeId));
    assert.ok(pages >= N / 1000);
  });

  test('limits and cursors are checked', async () => {
    for (const q of ['limit=0', 'limit=1001', 'limit=abc', 'limit=-1', 'after=', 'after=%21%21', `after=${Buffer.from('["x","y"]').toString('base64url')}`, `after=${Buffer.from('[1,"a b"]').toString('base64url')}`]) {
      const r = await api(c.url, 'GET', `/v1/nodes?${q}`, undefined, admin);
      assert.equal(r.status, 400, `${q}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, 'bad_request');
    }
    const one = await api(c.url, 'GET', '/v1/nodes?limit=1', undefined, admin);
    const two = await api(c.url, 'GET', `/v1/nodes?limit=1&after=${one.body.next}`, undefined, admin);
    assert.equal(two.body.nodes[0].id, nodeId(1));
  });

  test('GET /v1/certificates pages past the old 10,000-row cap', async () => {
    let after: string | null = null;
    let n = 0;
    do {
      const r: { status: number; body: any } = await api(c.url, 'GET', `/v1/certificates?kind=node&limit=1000${after ? `&after=${after}` : ''}`, undefined, admin);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      n += r.body.certificates.length;
      after = r.body.next;
    } while (after);
    assert.equal(n, N);
    const last = await api(c.url, 'GET', `/v1/certificates?node=${nodeId(N - 1)}`, undefined, admin);
    assert.equal(last.body.certificates.length, 1);
    assert.equal(last.body.next, null);
  });

  test('cairn node ls and cert ls follow the cursor (table and --json)', async () => {
    const json = await cliAsync(['node', 'ls', '--json', '--state-dir', c.dir], { timeoutMs: 120_000 });
    assert.equal(json.code, 0, json.stderr);
    const nodes = JSON.parse(json.stdout);
    assert.equal(nodes.length, N);
    assert.equal(nodes[N - 1].id, nodeId(N - 1));
    assert.equal(json.stdout.split('\n').length, N + 3, 'one node per line between [ and ]');
    const tableOut = await cliAsync(['node', 'ls', '--state-dir', c.dir], { timeoutMs: 120_000 });
    assert.equal(tableOut.code, 0, tableOut.stderr);
    const lines = tableOut.stdout.trimEnd().split('\n');
    assert.match(lines[0], /^ID\s+ROLE\s+STATUS\s+CERT\s+CERT EXPIRES\s+LAST RENEWAL\s+SERIAL$/);
    assert.equal(lines.length, N + 1);
    assert.ok(lines[1].startsWith(`${nodeId(0)}  manager`), lines[1]);
    const certs = await cliAsync(['cert', 'ls', '--kind', 'node', '--json', '--state-dir', c.dir], { timeoutMs: 120_000 });
    assert.equal(certs.code, 0, certs.stderr);
    assert.equal(JSON.parse(certs.stdout).length, N);
  });
});
