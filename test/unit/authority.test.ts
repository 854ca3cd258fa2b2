/**
 * The authority's rules (who may join, who may renew, role changes, removal, revocation,
 * settings), on the in-process store: each test runs in milliseconds. The same rules run on
 * real SQLite and PostgreSQL in the integration tests.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { Authority } from '../../src/authority/authority.js';
import { initCluster } from '../../src/authority/init.js';
import { certificateFromPem, certificateInfo, createCsr, csrToPem, generateKeyPair } from '../../src/pki/index.js';
import { CairnError } from '../../src/util/errors.js';
import { MemoryStore } from './memory-store.js';

const csr = () => csrToPem(createCsr(generateKeyPair().privateKey));

async function cluster(config: Record<string, number> = {}) {
  const store = new MemoryStore();
  const unlockKey = randomBytes(32);
  const { tokens } = await initCluster(store, 'unit', unlockKey);
  const auth = new Authority(store, 'replica1', unlockKey);
  await auth.load();
  if (Object.keys(config).length) await auth.updateConfig(config);
  /** what the TLS layer would pass for a certificate this CA issued */
  const peerOf = (certificatePem: string) => ({ serialHex: certificateInfo(certificateFromPem(certificatePem, 'leaf')).serialHex, clusterId: auth.clusterId });
  const join = async (role: 'worker' | 'manager' = 'worker') => auth.join(tokens[role], csr());
  const renew = async (certificatePem: string) => auth.renew(await auth.identifyPeer(peerOf(certificatePem)), csr());
  return { store, auth, tokens, peerOf, join, renew };
}

const code = (c: string) => (e: unknown) => e instanceof CairnError && e.code === c;

