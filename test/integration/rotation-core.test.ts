/**
 * Root CA rotation on one replica (SQLite), through the API: during the rotation a renewed
 * node's chain (leaf → cross-signed new root) verifies for a peer trusting only the old root
 * and for one trusting only the new root (OpenSSL -x509_strict); the replica swaps its own
 * server certificate without a restart; once every node converged the rotation completes by
 * itself, the old root leaves the trust bundle, old tokens fail and `cairn token` prints
 * working ones; abort returns to the old root.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { certificateFromPem, certificateInfo, certificatesFromPem, certificateToPem } from '../../src/pki/index.js';
import { run } from '../helpers.js';
import { adminId, api, cliAsync, Cluster, mkTemp, startCluster } from './cluster.js';

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The key ID that signed the certificate a TLS server presents. */
function serverIssuerKey(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      const der = s.getPeerCertificate(false)?.raw;
      s.destroy();
      resolve(der ? certificateInfo(der).authorityKeyId?.toString('hex') : undefined);
    });
    s.on('error', () => resolve(undefined));
  });
}

async function opensslVerify(dir: string, trusted: Buffer, chain: Buffer[]): Promise<{ code: number | null; out: string }> {
  const ca = path.join(dir, `ca-${Math.random()}.pem`);
  const untrusted = path.join(dir, `untrusted-${Math.random()}.pem`);
  const leaf = path.join(dir, `leaf-${Math.random()}.pem`);
  fs.writeFileSync(ca, certificateToPem(trusted));
  fs.writeFileSync(leaf, certificateToPem(chain[0]));
  fs.writeFileSync(untrusted, chain.slice(1).map((d) => certificateToPem(d)).join('') || certificateToPem(chain[0]));
  const r = await run('openssl', ['verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', ca, '-untrusted', untrusted, leaf]);
  return { code: r.code, out: r.stdout + r.stderr };
}

/** Whether the CRL a replica serves at /v1/crl/cluster is signed by `root` (openssl crl -CAfile). */
async function crlSignedBy(url: string, dir: string, root: Buffer): Promise<boolean> {
  const f = path.join(dir, `crl-${Math.random()}.der`);
  const ca = path.join(dir, `crl-ca-${Math.random()}.pem`);
  fs.writeFileSync(ca, certificateToPem(root));
  if ((await run('curl', ['-sk', '-o', f, `${url}/v1/crl/cluster`])).code !== 0) return false;
  const r = await run('openssl', ['crl', '-inform', 'DER', '-in', f, '-noout', '-CAfile', ca]);
  return /verify OK/.test(r.stdout + r.stderr);
}

