/**
 * The CRL builder keeps each CA's revocation list between publications and reads only the
 * revocations since its last read (authority/crl-publish.ts). On real SQLite and PostgreSQL:
 * what it lists is what the store holds — after one more revocation, after an entry expired,
 * after a revocation stamped by a clock far behind (an incremental read cannot see it: the
 * count catches it), and while revocations race publications.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CRL_REREAD_MS, publishCrl, type CrlPublishJob, type CrlLists } from '../../src/authority/crl-publish.js';
import { LocalKeySigner } from '../../src/authority/signer.js';
import { generateKeyPair, makeSerial, normalizeSerialHex, parseCrl, rootCaProfile, selfSignCertificate, spkiDer, verifyCrl } from '../../src/pki/index.js';
import { openStore, type SqlStore } from '../../src/store/sql-store.js';
import { tmpDir } from '../helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
import { createDb, type TestDb } from './pg.js';

const KEY_ID = 'aa'.repeat(20);
const OTHER_KEY_ID = 'bb'.repeat(20);

for (const kind of ['sqlite', 'postgres'] as const) {
  describe(`CRL revocation list kept between publications (${kind})`, () => {
    let db: TestDb | null = null;
    /** the revokers' store, and the builder's own connection (as the worker thread has) */
    let store: SqlStore;
    let builder: SqlStore;
    let signer: LocalKeySigner;
    let term: number;
    let caCert: Buffer;

    before(async () => {
      let location: string;
      if (kind === 'postgres') {
        db = await createDb();
        location = db.url;
      } else {
        location = path.join(tmpDir(), 'cairn.db');
      }
      store = await openStore(kind, location);
      // on PostgreSQL a connection of its own, as the worker thread has; on SQLite the same one
      // (a second connection on this thread would wait for a lock held across an await of this thread)
      builder = kind === 'postgres' ? await openStore(kind, location, { migrate: false, poolSize: 1 }) : store;
      const kp = generateKeyPair();
      caCert = selfSignCertificate(rootCaProfile({ O: 'test', CN: 'CRL list CA' }, spkiDer(kp.publicKey), makeSerial(1n)), kp.privateKey);
      signer = new LocalKeySigner(caCert, kp.privateKey);
      term = (await builder.acquireLease('crl', 'r1', 600_000))!;
      assert.ok(term !== null);
    });

    after(async () => {
      if (builder !== store) await builder?.close();
      await store?.close();
      await db?.drop();
    });

    let ca = 0;
    /** A CA of its own per test (its CRLs, its sequence): the tests do not see each other's lists. */
    const newJob = () => {
      const name = `t${++ca}`;
      return (aging = false): CrlPublishJob => ({ ca: name, sequence: `crl-${name}`, keyIds: [`${KEY_ID.slice(0, -2)}${ca.toString(16).padStart(2, '0')}`], lease: 'crl', holder: 'r1', term, mark: 0, validityMs: 3_600_000, aging, keep: 3 });
    };
    const insert = async (keyId: string, n: number, notAfter = Date.now() + 86_400_000): Promise<string[]> => {
      const serials = Array.from({ length: n }, () => `7F${randomBytes(15).toString('hex').toUpperCase()}`);
      await store.transaction(async (tx) => {
        for (const serial of serials) {
          await tx.insertCertificate({ serial, kind: 'node', node_id: null, role: 'worker', subject: 'CN=x', issuer_key_id: keyId, not_before: Date.now(), not_after: notAfter, status: 'good', revoked_at: null, revocation_reason: null, cert_pem: '', created_at: Date.now(), replica_id: null });
        }
      });
      return serials;
    };
    /** The newest CRL stored for the job's CA: its serials (normalized hex), checked against the CA. */
    const stored = async (name: string): Promise<Set<string>> => {
      const row = await store.latestCrl(name);
      assert.ok(row, `a CRL of ${name} is stored`);
      const crl = parseCrl(Buffer.from(row.der, 'base64'));
      assert.equal(verifyCrl(crl, [caCert]), 0, 'signed by the CA');
      assert.equal(crl.revoked.size, row.entries);
      return crl.revoked;
    };
    const norm = normalizeSerialHex;
    /** What the store holds: the serials a CRL of this key must list, no more, no less. */
    const truth = async (keyId: string) => new Set((await store.revokedFor([keyId], Date.now())).map((r) => norm(r.serial)));
    const assertSame = (a: Set<string>, b: Set<string>, what: string) => {
      const missing = [...b].filter((s) => !a.has(s));
      const extra = [...a].filter((s) => !b.has(s));
      assert.deepEqual({ missing: missing.length, extra: extra.length }, { missing: 0, extra: 0 }, `${what}: missing ${missing.slice(0, 3)}, extra ${extra.slice(0, 3)}`);
    };

    test('one more revocation is read alone; an unchanged list is not re-signed; an expired entry leaves; a revocation stamped long ago is caught by the count', { timeout: 60_000 }, async () => {
      const job = newJob();
      const keyId = job().keyIds[0];
      const lists: CrlLists = new Map();
      const serials = await insert(keyId, 500);
      await store.revokeCertificates(serials.slice(0, 300), 'keyCompromise');
      await insert(OTHER_KEY_ID, 20).then((s) => store.revokeCertificates(s, 'keyCompromise')); // another CA's: never listed

      let r = await publishCrl(builder, job(), signer, lists);
      assert.equal(r.read, 'full');
      assert.equal(r.entries, 300);
      assertSame(await stored(job().ca), await truth(keyId), 'first CRL');

      r = await publishCrl(builder, job(), signer, lists);
      assert.deepEqual([r.read, r.skipped], ['incremental', true], 'nothing changed: not re-signed');

      await store.revokeCertificates([serials[300]], 'superseded');
      r = await publishCrl(builder, job(), signer, lists);
      assert.deepEqual([r.read, r.entries, r.skipped], ['incremental', 301, undefined]);
      assertSame(await stored(job().ca), await truth(keyId), 'after one more revocation');

      // an entry whose certificate expires leaves the list, without a full read
      const [short] = await insert(keyId, 1, Date.now() + 1500);
      await store.revokeCertificates([short], 'keyCompromise');
      r = await publishCrl(builder, job(), signer, lists);
      assert.equal(r.entries, 302);
      await sleep(1600);
      r = await publishCrl(builder, job(), signer, lists);
      assert.deepEqual([r.read, r.entries], ['incremental', 301], 'the expired entry left');
      assertSame(await stored(job().ca), await truth(keyId), 'after an entry expired');

      // a revocation stamped by a clock far behind (or by a replica that does not stamp as
      // this one reads): out of the incremental read's reach, caught by the count
      await store.revokeCertificates([serials[301]], 'keyCompromise');
      await store.db.updateTable('certificates').set({ revoked_at: Date.now() - 10 * CRL_REREAD_MS }).where('serial', '=', serials[301]).execute();
      r = await publishCrl(builder, job(), signer, lists);
      assert.deepEqual([r.read, r.entries], ['full', 302], 'the count did not match: read in full');
      assertSame(await stored(job().ca), await truth(keyId), 'after a revocation stamped long ago');

      // an ageing CRL: read in full and re-signed though nothing changed
      const before = (await store.latestCrl(job().ca))!.number;
      r = await publishCrl(builder, job(true), signer, lists);
      assert.deepEqual([r.read, r.entries], ['full', 302]);
      assert.ok(r.number! > before);
    });

    test('revocations racing publications: each CRL lists every revocation that returned before its publication began and nothing unrevoked; the last lists them all (many rounds)', { timeout: 120_000 }, async () => {
      const job = newJob();
      const keyId = job().keyIds[0];
      const lists: CrlLists = new Map();
      const serials = await insert(keyId, 600);
      const done = new Set<string>();
      let next = 0;
      let stamped = 0;
      // four revokers, one certificate at a time; one revocation in 25 stamped 10 minutes back
      const revoker = async () => {
        while (next < serials.length) {
          const s = serials[next++];
          if (next % 25 === 0) {
            // revoked and stamped in one transaction, as a replica whose clock is behind would
            await store.transaction(async (tx) => {
              await tx.revokeCertificates([s], 'keyCompromise');
              await (tx as SqlStore).db.updateTable('certificates').set({ revoked_at: Date.now() - 10 * CRL_REREAD_MS }).where('serial', '=', s).execute();
            });
            stamped++;
          } else {
            await store.revokeCertificates([s], 'keyCompromise');
          }
          done.add(norm(s));
          if (Math.random() < 0.3) await sleep(Math.random() * 3);
        }
      };
      const revokers = Promise.all([revoker(), revoker(), revoker(), revoker()]);
      let rounds = 0;
      let incremental = 0;
      let finished = false;
      void revokers.finally(() => (finished = true));
      while (!finished) {
        const returned = new Set(done);
        const r = await publishCrl(builder, job(), signer, lists);
        rounds++;
        if (r.read === 'incremental') incremental++;
        const listed = await stored(job().ca);
        const missing = [...returned].filter((s) => !listed.has(s));
        assert.deepEqual(missing, [], `round ${rounds}: revoked before the publication began, not listed`);
        const unrevoked = [...listed].filter((s) => !serials.some((x) => norm(x) === s));
        assert.deepEqual(unrevoked, [], `round ${rounds}: listed, not revoked`);
        // SQLite's statements are synchronous: without a turn of the event loop this loop alone would run
        await new Promise((r) => setImmediate(r));
      }
      await revokers;
      await publishCrl(builder, job(), signer, lists);
      const all = await stored(job().ca);
      assertSame(all, await truth(keyId), 'the last CRL');
      assert.equal(all.size, serials.length);
      assert.ok(rounds >= 5, `publications raced the revocations (${rounds} rounds)`);
      assert.ok(incremental >= 1, `some reads were incremental (${incremental} of ${rounds})`);
      assert.ok(stamped > 0);
    });

  });
}
