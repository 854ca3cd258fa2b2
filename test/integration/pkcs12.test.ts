/**
 * PKCS#12 for clones: clone-prepare's file is read by OpenSSL and imported by NSS with its
 * nicknames; pkcs12-cert-find reads what `openssl pkcs12 -export` makes; init --from-pkcs12
 * creates a controller with the same CAs; bad files and passwords fail clearly.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildPkcs12, parsePkcs12, describePkcs12Entry } from '../../src/pki/pkcs12.js';
import {
  certificateFromPem, certificateInfo, generateKeyPair, keysMatch, makeSerial, privateKeyFromPem, privateKeyToPem, rootCaProfile,
  selfSignCertificate, spkiDer, certificateToPem,
} from '../../src/pki/index.js';
import { cli, CliResult, cliAsync as runCli, mkTemp, query } from './cluster.js';

const PW = 'pkcs12 pass phrase';
const run = (cmd: string, args: string[], input?: string) => spawnSync(cmd, args, { encoding: 'utf8', input });
const has = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore' }).status !== null;
const NSS = has('pk12util', ['-h']) && has('certutil', ['-h']);

/** The CLI in a child process, without the PKCS#12 password in its environment. */
function cliAsync(args: string[]): Promise<CliResult> {
  return runCli(args, { env: { CAIRN_PKCS12_PASSWORD: undefined } });
}

/** Independent CLI runs, two at a time (the machine has two cores), results in order. */
async function inBatches(runs: string[][]): Promise<CliResult[]> {
  const out: CliResult[] = [];
  for (let i = 0; i < runs.length; i += 2) out.push(...(await Promise.all(runs.slice(i, i + 2).map(cliAsync))));
  return out;
}

function selfSigned(cn: string, keyType?: 'rsa-2048') {
  const kp = generateKeyPair(keyType);
  const der = selfSignCertificate(rootCaProfile({ O: 'abcdefghijklmnopqrstuvwxy', OU: 'cairn', CN: cn }, spkiDer(kp.publicKey), makeSerial(7n)), kp.privateKey);
  return { der, key: kp.privateKey };
}

