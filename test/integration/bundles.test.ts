/**
 * Client bundles: `cairn bundle create/ls/revoke/unpack` against real servers — the zip
 * layout read by Info-ZIP's unzip, certificates checked by `openssl verify -x509_strict`
 * against the right root, what a read-only bundle may call, the CLI and curl driven by
 * env.sh, and a revoked bundle refused at once by every replica (two over PostgreSQL) and
 * listed on the client CA's CRL.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { writeZip } from '../../src/util/zip.js';
import { fileMode, run, tmpDir } from '../helpers.js';
import { addReplica, adminId, api, Cluster, cliAsync, startCluster, TlsIdentity } from './cluster.js';
import { createDb, TestDb } from './pg.js';

const idOf = (dir: string): TlsIdentity => ({
  key: fs.readFileSync(path.join(dir, 'key.pem'), 'utf8'),
  cert: fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8'),
  ca: fs.readFileSync(path.join(dir, 'ca.pem'), 'utf8'),
});

async function createAndUnpack(c: Cluster, tmp: string, user: string, extra: string[] = []): Promise<{ zip: string; dir: string; serial: string }> {
  const zip = path.join(tmp, `${user}.zip`);
  const r = await cliAsync(['bundle', 'create', user, '-o', zip, '--state-dir', c.dir, '--json', ...extra]);
  assert.equal(r.code, 0, r.stderr);
  const dir = path.join(tmp, user);
  const u = await cliAsync(['bundle', 'unpack', zip, '-d', dir]);
  assert.equal(u.code, 0, u.stderr);
  return { zip, dir, serial: JSON.parse(r.stdout).serial };
}

describe('client bundles (SQLite)', () => {
  let c: Cluster;
  let tmp: string;
  let alice: { zip: string; dir: string; serial: string };
  let root: { cluster: string; client: string };
  let nodeId: string;

  before(async () => {
    c = await startCluster('bundles');
    tmp = tmpDir();
    alice = await createAndUnpack(c, tmp, 'alice');
    const ca = (await api(c.url, 'GET', '/v1/ca')).body;
    root = { cluster: path.join(tmp, 'cluster.pem'), client: path.join(tmp, 'client.pem') };
    fs.writeFileSync(root.cluster, ca.roots.cluster);
    fs.writeFileSync(root.client, ca.roots.client);
    const nd = path.join(tmp, 'node');
    const j = await cliAsync(['join', '--token', c.tokens.worker, '--state-dir', nd, c.url]);
    assert.equal(j.code, 0, j.stderr);
    nodeId = JSON.parse(fs.readFileSync(path.join(nd, 'node.json'), 'utf8')).nodeId;
  });
  after(async () => {
    await c?.cleanup();
  });

  test('the zip holds UCP\'s files; key.pem is 0600 in the archive and once unpacked (0700 directory)', async () => {
    const z = await run('zipinfo', [alice.zip]);
    assert.equal(z.code, 0, z.stderr);
    for (const n of ['ca.pem', 'cert.pem', 'key.pem', 'cert.pub', 'env.sh', 'env.ps1', 'env.cmd', 'README.txt']) assert.match(z.stdout, new RegExp(`\\s${n.replace('.', '\\.')}\\n`), n);
    assert.match(z.stdout, /-rw-------.*key\.pem/);
    assert.equal(fileMode(alice.zip), 0o600, 'the zip itself holds a key');
    assert.equal(fileMode(alice.dir), 0o700);
    assert.equal(fileMode(path.join(alice.dir, 'key.pem')), 0o600);
    assert.equal(fileMode(path.join(alice.dir, 'cert.pem')), 0o644);
    // Info-ZIP's unzip restores the modes too
    const other = path.join(tmp, 'unzipped');
    const u = await run('unzip', ['-q', alice.zip, '-d', other]);
    assert.equal(u.code, 0, u.stderr);
    assert.equal(fileMode(path.join(other, 'key.pem')), 0o600);
    assert.match(fs.readFileSync(path.join(alice.dir, 'README.txt'), 'utf8'), /does not reliably keep file modes/);
    const pub = (await run('openssl', ['pkey', '-pubin', '-in', path.join(alice.dir, 'cert.pub'), '-outform', 'DER'])).stdout;
    const fromCert = (await run('openssl', ['x509', '-in', path.join(alice.dir, 'cert.pem'), '-noout', '-pubkey'])).stdout;
    assert.ok(pub.length > 0 && fromCert.includes('PUBLIC KEY'));
    assert.equal((await run('openssl', ['pkey', '-pubin', '-in', path.join(alice.dir, 'cert.pub')])).stdout, fromCert);
  });

  test('a client bundle comes from client-root-ca (OU=client, CN=<user>), an admin one from cluster-root-ca (OU=admin); client auth only; openssl -x509_strict', async () => {
    const cert = path.join(alice.dir, 'cert.pem');
    const v = await run('openssl', ['verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', root.client, cert]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    const wrong = await run('openssl', ['verify', '-CAfile', root.cluster, cert]);
    assert.notEqual(wrong.code, 0, 'not from the cluster root');
    const text = (await run('openssl', ['x509', '-in', cert, '-noout', '-subject', '-ext', 'extendedKeyUsage'])).stdout;
    assert.match(text, new RegExp(`subject=O ?= ?${c.clusterId}, OU ?= ?client, CN ?= ?alice`));
    assert.match(text, /TLS Web Client Authentication/);
    assert.doesNotMatch(text, /Server Authentication/);
    const bob = await createAndUnpack(c, tmp, 'bob', ['--admin', '--expiry', '48h']);
    const bv = await run('openssl', ['verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', root.cluster, path.join(bob.dir, 'cert.pem')]);
    assert.equal(bv.code, 0, bv.stdout + bv.stderr);
    const end = (await run('openssl', ['x509', '-in', path.join(bob.dir, 'cert.pem'), '-noout', '-enddate'])).stdout;
    const hours = (Date.parse(end.split('=')[1]) - Date.now()) / 3600_000;
    assert.ok(hours > 47 && hours < 49, `--expiry 48h: ${hours}`);
    // the admin bundle administers: through --bundle (its server taken from its env.sh)
    const t = await cliAsync(['token', 'worker', '--rotate', '-q', '--bundle', bob.dir]);
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /^CAIRN-1-/);
  });

  test('a client bundle may only read: CA info, the node list, a node, its own certificate; everything else is 403', async () => {
    const id = idOf(alice.dir);
    for (const p of ['/v1/nodes', `/v1/nodes/${nodeId}`, '/v1/whoami', `/v1/certificates/${alice.serial}`, '/v1/ca']) {
      const r = await api(c.url, 'GET', p, undefined, id);
      assert.equal(r.status, 200, `${p}: ${JSON.stringify(r.body)}`);
    }
    const me = (await api(c.url, 'GET', '/v1/whoami', undefined, id)).body;
    assert.equal(me.kind, 'client');
    assert.equal(me.serial, alice.serial);
    const nodes = (await api(c.url, 'GET', '/v1/nodes', undefined, id)).body;
    assert.equal(nodes.nodes.length, 1);
    assert.doesNotMatch(JSON.stringify(nodes), /CAIRN-1-|secret|token/i, 'no secrets in the node list');
    const adminSerial = (await api(c.url, 'GET', '/v1/whoami', undefined, adminId(c.dir))).body.serial;
    const refused: [string, string, unknown?][] = [
      ['GET', `/v1/certificates/${adminSerial}`],
      ['GET', '/v1/certificates'],
      ['GET', '/v1/config'],
      ['PATCH', '/v1/config', { certExpiryMs: 7200000 }],
      ['GET', '/v1/audit'],
      ['GET', '/v1/audit/chain'],
      ['GET', '/v1/bundles'],
      ['POST', '/v1/bundles', { user: 'mallory', admin: true, csr: 'x' }],
      ['POST', `/v1/bundles/alice/revoke`, {}],
      ['POST', `/v1/nodes/${nodeId}/promote`],
      ['DELETE', `/v1/nodes/${nodeId}`],
      ['POST', '/v1/tokens/worker/rotate'],
      ['GET', '/v1/replicas'],
      ['GET', '/v1/overview'],
      ['POST', `/v1/certificates/${alice.serial}/revoke`, {}],
      ['POST', '/v1/renew', { csr: 'x' }],
    ];
    for (const [m, p, b] of refused) {
      const r = await api(c.url, m, p, b, id);
      assert.equal(r.status, 403, `${m} ${p}: ${r.status} ${JSON.stringify(r.body)}`);
    }
    const n = (await api(c.url, 'GET', `/v1/nodes/${nodeId}`, undefined, adminId(c.dir))).body;
    assert.equal(n.role, 'worker', 'nothing changed');
  });

  test('env.sh drives the CLI and curl; the CLI also takes --bundle; a read-only bundle is refused what it may not do, in one line', async () => {
    const sh = `. ./env.sh && cairn() { "${process.execPath}" "${path.resolve('bin/cairn.js')}" "$@"; } && cairn node ls --json && curl -sf --cacert "$CAIRN_CA" --cert "$CAIRN_CERT" --key "$CAIRN_KEY" "$CAIRN_SERVER/v1/whoami"`;
    const r = await run('bash', ['-c', sh], { cwd: alice.dir, env: { CAIRN_CERT: undefined, CAIRN_KEY: undefined, CAIRN_CA: undefined, CAIRN_SERVER: undefined } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(nodeId));
    assert.match(r.stdout, /"kind":"client"/);
    // sh (dash) from the bundle directory
    const d = await run('sh', ['-c', '. ./env.sh && echo "$CAIRN_KEY"'], { cwd: alice.dir });
    assert.equal(d.stdout.trim(), path.join(alice.dir, 'key.pem'));
    const viaFlag = await cliAsync(['node', 'ls', '--bundle', alice.dir]);
    assert.equal(viaFlag.code, 0, viaFlag.stderr);
    assert.match(viaFlag.stdout, new RegExp(nodeId));
    const denied = await cliAsync(['node', 'promote', nodeId, '--bundle', alice.dir]);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /^cairn: error: .*admin client certificate.*\n$/);
    const none = await cliAsync(['node', 'ls'], { env: { CAIRN_CERT: undefined, CAIRN_KEY: undefined, CAIRN_CA: undefined, CAIRN_SERVER: undefined } });
    assert.equal(none.code, 2);
    assert.match(none.stderr, /give --state-dir DIR.*--bundle DIR.*env\.sh/);
    // a key others can read is refused
    const loose = path.join(tmp, 'loose');
    fs.cpSync(alice.dir, loose, { recursive: true });
    fs.chmodSync(path.join(loose, 'key.pem'), 0o644);
    const lr = await cliAsync(['node', 'ls', '--bundle', loose]);
    assert.equal(lr.code, 1);
    assert.match(lr.stderr, /key\.pem/);
  });

  test('bundle ls lists user, admin, serial, expiry, status; bundle revoke by user; the last admin is kept unless --force', async () => {
    const ls = await cliAsync(['bundle', 'ls', '--state-dir', c.dir, '--json']);
    assert.equal(ls.code, 0, ls.stderr);
    const list = JSON.parse(ls.stdout);
    assert.deepEqual(list.map((b: any) => [b.user, b.admin, b.status]).sort(), [['admin', true, 'good'], ['alice', false, 'good'], ['bob', true, 'good']]);
    const dave = await createAndUnpack(c, tmp, 'dave');
    const rv = await cliAsync(['bundle', 'revoke', 'dave', '--reason', 'affiliationChanged', '--state-dir', c.dir]);
    assert.equal(rv.code, 0, rv.stderr);
    assert.match(rv.stdout, new RegExp(`Revoked 1 bundle of "dave": ${dave.serial}`));
    const r = await api(c.url, 'GET', '/v1/nodes', undefined, idOf(dave.dir));
    assert.equal(r.status, 403);
    assert.equal(r.body.error.code, 'certificate_revoked');
    const again = await cliAsync(['bundle', 'revoke', dave.serial, '--state-dir', c.dir]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already revoked/);
    const unknown = await cliAsync(['bundle', 'revoke', 'nobody', '--state-dir', c.dir]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /no good bundle of user "nobody"/);
    // revoke bob (an admin); then the state directory's admin is the last one
    assert.equal((await cliAsync(['bundle', 'revoke', 'bob', '--state-dir', c.dir])).code, 0);
    const last = await cliAsync(['bundle', 'revoke', 'admin', '--state-dir', c.dir]);
    assert.equal(last.code, 1);
    assert.match(last.stderr, /would leave no good admin certificate/);
    const bad = await api(c.url, 'POST', '/v1/bundles', { user: '../etc', csr: 'x' }, adminId(c.dir));
    assert.equal(bad.status, 400);
  });

  test('bundle unpack refuses what is not a bundle: names with a directory part, a key of another certificate, a damaged archive; no half-written directory', async () => {
    const bad = path.join(tmp, 'evil.zip');
    fs.writeFileSync(bad, writeZip([{ name: '../key.pem', data: Buffer.from('x'), mode: 0o600 }]));
    const r = await cliAsync(['bundle', 'unpack', bad, '-d', path.join(tmp, 'evil')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /not a plain file name/);
    assert.ok(!fs.existsSync(path.join(tmp, 'evil')));
    const files = ['ca.pem', 'cert.pem', 'key.pem'].map((n) => ({ name: n, data: fs.readFileSync(path.join(n === 'key.pem' ? path.join(tmp, 'bob') : alice.dir, n)), mode: 0o600 }));
    const mixed = path.join(tmp, 'mixed.zip');
    fs.writeFileSync(mixed, writeZip(files));
    const m = await cliAsync(['bundle', 'unpack', mixed, '-d', path.join(tmp, 'mixed')]);
    assert.equal(m.code, 1);
    assert.match(m.stderr, /key\.pem does not belong to cert\.pem/);
    const trunc = path.join(tmp, 'trunc.zip');
    fs.writeFileSync(trunc, fs.readFileSync(alice.zip).subarray(0, 300));
    const t = await cliAsync(['bundle', 'unpack', trunc]);
    assert.equal(t.code, 1);
    assert.match(t.stderr, /^cairn: error: .*not a zip archive cairn can read/);
    const exists = await cliAsync(['bundle', 'unpack', alice.zip, '-d', alice.dir]);
    assert.equal(exists.code, 1, 'no silent overwrite');
  });
});

describe('clone-prepare exports the subsystem certificates (Dogtag nicknames)', () => {
  test('CA signing, OCSP signing and audit signing certificates with their keys; pkcs12-cert-find and openssl pkcs12 list them', async () => {
    const c = await startCluster('clone-subsystems');
    try {
      const tmp = tmpDir();
      const pw = path.join(tmp, 'pw');
      fs.writeFileSync(pw, 'correct horse battery staple\n', { mode: 0o600 });
      const p12 = path.join(tmp, 'clone.p12');
      const r = await cliAsync(['clone-prepare', '--state-dir', c.dir, '--pkcs12-file', p12, '--pkcs12-password-file', pw, '--json']);
      assert.equal(r.code, 0, r.stderr);
      const f = await cliAsync(['pkcs12-cert-find', '--pkcs12-file', p12, '--pkcs12-password-file', pw, '--json']);
      assert.equal(f.code, 0, f.stderr);
      const entries = JSON.parse(f.stdout);
      assert.deepEqual(entries.map((e: any) => [e.nickname, e.hasKey]), [
        ['cluster-root-ca', true],
        ['client-root-ca', true],
        ['auditSigningCert cert-cluster-root-ca', true],
        ['ocspSigningCert cert-client-root-ca', true],
        ['ocspSigningCert cert-cluster-root-ca', true],
      ]);
      assert.match(entries[2].subject, /OU=audit-signing/);
      assert.match(entries[3].issuer, /CN=client-root-ca/);
      const o = await run('openssl', ['pkcs12', '-info', '-in', p12, '-passin', `file:${pw}`, '-noenc']);
      assert.equal(o.code, 0, o.stderr);
      assert.equal((o.stdout.match(/-----BEGIN PRIVATE KEY-----/g) ?? []).length, 5);
      // a controller made from it still finds its two CAs by nickname
      const b = path.join(tmp, 'b');
      const init = await cliAsync(['init', 'beta', '--state-dir', b, '--listen', '127.0.0.1:1', '--from-pkcs12', p12, '--pkcs12-password-file', pw, '--json']);
      assert.equal(init.code, 0, init.stderr);
      assert.equal(JSON.parse(init.stdout).clusterId, c.clusterId);
    } finally {
      await c.cleanup();
    }
  });
});

describe('a revoked bundle on two replicas (PostgreSQL)', () => {
  let db: TestDb;
  let c: Cluster;
  let r2: Awaited<ReturnType<typeof addReplica>>;
  before(async () => {
    db = await createDb();
    c = await startCluster('bundles-pg', { store: db.url });
    r2 = await addReplica(db.url, path.join(c.dir, 'unlock.key'));
  });
  after(async () => {
    await r2?.cleanup();
    await c?.cleanup();
    await db?.drop();
  });

  test('revoked on one replica, refused at once by the other, and listed on the client CA\'s CRL', async () => {
    const tmp = tmpDir();
    const erin = await createAndUnpack(c, tmp, 'erin');
    const id = idOf(erin.dir);
    assert.equal((await api(r2.url, 'GET', '/v1/nodes', undefined, id)).status, 200);
    const rv = await cliAsync(['bundle', 'revoke', 'erin', '--reason', 'keyCompromise', '--state-dir', c.dir]);
    assert.equal(rv.code, 0, rv.stderr);
    const r = await api(r2.url, 'GET', '/v1/nodes', undefined, id);
    assert.equal(r.status, 403);
    assert.equal(r.body.error.code, 'certificate_revoked');
    // the client CA's next CRL lists it (the CRL leader publishes within a cycle)
    const crl = path.join(tmp, 'client.crl');
    let listed = false;
    for (let i = 0; i < 50 && !listed; i++) {
      const g = await cliAsync(['crl', 'client', '-o', crl, '--state-dir', r2.dir, '--server', r2.url]);
      assert.equal(g.code, 0, g.stderr);
      listed = (await run('openssl', ['crl', '-in', crl, '-noout', '-text'])).stdout.includes(`Serial Number: ${erin.serial}`);
      if (!listed) await new Promise((res) => setTimeout(res, 200));
    }
    assert.ok(listed, 'the client CRL lists the revoked bundle');
    const cl = (await run('openssl', ['crl', '-in', crl, '-noout', '-text'])).stdout;
    assert.match(cl, /Issuer: .*CN ?= ?client-root-ca/);
    assert.match(cl, /Key Compromise/);
  });
});
