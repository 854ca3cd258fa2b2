/**
 * Your own CA (issue 10): `cairn init --ca-cert/--ca-key` with a root made by `openssl req -x509`
 * (RSA, any subject) and with an intermediate (ECDSA) signed by an outside root; nodes join,
 * their chains verify with `openssl verify -x509_strict` against the trust bundle, the trust
 * bundle is the outside root. Each check of the CA material fails with a clear error and
 * leaves nothing behind.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { certificateToPem, generateKeyPair, makeSerial, privateKeyToPem, rootCaProfile, selfSignCertificate, spkiDer } from '../../src/pki/index.js';
import { run } from '../helpers.js';
import { cli, Cluster, mkTemp, startCluster } from './cluster.js';

const openssl = async (args: string[], input?: string) => {
  const r = await run('openssl', args, { input });
  if (r.code !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};

/** A CA signed by `issuer` (openssl x509 -req), with the extensions given. */
async function signedBy(dir: string, name: string, issuer: { cert: string; key: string }, ext: string, keyArgs = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']) {
  const key = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const cert = path.join(dir, `${name}.pem`);
  const extFile = path.join(dir, `${name}.ext`);
  fs.writeFileSync(extFile, `[v3]\n${ext}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n`);
  await openssl(['req', '-new', ...keyArgs, '-nodes', '-keyout', key, '-subj', `/O=Example Corp/OU=Platform/CN=${name}`, '-out', csr]);
  await openssl(['x509', '-req', '-in', csr, '-CA', issuer.cert, '-CAkey', issuer.key, '-set_serial', String(Date.now()), '-days', '3650', '-extfile', extFile, '-extensions', 'v3', '-out', cert]);
  fs.chmodSync(key, 0o600);
  return { cert, key };
}