describe('PKCS#12 encoding (pure)', () => {
  test('round trip: certificates with and without keys, names, key pairing; wrong password; not PKCS#12', async () => {
    const a = selfSigned('one');
    const b = selfSigned('two', 'rsa-2048');
    const c = selfSigned('three');
    const der = await buildPkcs12([{ certDer: a.der, friendlyName: 'one', key: a.key }, { certDer: b.der, friendlyName: 'zwei', key: b.key }, { certDer: c.der, friendlyName: 'three' }], PW, { iterations: 2048 });
    const entries = await parsePkcs12(der, PW);
    assert.deepEqual(entries.map((e) => [e.friendlyName, !!e.key]), [['one', true], ['zwei', true], ['three', false]]);
    assert.ok(entries[0].certDer.equals(a.der));
    assert.ok(keysMatch(entries[1].key!, spkiDer(b.key)));
    const d = describePkcs12Entry(entries[0]);
    assert.equal(d.id, createHash('sha1').update(a.der).digest('hex'));
    assert.equal(d.subject, 'CN=one,OU=cairn,O=abcdefghijklmnopqrstuvwxy');
    await assert.rejects(parsePkcs12(der, 'wrong'), /wrong PKCS#12 password/);
    await assert.rejects(parsePkcs12(der.subarray(0, der.length - 10), PW), /not a PKCS#12 file/);
    await assert.rejects(parsePkcs12(Buffer.from('hello'), PW), /not a PKCS#12 file/);
    await assert.rejects(buildPkcs12([{ certDer: a.der, friendlyName: 'x', key: b.key }], PW), /does not belong/);
    await assert.rejects(buildPkcs12([{ certDer: a.der, friendlyName: 'x' }], ''), /must not be empty/);
  });
});

describe('clone-prepare, pkcs12-cert-find, init --from-pkcs12', () => {
  let root: string;
  let aDir: string;
  let p12: string;
  let pwFile: string;
  let clusterId: string;

  before(() => {
    root = mkTemp();
    aDir = path.join(root, 'a');
    const init = cli(['init', 'alpha', '--state-dir', aDir, '--listen', '127.0.0.1:1', '--json']);
    assert.equal(init.code, 0, init.stderr);
    clusterId = JSON.parse(init.stdout).clusterId;
    p12 = path.join(root, 'ca.p12');
    pwFile = path.join(root, 'pw');
    fs.writeFileSync(pwFile, PW + '\n', { mode: 0o600 });
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  test('clone-prepare writes both CAs with their keys and prints one line each; OpenSSL reads it with the password', async () => {
    const r = cli(['clone-prepare', '--state-dir', aDir, '--pkcs12-file', p12, '--pkcs12-password-file', pwFile]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 2);
    assert.match(lines[0], /^Added certificate "cluster-root-ca" with its key: CN=cluster-root-ca,OU=cairn,O=/);
    assert.match(lines[1], /^Added certificate "client-root-ca" with its key: CN=client-root-ca,OU=cairn,O=/);
    assert.equal(fs.statSync(p12).mode & 0o777, 0o600);
    assert.ok(!r.stdout.includes(PW) && !r.stderr.includes(PW));
    const again = cli(['clone-prepare', '--state-dir', aDir, '--pkcs12-file', p12, '--pkcs12-password-file', pwFile]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already exists/);

    const info = run('openssl', ['pkcs12', '-info', '-in', p12, '-passin', `file:${pwFile}`, '-noenc']);
    assert.equal(info.status, 0, info.stderr);
    const all = info.stdout + info.stderr;
    assert.match(all, /MAC: sha256/);
    assert.match(all, /PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC, Iteration \d+, PRF hmacWithSHA256/);
    assert.equal((all.match(/Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration \d+, PRF hmacWithSHA256/g) ?? []).length, 2);
    assert.match(all, /friendlyName: cluster-root-ca/);
    assert.match(all, /friendlyName: client-root-ca/);
    // the certificates are the cluster's, and each key OpenSSL extracted belongs to one of them
    const cas = await query(aDir, 'select name, cert_pem from cas order by id');
    for (const c of cas) assert.ok(info.stdout.includes(c.cert_pem.trim()), `${c.name} CA certificate missing`);
    const keys = info.stdout.match(/-----BEGIN PRIVATE KEY-----[\s\S]+?-----END PRIVATE KEY-----\n/g) ?? [];
    assert.equal(keys.length, 2);
    for (const k of keys) {
      const key = privateKeyFromPem(k);
      assert.ok(cas.some((c) => keysMatch(key, certificateInfo(certificateFromPem(c.cert_pem, 'ca')).publicKeyDer)));
    }
    const wrong = run('openssl', ['pkcs12', '-info', '-in', p12, '-passin', 'pass:wrong', '-noenc']);
    assert.notEqual(wrong.status, 0);
  });

  test('NSS pk12util imports it into a fresh database; certutil lists the nicknames and keys', { skip: NSS ? false : 'NSS tools (libnss3-tools) not installed' }, () => {
    const db = path.join(root, 'nssdb');
    fs.mkdirSync(db);
    assert.equal(run('certutil', ['-N', '-d', `sql:${db}`, '--empty-password']).status, 0);
    const imp = run('pk12util', ['-i', p12, '-d', `sql:${db}`, '-w', pwFile]);
    assert.equal(imp.status, 0, imp.stdout + imp.stderr);
    assert.match(imp.stdout + imp.stderr, /PKCS12 IMPORT SUCCESSFUL/);
    const list = run('certutil', ['-L', '-d', `sql:${db}`]);
    assert.equal(list.status, 0);
    assert.match(list.stdout, /^cluster-root-ca\s+\S+/m);
    assert.match(list.stdout, /^client-root-ca\s+\S+/m);
    const keys = run('certutil', ['-K', '-d', `sql:${db}`]);
    assert.match(keys.stdout, /cluster-root-ca/);
    assert.match(keys.stdout, /client-root-ca/);
  });

  test('pkcs12-cert-find lists clone-prepare\'s file and what openssl pkcs12 -export makes', () => {
    const mine = cli(['pkcs12-cert-find', '--pkcs12-file', p12, '--json'], { env: { CAIRN_PKCS12_PASSWORD: PW } });
    assert.equal(mine.code, 0, mine.stderr);
    const list = JSON.parse(mine.stdout);
    assert.deepEqual(list.map((e: any) => [e.nickname, e.hasKey]), [['cluster-root-ca', true], ['client-root-ca', true]]);
    assert.equal(list[0].subject, `CN=cluster-root-ca,OU=cairn,O=${clusterId}`);
    assert.equal(list[0].issuer, list[0].subject);

    // a key and certificate exported by OpenSSL with its defaults (PBES2/AES-256-CBC, SHA-256 MAC)
    const leaf = selfSigned('openssl-made');
    const crt = path.join(root, 'o.crt');
    const key = path.join(root, 'o.key');
    fs.writeFileSync(crt, certificateToPem(leaf.der));
    fs.writeFileSync(key, privateKeyToPem(leaf.key), { mode: 0o600 });
    const o12 = path.join(root, 'openssl.p12');
    const exp = run('openssl', ['pkcs12', '-export', '-in', crt, '-inkey', key, '-name', 'my nick', '-passout', `file:${pwFile}`, '-out', o12]);
    assert.equal(exp.status, 0, exp.stderr);
    const t = cli(['pkcs12-cert-find', '--pkcs12-file', o12, '--pkcs12-password-file', pwFile]);
    assert.equal(t.code, 0, t.stderr);
    const fp = run('openssl', ['x509', '-in', crt, '-noout', '-fingerprint', '-sha1']).stdout.trim().split('=')[1].replace(/:/g, '').toLowerCase();
    const serial = run('openssl', ['x509', '-in', crt, '-noout', '-serial']).stdout.trim().split('=')[1];
    assert.match(t.stdout, /^1 entry found$/m);
    assert.match(t.stdout, new RegExp(`Certificate ID: ${fp}$`, 'm'));
    assert.match(t.stdout, new RegExp(`Serial Number:\\s+${serial}$`, 'm'));
    assert.match(t.stdout, /Nickname:\s+my nick$/m);
    assert.match(t.stdout, /Subject DN:\s+CN=openssl-made,OU=cairn,O=abcdefghijklmnopqrstuvwxy$/m);
    assert.match(t.stdout, /Issuer DN:\s+CN=openssl-made,OU=cairn,O=abcdefghijklmnopqrstuvwxy$/m);
    assert.match(t.stdout, /Key:\s+present$/m);
    // certificates only
    const certsOnly = path.join(root, 'certs.p12');
    assert.equal(run('openssl', ['pkcs12', '-export', '-nokeys', '-in', crt, '-passout', `file:${pwFile}`, '-out', certsOnly]).status, 0);
    const t2 = cli(['pkcs12-cert-find', '--pkcs12-file', certsOnly, '--pkcs12-password-file', pwFile, '--json']);
    assert.equal(t2.code, 0, t2.stderr);
    assert.deepEqual(JSON.parse(t2.stdout).map((e: any) => e.hasKey), [false]);
  });

  test('bad PKCS#12 input: clear message and exit code', async () => {
    const leaf = selfSigned('legacy');
    const crt = path.join(root, 'l.crt');
    const key = path.join(root, 'l.key');
    fs.writeFileSync(crt, certificateToPem(leaf.der));
    fs.writeFileSync(key, privateKeyToPem(leaf.key), { mode: 0o600 });
    const legacy = path.join(root, 'legacy.p12');
    let exp = run('openssl', ['pkcs12', '-export', '-legacy', '-in', crt, '-inkey', key, '-passout', `file:${pwFile}`, '-out', legacy]);
    if (exp.status !== 0) {
      // without OpenSSL's legacy provider: the 3DES PKCS#12 PBE, which the default provider has
      exp = run('openssl', ['pkcs12', '-export', '-keypbe', 'PBE-SHA1-3DES', '-certpbe', 'PBE-SHA1-3DES', '-macalg', 'sha1', '-in', crt, '-inkey', key, '-passout', `file:${pwFile}`, '-out', legacy]);
    }
    assert.equal(exp.status, 0, exp.stderr);
    const truncated = path.join(root, 'truncated.p12');
    fs.writeFileSync(truncated, fs.readFileSync(p12).subarray(0, 700));
    const notP12 = path.join(root, 'not.p12');
    fs.writeFileSync(notP12, 'this is not a PKCS#12 file\n');
    const cases: [string, string[], number, RegExp][] = [
      ['wrong password', ['--pkcs12-file', p12, '--pkcs12-password', 'wrong'], 1, /wrong PKCS#12 password/],
      ['legacy encryption', ['--pkcs12-file', legacy, '--pkcs12-password-file', pwFile], 1, /legacy PKCS#12 encryption \(use openssl pkcs12 -export without -legacy\)/],
      ['truncated file', ['--pkcs12-file', truncated, '--pkcs12-password-file', pwFile], 1, /not a PKCS#12 file/],
      ['not PKCS#12', ['--pkcs12-file', notP12, '--pkcs12-password-file', pwFile], 1, /not a PKCS#12 file/],
      ['no password', ['--pkcs12-file', p12], 2, /give the PKCS#12 password with --pkcs12-password-file/],
    ];
    const noFile = path.join(root, 'never.p12');
    const runs = [...cases.map(([, args]) => ['pkcs12-cert-find', ...args]), ['clone-prepare', '--state-dir', aDir, '--pkcs12-file', noFile]];
    const results = await inBatches(runs);
    // clone-prepare without a password writes nothing
    assert.equal(results.at(-1)!.code, 2);
    assert.match(results.at(-1)!.stderr, /give the PKCS#12 password with --pkcs12-password-file/);
    assert.ok(!fs.existsSync(noFile));
    for (const [i, [what, , code, message]] of cases.entries()) {
      const r = results[i];
      assert.equal(r.code, code, `${what}: ${r.stderr}`);
      assert.match(r.stderr, message, what);
      assert.doesNotMatch(r.stderr, /internal error|\n\s+at /, what);
    }
  });

  test('init --from-pkcs12 creates a controller whose CAs are the same; bad material creates nothing', async () => {
    const dDir = path.join(root, 'd');
    const r = cli(['init', 'delta', '--state-dir', dDir, '--listen', '127.0.0.1:2', '--from-pkcs12', p12, '--pkcs12-password-file', pwFile, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.clusterId, clusterId);
    const aCas = await query(aDir, 'select id, name, cert_pem, key_id, status from cas order by id');
    const dCas = await query(dDir, 'select id, name, cert_pem, key_id, status from cas order by id');
    assert.deepEqual(dCas, aCas);
    const aTokens = JSON.parse(fs.readFileSync(path.join(aDir, 'admin/tokens.json'), 'utf8'));
    assert.equal(j.tokens.worker.split('-')[2], aTokens.worker.split('-')[2]);
    // D's own certificates chain to A's root; D draws serials from another block
    const v = run('openssl', ['verify', '-CAfile', path.join(aDir, 'ca.crt'), path.join(dDir, 'server.crt'), path.join(dDir, 'admin/cert.pem')]);
    assert.equal(v.status, 0, v.stdout + v.stderr);
    const [seq] = await query(dDir, "select next from sequences where name = 'serial'");
    assert.ok(seq.next >= 2 ** 32);

    // only the cluster CA: no client CA in the file
    const clusterOnly = path.join(root, 'cluster-only.p12');
    const entries = (await parsePkcs12(fs.readFileSync(p12), PW)).filter((e) => e.friendlyName === 'cluster-root-ca');
    fs.writeFileSync(clusterOnly, await buildPkcs12(entries.map((e) => ({ certDer: e.certDer, friendlyName: e.friendlyName!, key: e.key })), PW));
    const bad: [string, string[], number, RegExp][] = [
      ['wrong password', ['--from-pkcs12', p12, '--pkcs12-password', 'wrong'], 1, /wrong PKCS#12 password/],
      ['no client CA', ['--from-pkcs12', clusterOnly, '--pkcs12-password-file', pwFile], 1, /holds no "client-root-ca" certificate/],
      ['password without file', ['--pkcs12-password-file', pwFile], 2, /--pkcs12-password goes with --from-pkcs12/],
    ];
    const dirs = bad.map(([what, , code]) => path.join(root, `e-${code}-${what.replace(/\W/g, '')}`));
    const results = await inBatches(bad.map(([, args], i) => ['init', 'echo', '--state-dir', dirs[i], '--listen', '127.0.0.1:3', ...args]));
    for (const [i, [what, , code, message]] of bad.entries()) {
      const x = results[i];
      assert.equal(x.code, code, `${what}: ${x.stderr}`);
      assert.match(x.stderr, message, what);
      assert.ok(!fs.existsSync(dirs[i]), `${what}: the state directory was created`);
    }
  });
});