describe('authority rules (in-process store)', () => {
  test('join: the token decides the role; a wrong secret, a wrong digest and garbage get one answer', async () => {
    const { auth, tokens, join } = await cluster();
    assert.equal((await join('worker')).role, 'worker');
    assert.equal((await join('manager')).role, 'manager');
    const t = tokens.worker;
    const wrongSecret = t.slice(0, -1) + (t.at(-1) === 'a' ? 'b' : 'a');
    const wrongDigest = t.replace(/^CAIRN-1-./, (m) => m.slice(0, -1) + (m.at(-1) === 'a' ? 'b' : 'a'));
    for (const bad of [wrongSecret, wrongDigest, 'garbage']) {
      await assert.rejects(auth.join(bad, csr()), (e: unknown) => e instanceof CairnError && e.code === 'invalid_token' && e.message === 'invalid token');
    }
  });

  test('the CA sets the subject: the CSR names nothing', async () => {
    const { auth, tokens } = await cluster();
    const k = generateKeyPair();
    const r = await auth.join(tokens.worker, csrToPem(createCsr(k.privateKey, { CN: 'evil', O: 'other', OU: 'manager' })));
    const s = certificateInfo(certificateFromPem(r.certificate, 'leaf')).subjectAttrs;
    assert.deepEqual([s.CN, s.OU, s.O], [r.nodeId, 'worker', auth.clusterId]);
  });

  test('a rotated token stops working at once; the new one works', async () => {
    const { auth, tokens } = await cluster();
    const fresh = await auth.rotateToken('worker');
    await assert.rejects(auth.join(tokens.worker, csr()), code('invalid_token'));
    assert.equal((await auth.join(fresh, csr())).role, 'worker');
    await assert.rejects(auth.rotateToken('root'), code('bad_request'));
  });

  test('renewal: only the newest certificate renews; the one it replaced only within the grace window', async () => {
    const { join, renew, store } = await cluster({ renewalIntervalMs: 0 });
    const first = await join();
    const second = await renew(first.certificate);
    assert.equal(second.nodeId, first.nodeId);
    // the replaced certificate may renew once more (the node may not have saved `second`), which supersedes `second`
    const third = await renew(first.certificate);
    assert.equal((await store.getCertificate(second.serial))!.revocation_reason, 'superseded');
    // the node renews with `third`: `first` is now two generations old, and `second` is revoked
    assert.equal((await renew(third.certificate)).nodeId, first.nodeId);
    await assert.rejects(renew(first.certificate), code('renewal_superseded'));
    await assert.rejects(renew(second.certificate), code('certificate_revoked'));
  });

  test('renewal: the per-node budget answers RetryLater once spent', async () => {
    const { join, renew } = await cluster({ renewalBurst: 2, renewalIntervalMs: 60_000 });
    let cert = (await join()).certificate;
    for (let i = 0; i < 2; i++) cert = (await renew(cert)).certificate;
    await assert.rejects(renew(cert), (e: unknown) => e instanceof CairnError && e.code === 'rate_limited' && 'retryAfterMs' in e);
  });

  test('promotion takes effect at the next renewal; demotion withdraws the manager certificates', async () => {
    const { auth, join, renew, store } = await cluster({ renewalIntervalMs: 0 });
    const w = await join('worker');
    await auth.setRole(w.nodeId, 'manager');
    const m = await renew(w.certificate);
    assert.equal(m.role, 'manager');
    assert.equal(certificateInfo(certificateFromPem(m.certificate, 'leaf')).subjectAttrs.OU, 'manager');
    await auth.setRole(w.nodeId, 'worker');
    const w2 = await renew(m.certificate);
    assert.equal(w2.role, 'worker');
    const mrec = await store.getCertificate(m.serial);
    assert.equal(mrec!.status, 'revoked');
    assert.equal(mrec!.revocation_reason, 'privilegeWithdrawn');
    assert.deepEqual(
      store.auditLog.map((a) => a.action).filter((a) => a.startsWith('node.')),
      ['node.join', 'node.promote', 'node.renew', 'node.demote', 'node.renew.revoked', 'node.renew'],
    );
  });

  test('removal revokes every certificate of the node; it can no longer renew and is told why', async () => {
    const { auth, join, renew, peerOf, store } = await cluster({ renewalIntervalMs: 0 });
    const a = await join();
    const b = await renew(a.certificate);
    await auth.removeNode(a.nodeId);
    for (const s of [a.serial, b.serial]) assert.equal((await store.getCertificate(s))!.status, 'revoked');
    await assert.rejects(auth.identifyPeer(peerOf(b.certificate)), code('node_removed'));
    await assert.rejects(renew(b.certificate), code('node_removed'));
    await assert.rejects(auth.setRole(a.nodeId, 'manager'), code('node_removed'));
    assert.ok((await store.peekSequence('revocation')) > 0, 'the CRL leader learns of it');
  });

  test('identification: another cluster, an unknown serial and an expired record are refused', async () => {
    const { auth, join, peerOf, store } = await cluster();
    const a = await join();
    await assert.rejects(auth.identifyPeer({ ...peerOf(a.certificate), clusterId: 'other' }), code('forbidden'));
    await assert.rejects(auth.identifyPeer({ serialHex: 'AB', clusterId: auth.clusterId }), code('forbidden'));
    await assert.rejects(auth.identifyPeer(undefined), code('client_certificate_required'));
    store.t.certificates.find((c) => c.serial === a.serial)!.not_after = Date.now() - 1;
    await assert.rejects(auth.identifyPeer(peerOf(a.certificate)), code('certificate_expired'));
  });

  test('revocation: by serial or by node; the last admin certificate only with force', async () => {
    const { auth, join } = await cluster();
    const a = await join();
    const r = await auth.revoke({ nodeId: a.nodeId }, 'keyCompromise');
    assert.deepEqual([r.revoked, r.serials, r.reason], [1, [a.serial], 'keyCompromise']);
    await assert.rejects(auth.revoke({ serial: a.serial }, undefined), code('already_revoked'));
    await assert.rejects(auth.revoke({ serial: a.serial }, 'because'), code('bad_request'));
    const k = generateKeyPair();
    const admin = await auth.issueAdminCertificate(k.publicKey, Buffer.from(k.publicKey.export({ type: 'spki', format: 'der' })));
    await assert.rejects(auth.revoke({ serial: admin.serial }, 'unspecified'), code('last_admin'));
    assert.equal((await auth.revoke({ serial: admin.serial }, 'unspecified', 'admin', { force: true })).revoked, 1);
  });

  test('settings: unknown keys, non-integers and out-of-range values are refused; nothing is half-applied', async () => {
    const { auth } = await cluster();
    await assert.rejects(auth.updateConfig({ toString: 1 }), code('bad_request'));
    await assert.rejects(auth.updateConfig({ certExpiryMs: 1.5 }), code('bad_request'));
    await assert.rejects(auth.updateConfig({ renewalBurst: 5, certExpiryMs: 1 }), code('bad_request'));
    assert.equal(auth.config.renewalBurst, 5);
    assert.equal((await auth.updateConfig({ renewalBurst: 7 })).renewalBurst, 7);
  });
});

