/**
 * The signed, hash-chained audit log: state changes recorded with replica, actor, action,
 * subject and outcome; `cairn audit ls` filters; `cairn audit verify` against rows edited,
 * deleted and inserted straight in SQLite and PostgreSQL (each caught and named), a chain
 * rewritten consistently (caught by the seal), a forged seal.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { auditEntryHash } from '../../src/store/audit-chain.js';
import { tmpDir } from '../helpers.js';
import { addReplica, Cluster, cliAsync, startCluster } from './cluster.js';
import { createDb, pgQuery, TestDb } from './pg.js';

type Exec = (sql: string, params?: unknown[]) => Promise<any[]>;

async function sqliteExec(dir: string): Promise<Exec> {
  const { default: Database } = await import('better-sqlite3');
  return async (sql, params = []) => {
    const db = new Database(path.join(dir, 'cairn.db'));
    db.pragma('busy_timeout = 10000');
    try {
      const st = db.prepare(sql.replace(/\$\d+/g, '?'));
      return st.reader ? st.all(...params) : (st.run(...params), []);
    } finally {
      db.close();
    }
  };
}

const pgExec = (url: string): Exec => (sql, params = []) => pgQuery(url, sql, params);

async function verify(c: Cluster): Promise<{ code: number; out: string; err: string; json: any }> {
  const r = await cliAsync(['audit', 'verify', '--json', '--state-dir', c.dir]);
  let json: any = null;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    /* not JSON */
  }
  return { code: r.code, out: r.stdout, err: r.stderr, json };
}

/** A few state changes of different kinds, then a seal. */
async function changes(c: Cluster, tmp: string): Promise<string> {
  const nd = path.join(tmp, 'node');
  assert.equal((await cliAsync(['join', '--token', c.tokens.worker, '--state-dir', nd, c.url])).code, 0);
  const nodeId = JSON.parse(fs.readFileSync(path.join(nd, 'node.json'), 'utf8')).nodeId;
  for (const args of [
    ['node', 'promote', nodeId],
    ['token', 'worker', '--rotate', '-q'],
    ['bundle', 'create', 'auditor', '-o', path.join(tmp, 'a.zip')],
    ['update', '--cert-expiry', '720h'],
    ['node', 'demote', nodeId],
    ['audit', 'seal'],
  ]) {
    const r = await cliAsync([...args, '--state-dir', c.dir]);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
  }
  return nodeId;
}