describe('root CA rotation on one replica', () => {
  let c: Cluster;
  let work: string;
  const nodes: string[] = [];
  before(async () => {
    c = await startCluster('rot');
    work = mkTemp();
    for (let i = 0; i < 2; i++) {
      const d = path.join(work, `node${i}`);
      const j = await cliAsync(['join', '--token', c.tokens.worker, '--state-dir', d, c.url]);
      assert.equal(j.code, 0, j.stderr);
      nodes.push(d);
    }
    // a root-CA-only backup taken before the rotation (the last test restores it)
    fs.writeFileSync(path.join(work, 'pass'), 'correct horse battery staple\n', { mode: 0o600 });
    const b = await cliAsync(['backup', '--root-ca-only', '--state-dir', c.dir, '--passphrase-file', path.join(work, 'pass'), '-o', path.join(work, 'before.tar.age')]);
    assert.equal(b.code, 0, b.stderr);
  });
  after(async () => {
    await c?.cleanup();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  test('rotate: chains verify against either root; it completes by itself once every node renewed', async () => {
    let admin = adminId(c.dir);
    const oldRoot = certificateFromPem((await api(c.url, 'GET', '/v1/ca')).body.roots.cluster, 'old root');
    const started = await api(c.url, 'POST', '/v1/ca/rotate', {}, admin);
    assert.equal(started.status, 202, JSON.stringify(started.body));
    assert.equal(started.body.rotation.state, 'running');
    assert.deepEqual(started.body.rotation.nodes, { total: 2, converged: 0 });
    const again = await api(c.url, 'POST', '/v1/ca/rotate', {}, admin);
    assert.equal(again.status, 409);
    assert.equal(again.body.error.code, 'rotation_in_progress');

    const info = (await api(c.url, 'GET', '/v1/ca')).body;
    assert.equal(certificatesFromPem(info.trustBundle, 'bundle').length, 2);
    assert.equal(info.crossSigned.length, 1);
    const newRoot = certificateFromPem(info.roots.cluster, 'new root');
    assert.notEqual(certificateInfo(newRoot).subject, certificateInfo(oldRoot).subject);

    // the cluster CRL is re-signed by the new key at once (not when it ages: 12 h by default)
    assert.ok(await crlSignedBy(c.url, work, oldRoot), 'before, the old key signed it');
    await waitFor('the cluster CRL signed by the new key', () => crlSignedBy(c.url, work, newRoot), 5000);
    // the replica's own server certificate moves to the new key without a restart
    const newKey = certificateInfo(newRoot).subjectKeyId!.toString('hex');
    await waitFor('the server certificate from the new key', async () => (await serverIssuerKey(c.port)) === newKey);
    // and the state directory's admin bundle
    await waitFor('the admin bundle from the new key', async () => {
      const a = adminId(c.dir);
      return certificateInfo(certificatesFromPem(a.cert!, 'admin')[0]).authorityKeyId!.toString('hex') === newKey;
    });
    admin = adminId(c.dir);

    // node 0 renews: its chain is leaf → cross-signed new root
    const r0 = await cliAsync(['agent', '--state-dir', nodes[0], '--renew-now']);
    assert.equal(r0.code, 0, r0.stderr);
    const chain = certificatesFromPem(fs.readFileSync(path.join(nodes[0], 'node.crt'), 'utf8'), 'node.crt');
    assert.equal(chain.length, 2, 'leaf and the cross-signed certificate');
    assert.equal(certificateInfo(chain[0]).authorityKeyId!.toString('hex'), certificateInfo(newRoot).subjectKeyId!.toString('hex'));
    const viaOld = await opensslVerify(work, oldRoot, chain);
    assert.equal(viaOld.code, 0, `a peer trusting only the old root: ${viaOld.out}`);
    const viaNew = await opensslVerify(work, newRoot, chain);
    assert.equal(viaNew.code, 0, `a peer trusting only the new root: ${viaNew.out}`);

    const mid = (await api(c.url, 'GET', '/v1/ca/rotation', undefined, admin)).body;
    assert.deepEqual(mid.rotation.nodes, { total: 2, converged: 1 });
    assert.equal(mid.stuck.length, 1);
    const early = await api(c.url, 'POST', '/v1/ca/rotation/finish', {}, admin);
    assert.equal(early.status, 409);
    assert.equal(early.body.error.code, 'rotation_incomplete');

    const r1 = await cliAsync(['agent', '--state-dir', nodes[1], '--renew-now']);
    assert.equal(r1.code, 0, r1.stderr);
    const done = await waitFor('the rotation to complete', async () => {
      const s = (await api(c.url, 'GET', '/v1/ca/rotation', undefined, admin)).body;
      return s.rotation.state === 'completed' ? s : undefined;
    });
    assert.deepEqual(done.rotation.nodes, { total: 2, converged: 2 });
    // every process of the replica reloads within a second or so
    const after = await waitFor('the old root gone from the trust bundle', async () => {
      const b = (await api(c.url, 'GET', '/v1/ca')).body;
      return certificatesFromPem(b.trustBundle, 'bundle').length === 1 ? b : undefined;
    });
    assert.ok(certificateFromPem(after.trustBundle, 'bundle').equals(newRoot));
    assert.equal(after.crossSigned.length, 0);
    assert.ok(await crlSignedBy(c.url, work, newRoot), 'after completion, still the new key');

    // old tokens fail; cairn token prints one with the new digest, which works
    const old = await cliAsync(['join', '--token', c.tokens.worker, '--state-dir', path.join(work, 'late-old'), c.url]);
    assert.notEqual(old.code, 0);
    const tok = await cliAsync(['token', 'worker', '--quiet', '--state-dir', c.dir]);
    assert.equal(tok.code, 0, tok.stderr);
    assert.notEqual(tok.stdout.trim(), c.tokens.worker);
    const fresh = await cliAsync(['join', '--token', tok.stdout.trim(), '--state-dir', path.join(work, 'late-new'), c.url]);
    assert.equal(fresh.code, 0, fresh.stderr);
    // after completion a new leaf chains straight to the new root (no cross-signed certificate)
    const late = certificatesFromPem(fs.readFileSync(path.join(work, 'late-new', 'node.crt'), 'utf8'), 'node.crt');
    assert.equal(late.length, 1);
    assert.equal((await opensslVerify(work, newRoot, late)).code, 0);
  });

  test('abort: the old root signs again; a second rotation can start after', async () => {
    const admin = adminId(c.dir);
    const before = (await api(c.url, 'GET', '/v1/ca')).body.roots.cluster;
    assert.equal((await api(c.url, 'POST', '/v1/ca/rotate', {}, admin)).status, 202);
    // every process of the replica reloads within seconds
    await waitFor('the new root', async () => (await api(c.url, 'GET', '/v1/ca')).body.roots.cluster !== before);
    const ab = await api(c.url, 'POST', '/v1/ca/rotation/abort', {}, admin);
    assert.equal(ab.status, 200, JSON.stringify(ab.body));
    assert.equal(ab.body.rotation.state, 'aborted');
    const info = await waitFor('the old root back', async () => {
      const b = (await api(c.url, 'GET', '/v1/ca')).body;
      return b.roots.cluster === before ? b : undefined;
    });
    assert.equal(certificatesFromPem(info.trustBundle, 'bundle').length, 1);
    // the cluster CRL: signed by the aborted key while it signed, by the old one again at once after
    await waitFor('the cluster CRL signed by the old key again', () => crlSignedBy(c.url, work, certificateFromPem(before, 'old root')), 5000);
    const none = await api(c.url, 'POST', '/v1/ca/rotation/abort', {}, admin);
    assert.equal(none.body.error.code, 'no_rotation');
    // nodes keep renewing under the old root
    const r = await cliAsync(['agent', '--state-dir', path.join(work, 'late-new'), '--renew-now']);
    assert.equal(r.code, 0, r.stderr);
  });

  test('restoring a root-CA-only backup taken before the rotation is refused (it holds the retired root)', async () => {
    await c.kill('SIGTERM');
    const r = await cliAsync(['restore', '--root-ca-only', '--state-dir', c.dir, '--passphrase-file', path.join(work, 'pass'), '-i', path.join(work, 'before.tar.age')]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /before the cluster root CA rotation that completed on .*give --force/);
  });
});
