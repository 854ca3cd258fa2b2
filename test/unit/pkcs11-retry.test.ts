/**
 * pkcs11.ts withRetry: a PKCS#11 call failing with a transient error (SoftHSM2 answers
 * CKR_GENERAL_ERROR while another process opens the same token directory) is made again after
 * a pause; any other failure, or a transient one that lasts, is one hsm_error line naming what failed.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pkcs11js from 'pkcs11js';
import { withRetry } from '../../src/authority/pkcs11.js';
import { CairnError } from '../../src/util/errors.js';

const ckrError = (code: number) => Object.assign(new Error('pkcs11 failed'), { code });

test('a transient CKR_GENERAL_ERROR is retried until the call succeeds', () => {
  let calls = 0;
  const r = withRetry('listing', () => {
    if (++calls < 3) throw ckrError(pkcs11js.CKR_GENERAL_ERROR);
    return 'slots';
  }, [1, 1, 1, 1]);
  assert.equal(r, 'slots');
  assert.equal(calls, 3);
});

test('a lasting transient error becomes hsm_error naming the call, the CKR name and the attempts', () => {
  let calls = 0;
  assert.throws(
    () => withRetry('the PKCS#11 token "t" (module m.so) did not open a session', () => {
      calls++;
      throw ckrError(pkcs11js.CKR_GENERAL_ERROR);
    }, [1, 1]),
    (e: unknown) => e instanceof CairnError && e.code === 'hsm_error' && e.message === 'the PKCS#11 token "t" (module m.so) did not open a session: CKR_GENERAL_ERROR (after 3 attempts)',
  );
  assert.equal(calls, 3);
});

test('any other PKCS#11 error is not retried: hsm_error at once', () => {
  let calls = 0;
  assert.throws(
    () => withRetry('listing', () => {
      calls++;
      throw ckrError(pkcs11js.CKR_SLOT_ID_INVALID);
    }, [1, 1]),
    (e: unknown) => e instanceof CairnError && e.code === 'hsm_error' && /^listing: CKR_SLOT_ID_INVALID$/.test(e.message),
  );
  assert.equal(calls, 1);
});

test('a CairnError from inside (a refused PIN) passes through unchanged', () => {
  assert.throws(
    () => withRetry('login', () => {
      throw new CairnError('hsm_login_failed', 'refused');
    }),
    (e: unknown) => e instanceof CairnError && e.code === 'hsm_login_failed',
  );
});

test('a module that is not a PKCS#11 library: one hsm_error line naming it', async () => {
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const { Pkcs11Token } = await import('../../src/authority/pkcs11.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-p11-'));
  try {
    const pin = path.join(dir, 'pin');
    fs.writeFileSync(pin, '1234\n', { mode: 0o600 });
    const notLib = path.join(dir, 'not-a-module.so');
    fs.writeFileSync(notLib, 'not an ELF library');
    assert.throws(
      () => Pkcs11Token.open({ module: notLib, token: 't', pinFile: pin }),
      (e: unknown) => e instanceof CairnError && e.code === 'hsm_error' && e.message.startsWith(`cannot load the PKCS#11 module ${notLib}: `) && !e.message.includes('\n'),
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
