/**
 * CA keys in a PKCS#11 token (issue 10), against a real SoftHSM2 token the test makes
 * (SOFTHSM2_CONF → its own token directory): init generates both CA keys in the token (not
 * extractable, nothing sealed in the store), the replica serves, a node joins and renews, a
 * revocation shows in a CRL the token signed, all verified by OpenSSL (-x509_strict). The PIN
 * is nowhere but its file. A wrong PIN and a missing token stop the replica with one clear
 * line; backup --root-ca-only says where the keys are; clone-prepare refuses.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pkcs11js from 'pkcs11js';
import { run } from '../helpers.js';
import { adminId, api, cli, cliAsync, Cluster, freePort, mkTemp, query, ServeProcess, startCluster } from './cluster.js';
import { createDb, pgQuery, TestDb } from './pg.js';

export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const PIN = 'pin-7391-only-in-its-file';

/** A SoftHSM2 token of its own: config, token directory, initialized token, PIN file (0600). */
export function softToken(dir: string, label = 'cairn-ca') {
  const conf = path.join(dir, 'softhsm2.conf');
  fs.mkdirSync(path.join(dir, 'tokens'), { recursive: true });
  fs.writeFileSync(conf, `directories.tokendir = ${path.join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const env = { SOFTHSM2_CONF: conf };
  const r = spawnSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--pin', PIN, '--so-pin', 'so-1234'], { env: { ...process.env, ...env }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const pinFile = path.join(dir, 'pin');
  fs.writeFileSync(pinFile, PIN + '\n', { mode: 0o600 });
  return { env, conf, label, pinFile, args: ['--pkcs11-module', SOFTHSM_MODULE, '--pkcs11-token', label, '--pkcs11-pin-file', pinFile] };
}

const HAS_SOFTHSM = fs.existsSync(SOFTHSM_MODULE);

describe('CA keys in a PKCS#11 token (SoftHSM2)', { skip: !HAS_SOFTHSM && 'softhsm2 is not installed' }, () => {
  let dir: string;
  let tok: ReturnType<typeof softToken>;
  let c: Cluster;

  before(async () => {
    dir = mkTemp();
    tok = softToken(dir);
    process.env.SOFTHSM2_CONF = tok.conf; // this process reads the token too (key attributes)
    c = await startCluster('hsm', { initArgs: tok.args, env: tok.env });
  });
  after(async () => {
    await c?.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('the keys were generated in the token: private, sensitive, not extractable; the store seals no key and records where they are', async () => {
    const rows = await query(c.dir, 'SELECT id, key_sealed, key_location FROM cas ORDER BY id');
    assert.equal(rows.length, 2);
    for (const r of rows) {
      assert.equal(r.key_sealed, null);
      const loc = JSON.parse(r.key_location);
      assert.equal(loc.kind, 'pkcs11');
      assert.equal(loc.token, tok.label);
    }
    const p = new pkcs11js.PKCS11();
    p.load(SOFTHSM_MODULE);
    p.C_Initialize();
    try {
      const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === tok.label)!;
      const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
      p.C_Login(session, pkcs11js.CKU_USER, PIN);
      p.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]);
      const keys = p.C_FindObjects(session, 10);
      p.C_FindObjectsFinal(session);
      assert.equal(keys.length, 2);
      for (const k of keys) {
        const [ext, sens, never] = p.C_GetAttributeValue(session, k, [{ type: pkcs11js.CKA_EXTRACTABLE }, { type: pkcs11js.CKA_SENSITIVE }, { type: pkcs11js.CKA_NEVER_EXTRACTABLE }]);
        assert.equal((ext.value as Buffer)[0], 0, 'not extractable');
        assert.equal((sens.value as Buffer)[0], 1, 'sensitive');
        assert.equal((never.value as Buffer)[0], 1, 'never extractable');
      }
      p.C_CloseSession(session);
    } finally {
      p.C_Finalize();
    }
  });

  test('join, renew and a revocation in the CRL, all signed by the token, verified by OpenSSL', async () => {
    const node = path.join(dir, 'node');
    const j = cli(['join', '--token', c.tokens.worker, '--state-dir', node, c.url]);
    assert.equal(j.code, 0, j.stderr);
    const v = await run('openssl', ['verify', '-x509_strict', '-CAfile', path.join(node, 'ca.crt'), path.join(node, 'node.crt')]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    const first = (await run('openssl', ['x509', '-in', path.join(node, 'node.crt'), '-noout', '-serial'])).stdout.trim();
    const r = cli(['agent', '--renew-now', '--state-dir', node]);
    assert.equal(r.code, 0, r.stderr);
    const second = (await run('openssl', ['x509', '-in', path.join(node, 'node.crt'), '-noout', '-serial'])).stdout.trim();
    assert.notEqual(first, second);
    const v2 = await run('openssl', ['verify', '-x509_strict', '-CAfile', path.join(node, 'ca.crt'), path.join(node, 'node.crt')]);
    assert.equal(v2.code, 0, v2.stdout + v2.stderr);
    const { nodeId } = JSON.parse(fs.readFileSync(path.join(node, 'node.json'), 'utf8'));
    const rm = cli(['node', 'rm', nodeId, '--state-dir', c.dir]);
    assert.equal(rm.code, 0, rm.stderr);
    // the CRL leader signs in the token; wait for a CRL listing the serial
    const crl = path.join(dir, 'cluster.crl');
    const serial = second.replace('serial=', '');
    let text = '';
    for (let i = 0; i < 50 && !text.includes(serial); i++) {
      await new Promise((res) => setTimeout(res, 200));
      const got = await run('curl', ['-sk', '-o', crl, `${c.url}/v1/crl/cluster`]);
      if (got.code === 0) text = (await run('openssl', ['crl', '-inform', 'DER', '-in', crl, '-noout', '-text'])).stdout;
    }
    assert.ok(text.includes(serial), `serial ${serial} in the CRL:\n${text}`);
    const vc = await run('openssl', ['crl', '-inform', 'DER', '-in', crl, '-noout', '-CAfile', path.join(c.dir, 'ca.crt')]);
    assert.match(vc.stdout + vc.stderr, /verify OK/);
  });

  test('ca rotate --pkcs11-key-label: a new key generated in the token, its root signed there and cross-signed by the old token key; chains verify against either root with -x509_strict; completes by itself', async () => {
    const node = path.join(dir, 'node-rot');
    assert.equal(cli(['join', '--token', c.tokens.worker, '--state-dir', node, c.url]).code, 0);
    const oldRoot = fs.readFileSync(path.join(node, 'ca.crt'), 'utf8');
    fs.writeFileSync(path.join(dir, 'old-root.pem'), oldRoot);
    const bad = cli(['ca', 'rotate', '--pkcs11-key-label', 'rot-2', '--key-type', 'dsa-1024', '--detach', '--state-dir', c.dir]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /keyType/);
    const st = cli(['ca', 'rotate', '--pkcs11-key-label', 'rot-2', '--detach', '--json', '--state-dir', c.dir]);
    assert.equal(st.code, 0, st.stderr);
    const view = JSON.parse(st.stdout).rotation;
    const rows = await query(c.dir, 'SELECT id, key_sealed, key_location, cross_pem FROM cas WHERE key_id = ?', view.to.keyId);
    assert.equal(rows.length, 1);
    assert.equal(rows[0].key_sealed, null, 'the store seals no key');
    assert.deepEqual({ ...JSON.parse(rows[0].key_location), id: '' }, { kind: 'pkcs11', token: tok.label, label: 'rot-2', id: '' });
    // the node renews from the token's new key: leaf + cross-signed
    const r = cli(['agent', '--renew-now', '--state-dir', node]);
    assert.equal(r.code, 0, r.stderr);
    const chain = fs.readFileSync(path.join(node, 'node.crt'), 'utf8').split(/(?<=-----END CERTIFICATE-----\n)/).filter((x) => x.trim());
    assert.equal(chain.length, 2);
    fs.writeFileSync(path.join(dir, 'leaf.pem'), chain[0]);
    fs.writeFileSync(path.join(dir, 'cross.pem'), chain[1]);
    const bundle = JSON.parse((await run('curl', ['-sk', `${c.url}/v1/ca`])).stdout).trustBundle as string;
    const newRoot = bundle.split(/(?<=-----END CERTIFICATE-----\n)/).filter((x) => x.trim() && !oldRoot.includes(x.trim()))[0];
    assert.ok(newRoot, 'the trust bundle holds the new root');
    fs.writeFileSync(path.join(dir, 'new-root.pem'), newRoot);
    const vOld = await run('openssl', ['verify', '-x509_strict', '-CAfile', path.join(dir, 'old-root.pem'), '-untrusted', path.join(dir, 'cross.pem'), path.join(dir, 'leaf.pem')]);
    assert.equal(vOld.code, 0, vOld.stdout + vOld.stderr);
    const vNew = await run('openssl', ['verify', '-x509_strict', '-CAfile', path.join(dir, 'new-root.pem'), path.join(dir, 'leaf.pem')]);
    assert.equal(vNew.code, 0, vNew.stdout + vNew.stderr);
    // every active node converged: the driver completes it; the token key signs from then on
    let state = '';
    for (let i = 0; i < 60 && state !== 'completed'; i++) {
      await new Promise((res) => setTimeout(res, 250));
      const s = cli(['ca', 'rotate', '--status', '--json', '--state-dir', c.dir]);
      state = JSON.parse(s.stdout).rotation.state;
    }
    assert.equal(state, 'completed');
    const after = JSON.parse((await run('curl', ['-sk', `${c.url}/v1/ca`])).stdout).trustBundle as string;
    assert.equal(after.trim(), newRoot.trim(), 'only the new root is trusted');
    const r2 = cli(['agent', '--renew-now', '--state-dir', node]);
    assert.equal(r2.code, 0, r2.stderr);
    const v2 = await run('openssl', ['verify', '-x509_strict', '-CAfile', path.join(dir, 'new-root.pem'), path.join(node, 'node.crt')]);
    assert.equal(v2.code, 0, v2.stdout + v2.stderr);
    const { nodeId } = JSON.parse(fs.readFileSync(path.join(node, 'node.json'), 'utf8'));
    assert.equal(cli(['node', 'rm', nodeId, '--state-dir', c.dir]).code, 0);
    // the join tokens changed with the root: the old one is refused, the tests below use the new ones
    for (const role of ['worker', 'manager'] as const) {
      const t = cli(['token', role, '--quiet', '--state-dir', c.dir]);
      assert.equal(t.code, 0, t.stderr);
      assert.notEqual(t.stdout.trim(), c.tokens[role]);
      c.tokens[role] = t.stdout.trim();
    }
  });

  test('the PIN is in no file but its own, and in no log', async () => {
    const hits: string[] = [];
    const walk = (d: string) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const f = path.join(d, e.name);
        if (e.isDirectory()) walk(f);
        else if (fs.readFileSync(f).includes(PIN)) hits.push(f);
      }
    };
    walk(c.dir);
    assert.deepEqual(hits, []);
    assert.ok(!c.logs.join('').includes(PIN));
    const cfg = JSON.parse(fs.readFileSync(path.join(c.dir, 'replica.json'), 'utf8'));
    assert.deepEqual(cfg.pkcs11, { module: SOFTHSM_MODULE, token: tok.label, pinFile: tok.pinFile });
  });

  test('backup --root-ca-only says the keys are in the HSM; clone-prepare refuses', async () => {
    const pass = path.join(dir, 'pass');
    fs.writeFileSync(pass, 'backup pass phrase\n', { mode: 0o600 });
    const out = path.join(dir, 'root.tar.age');
    const b = cli(['backup', '--root-ca-only', '--state-dir', c.dir, '--passphrase-file', pass, '--out', out], { env: tok.env });
    assert.equal(b.code, 0, b.stderr);
    assert.match(b.stderr, /Not in the backup: the key of CA cluster-root-ca-\d: in the PKCS#11 token "cairn-ca"/);
    assert.ok(fs.statSync(out).size > 0);
    const pw = path.join(dir, 'p12pw');
    fs.writeFileSync(pw, 'p12 password\n', { mode: 0o600 });
    const cp = cli(['clone-prepare', '--state-dir', c.dir, '--pkcs12-password-file', pw, '--pkcs12-file', path.join(dir, 'x.p12')], { env: tok.env });
    assert.notEqual(cp.code, 0);
    assert.match(cp.stderr, /is in the PKCS#11 token "cairn-ca" \(key "[^"]+"\): it cannot be exported for a clone/);
    assert.equal(fs.existsSync(path.join(dir, 'x.p12')), false);
  });

  test('restore of a backup whose CA rows point into the token: refused with one line without the token flags or with the token unreachable, nothing created; with them the restored replica signs through the token', async () => {
    const pass = path.join(dir, 'pass');
    fs.writeFileSync(pass, 'backup pass phrase\n', { mode: 0o600 });
    const full = path.join(dir, 'full.tar.age');
    const b = cli(['backup', '--state-dir', c.dir, '--passphrase-file', pass, '--out', full], { env: tok.env });
    assert.equal(b.code, 0, b.stderr);
    const port = await freePort();
    const target = path.join(dir, 'restored');
    const restore = (extra: string[], env: NodeJS.ProcessEnv) => cli(['restore', '--in', full, '--passphrase-file', pass, '--state-dir', target, '--listen', `127.0.0.1:${port}`, '--advertise-addr', '127.0.0.1', ...extra], { env });
    // no token given: one line naming the token and the flags; no state directory made
    let r = restore([], tok.env);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /in this backup is in the PKCS#11 token "cairn-ca" \(key "[^"]+"\): give --pkcs11-module, --pkcs11-token and --pkcs11-pin-file/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.equal(fs.existsSync(path.join(target, 'replica.json')), false);
    // the token not reachable (another token directory): its error, one line, nothing made
    const empty = path.join(dir, 'empty-restore');
    fs.mkdirSync(path.join(empty, 'tokens'), { recursive: true });
    fs.writeFileSync(path.join(empty, 'softhsm2.conf'), `directories.tokendir = ${path.join(empty, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    r = restore(tok.args, { SOFTHSM2_CONF: path.join(empty, 'softhsm2.conf') });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /no PKCS#11 token labelled "cairn-ca" in \/usr\/lib\/softhsm\/libsofthsm2.so/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.equal(fs.existsSync(path.join(target, 'replica.json')), false);
    assert.equal(fs.existsSync(path.join(target, 'cairn.db')), false);
    // with the token: restored, replica.json reaches it, and the restored replica signs there
    r = restore(tok.args, tok.env);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(target, 'replica.json'), 'utf8')).pkcs11, { module: SOFTHSM_MODULE, token: tok.label, pinFile: tok.pinFile });
    const rows = await query(target, 'SELECT key_sealed, key_location FROM cas');
    for (const row of rows) assert.equal(row.key_sealed, null);
    const s = new ServeProcess(target, tok.env, ['--workers', '1']);
    await s.start();
    try {
      const node = path.join(dir, 'node-restored');
      const j = cli(['join', '--token', c.tokens.worker, '--state-dir', node, `https://127.0.0.1:${port}`]);
      assert.equal(j.code, 0, j.stderr);
      const v = await run('openssl', ['verify', '-x509_strict', '-CAfile', path.join(c.dir, 'ca.crt'), path.join(node, 'node.crt')]);
      assert.equal(v.code, 0, v.stdout + v.stderr);
    } finally {
      await s.kill('SIGTERM');
    }
  });

  test('serve --workers 2 with a token, restarted 5 times: every start serves and concurrent joins are signed', async () => {
    // both processes open the SoftHSM2 token directory at the same moment at each start (the
    // race that answered CKR_GENERAL_ERROR, or showed no token, before pkcs11.ts retried)
    await c.kill('SIGTERM');
    const serial = async (f: string) => (await run('openssl', ['x509', '-in', f, '-noout', '-serial'])).stdout.trim();
    for (let round = 0; round < 5; round++) {
      const s = new ServeProcess(c.dir, tok.env, ['--workers', '2']);
      await s.start();
      try {
        const dirs = [0, 1, 2, 3].map((i) => path.join(dir, `w${round}-${i}`));
        const joins = await Promise.all(dirs.map((d) => cliAsync(['join', '--token', c.tokens.worker, '--state-dir', d, c.url])));
        for (const j of joins) assert.equal(j.code, 0, j.stderr);
        for (const d of dirs) {
          const v = await run('openssl', ['verify', '-x509_strict', '-CAfile', path.join(d, 'ca.crt'), path.join(d, 'node.crt')]);
          assert.equal(v.code, 0, v.stdout + v.stderr);
        }
        assert.equal(new Set(await Promise.all(dirs.map((d) => serial(path.join(d, 'node.crt'))))).size, 4);
        assert.doesNotMatch(s.logs.join(''), /CKR_|hsm_error/);
      } finally {
        await s.kill('SIGTERM');
      }
    }
    await c.start();
  });

  test('a wrong PIN, a locked-out file, a missing token: the replica refuses to start with one clear line', async () => {
    await c.kill('SIGTERM');
    const serve = (env: NodeJS.ProcessEnv) => spawnSync(process.execPath, [path.resolve('bin/cairn.js'), 'serve', '--state-dir', c.dir, '--workers', '1'], { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 20_000 });
    fs.writeFileSync(tok.pinFile, 'wrong-pin\n');
    let r = serve(tok.env);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /the PKCS#11 token "cairn-ca" refused the PIN in /);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    fs.writeFileSync(tok.pinFile, PIN + '\n');
    fs.chmodSync(tok.pinFile, 0o644);
    r = serve(tok.env);
    assert.match(r.stderr, /group or others can access it/);
    fs.chmodSync(tok.pinFile, 0o600);
    // another token directory, without this token
    const empty = path.join(dir, 'empty');
    fs.mkdirSync(path.join(empty, 'tokens'), { recursive: true });
    fs.writeFileSync(path.join(empty, 'softhsm2.conf'), `directories.tokendir = ${path.join(empty, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    r = serve({ SOFTHSM2_CONF: path.join(empty, 'softhsm2.conf') });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /no PKCS#11 token labelled "cairn-ca" in \/usr\/lib\/softhsm\/libsofthsm2.so/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    // and with the right token it serves again
    await c.start();
  });
});

describe('CA keys in a PKCS#11 token, two replicas on PostgreSQL sharing one SoftHSM2 token directory', { skip: !HAS_SOFTHSM && 'softhsm2 is not installed' }, () => {
  let dir: string;
  let tok: ReturnType<typeof softToken>;
  let db: TestDb;
  let a: Cluster;
  let second: { dir: string; url: string; server: ServeProcess } | null = null;

  before(async () => {
    dir = mkTemp();
    tok = softToken(dir);
    db = await createDb();
    a = await startCluster('hsm-pg', { store: db.url, initArgs: tok.args, env: tok.env });
  });
  after(async () => {
    await second?.server.kill('SIGKILL');
    await a?.cleanup();
    await db?.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('replica add without the token flags is refused with one line; with them, both replicas start together and both sign joins through the token', async () => {
    const unlock = path.join(a.dir, 'unlock.key');
    const port = await freePort();
    const bDir = path.join(dir, 'b');
    const add = (extra: string[]) => cli(['replica', 'add', '--state-dir', bDir, '--store', db.url, '--unlock-key-file', unlock, '--advertise-addr', '127.0.0.1', '--listen', `127.0.0.1:${port}`, '--json', ...extra], { env: tok.env });
    const bare = add([]);
    assert.notEqual(bare.code, 0);
    assert.match(bare.stderr, /is in the PKCS#11 token "cairn-ca": this replica has no PKCS#11 module set up \(give --pkcs11-module, --pkcs11-token and --pkcs11-pin-file to "cairn replica add"\)/);
    assert.equal(bare.stderr.trim().split('\n').length, 1, bare.stderr);
    const ok = add(tok.args);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(JSON.parse(fs.readFileSync(path.join(bDir, 'replica.json'), 'utf8')).pkcs11.token, tok.label);
    second = { dir: bDir, url: `https://127.0.0.1:${port}`, server: new ServeProcess(bDir, tok.env, ['--unlock-key-file', unlock, '--workers', '2']) };
    // both replicas (2 processes each) open the one token directory at the same moment
    await a.kill('SIGTERM');
    await Promise.all([a.start(), second.server.start()]);

    const joins = await Promise.all(
      [a.url, second.url, a.url, second.url, a.url, second.url].map((url, i) => cliAsync(['join', '--token', a.tokens.worker, '--state-dir', path.join(dir, `n${i}`), url])),
    );
    for (const j of joins) assert.equal(j.code, 0, j.stderr);
    for (let i = 0; i < 6; i++) {
      const v = await run('openssl', ['verify', '-x509_strict', '-CAfile', path.join(a.dir, 'ca.crt'), path.join(dir, `n${i}`, 'node.crt')]);
      assert.equal(v.code, 0, v.stdout + v.stderr);
    }
    // each replica signed (the store records which): both reached the key in the token
    const signers = await pgQuery(db.url, "SELECT DISTINCT replica_id FROM certificates WHERE kind = 'node'");
    assert.equal(signers.length, 2, JSON.stringify(signers));
    const rows = await pgQuery(db.url, 'SELECT key_sealed FROM cas');
    for (const r of rows) assert.equal(r.key_sealed, null);

    // a revocation on the second replica: the CRL (signed in the token by the CRL leader) lists it at both replicas
    const { nodeId } = JSON.parse(fs.readFileSync(path.join(dir, 'n1', 'node.json'), 'utf8'));
    const serial = (await run('openssl', ['x509', '-in', path.join(dir, 'n1', 'node.crt'), '-noout', '-serial'])).stdout.trim().replace('serial=', '');
    const rm = await api(second.url, 'DELETE', `/v1/nodes/${nodeId}`, undefined, adminId(bDir));
    assert.equal(rm.status, 200, JSON.stringify(rm.body));
    for (const url of [a.url, second.url]) {
      const crl = path.join(dir, 'pg.crl');
      let text = '';
      for (let i = 0; i < 50 && !text.includes(serial); i++) {
        await new Promise((res) => setTimeout(res, 200));
        if ((await run('curl', ['-sk', '-o', crl, `${url}/v1/crl/cluster`])).code === 0) text = (await run('openssl', ['crl', '-inform', 'DER', '-in', crl, '-noout', '-text'])).stdout;
      }
      assert.ok(text.includes(serial), `serial ${serial} in the CRL of ${url}`);
      const vc = await run('openssl', ['crl', '-inform', 'DER', '-in', crl, '-noout', '-CAfile', path.join(a.dir, 'ca.crt'), '-verify']);
      assert.match(vc.stdout + vc.stderr, /verify OK/);
    }
  });
});
