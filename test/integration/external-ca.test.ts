/**
 * An external CA over the CFSSL API (issue 10), against a real `cfssl serve` over TLS started
 * here: init with the CFSSL CA's certificate, nodes join and renew through it (chains verified
 * with openssl -x509_strict), a dead first URL is skipped, CFSSL down answers 503 with
 * Retry-After and records no node, an answer that is not CFSSL's is refused, and
 * `cairn update --external-ca` changes the URLs of a running cluster.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import { createPrivateKey } from 'node:crypto';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildCrl, certificateInfo, certificatesFromPem, createCsr, csrToPem, makeIssuer } from '../../src/pki/index.js';
import Database from 'better-sqlite3';
import { Background, CFSSL_CERTDB_SCHEMA, freePort, run, startBackground } from '../helpers.js';
import { adminId, api, cli, Cluster, mkTemp, query, startCluster } from './cluster.js';

/** The cfssl binary: Debian's golang-cfssl (1.2) by default; CAIRN_TEST_CFSSL names another (1.3+ serves GET /api/v1/cfssl/crl). */
const CFSSL = process.env.CAIRN_TEST_CFSSL ?? 'cfssl';

const openssl = async (args: string[]) => {
  const r = await run('openssl', args);
  if (r.code !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
};

describe('external CA: cfssl serve', () => {
  let dir: string;
  let cfssl: Background | null = null;
  let cfsslPort: number;
  let c: Cluster;
  let deadPort: number;
  const url = () => `protocol=cfssl,url=https://127.0.0.1:${cfsslPort},cacert=${path.join(dir, 'tls-ca.pem')}`;

  async function startCfssl(port = cfsslPort, ca = 'ca'): Promise<Background> {
    // the cluster CA's with its SQLite certificate database: CFSSL records what it signs, and revocations
    const db = ca === 'ca' ? ['-db-config', path.join(dir, 'db.json')] : [];
    const b = startBackground(CFSSL, ['serve', '-address', '127.0.0.1', '-port', String(port), '-ca', path.join(dir, `${ca}.pem`), '-ca-key', path.join(dir, `${ca}-key.pem`), '-config', path.join(dir, 'config.json'), ...db, '-tls-cert', path.join(dir, 'tls.pem'), '-tls-key', path.join(dir, 'tls.key')]);
    if (ca === 'ca') cfssl = b;
    for (let i = 0; i < 50; i++) {
      const r = await run('curl', ['-sk', '-o', '/dev/null', '-w', '%{http_code}', `https://127.0.0.1:${port}/api/v1/cfssl/health`]);
      if (r.stdout.trim() !== '000') return b;
      await new Promise((res) => setTimeout(res, 100));
    }
    throw new Error('cfssl serve did not start');
  }

  before(async () => {
    dir = mkTemp();
    const d = (f: string) => path.join(dir, f);
    await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', d('ca-key.pem'), '-out', d('ca.pem'), '-days', '3650', '-subj', '/O=Corp/CN=CFSSL Root', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
    await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', d('tls-ca.key'), '-out', d('tls-ca.pem'), '-days', '3650', '-subj', '/CN=TLS CA']);
    await openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', d('tls.key'), '-out', d('tls.csr'), '-subj', '/CN=127.0.0.1']);
    fs.writeFileSync(d('ext'), 'subjectAltName=IP:127.0.0.1\n');
    await openssl(['x509', '-req', '-in', d('tls.csr'), '-CA', d('tls-ca.pem'), '-CAkey', d('tls-ca.key'), '-set_serial', '5', '-days', '30', '-extfile', d('ext'), '-out', d('tls.pem')]);
    fs.writeFileSync(
      d('config.json'),
      JSON.stringify({
        signing: {
          default: { expiry: '2160h', usages: ['digital signature', 'key encipherment', 'server auth', 'client auth'] },
          // the profile a rotation away from this CA asks the cross-signature with
          profiles: { CA: { expiry: '43800h', usages: ['cert sign', 'crl sign', 'digital signature'], ca_constraint: { is_ca: true, max_path_len: 0, max_path_len_zero: true } } },
        },
      }),
    );
    const db = new Database(d('certs.db'));
    db.exec(CFSSL_CERTDB_SCHEMA);
    db.close();
    fs.writeFileSync(d('db.json'), JSON.stringify({ driver: 'sqlite3', data_source: d('certs.db') }));
    cfsslPort = await freePort();
    deadPort = await freePort();
    await startCfssl();
    // the first URL is dead: every issuance goes on to the second
    c = await startCluster('ext', { initArgs: ['--ca-cert', d('ca.pem'), '--external-ca', `protocol=cfssl,url=https://127.0.0.1:${deadPort}`, '--external-ca', url()] });
  });
  after(async () => {
    await c?.cleanup();
    await cfssl?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('join and renew through CFSSL (first URL dead): cairn subject and names, CFSSL serials, chains verify with -x509_strict', async () => {
    const node = path.join(dir, 'node');
    const j = cli(['join', '--token', c.tokens.worker, '--state-dir', node, c.url]);
    assert.equal(j.code, 0, j.stderr);
    const v = await run('openssl', ['verify', '-x509_strict', '-CAfile', path.join(dir, 'ca.pem'), path.join(node, 'node.crt')]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    const { nodeId } = JSON.parse(fs.readFileSync(path.join(node, 'node.json'), 'utf8'));
    const text = (await run('openssl', ['x509', '-in', path.join(node, 'node.crt'), '-noout', '-subject', '-ext', 'subjectAltName'])).stdout;
    assert.match(text, new RegExp(`subject=O = ${c.clusterId}, OU = worker, CN = ${nodeId}`));
    assert.match(text, new RegExp(`DNS:worker, DNS:${nodeId}`));
    const r = cli(['agent', '--renew-now', '--state-dir', node]);
    assert.equal(r.code, 0, r.stderr);
    const rows = await query(c.dir, 'SELECT serial FROM certificates WHERE node_id = ?', nodeId);
    assert.equal(rows.length, 2);
    // CFSSL's serials (20 random bytes), not cairn's 16-byte ones
    for (const row of rows) assert.ok(row.serial.length >= 36, row.serial);
    const rm = cli(['node', 'rm', nodeId, '--state-dir', c.dir]);
    assert.equal(rm.code, 0, rm.stderr);
    const again = cli(['agent', '--renew-now', '--state-dir', node]);
    assert.notEqual(again.code, 0);
  });

  test('CFSSL down: a join answers 503 with Retry-After naming the URLs, and records no node; back up: joins work again', async () => {
    await cfssl!.stop();
    const before = (await query(c.dir, 'SELECT count(*) AS n FROM nodes'))[0].n;
    const key = createPrivateKey({ key: fs.readFileSync(path.join(c.dir, 'server.key'), 'utf8') });
    const res = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: csrToPem(createCsr(key)) });
    assert.equal(res.status, 503, JSON.stringify(res.body));
    assert.ok(Number(res.headers['retry-after']) >= 1);
    assert.match(res.body.error.message, new RegExp(`no external CA could sign: https://127.0.0.1:${deadPort}: .*; https://127.0.0.1:${cfsslPort}: `));
    assert.equal((await query(c.dir, 'SELECT count(*) AS n FROM nodes'))[0].n, before);
    await startCfssl();
    const j = cli(['join', '--token', c.tokens.worker, '--state-dir', path.join(dir, 'node2'), c.url]);
    assert.equal(j.code, 0, j.stderr);
  });

  test('an external CA answering garbage (not JSON, oversized, a certificate of another CA) is refused: 503, nothing recorded', async () => {
    let mode = 'garbage';
    const fake = http.createServer((req, res) => {
      req.resume();
      if (mode === 'garbage') res.end('<html>not cfssl</html>');
      else if (mode === 'big') res.end(JSON.stringify({ success: true, result: { certificate: 'x'.repeat(300 * 1024) } }));
      else res.end(JSON.stringify({ success: true, result: { certificate: fs.readFileSync(path.join(dir, 'tls.pem'), 'utf8') } }));
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    const port = (fake.address() as { port: number }).port;
    try {
      // an http:// URL is refused by the setting itself
      const bad = cli(['update', '--state-dir', c.dir, '--external-ca', `protocol=cfssl,url=http://127.0.0.1:${port}`]);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /must be https:\/\//);
      // an https proxy in front of the fake: node's https client to a plain-http server fails the handshake; use the fake over TLS
      const https = await import('node:https');
      const tlsFake = https.createServer({ key: fs.readFileSync(path.join(dir, 'tls.key')), cert: fs.readFileSync(path.join(dir, 'tls.pem')) }, (req, res) => fake.emit('request', req, res));
      await new Promise<void>((r) => tlsFake.listen(0, '127.0.0.1', r));
      const tport = (tlsFake.address() as { port: number }).port;
      try {
        const u = cli(['update', '--state-dir', c.dir, '--external-ca', `protocol=cfssl,url=https://127.0.0.1:${tport},cacert=${path.join(dir, 'tls-ca.pem')}`]);
        assert.equal(u.code, 0, u.stderr);
        const key = createPrivateKey({ key: fs.readFileSync(path.join(c.dir, 'server.key'), 'utf8') });
        for (const [m, re] of [['garbage', /not JSON/], ['big', /more than 256 KiB/], ['other', /not signed by the cluster CA/]] as const) {
          mode = m;
          const before = (await query(c.dir, 'SELECT count(*) AS n FROM nodes'))[0].n;
          const res = await api(c.url, 'POST', '/v1/join', { token: c.tokens.worker, csr: csrToPem(createCsr(key)) });
          assert.equal(res.status, 503, m);
          assert.match(res.body.error.message, re);
          assert.equal((await query(c.dir, 'SELECT count(*) AS n FROM nodes'))[0].n, before);
        }
      } finally {
        tlsFake.close();
      }
    } finally {
      fake.close();
      const back = cli(['update', '--state-dir', c.dir, '--external-ca', url()]);
      assert.equal(back.code, 0, back.stderr);
    }
  });

  /** A certificate's row in CFSSL's database (keyed by the decimal serial, as CFSSL records it). */
  const cfsslRow = (serialHex: string): { status: string; reason: number | null } | undefined => {
    const db = new Database(path.join(dir, 'certs.db'), { readonly: true, fileMustExist: true });
    try {
      return db.prepare('SELECT CAST(status AS TEXT) AS status, reason FROM certificates WHERE CAST(serial_number AS TEXT) = ?').get(BigInt(`0x${serialHex}`).toString(10)) as never;
    } finally {
      db.close();
    }
  };
  const waitFor = async (what: string, ok: () => boolean | Promise<boolean>, ms = 15_000) => {
    const end = Date.now() + ms;
    while (!(await ok())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; replica log:\n${c.logs.join("").slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  const joinNode = async (name: string) => {
    const node = path.join(dir, name);
    const j = cli(['join', '--token', c.tokens.worker, '--state-dir', node, c.url]);
    assert.equal(j.code, 0, j.stderr);
    const { nodeId } = JSON.parse(fs.readFileSync(path.join(node, 'node.json'), 'utf8'));
    const [{ serial }] = await query(c.dir, "SELECT serial FROM certificates WHERE node_id = ? AND status = 'good'", nodeId);
    return { node, nodeId, serial: serial as string };
  };
  const revoked: string[] = [];

  test("cairn's revocations are recorded in CFSSL's database (POST /api/v1/cfssl/revoke) with their reason, also one made while CFSSL was down", async () => {
    const p = await joinNode('p');
    assert.equal(cfsslRow(p.serial)?.status, 'good', 'CFSSL recorded what it signed');
    assert.equal(cli(['node', 'rm', p.nodeId, '--state-dir', c.dir]).code, 0);
    await waitFor("CFSSL's record of the revocation", () => cfsslRow(p.serial)?.status === 'revoked');
    assert.equal(cfsslRow(p.serial)?.reason, 5, 'cessationOfOperation');
    await waitFor('forwarded_at', async () => (await query(c.dir, 'SELECT forwarded_at FROM certificates WHERE serial = ?', p.serial))[0].forwarded_at !== null);

    // CFSSL down: the revocation is recorded (and enforced) by cairn, and told to CFSSL when it is back
    const q = await joinNode('q');
    await cfssl!.stop();
    const rm = cli(['node', 'rm', q.nodeId, '--state-dir', c.dir]);
    assert.equal(rm.code, 0, rm.stderr);
    await new Promise((r) => setTimeout(r, 2500)); // a few CRL cycles with CFSSL down
    assert.equal((await query(c.dir, 'SELECT forwarded_at FROM certificates WHERE serial = ?', q.serial))[0].forwarded_at, null);
    assert.equal(cfsslRow(q.serial)?.status, 'good');
    assert.match(c.logs.join(''), /the external CA did not record a revocation: it is asked again at the next cycle/);
    await startCfssl();
    await waitFor("CFSSL's record of the revocation made while it was down", () => cfsslRow(q.serial)?.status === 'revoked');
    revoked.push(p.serial, q.serial);

    // every certificate cairn revoked under the external CA (renewals' superseded ones, the first test's node) is revoked there
    const rows = await query(c.dir, "SELECT serial FROM certificates WHERE status = 'revoked'");
    await waitFor('every revocation recorded by CFSSL', () => rows.every((r) => cfsslRow(r.serial)?.status === 'revoked'));
  });

  test("the cluster CRL is CFSSL's (GET /api/v1/cfssl/crl, CFSSL 1.3+), checked and served at /v1/crl/cluster: OpenSSL verifies it and refuses the revoked certificates", async (t) => {
    const probe = await run('curl', ['-sk', '-o', '/dev/null', '-w', '%{http_code}', `https://127.0.0.1:${cfsslPort}/api/v1/cfssl/crl`]);
    const crlFile = path.join(dir, 'cluster.crl');
    const fetchCrl = async () => (await run('curl', ['-sk', '-o', crlFile, '-w', '%{http_code}', `${c.url}/v1/crl/cluster`])).stdout.trim();
    if (probe.stdout.trim() === '404') {
      // CFSSL 1.2 (Debian bookworm's golang-cfssl) has no CRL endpoint: nothing is served, and the log says why
      t.diagnostic(`${CFSSL} serves no /api/v1/cfssl/crl (CFSSL before 1.3): checking that no CRL is served; CAIRN_TEST_CFSSL=<cfssl 1.3+> checks the CRL`);
      await waitFor('the log line', () => /the external CA publishes no CRL \(GET \/api\/v1\/cfssl\/crl answered 404/.test(c.logs.join('')));
      assert.equal(await fetchCrl(), '404');
      return;
    }
    const good = await joinNode('r');
    const text = async () => (await run('openssl', ['crl', '-inform', 'DER', '-in', crlFile, '-noout', '-text'])).stdout;
    const hex = (s: string) => s.replace(/^0+/, '');
    await waitFor('a CRL listing the revoked serials', async () => (await fetchCrl()) === '200' && (await text()).includes(hex(revoked[1])));
    const listing = await text();
    for (const s of revoked) assert.ok(listing.includes(hex(s)), `${s} in the CRL:\n${listing}`);
    assert.ok(!listing.includes(hex(good.serial)));
    const v = await run('openssl', ['crl', '-inform', 'DER', '-in', crlFile, '-noout', '-CAfile', path.join(dir, 'ca.pem'), '-verify']);
    assert.match(v.stdout + v.stderr, /verify OK/);
    await openssl(['crl', '-inform', 'DER', '-in', crlFile, '-out', path.join(dir, 'cluster.crl.pem')]);
    const check = (crt: string) => run('openssl', ['verify', '-crl_check', '-CAfile', path.join(dir, 'ca.pem'), '-CRLfile', path.join(dir, 'cluster.crl.pem'), crt]);
    const bad = await check(path.join(dir, 'q', 'node.crt'));
    assert.notEqual(bad.code, 0);
    assert.match(bad.stdout + bad.stderr, /certificate revoked/);
    const ok = await check(path.join(good.node, 'node.crt'));
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    // a node joining now keeps it as its CRL (signed by the root it trusts; CFSSL numbers none)
    const s = await joinNode('s');
    const kept = (await run('openssl', ['crl', '-in', path.join(s.node, 'crl.pem'), '-noout', '-text'])).stdout;
    for (const r of revoked) assert.ok(kept.includes(hex(r)), `${r} in the node's crl.pem`);
  });

  test("an external CA whose CRL lacks a revocation it recorded, or is signed by another CA: not served, the log says why", async () => {
    const d = (f: string) => path.join(dir, f);
    const n = await joinNode('t'); // signed by the real CFSSL
    const before = await run('curl', ['-sk', '-o', d('before.crl'), '-w', '%{http_code}', `${c.url}/v1/crl/cluster`]);
    const caIssuer = makeIssuer(certificatesFromPem(fs.readFileSync(d('ca.pem'), 'utf8'), 'ca')[0], createPrivateKey(fs.readFileSync(d('ca-key.pem'))));
    const tlsIssuer = makeIssuer(certificatesFromPem(fs.readFileSync(d('tls-ca.pem'), 'utf8'), 'tls ca')[0], createPrivateKey(fs.readFileSync(d('tls-ca.key'))));
    let mode: 'missing' | 'foreign' = 'missing';
    const revokes: { serial: string; authority_key_id: string; reason: string }[] = [];
    const https = await import('node:https');
    const fake = https.createServer({ key: fs.readFileSync(d('tls.key')), cert: fs.readFileSync(d('tls.pem')) }, (req, res) => {
      let body = '';
      req.on('data', (x) => (body += x));
      req.on('end', () => {
        if (req.url === '/api/v1/cfssl/revoke') {
          revokes.push(JSON.parse(body));
          return res.end(JSON.stringify({ success: true, result: {} }));
        }
        if (req.url?.startsWith('/api/v1/cfssl/crl')) {
          // a CRL listing nothing, by the cluster CA ("missing") or by another CA ("foreign")
          const now = Date.now();
          const der = buildCrl({ issuer: mode === 'missing' ? caIssuer : tlsIssuer, number: 1n, thisUpdate: new Date(now - 60_000), nextUpdate: new Date(now + 3_600_000), revoked: [] });
          return res.end(JSON.stringify({ success: true, result: der.toString('base64') }));
        }
        res.statusCode = 404;
        res.end('404 page not found');
      });
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    const port = (fake.address() as { port: number }).port;
    try {
      const u = cli(['update', '--state-dir', c.dir, '--external-ca', `protocol=cfssl,url=https://127.0.0.1:${port},cacert=${d('tls-ca.pem')}`]);
      assert.equal(u.code, 0, u.stderr);
      await new Promise((r) => setTimeout(r, 2500)); // every replica process has the new URL
      assert.equal(cli(['node', 'rm', n.nodeId, '--state-dir', c.dir]).code, 0);
      await waitFor('the revocation told to the external CA', () => revokes.some((r) => BigInt(r.serial) === BigInt(`0x${n.serial}`)));
      const told = revokes.find((r) => BigInt(r.serial) === BigInt(`0x${n.serial}`))!;
      assert.equal(told.reason, 'cessationofoperation');
      assert.equal(told.authority_key_id, certificateInfo(caIssuer.certDer).subjectKeyId!.toString('hex'));
      await waitFor('the log line', () => /the external CA's CRL lacks revocations it recorded: not published/.test(c.logs.join('')));
      mode = 'foreign';
      await waitFor('the log line', () => /answered with a CRL that is not signed by the cluster CA/.test(c.logs.join('')), 75_000);
      // what /v1/crl/cluster served before is what it serves now: neither CRL was taken
      const after = await run('curl', ['-sk', '-o', d('after.crl'), '-w', '%{http_code}', `${c.url}/v1/crl/cluster`]);
      assert.equal(after.stdout, before.stdout);
      if (before.stdout === '200') assert.ok(fs.readFileSync(d('after.crl')).equals(fs.readFileSync(d('before.crl'))));
    } finally {
      fake.close();
      const back = cli(['update', '--state-dir', c.dir, '--external-ca', url()]);
      assert.equal(back.code, 0, back.stderr);
    }
  });

  const pemBlocks = (t: string) => t.split(/(?<=-----END CERTIFICATE-----\n)/).filter((x) => x.trim());
  const verify = async (caFile: string, leaf: string, untrusted?: string) => {
    const v = await run('openssl', ['verify', '-x509_strict', '-CAfile', caFile, ...(untrusted ? ['-untrusted', untrusted] : []), leaf]);
    assert.equal(v.code, 0, `${caFile}: ${v.stdout}${v.stderr}`);
  };
  /** node2 renews; its leaf and what comes after it, as files */
  const renewNode2 = () => {
    const node = path.join(dir, 'node2');
    const r = cli(['agent', '--renew-now', '--state-dir', node]);
    assert.equal(r.code, 0, r.stderr);
    const chain = pemBlocks(fs.readFileSync(path.join(node, 'node.crt'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'leaf.pem'), chain[0]);
    fs.writeFileSync(path.join(dir, 'rest.pem'), chain.slice(1).join(''));
    return chain;
  };
  const waitCompleted = async () => {
    let st: any;
    for (let i = 0; i < 60; i++) {
      st = JSON.parse(cli(['ca', 'rotate', '--status', '--json', '--state-dir', c.dir]).stdout);
      if (st.rotation.state === 'completed') return st;
      await new Promise((res) => setTimeout(res, 250));
    }
    assert.fail(`the rotation did not complete: ${JSON.stringify(st)}`);
  };
  const trustBundle = async () => pemBlocks((await api(c.url, 'GET', '/v1/ca')).body.trustBundle as string);

  test('ca rotate away from CFSSL to a generated root: CFSSL certifies the new root with its CA profile; chains verify against either root; completes; a replica without a PKCS#11 token refuses a rotation to one', async () => {
    const noToken = cli(['ca', 'rotate', '--pkcs11-key-label', 'k', '--detach', '--state-dir', c.dir]);
    assert.equal(noToken.code, 1);
    assert.match(noToken.stderr, /has no PKCS#11 token set up: send the rotation to a replica that has one/);
    assert.equal(noToken.stderr.trim().split('\n').length, 1, noToken.stderr);

    // the nodes the CRL tests joined and left active are removed: node2 is then the only active node
    const node2 = JSON.parse(fs.readFileSync(path.join(dir, 'node2', 'node.json'), 'utf8')).nodeId;
    for (const { id } of await query(c.dir, "SELECT id FROM nodes WHERE status = 'active' AND id <> ?", node2)) {
      assert.equal(cli(['node', 'rm', id, '--state-dir', c.dir]).code, 0);
    }
    const st = cli(['ca', 'rotate', '--detach', '--json', '--state-dir', c.dir]);
    assert.equal(st.code, 0, st.stderr);
    const view = JSON.parse(st.stdout).rotation;
    const [row] = await query(c.dir, 'SELECT cert_pem, cross_pem, key_sealed FROM cas WHERE key_id = ?', view.to.keyId);
    assert.ok(row.key_sealed, 'the new key is sealed in the store');
    fs.writeFileSync(path.join(dir, 'gen-root.pem'), row.cert_pem);
    // CFSSL writes names as PrintableString: the root was made with its name exactly as CFSSL certified it (Go compares names byte for byte)
    const rootName = certificateInfo(certificatesFromPem(row.cert_pem, 'root')[0]).subjectDer;
    assert.ok(rootName.equals(certificateInfo(certificatesFromPem(row.cross_pem, 'cross')[0]).subjectDer), 'the same name, byte for byte');
    assert.ok(rootName.includes(Buffer.from([0x13])), 'PrintableString');
    fs.writeFileSync(path.join(dir, 'cross.pem'), row.cross_pem);
    const crossText = (await run('openssl', ['x509', '-in', path.join(dir, 'cross.pem'), '-noout', '-issuer', '-subject', '-ext', 'basicConstraints'])).stdout;
    assert.match(crossText, /issuer=O = Corp, CN = CFSSL Root/, 'CFSSL signed it');
    assert.match(crossText, /CA:TRUE/);

    const chain = renewNode2();
    assert.equal(chain.length, 2, 'leaf + cross-signed');
    await verify(path.join(dir, 'ca.pem'), path.join(dir, 'leaf.pem'), path.join(dir, 'rest.pem'));
    await verify(path.join(dir, 'gen-root.pem'), path.join(dir, 'leaf.pem'));
    // node2 is the only active node: the rotation completes by itself
    await waitCompleted();
    assert.deepEqual(await trustBundle(), [row.cert_pem]);
    renewNode2();
    await verify(path.join(dir, 'gen-root.pem'), path.join(dir, 'leaf.pem'));
  });

  test('ca rotate --external-ca to another CFSSL CA: the cairn-held root cross-signs the CFSSL root; issuance goes through CFSSL; completes; a CFSSL holding another key is refused', async () => {
    const d = (f: string) => path.join(dir, f);
    await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', d('ca2-key.pem'), '-out', d('ca2.pem'), '-days', '3650', '-subj', '/O=Corp/OU=Second/CN=CFSSL Root 2', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
    const port2 = await freePort();
    const cfssl2 = await startCfssl(port2, 'ca2');
    try {
      const url2 = `protocol=cfssl,url=https://127.0.0.1:${port2},cacert=${d('tls-ca.pem')}`;
      const wrong = cli(['ca', 'rotate', '--external-ca', url2, '--ca-cert', d('ca.pem'), '--detach', '--state-dir', c.dir]);
      assert.equal(wrong.code, 1);
      assert.match(wrong.stderr, /signs with O=Corp, OU=Second, CN=CFSSL Root 2, not with the given --ca-cert/);
      const noCert = cli(['ca', 'rotate', '--external-ca', url2, '--detach', '--state-dir', c.dir]);
      assert.equal(noCert.code, 2);
      assert.match(noCert.stderr, /--ca-cert/);

      const st = cli(['ca', 'rotate', '--external-ca', url2, '--ca-cert', d('ca2.pem'), '--detach', '--json', '--state-dir', c.dir]);
      assert.equal(st.code, 0, st.stderr);
      const view = JSON.parse(st.stdout).rotation;
      const [row] = await query(c.dir, 'SELECT key_sealed, key_location FROM cas WHERE key_id = ?', view.to.keyId);
      assert.equal(row.key_sealed, null);
      assert.equal(JSON.parse(row.key_location).kind, 'external');
      const cfg = (await api(c.url, 'GET', '/v1/config', undefined, adminId(c.dir))).body;
      assert.deepEqual(cfg.externalCas.map((e: any) => e.url), [`https://127.0.0.1:${port2}`], 'the URLs are recorded with the rotation');

      const chain = renewNode2();
      assert.equal(chain.length, 2, 'leaf (CFSSL 2) + the CFSSL 2 root cross-signed by the generated root');
      const leafText = (await run('openssl', ['x509', '-in', d('leaf.pem'), '-noout', '-issuer'])).stdout;
      assert.match(leafText, /CN = CFSSL Root 2/);
      await verify(d('gen-root.pem'), d('leaf.pem'), d('rest.pem')); // a peer trusting only the previous root
      await verify(d('ca2.pem'), d('leaf.pem')); // a peer trusting only the new one
      await waitCompleted();
      assert.deepEqual(await trustBundle(), [fs.readFileSync(d('ca2.pem'), 'utf8')]);
      renewNode2();
      await verify(d('ca2.pem'), d('leaf.pem'));
    } finally {
      await cfssl2.stop();
    }
  });
});
