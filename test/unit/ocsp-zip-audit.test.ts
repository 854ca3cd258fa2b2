/**
 * Pure parts of issue 11: OCSP request/response bytes (cross-checked with pkijs), the zip
 * reader's bounds, and the audit chain verifier over entries tampered with in memory.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as pkijs from 'pkijs';
import { ChainVerifier, type ChainRow } from '../../src/authority/audit-log.js';
import {
  buildOcspRequest, buildOcspResponse, certificateInfo, generateKeyPair, issueCertificate, leafProfile, makeIssuer, makeSerial, parseOcspRequest, PkiError,
  rootCaProfile, selfSignCertificate, spkiDer, MAX_OCSP_REQUESTS,
} from '../../src/pki/index.js';
import { tlv } from '../../src/pki/der.js';
import { CairnError } from '../../src/util/errors.js';
import { readZip, writeZip } from '../../src/util/zip.js';
import { MemoryStore } from './memory-store.js';

function ca() {
  const kp = generateKeyPair();
  const der = selfSignCertificate(rootCaProfile({ O: 'x', CN: 'root' }, spkiDer(kp.publicKey), makeSerial(1n)), kp.privateKey);
  return { der, issuer: makeIssuer(der, kp.privateKey) };
}

describe('OCSP bytes', () => {
  test('a request round-trips: hashes, serial, nonce; the CertID is echoed byte for byte', () => {
    const { der } = ca();
    const nonce = Buffer.from('0123456789abcdef');
    const req = parseOcspRequest(buildOcspRequest(der, '00ABCDEF', { hash: 'sha256', nonce }));
    assert.equal(req.certIds.length, 1);
    assert.equal(req.certIds[0].hashName, 'sha256');
    assert.equal(req.certIds[0].serialHex, 'ABCDEF');
    assert.equal(req.nonce!.subarray(2).toString(), '0123456789abcdef');
    const pk = pkijs.OCSPRequest.fromBER(buildOcspRequest(der, 'ABCDEF'));
    assert.equal(Buffer.from(pk.tbsRequest.requestList[0].reqCert.serialNumber.valueBlock.valueHexView).toString('hex'), '00abcdef', 'a positive INTEGER (sign byte)');
  });

  test('malformed requests are refused as bad_der: garbage, trailing bytes, empty list, too many requests, a negative serial', () => {
    const { der } = ca();
    const good = buildOcspRequest(der, '01');
    const bad = [
      Buffer.from('nope'),
      Buffer.concat([good, Buffer.from([0])]),
      tlv(0x30, tlv(0x30, tlv(0x30))),
      tlv(0x30, tlv(0x30, tlv(0x30, ...Array.from({ length: MAX_OCSP_REQUESTS + 1 }, () => parseOcspRequest(good).certIds[0].der).map((d) => tlv(0x30, d))))),
      Buffer.from(good.toString('hex').replace(/020101$/, '020181'), 'hex'),
    ];
    for (const b of bad) assert.throws(() => parseOcspRequest(b), (e: unknown) => e instanceof PkiError && e.code === 'bad_der', b.toString('hex').slice(0, 40));
  });

  test('a response is read by pkijs: status, responder key hash, certs, and a signature that verifies', async () => {
    const { der, issuer } = ca();
    const kp = generateKeyPair();
    const signerDer = issueCertificate(
      leafProfile({ subject: { O: 'x', CN: 'ocsp' }, publicKeyDer: spkiDer(kp.publicKey), publicKey: kp.publicKey, serial: makeSerial(2n), lifetimeMs: 3600_000, extKeyUsage: ['OCSPSigning'], keyUsage: ['digitalSignature'], ocspNoCheck: true }),
      issuer,
    );
    const id = parseOcspRequest(buildOcspRequest(der, '05')).certIds[0];
    const now = new Date();
    const body = buildOcspResponse({
      signerCertDer: signerDer, signerKey: kp.privateKey, producedAt: now, certs: [signerDer],
      answers: [{ certIdDer: id.der, status: { status: 'revoked', revokedAt: now, reason: 'keyCompromise' }, thisUpdate: now, nextUpdate: new Date(now.getTime() + 60_000) }],
    });
    const resp = pkijs.OCSPResponse.fromBER(body);
    assert.equal(resp.responseStatus.valueBlock.valueDec, 0);
    const basic = pkijs.BasicOCSPResponse.fromBER(resp.responseBytes!.response.valueBlock.valueHexView);
    assert.equal(basic.tbsResponseData.responses.length, 1);
    assert.equal(basic.tbsResponseData.responses[0].certStatus.idBlock.tagNumber, 1, 'revoked');
    const ok = await basic.verify({ trustedCerts: [pkijs.Certificate.fromBER(der)] });
    assert.equal(ok, true);
    assert.equal(certificateInfo(signerDer).extKeyUsage.join(), '1.3.6.1.5.5.7.3.9');
  });
});

describe('zip', () => {
  test('round trip with modes', () => {
    const z = writeZip([{ name: 'key.pem', data: Buffer.from('secret'), mode: 0o600 }, { name: 'ca.pem', data: Buffer.alloc(5000, 65), mode: 0o644 }]);
    const e = readZip(z, { maxEntries: 4, maxEntryBytes: 10_000 });
    assert.deepEqual(e.map((x) => [x.name, x.mode, x.data.length]), [['key.pem', 0o600, 6], ['ca.pem', 0o644, 5000]]);
  });
  test('bounds: entries, size (a zip bomb stops at the limit), CRC, names', () => {
    const refuse = (z: Buffer, re: RegExp, lim = { maxEntries: 4, maxEntryBytes: 1000 }) =>
      assert.throws(() => readZip(z, lim), (e: unknown) => e instanceof CairnError && e.code === 'bad_zip' && re.test(e.message));
    refuse(writeZip(Array.from({ length: 5 }, (_, i) => ({ name: `f${i}`, data: Buffer.from('x'), mode: 0o644 }))), /5 entries/);
    refuse(writeZip([{ name: 'big', data: Buffer.alloc(1_000_000), mode: 0o644 }]), /larger than 1000/);
    const z = writeZip([{ name: 'a', data: Buffer.from('hello world'), mode: 0o644 }]);
    z.writeUInt32LE(z.readUInt32LE(14) ^ 1, 14);
    const cd = z.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    z.writeUInt32LE(z.readUInt32LE(cd + 16) ^ 1, cd + 16);
    refuse(z, /CRC/);
    refuse(writeZip([{ name: 'a/../b', data: Buffer.from('x'), mode: 0o644 }]), /plain file name/);
    refuse(writeZip([{ name: 'x', data: Buffer.from('1'), mode: 0o644 }, { name: 'x', data: Buffer.from('2'), mode: 0o644 }]), /twice/);
    refuse(Buffer.from('PK'), /too short/);
  });
});

describe('audit chain verifier', () => {
  async function chain(n: number): Promise<ChainRow[]> {
    const s = new MemoryStore();
    s.origin = 'r1';
    for (let i = 0; i < n; i++) await s.audit('admin:1', 'node.promote', { node: `n${i}` });
    return (await s.auditChain({ afterSeq: 0, limit: 100 })).map((r) => ({ ...r, seq: r.seq! }));
  }
  const check = (rows: ChainRow[], head: { seq: number; hash: string }) => {
    const v = new ChainVerifier('c', [], []);
    rows.forEach((r) => v.add(r));
    return v.finish(head, { count: 0 });
  };
  test('intact, edited, deleted, inserted', async () => {
    const rows = await chain(6);
    const head = { seq: 6, hash: rows[5].hash! };
    assert.equal(check(rows, head).ok, true);
    const edited = rows.map((r) => (r.seq === 3 ? { ...r, detail: '{}' } : r));
    assert.deepEqual(check(edited, head).problems.map((p) => [p.kind, p.seq]).slice(0, 1), [['changed', 3]]);
    assert.deepEqual(check(rows.filter((r) => r.seq !== 2), head).problems.map((p) => [p.kind, p.seq])[0], ['deleted', 2]);
    const extra = { ...rows[1], id: 'x', prev_hash: rows[1].hash, hash: 'f'.repeat(64) };
    const inserted = [...rows.slice(0, 2), { ...extra, seq: 3 }, ...rows.slice(2).map((r) => ({ ...r, seq: r.seq + 1 }))];
    const p = check(inserted, { seq: 7, hash: rows[5].hash! }).problems[0];
    assert.equal(p.seq, 3);
  });
});

describe('migration 0007 on a store with an older audit log', () => {
  test('the entries recorded before are chained oldest first, and new entries chain after them (SQLite)', async () => {
    const { default: SqliteDatabase } = await import('better-sqlite3');
    const { Kysely, Migrator, SqliteDialect } = await import('kysely');
    const { migrationProvider } = await import('../../src/store/migrations.js');
    const { openStore } = await import('../../src/store/sql-store.js');
    const { tmpDir } = await import('../helpers.js');
    const file = `${tmpDir()}/old.db`;
    const old = new Kysely<any>({ dialect: new SqliteDialect({ database: new SqliteDatabase(file) }) });
    const r = await new Migrator({ db: old, provider: migrationProvider }).migrateTo('0006_node_and_issuer_lookups');
    assert.equal(r.error, undefined);
    for (const [i, a] of ['node.promote', 'token.rotate', 'node.remove'].entries()) {
      await old.insertInto('audit').values({ id: `old-${i}`, at: 1000 + i, actor: 'admin:1', action: a, detail: '{}' }).execute();
    }
    await old.destroy();
    const store = await openStore('sqlite', file);
    try {
      store.origin = 'r1';
      await store.audit('admin:2', 'config.update', { certExpiryMs: 1 });
      const rows = (await store.auditChain({ afterSeq: 0, limit: 10 })).map((x) => ({ ...x, seq: Number(x.seq) }));
      assert.deepEqual(rows.map((x) => [x.seq, x.action]), [[1, 'node.promote'], [2, 'token.rotate'], [3, 'node.remove'], [4, 'config.update']]);
      const head = await store.auditHead();
      const v = new ChainVerifier('c', [], []);
      rows.forEach((x) => v.add(x));
      const res = v.finish({ seq: Number(head!.seq), hash: head!.hash }, { count: await store.countUnchainedAudit() });
      assert.equal(res.ok, true, JSON.stringify(res.problems));
    } finally {
      await store.close();
    }
  });
});