describe('root CA rotation rules (in-process store)', () => {
  test('start, renew through the cross-signed chain, refuse an early finish, force it: the old certificate must rejoin', async () => {
    const { auth, join, renew, store } = await cluster({ renewalIntervalMs: 0 });
    const { startRotation, finishRotation, rotationStatus, abortRotation } = await import('../../src/authority/rotation.js');
    const { certificatesFromPem } = await import('../../src/pki/index.js');
    const a = await join();
    const b = await join();
    const oldKey = auth.cas.signer('cluster').row.key_id;
    const r = await startRotation(auth, {}, 'admin');
    assert.equal(r.state, 'running');
    await assert.rejects(startRotation(auth, {}, 'admin'), code('rotation_in_progress'));
    const newKey = auth.cas.signer('cluster').row.key_id;
    assert.notEqual(newKey, oldKey);
    assert.equal(certificatesFromPem(auth.trustBundle(), 'bundle').length, 2);
    const a2 = await renew(a.certificate);
    const chain = certificatesFromPem(a2.certificate, 'chain');
    assert.equal(chain.length, 2, 'leaf then the cross-signed certificate');
    assert.equal(certificateInfo(chain[1]).authorityKeyId!.toString('hex'), oldKey, 'the cross-signed certificate is issued by the old root');
    assert.deepEqual((await rotationStatus(auth, 'cluster')).rotation!.nodes, { total: 2, converged: 1 });
    assert.deepEqual((await rotationStatus(auth, 'cluster')).stuck.map((s) => s.id), [b.nodeId]);
    await assert.rejects(finishRotation(auth, {}, 'admin'), code('rotation_incomplete'));
    const done = await finishRotation(auth, { force: true }, 'admin');
    assert.equal(done.unconverged, 1);
    assert.equal(done.rotation.state, 'completed');
    assert.equal(certificatesFromPem(auth.trustBundle(), 'bundle').length, 1);
    // b's certificate is of the retired root: the TLS layer refuses it, admission says why
    const bDer = certificatesFromPem(b.certificate, 'b')[0];
    await assert.rejects(auth.identifyPeer({ serialHex: certificateInfo(bDer).serialHex, clusterId: auth.clusterId, raw: bDer, untrusted: true }), code('rejoin_required'));
    await assert.rejects(abortRotation(auth, {}, 'admin'), code('no_rotation'));
    assert.deepEqual(store.auditLog.map((x) => x.action).filter((x) => x.startsWith('ca.')), ['ca.rotate.start', 'ca.rotate.finish']);
    // b was finished without: removed as node rm would (it joins again under a new ID), so it holds no later rotation open
    assert.equal((await store.getNode(b.nodeId))!.status, 'removed');
    assert.equal((await store.getCertificate(certificateInfo(bDer).serialHex.toUpperCase().replace(/^(00)+(?=[0-9A-F]{2})/, '')))!.status, 'revoked');
    assert.equal((await store.getNode(a.nodeId))!.status, 'active');
    await startRotation(auth, {}, 'admin');
    assert.deepEqual((await rotationStatus(auth, 'cluster')).rotation!.nodes, { total: 1, converged: 0 }, 'only a counts');
    await abortRotation(auth, {}, 'admin');
  });

  test('a given root: not a CA, a foreign key or a short-lived root is refused before anything is recorded', async () => {
    const { auth } = await cluster();
    const { startRotation } = await import('../../src/authority/rotation.js');
    const { privateKeyToPem } = await import('../../src/pki/index.js');
    const k = generateKeyPair();
    const before = auth.cas.cas.length;
    await assert.rejects(startRotation(auth, { certificate: 'junk', key: privateKeyToPem(k.privateKey) }, 'admin'), code('bad_ca_material'));
    await assert.rejects(startRotation(auth, { certificate: auth.caInfo().roots.cluster, key: privateKeyToPem(k.privateKey) }, 'admin'), code('bad_ca_material'));
    await assert.rejects(startRotation(auth, { certificate: auth.caInfo().roots.cluster }, 'admin'), code('bad_ca_material'));
    await auth.reloadKeyring();
    assert.equal(auth.cas.cas.length, before);
  });
});
