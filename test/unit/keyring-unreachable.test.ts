/**
 * A generation whose key this replica cannot reach (a rotation to a key in a PKCS#11 token,
 * made through another replica, and this one has no token): a replica starting refuses (one
 * clear error); a running replica reloading keeps serving but signs nothing with the old key:
 * joins and renewals answer 503 with Retry-After (agents go to a replica that can), the CRL of
 * that generation is not attempted here, and the next reload tries again.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { keyResolver } from '../../src/authority/ca-keys.js';
import { newRootCa } from '../../src/authority/init.js';
import { CaKeyring } from '../../src/authority/keyring.js';
import { generateKeyPair, spkiDer } from '../../src/pki/index.js';
import { CairnError, RetryLater } from '../../src/util/errors.js';

test('a rotation to a token key this replica cannot reach: refused at start, 503 for issuance after a reload, no CRL attempted', async () => {
  const unlockKey = randomBytes(32);
  const old = newRootCa('c1', 'cluster', unlockKey, 1, 1n);
  const client = newRootCa('c1', 'client', unlockKey, 1, 2n);
  const made = newRootCa('c1', 'cluster', unlockKey, 2, 3n);
  // the new generation as a rotation to a token key records it: no sealed key, where it is
  const inToken = { ...made.row, key_sealed: null, key_location: JSON.stringify({ kind: 'pkcs11', token: 'hsm', label: 'rot-2', id: 'ab' }) };
  const rows = [old.row, client.row, inToken];
  const rotations = [{ id: 'r1', ca: 'cluster', state: 'running', from_id: old.row.id, to_id: inToken.id, started_at: Date.now(), finished_at: null, actor: 'admin' }];
  const resolve = keyResolver({}); // this replica has no PKCS#11 token set up

  assert.throws(() => CaKeyring.load(rows, rotations, unlockKey, resolve), (e: unknown) => e instanceof CairnError && e.code === 'hsm_token_missing' && /has no PKCS#11 module set up/.test(e.message));

  const k = CaKeyring.load(rows, rotations, unlockKey, resolve, true);
  assert.equal(k.unreachable.length, 1);
  assert.match(k.unreachable[0], /cluster-root-ca-2: .*PKCS#11 token "hsm"/);
  const signing = k.signer('cluster');
  assert.equal(signing.row.id, inToken.id, 'the new generation is the one that signs: the old key does not stand in');
  const kp = generateKeyPair();
  await assert.rejects(
    signing.issuer.issue({ policy: { subject: { CN: 'n' }, lifetimeMs: 60_000, extKeyUsage: ['clientAuth'] } as never, publicKeyDer: spkiDer(kp.publicKey), publicKey: kp.publicKey, serial: Buffer.from([1]) }),
    (e: unknown) => e instanceof RetryLater && e.code === 'unavailable' && /cannot reach the CA key/.test(e.message),
  );
  assert.deepEqual(k.crlScopes().map((s) => s.name).sort(), ['client', old.row.id].sort(), 'no CRL is attempted with the unreachable key');
});