function tamperSuite(name: string, setup: () => Promise<{ c: Cluster; exec: Exec; cleanup(): Promise<void> }>) {
  describe(`cairn audit verify catches tampering (${name})`, () => {
    let c: Cluster;
    let exec: Exec;
    let done: () => Promise<void>;
    let tmp: string;
    let nodeId: string;
    before(async () => {
      ({ c, exec, cleanup: done } = await setup());
      tmp = tmpDir();
      nodeId = await changes(c, tmp);
    });
    after(async () => {
      await done?.();
    });

    const row = async (seq: number) => (await exec('SELECT * FROM audit WHERE seq = $1', [seq]))[0];
    const head = async () => Number((await exec("SELECT seq FROM audit_head WHERE id = 'chain'"))[0].seq);

    test('an intact log verifies; entries say replica, actor, action, subject and outcome, and audit ls filters them', async () => {
      const v = await verify(c);
      assert.equal(v.code, 0, v.err + v.out);
      assert.equal(v.json.ok, true);
      assert.ok(v.json.entries >= 8, `${v.json.entries} entries`);
      assert.ok(v.json.sealedThrough >= v.json.entries - 1);
      const ls = await cliAsync(['audit', 'ls', '--json', '--action', 'node.', '--since', '1h', '--state-dir', c.dir]);
      assert.equal(ls.code, 0, ls.stderr);
      const es = JSON.parse(ls.stdout);
      assert.deepEqual(es.map((e: any) => e.action), ['node.demote', 'node.promote', 'node.join']);
      for (const e of es) {
        assert.equal(e.subject, nodeId);
        assert.equal(e.outcome, 'success');
        assert.match(e.replica, /^[0-9a-z]{25}$/);
      }
      assert.match(es[0].actor, /^admin:[0-9A-F]+$/);
      assert.equal(es[2].actor, 'token:worker');
      const future = await cliAsync(['audit', 'ls', '--json', '--since', new Date(Date.now() + 3600_000).toISOString(), '--state-dir', c.dir]);
      assert.deepEqual(JSON.parse(future.stdout), []);
      const text = await cliAsync(['audit', 'ls', '--state-dir', c.dir]);
      assert.match(text.stdout, /bundle\.create\s+auditor/);
      assert.doesNotMatch(text.stdout + JSON.stringify(es), /CAIRN-1-/, 'no secrets (join tokens) in the log');
    });

    test('an edited entry is named', async () => {
      const r = await row(4);
      await exec('UPDATE audit SET detail = $1 WHERE seq = 4', ['{"tampered":true}']);
      const v = await verify(c);
      assert.equal(v.code, 1);
      assert.equal(v.json.problems[0].kind, 'changed');
      assert.equal(v.json.problems[0].seq, 4);
      assert.match(v.err, /^cairn: error: the audit log was tampered with: entry 4 .*was changed\n$/);
      await exec('UPDATE audit SET detail = $1 WHERE seq = 4', [r.detail]);
      assert.equal((await verify(c)).code, 0, 'restored');
    });

    test('an edit whose hash was recomputed is named by the broken link to the next entry', async () => {
      const r = await row(5);
      const forged = { ...r, actor: 'admin:FORGED', seq: Number(r.seq), at: Number(r.at) };
      await exec('UPDATE audit SET actor = $1, hash = $2 WHERE seq = 5', [forged.actor, auditEntryHash(r.prev_hash, forged)]);
      const v = await verify(c);
      assert.equal(v.code, 1);
      assert.equal(v.json.problems[0].seq, 5);
      assert.equal(v.json.problems[0].kind, 'changed');
      await exec('UPDATE audit SET actor = $1, hash = $2 WHERE seq = 5', [r.actor, r.hash]);
      assert.equal((await verify(c)).code, 0);
    });

    test('a deleted entry is named, in the middle and at the end', async () => {
      const r = await row(3);
      await exec('DELETE FROM audit WHERE seq = 3');
      let v = await verify(c);
      assert.equal(v.code, 1);
      assert.deepEqual([v.json.problems[0].kind, v.json.problems[0].seq], ['deleted', 3]);
      await exec('INSERT INTO audit (id, at, actor, action, detail, seq, replica_id, subject, outcome, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)', [
        r.id, r.at, r.actor, r.action, r.detail, r.seq, r.replica_id, r.subject, r.outcome, r.prev_hash, r.hash,
      ]);
      assert.equal((await verify(c)).code, 0);
      const n = await head();
      const last = await row(n);
      await exec('DELETE FROM audit WHERE seq = $1', [n]);
      v = await verify(c);
      assert.equal(v.code, 1);
      assert.deepEqual([v.json.problems[0].kind, v.json.problems[0].seq], ['deleted', n]);
      await exec('INSERT INTO audit (id, at, actor, action, detail, seq, replica_id, subject, outcome, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)', [
        last.id, last.at, last.actor, last.action, last.detail, last.seq, last.replica_id, last.subject, last.outcome, last.prev_hash, last.hash,
      ]);
      assert.equal((await verify(c)).code, 0);
    });

    test('inserted entries are named: outside the chain, after its head, and in the middle with the later ones renumbered', async () => {
      await exec("INSERT INTO audit (id, at, actor, action, detail) VALUES ('zz-outside', 1, 'admin:X', 'node.promote', '{}')");
      let v = await verify(c);
      assert.equal(v.code, 1);
      assert.equal(v.json.problems[0].kind, 'inserted');
      assert.match(v.json.problems[0].message, /outside the chain/);
      await exec("DELETE FROM audit WHERE id = 'zz-outside'");

      const n = await head();
      const last = await row(n);
      const extra = { seq: n + 1, id: 'zz-after', at: Date.now(), replica_id: last.replica_id, actor: 'admin:X', action: 'node.promote', subject: 'x', outcome: 'success', detail: '{}' };
      await exec('INSERT INTO audit (id, at, actor, action, detail, seq, replica_id, subject, outcome, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)', [
        extra.id, extra.at, extra.actor, extra.action, extra.detail, extra.seq, extra.replica_id, extra.subject, extra.outcome, last.hash, auditEntryHash(last.hash, extra),
      ]);
      v = await verify(c);
      assert.equal(v.code, 1);
      assert.deepEqual([v.json.problems[0].kind, v.json.problems[0].seq], ['inserted', n + 1]);
      await exec("DELETE FROM audit WHERE id = 'zz-after'");
      assert.equal((await verify(c)).code, 0);

      // in the middle, at position 4: every later entry moves up by one, the inserted one chains correctly to 3
      const rows = await exec('SELECT * FROM audit WHERE seq >= 4 ORDER BY seq DESC');
      for (const r of rows) await exec('UPDATE audit SET seq = $1 WHERE id = $2', [Number(r.seq) + 1, r.id]);
      const three = await row(3);
      const ins = { seq: 4, id: 'zz-middle', at: Number(three.at) + 1, replica_id: three.replica_id, actor: 'admin:X', action: 'node.promote', subject: 'x', outcome: 'success', detail: '{}' };
      await exec('INSERT INTO audit (id, at, actor, action, detail, seq, replica_id, subject, outcome, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)', [
        ins.id, ins.at, ins.actor, ins.action, ins.detail, ins.seq, ins.replica_id, ins.subject, ins.outcome, three.hash, auditEntryHash(three.hash, ins),
      ]);
      v = await verify(c);
      assert.equal(v.code, 1);
      assert.deepEqual([v.json.problems[0].kind, v.json.problems[0].seq], ['inserted', 4]);
      await exec("DELETE FROM audit WHERE id = 'zz-middle'");
      for (const r of rows.reverse()) await exec('UPDATE audit SET seq = $1 WHERE id = $2', [Number(r.seq), r.id]);
      assert.equal((await verify(c)).code, 0);
    });

    test('a chain rewritten consistently from an entry on (every later hash and the head recomputed) is caught by the seal', async () => {
      const saved = await exec('SELECT * FROM audit WHERE seq >= 2 ORDER BY seq');
      const savedHead = (await exec("SELECT * FROM audit_head WHERE id = 'chain'"))[0];
      let prev = (await row(1)).hash;
      for (const [i, r] of saved.entries()) {
        const e = { ...r, seq: Number(r.seq), at: Number(r.at), actor: i === 0 ? 'admin:REWRITTEN' : r.actor };
        const h = auditEntryHash(prev, e);
        await exec('UPDATE audit SET actor = $1, prev_hash = $2, hash = $3 WHERE id = $4', [e.actor, prev, h, r.id]);
        prev = h;
      }
      await exec("UPDATE audit_head SET hash = $1 WHERE id = 'chain'", [prev]);
      const v = await verify(c);
      assert.equal(v.code, 1);
      assert.equal(v.json.problems[0].kind, 'seal');
      assert.match(v.json.problems[0].message, /differ from what the seal of .* signed/);
      let p2 = (await row(1)).hash;
      for (const r of saved) {
        await exec('UPDATE audit SET actor = $1, prev_hash = $2, hash = $3 WHERE id = $4', [r.actor, r.prev_hash, r.hash, r.id]);
        p2 = r.hash;
      }
      await exec("UPDATE audit_head SET hash = $1 WHERE id = 'chain'", [savedHead.hash]);
      assert.equal(p2, savedHead.hash);
      assert.equal((await verify(c)).code, 0);
    });

    test('a forged or edited seal is refused', async () => {
      const s = (await exec('SELECT * FROM audit_seals ORDER BY seq DESC LIMIT 1'))[0];
      const sig = Buffer.from(s.signature, 'base64');
      sig[sig.length - 1] ^= 1;
      await exec('UPDATE audit_seals SET signature = $1 WHERE id = $2', [sig.toString('base64'), s.id]);
      let v = await verify(c);
      assert.equal(v.code, 1);
      assert.equal(v.json.problems[0].kind, 'seal');
      assert.match(v.json.problems[0].message, /invalid signature/);
      // signed by a certificate that is not the audit signing one (the replica's server certificate, say)
      const server = fs.readFileSync(path.join(c.dir, 'server.crt'), 'utf8');
      await exec('UPDATE audit_seals SET signature = $1, signer_pem = $2 WHERE id = $3', [s.signature, server, s.id]);
      v = await verify(c);
      assert.equal(v.code, 1);
      assert.match(v.json.problems[0].message, /not this cluster's audit signing certificate/);
      await exec('UPDATE audit_seals SET signature = $1, signer_pem = $2 WHERE id = $3', [s.signature, s.signer_pem, s.id]);
      assert.equal((await verify(c)).code, 0);
    });
  });
}

tamperSuite('SQLite', async () => {
  const c = await startCluster('audit-sqlite');
  return { c, exec: await sqliteExec(c.dir), cleanup: () => c.cleanup() };
});

let db: TestDb;
tamperSuite('PostgreSQL, two replicas appending to one chain', async () => {
  db = await createDb();
  const c = await startCluster('audit-pg', { store: db.url });
  const r2 = await addReplica(db.url, path.join(c.dir, 'unlock.key'));
  // entries from the second replica interleave with the first's in the one chain
  for (let i = 0; i < 3; i++) {
    const r = await cliAsync(['token', 'manager', '--rotate', '-q', '--state-dir', r2.dir, '--server', r2.url]);
    assert.equal(r.code, 0, r.stderr);
  }
  return {
    c,
    exec: pgExec(db.url),
    async cleanup() {
      await r2.cleanup();
      await c.cleanup();
      await db.drop();
    },
  };
});
