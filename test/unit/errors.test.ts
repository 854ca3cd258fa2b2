/** The error-code table (src/util/errors.ts) and the one PkiError mapping, fromPki. */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { describe, test } from 'node:test';
import { initCluster } from '../../src/authority/init.js';
import { PKI_ERROR_CODES, PkiError, sanFor } from '../../src/pki/index.js';
import { openStore } from '../../src/store/store.js';
import { CairnError, ERRORS, fromPki, isErrorCode, RetryLater, usageError } from '../../src/util/errors.js';
import { tmpDir } from '../helpers.js';

describe('error codes', () => {
  test('every code has an HTTP error status and a CLI exit code of 1 or 2 (130 only for a cancelled prompt)', () => {
    const codes = Object.keys(ERRORS);
    assert.ok(codes.length >= 60, `only ${codes.length} codes`);
    for (const [code, e] of Object.entries(ERRORS)) {
      assert.match(code, /^[a-z][a-z0-9_]*$/, code);
      assert.ok(Number.isInteger(e.status) && e.status >= 400 && e.status <= 599, `${code}: status ${e.status}`);
      assert.ok(e.exit === 1 || e.exit === 2 || (code === 'cancelled' && e.exit === 130), `${code}: exit ${e.exit}`);
      assert.equal(typeof e.api, 'boolean', code);
    }
    assert.equal(isErrorCode('bad_request'), true);
    assert.equal(isErrorCode('no_such_code'), false);
    assert.equal(isErrorCode('constructor'), false); // own keys only, not Object.prototype's
  });

  test('a CairnError takes its exit code from the table', () => {
    assert.equal(new CairnError('io', 'x').exitCode, 1);
    assert.equal(usageError('x').exitCode, 2);
    assert.equal(new CairnError('cancelled', 'x').exitCode, 130);
    assert.equal(new RetryLater('rate_limited', 'x', 1000).exitCode, 1);
    // the argument errors that exited 2 before the table still do
    for (const c of ['usage', 'bad_duration', 'bad_endpoint', 'bad_name', 'bad_hostname', 'bad_store', 'bad_token'] as const) {
      assert.equal(new CairnError(c, 'x').exitCode, 2, c);
    }
  });

  test('fromPki maps every PkiError code to a code of the table, keeping the message', () => {
    assert.ok(PKI_ERROR_CODES.length >= 20);
    for (const code of PKI_ERROR_CODES) {
      const e = fromPki(new PkiError(code, `m ${code}`));
      assert.ok(e instanceof CairnError, code);
      assert.ok(isErrorCode(e.code), `${code} maps to ${e.code}, not in the table`);
      assert.equal(e.code, code);
      assert.equal(e.message, `m ${code}`);
      assert.equal(fromPki(new PkiError(code, 'm'), 'file.pem').message, 'file.pem: m');
    }
  });

  test('fromPki around a function: its PkiErrors become CairnErrors, anything else passes unchanged', () => {
    assert.equal(fromPki(() => 42), 42);
    assert.throws(
      () => fromPki(() => sanFor('bad host!'), 'the control host'),
      (e: unknown) => e instanceof CairnError && e.code === 'bad_hostname' && e.exitCode === 2 && /^the control host: "bad host!" is not a valid/.test(e.message),
    );
    const bug = new TypeError('a bug');
    assert.throws(() => fromPki(() => { throw bug; }), (e: unknown) => e === bug);
    const cairn = new CairnError('io', 'x');
    assert.throws(() => fromPki(() => { throw cairn; }), (e: unknown) => e === cairn);
  });

  test('initializing a store that already holds a cluster is a CairnError "exists", not an internal error', async (t) => {
    const store = await openStore('sqlite', path.join(tmpDir(t), 'cairn.db'));
    t.after(() => store.close());
    const key = crypto.randomBytes(32);
    const { clusterId } = await initCluster(store, 'one', key, 'ec-p256');
    await assert.rejects(initCluster(store, 'two', key, 'ec-p256'), (e: unknown) => {
      assert.ok(e instanceof CairnError, `got ${String(e)}`);
      assert.equal(e.code, 'exists');
      assert.equal(e.exitCode, 1);
      assert.match(e.message, new RegExp(`already holds cluster ${clusterId}`));
      return true;
    });
    assert.equal((await store.getCluster())?.name, 'one');
  });
});