async function opensslRoot(dir: string, name: string, keyArgs: string[], ext = 'basicConstraints=critical,CA:TRUE', days = '3650') {
  const key = path.join(dir, `${name}.key`);
  const cert = path.join(dir, `${name}.pem`);
  await openssl(['req', '-x509', ...keyArgs, '-nodes', '-keyout', key, '-out', cert, '-days', days, '-subj', `/C=DE/O=Example Corp/CN=${name}`, '-addext', ext, '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  fs.chmodSync(key, 0o600);
  return { cert, key };
}

async function joinAndVerify(c: Cluster, dir: string, trust: string) {
  const node = path.join(dir, `node-${Math.random().toString(36).slice(2)}`);
  const j = cli(['join', '--token', c.tokens.worker, '--state-dir', node, c.url]);
  assert.equal(j.code, 0, j.stderr);
  const crt = fs.readFileSync(path.join(node, 'node.crt'), 'utf8');
  const blocks = crt.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g)!;
  fs.writeFileSync(path.join(node, 'leaf.pem'), blocks[0]);
  fs.writeFileSync(path.join(node, 'chain.pem'), blocks.slice(1).join('') || blocks[0]);
  const v = await run('openssl', ['verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', trust, '-untrusted', path.join(node, 'chain.pem'), path.join(node, 'leaf.pem')]);
  assert.equal(v.code, 0, v.stdout + v.stderr);
  // the node's own trust bundle verifies it too
  const v2 = await run('openssl', ['verify', '-x509_strict', '-CAfile', path.join(node, 'ca.crt'), '-untrusted', path.join(node, 'chain.pem'), path.join(node, 'leaf.pem')]);
  assert.equal(v2.code, 0, v2.stdout + v2.stderr);
  return { node, blocks };
}

describe('init --ca-cert/--ca-key: your own CA', () => {
  let dir: string;
  const clusters: Cluster[] = [];
  before(() => {
    dir = mkTemp();
  });
  after(async () => {
    for (const c of clusters) await c.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('an RSA root made by openssl req -x509 (any subject): nodes join, chains verify with -x509_strict, CRL signed by it', async () => {
    const root = await opensslRoot(dir, 'Example RSA Root', ['-newkey', 'rsa:2048']);
    const client = await opensslRoot(dir, 'Example Client Root', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384']);
    const c = await startCluster('own', { initArgs: ['--ca-cert', root.cert, '--ca-key', root.key, '--client-ca-cert', client.cert, '--client-ca-key', client.key] });
    clusters.push(c);
    assert.match(c.clusterId, /^[a-z0-9]{25}$/);
    const bundle = fs.readFileSync(path.join(c.dir, 'ca.crt'), 'utf8');
    assert.equal(bundle, fs.readFileSync(root.cert, 'utf8'), 'the trust bundle is the operator root');
    const { node } = await joinAndVerify(c, dir, root.cert);
    const text = await openssl(['x509', '-in', path.join(node, 'leaf.pem'), '-noout', '-subject', '-issuer']);
    assert.match(text, new RegExp(`subject=O = ${c.clusterId}, OU = worker, CN = `));
    assert.match(text, /issuer=C = DE, O = Example Corp, CN = Example RSA Root/);
    // the admin bundle's client certificate was issued by it (the CLI talks to the server)
    const ls = cli(['node', 'ls', '--state-dir', c.dir, '--json']);
    assert.equal(ls.code, 0, ls.stderr);
    // the CRL is signed by the operator's key
    const crl = path.join(dir, 'own.crl');
    const got = await run('curl', ['-sk', '-o', crl, `${c.url}/v1/crl/cluster`]);
    assert.equal(got.code, 0);
    const v = await run('openssl', ['crl', '-inform', 'DER', '-in', crl, '-noout', '-CAfile', root.cert]);
    assert.match(v.stderr + v.stdout, /verify OK/);
  });

  test('an ECDSA intermediate signed by an outside root, with its chain: the bundle is the outside root, leaves carry the intermediate', async () => {
    const outside = await opensslRoot(dir, 'Outside Root', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], 'basicConstraints=critical,CA:TRUE,pathlen:1');
    const inter = await signedBy(dir, 'Cluster Intermediate', outside, 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign');
    const chainFile = path.join(dir, 'inter-chain.pem');
    fs.writeFileSync(chainFile, fs.readFileSync(inter.cert, 'utf8') + fs.readFileSync(outside.cert, 'utf8'));
    const c = await startCluster('inter', { initArgs: ['--ca-cert', chainFile, '--ca-key', inter.key] });
    clusters.push(c);
    assert.equal(fs.readFileSync(path.join(c.dir, 'ca.crt'), 'utf8'), fs.readFileSync(outside.cert, 'utf8'));
    const { blocks } = await joinAndVerify(c, dir, outside.cert);
    assert.equal(blocks.length, 2, 'leaf followed by the intermediate');
    assert.equal(blocks[1], fs.readFileSync(inter.cert, 'utf8'));
    // a second node verifies the first one's certificate chain with only the outside root
    await joinAndVerify(c, dir, outside.cert);
  });

  test('a rotation away from an intermediate: it certifies the new root and is sent after it; the agent takes the new root through that chain; a pathlen:0 intermediate is refused', async () => {
    // the cluster of the test before: its intermediate has pathlen:0, it may not certify a CA
    const tight = await cli(['ca', 'rotate', '--detach', '--state-dir', clusters[1].dir]);
    assert.equal(tight.code, 1);
    assert.match(tight.stderr, /path length constraint of 0: it cannot vouch for a new root/);
    const outside = await opensslRoot(dir, 'Outside Root 2', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']);
    const inter = await signedBy(dir, 'Cluster Intermediate 2', outside, 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign');
    const chainFile = path.join(dir, 'inter2-chain.pem');
    fs.writeFileSync(chainFile, fs.readFileSync(inter.cert, 'utf8') + fs.readFileSync(outside.cert, 'utf8'));
    const c = await startCluster('inter2', { initArgs: ['--ca-cert', chainFile, '--ca-key', inter.key] });
    clusters.push(c);
    const { node } = await joinAndVerify(c, dir, outside.cert);
    const st = cli(['ca', 'rotate', '--detach', '--state-dir', c.dir]);
    assert.equal(st.code, 0, st.stderr);
    const r = cli(['agent', '--renew-now', '--state-dir', node]);
    assert.equal(r.code, 0, r.stderr);
    const pems = (f: string) => fs.readFileSync(f, 'utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g)!;
    const chain = pems(path.join(node, 'node.crt'));
    assert.equal(chain.length, 3, 'leaf, the new root certified by the intermediate, the intermediate');
    assert.equal(chain[2], fs.readFileSync(inter.cert, 'utf8'));
    const trust = pems(path.join(node, 'ca.crt'));
    assert.equal(trust.length, 2, 'the agent took the new root: the outside root vouches for it through the intermediate');
    const newRoot = trust.find((t) => t !== fs.readFileSync(outside.cert, 'utf8'))!;
    fs.writeFileSync(path.join(node, 'leaf.pem'), chain[0]);
    fs.writeFileSync(path.join(node, 'rest.pem'), chain.slice(1).join(''));
    fs.writeFileSync(path.join(node, 'new-root.pem'), newRoot);
    for (const ca of [outside.cert, path.join(node, 'new-root.pem')]) {
      const v = await run('openssl', ['verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', ca, '-untrusted', path.join(node, 'rest.pem'), path.join(node, 'leaf.pem')]);
      assert.equal(v.code, 0, `${ca}: ${v.stdout}${v.stderr}`);
    }
    // the only node converged: the rotation completes, and the node ends with the new root only
    let state = '';
    for (let i = 0; i < 40 && state !== 'completed'; i++) {
      await new Promise((res) => setTimeout(res, 250));
      state = JSON.parse(cli(['ca', 'rotate', '--status', '--json', '--state-dir', c.dir]).stdout).rotation.state;
    }
    assert.equal(state, 'completed');
    assert.equal(cli(['agent', '--renew-now', '--state-dir', node]).code, 0);
    assert.deepEqual(pems(path.join(node, 'ca.crt')), [newRoot]);
  });

  test('CA material refused with one clear line, and nothing left behind', async () => {
    const good = await opensslRoot(dir, 'Good Root', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']);
    const other = await opensslRoot(dir, 'Other Root', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']);
    const short = await opensslRoot(dir, 'Short Root', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], 'basicConstraints=critical,CA:TRUE', '30');
    const leaf = await signedBy(dir, 'Not A CA', good, 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature');
    const strict = await opensslRoot(dir, 'Strict Root', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], 'basicConstraints=critical,CA:TRUE,pathlen:0');
    const forbidden = await signedBy(dir, 'Forbidden Intermediate', strict, 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign');
    const noSign = await signedBy(dir, 'No Sign', good, 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature,cRLSign');
    // expired: a root whose validity ended (made with the pure pki core: openssl req cannot)
    const kp = generateKeyPair();
    const past = new Date(Date.now() - 30 * 365 * 86_400_000);
    const expired = { cert: path.join(dir, 'expired.pem'), key: path.join(dir, 'expired.key') };
    fs.writeFileSync(expired.cert, certificateToPem(selfSignCertificate(rootCaProfile({ O: 'Example', CN: 'Expired Root' }, spkiDer(kp.publicKey), makeSerial(5n), past), kp.privateKey)));
    fs.writeFileSync(expired.key, privateKeyToPem(kp.privateKey), { mode: 0o600 });
    const readable = path.join(dir, 'readable.key');
    fs.copyFileSync(good.key, readable);
    fs.chmodSync(readable, 0o644);
    const interOnly = forbidden.cert; // an intermediate without its chain
    const cases: [string[], RegExp][] = [
      [['--ca-cert', leaf.cert, '--ca-key', leaf.key], /is not a CA certificate/],
      [['--ca-cert', good.cert, '--ca-key', other.key], /the key does not belong to/],
      [['--ca-cert', expired.cert, '--ca-key', expired.key], /expired on/],
      [['--ca-cert', short.cert, '--ca-key', short.key], /must outlive the node certificate lifetime/],
      [['--ca-cert', interOnly, '--ca-key', forbidden.key], /is not self-signed: give the chain up to its root/],
      [['--ca-cert', concat(dir, forbidden.cert, strict.cert), '--ca-key', forbidden.key], /path length constraint of 0: it forbids/],
      [['--ca-cert', concat(dir, noSign.cert, good.cert), '--ca-key', noSign.key], /without keyCertSign/],
      [['--ca-cert', good.cert], /needs its key: --ca-key/],
      [['--ca-cert', good.cert, '--ca-key', readable], /group or others can access it/],
      [['--ca-cert', good.cert, '--ca-key', good.key, '--from-pkcs12', good.cert], /give the CAs one way/],
    ];
    for (const [args, re] of cases) {
      const state = path.join(dir, 'refused');
      const r = cli(['init', 'x', '--state-dir', state, '--listen', '127.0.0.1:1', ...args]);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, re, args.join(' '));
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
      assert.equal(fs.existsSync(state), false, `nothing created for ${args.join(' ')}`);
    }
  });
});

let n = 0;
function concat(dir: string, ...files: string[]): string {
  const out = path.join(dir, `concat-${++n}.pem`);
  fs.writeFileSync(out, files.map((f) => fs.readFileSync(f, 'utf8')).join(''));
  return out;
}
